r"""GRU+ reference engine: a loop of rnnkit.cells.gru_plus steps over time and its hand-derived BPTT.

The ground truth of the family's fast engines. The loop and the packed layout are
rnnkit.engines.reference's (`bptt_forward`, `previous_states`, `bptt_backward`): rows beyond
batch_sizes[t] keep their state. The masks enter each step as constants: rdrop's first bs_t rows (a
sequence keeps its mask for all its steps), zoneout_h's rows of step t.

Saved for the backward (beyond the inputs and out), per packed row:

    gates  (N, 4H)  [r, z, n, h_n]
    g_hat  (N, 3H)  the normalised g = hm W_hh^T            ("ln"; else an empty tensor)
    rstd   (N,)     1 / sqrt(var(g) + eps)                   ("ln"; else an empty tensor)

The weights every step shares get one product over all rows each (rnnkit.cells.gru_plus's docstring):
dW_hh = dG^T HM, with HM the previous states times the rdrop rows; db_hh = sum dHP; dgamma = sum dHP * Ĝ;
dbeta = sum dHP.
"""

from __future__ import annotations

from functools import lru_cache, partial
from typing import NamedTuple

import torch
from torch import Tensor

from ...cells import gru_plus as cell
from ..reference import bptt_backward, bptt_forward, previous_states, stack

WORDS = ("bias", "ln", "rdrop", "zoneout_h")


class Options(NamedTuple):
    bias: bool
    ln: bool
    rdrop: bool
    zoneout: bool


@lru_cache(maxsize=None)
def parse(config: str) -> Options:
    """The config words as flags; an unknown word raises ValueError."""
    words = {w.strip() for w in config.split(",")} - {""}
    unknown = words - set(WORDS)
    if unknown:
        raise ValueError(f"gru_plus: unknown config word(s) {sorted(unknown)}; expected any of {', '.join(WORDS)}")
    return Options("bias" in words, "ln" in words, "rdrop" in words, "zoneout_h" in words)


def present(t: Tensor) -> Tensor | None:
    return t if t.numel() else None


def unpack(config: str, params: list[Tensor], masks: list[Tensor]):
    """(options, w_hh, b_hh, ln, rdrop, zoneout): None for what the config leaves out.

    ln is (gamma, beta) with "ln" (either may be None: an empty tensor means 1 or 0), else None."""
    opts = parse(config)
    w_hh, b_hh, ln_w, ln_b = params
    rdrop, zoneout = (list(masks) + [w_hh.new_empty(0)] * 2)[:2]
    if opts.bias and b_hh.numel() == 0:
        raise ValueError("gru_plus: config has 'bias' but b_hh is empty")
    for word, on, mask in (("rdrop", opts.rdrop, rdrop), ("zoneout_h", opts.zoneout, zoneout)):
        if on and mask.dim() != 2:
            raise ValueError(f"gru_plus: config has {word!r} but its mask is empty")
    return (opts, w_hh, b_hh if opts.bias else None, (present(ln_w), present(ln_b)) if opts.ln else None,
            rdrop if opts.rdrop else None, zoneout if opts.zoneout else None)


def saved_shapes(config: str, n, states, params, dtype: torch.dtype):
    """gates (N, 4H), g_hat (N, 3H) and rstd (N,) with "ln" (else empty), all in `dtype`."""
    hidden = states[0].shape[1]
    ln = parse(config).ln
    return [((n, 4 * hidden), dtype), ((n, 3 * hidden) if ln else (0,), dtype), ((n,) if ln else (0,), dtype)]


def why_not(x: Tensor) -> str | None:
    return None


def mask_rows(rdrop: Tensor, batch_sizes) -> Tensor:
    """The rdrop row of the sequence of each packed row (a sequence's mask is the same at every step). (N, H)"""
    return torch.cat([rdrop[:bs] for bs in batch_sizes])


def step_inputs(xp: Tensor, batch_sizes, rdrop: Tensor | None, zoneout: Tensor | None) -> list[tuple]:
    """Per step t: (xp_t, zoneout_t, rdrop[:bs_t]), None for an absent mask."""
    zs = zoneout.split(batch_sizes) if zoneout is not None else [None] * len(batch_sizes)
    return [(x, z, rdrop[:bs] if rdrop is not None else None)
            for x, z, bs in zip(xp.split(batch_sizes), zs, batch_sizes, strict=True)]


def step(inputs, state, *, w_hh, b_hh, ln, keep):
    xp_t, zoneout, rdrop = inputs
    return cell.forward(xp_t, state, w_hh, b_hh, ln=ln, rdrop=rdrop, zoneout=zoneout, keep=keep)


def autograd_forward(config, xp, batch_sizes, states, params, masks, reverse):
    """The recurrence as plain differentiable torch ops: (out (N, H), [h_n (B, H)])."""
    _, w_hh, b_hh, ln, rdrop, zoneout = unpack(config, params, masks)
    run = partial(step, w_hh=w_hh, b_hh=b_hh, ln=ln, keep=False)
    new, _, (h_n,) = bptt_forward(run, step_inputs(xp, batch_sizes, rdrop, zoneout), (states[0],), batch_sizes,
                                  reverse)
    return stack(new, 0), [h_n]


def forward(config, xp, batch_sizes, states, params, masks, reverse):
    """One direction, no autograd: out (N, H), [h_n], saved (gates, g_hat, rstd)."""
    opts, w_hh, b_hh, ln, rdrop, zoneout = unpack(config, params, masks)
    run = partial(step, w_hh=w_hh, b_hh=b_hh, ln=ln, keep=True)
    new, caches, (h_n,) = bptt_forward(run, step_inputs(xp, batch_sizes, rdrop, zoneout), (states[0],),
                                       batch_sizes, reverse)
    g_hat = torch.cat([c[1] for c in caches]) if opts.ln else xp.new_empty(0)  # (N, 3H)
    rstd = torch.cat([c[2] for c in caches]).reshape(-1) if opts.ln else xp.new_empty(0)  # (N,); outputs never alias
    return stack(new, 0), [h_n], (torch.cat([c[0] for c in caches]), g_hat, rstd)


def param_grads(opts: Options, params: list[Tensor], dhp: Tensor, dg: Tensor, hm: Tensor,
                g_hat: Tensor | None) -> list[Tensor]:
    """[dW_hh, db_hh, dgamma, dbeta], each one sum over all rows; zeros (empty for an empty param) where unused.

    dhp, dg: (N, 3H) the gradients at hp and at g = hm W_hh^T; hm: (N, H) what W_hh multiplied."""
    w_hh, b_hh, ln_w, ln_b = params
    found = [dg.t() @ hm, dhp.sum(0) if opts.bias else None,
             (dhp * g_hat).sum(0) if opts.ln and ln_w.numel() else None,
             dhp.sum(0) if opts.ln and ln_b.numel() else None]
    return [g.to(p.dtype) if g is not None else torch.zeros_like(p) for g, p in zip(found, params, strict=True)]


def backward(config, xp, batch_sizes, states, params, masks, reverse, out, saved, d_out, d_states_n):
    """BPTT for `forward`: (dxp (N, 3H), [dh0 (B, H)], [dW_hh, db_hh, dgamma, dbeta])."""
    opts, w_hh, b_hh, ln, rdrop, zoneout = unpack(config, params, masks)
    gates, g_hat, rstd = saved
    h0 = states[0]
    new = [(h,) for h in out.split(batch_sizes)]
    prev = previous_states(new, (h0,), batch_sizes, reverse)
    num_steps = len(batch_sizes)
    g_hats = g_hat.split(batch_sizes) if opts.ln else [None] * num_steps
    rstds = rstd.unsqueeze(1).split(batch_sizes) if opts.ln else [None] * num_steps
    caches = [((c, gh, rs), zh, rd) for c, gh, rs, (_, zh, rd) in
              zip(gates.split(batch_sizes), g_hats, rstds, step_inputs(xp, batch_sizes, rdrop, zoneout), strict=True)]
    gamma = ln[0] if ln is not None else None

    def step_backward(d_new, new_t, prev_t, cache):
        c, zh, rd = cache
        dxp, dhp, dg, d_prev = cell.backward(d_new, new_t, prev_t, c, w_hh, ln_weight=gamma, rdrop=rd, zoneout=zh)
        return dxp, (dhp, dg), d_prev  # bptt_backward keeps the second slot per step as it is

    dxp, dhp_dg, _, (dh0,) = bptt_backward(step_backward, d_out.split(batch_sizes), (d_states_n[0],), new, prev,
                                           caches, batch_sizes, reverse)
    hm = stack(prev, 0)  # (N, H) the state each step started from
    if rdrop is not None:
        hm = hm * mask_rows(rdrop, batch_sizes)
    d_params = param_grads(opts, params, torch.cat([d[0] for d in dhp_dg]), torch.cat([d[1] for d in dhp_dg]), hm,
                           g_hat if opts.ln else None)
    return torch.cat(dxp), [dh0], d_params
