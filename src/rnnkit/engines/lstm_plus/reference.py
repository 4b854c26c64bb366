r"""Reference engine of the lstm_plus family: a readable loop over time and the hand-derived BPTT.

The step math is rnnkit.cells.lstm_plus (equations and backward in its docstring); the loop is
rnnkit.engines.reference's (bptt_forward, previous_states, bptt_backward), so packed batches
behave as for the stock cells: rows beyond batch_sizes[t] keep their state.

Parameters shared by every step get their gradient as one product or one sum over all rows:

    dW_hh = DZ^T HM_prev        (HM_prev = H_prev * r, the dropped-out state each step read)
    db_hh = sum DA              dw_hh_ln = sum DA * ZN       db_hh_ln = sum DA
    dw_c_ln = sum DY * CN       db_c_ln = sum DY
    dp_i = sum DA_i * C_prev    dp_f = sum DA_f * C_prev     dp_o = sum DA_o * C~
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...cells import lstm_plus as cell
from ..reference import bptt_backward, bptt_forward, previous_states, stack


def step_inputs(xp: Tensor, masks: list[Tensor], flags, batch_sizes) -> list[tuple[Tensor, tuple]]:
    """Per step: (xp_t, (r, zh, zc) for the step's rows); absent masks stay empty tensors."""
    r, zh, zc = masks
    zh_steps = zh.split(batch_sizes) if "zoneout_h" in flags else [zh] * len(batch_sizes)
    zc_steps = zc.split(batch_sizes) if "zoneout_c" in flags else [zc] * len(batch_sizes)
    return [(x, (r[:bs] if "rdrop" in flags else r, a, b))
            for x, bs, a, b in zip(xp.split(batch_sizes), batch_sizes, zh_steps, zc_steps, strict=True)]


def saved_shapes(config: str, n: int, states, params, dtype: torch.dtype) -> list[tuple[tuple, torch.dtype]]:
    """cs (N, H), c~ (N, H) with zoneout_c, gates (N, 4H), zn (N, 4H) and stats (N, 3) with ln (else (0,))."""
    flags, hidden = cell.parse(config), states[1].shape[1]
    ln = "ln" in flags
    return [((n, hidden), dtype), ((n, hidden) if "zoneout_c" in flags else (0,), dtype),
            ((n, 4 * hidden), dtype), ((n, 4 * hidden) if ln else (0,), dtype), ((n, 3) if ln else (0,), dtype)]


def why_not(x: Tensor) -> str | None:
    return None


def forward(config: str, xp: Tensor, batch_sizes, states: list[Tensor], params: list[Tensor], masks: list[Tensor],
            reverse: bool):
    """out (N, H), [h_n, c_n], saved (see saved_shapes)."""
    flags = cell.parse(config)

    def step(inputs, state):
        xp_t, masks_t = inputs
        return cell.forward(xp_t, state, params, masks_t, flags)

    new, caches, (h_n, c_n) = bptt_forward(step, step_inputs(xp, masks, flags, batch_sizes), tuple(states),
                                           batch_sizes, reverse)
    none = xp.new_empty(0)
    ln = "ln" in flags
    saved = [stack(new, 1), stack(caches, 1) if "zoneout_c" in flags else none, stack(caches, 0),
             stack(caches, 2) if ln else none.clone(), stack(caches, 3) if ln else none.clone()]
    return stack(new, 0), [h_n, c_n], saved


def backward(config: str, xp: Tensor, batch_sizes, states: list[Tensor], params: list[Tensor], masks: list[Tensor],
             reverse: bool, out: Tensor, saved, d_out: Tensor, d_states_n: list[Tensor]):
    """BPTT: dxp (N, 4H), [dh0, dc0], the gradient of every param (empty for an absent one)."""
    flags = cell.parse(config)
    cs, c_tilde, gates, zn, stats = saved
    ln = "ln" in flags
    if "zoneout_c" not in flags:
        c_tilde = cs  # c' = c~
    new = list(zip(out.split(batch_sizes), cs.split(batch_sizes), strict=True))
    prev = previous_states(new, tuple(states), batch_sizes, reverse)
    parts = [gates.split(batch_sizes), c_tilde.split(batch_sizes),
             zn.split(batch_sizes) if ln else [None] * len(batch_sizes),
             stats.split(batch_sizes) if ln else [None] * len(batch_sizes)]
    caches = [(tuple(p), m) for p, (_, m) in zip(zip(*parts, strict=True),
                                                   step_inputs(xp, masks, flags, batch_sizes), strict=True)]

    def step_backward(d_new, new_t, prev_t, cache):
        return cell.backward(d_new, new_t, prev_t, cache[0], params, cache[1], flags)

    da, dzy, _, (dh0, dc0) = bptt_backward(step_backward, d_out.split(batch_sizes), tuple(d_states_n), new, prev,
                                           caches, batch_sizes, reverse)
    da, dz = torch.cat(da), torch.cat([d[0] for d in dzy])  # (N, 4H) each
    h_prev = stack(prev, 0)  # (N, H)
    if "rdrop" in flags:
        h_prev = h_prev * torch.cat([masks[0][:bs] for bs in batch_sizes])  # HM_prev
    w_hh, b_hh, ln_w, ln_b, lnc_w, lnc_b, peep = params
    grads = [dz.t() @ h_prev, da.sum(0) if "bias" in flags else torch.zeros_like(b_hh)]  # (4H, H), (4H)
    if ln:
        dy = torch.cat([d[1] for d in dzy])  # (N, H)
        _, mean_c, rstd_c = stats.split(1, dim=1)
        cn = (c_tilde - mean_c) * rstd_c
        grads += [(da * zn).sum(0), da.sum(0), (dy * cn).sum(0), dy.sum(0)]
    else:
        grads += [torch.zeros_like(p) for p in (ln_w, ln_b, lnc_w, lnc_b)]
    if "peephole" in flags:
        hidden = cs.shape[1]
        c_prev = stack(prev, 1)
        grads.append(torch.cat([(da[:, :hidden] * c_prev).sum(0), (da[:, hidden:2 * hidden] * c_prev).sum(0),
                                (da[:, 3 * hidden:] * c_tilde).sum(0)]))
    else:
        grads.append(torch.zeros_like(peep))
    return da, [dh0, dc0], grads
