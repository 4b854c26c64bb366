"""sLSTM, reference engine: the loop over time with rnnkit.cells.slstm's step, and BPTT by hand.

Read rnnkit.engines.reference for the loop and the packed layout, rnnkit.cells.slstm for the
step's equations and their derivative. No autograd runs through the loop.

Saved for the backward, per step and running sequence: c', n', m' (H each) and the
pre-activations [i~, f~, z~, o~] (4H); h' is the output itself.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

from ...cells import slstm
from ..reference import bptt_backward, bptt_forward, previous_states, stack


def why_not(x: Tensor) -> str | None:
    return None


def saved_shapes(config: str, n: int, states: list[Tensor], params: list[Tensor], dtype: torch.dtype):
    hidden = states[0].shape[1]
    return [((n, hidden), dtype)] * 3 + [((n, 4 * hidden), dtype)]


def check(config: str, states: list[Tensor], params: list[Tensor]) -> int:
    """K, after checking that the shapes agree with it."""
    heads, hidden, r = slstm.heads_of(config), states[0].shape[1], params[0]
    if heads < 1 or hidden % heads or tuple(r.shape) != (4 * hidden, hidden // heads):
        raise ValueError(f"sLSTM: heads={heads} must divide H={hidden} and r must be ({4 * hidden}, "
                         f"{hidden // max(heads, 1)}), got {tuple(r.shape)}")
    return heads


def forward(config, xp, batch_sizes, states, params, masks, reverse):
    heads = check(config, states, params)
    step = partial(slstm.forward, r=params[0], heads=heads)
    new, pre, final = bptt_forward(step, xp.split(list(batch_sizes)), tuple(states), batch_sizes, reverse)
    saved = (stack(new, 1), stack(new, 2), stack(new, 3), torch.cat(pre))  # c, n, m (N, H); pre (N, 4H)
    return stack(new, 0), list(final), saved


def backward(config, xp, batch_sizes, states, params, masks, reverse, out, saved, d_out, d_states_n):
    heads = check(config, states, params)
    sizes = list(batch_sizes)
    cs, ns, ms, pre = saved
    new = list(zip(*(t.split(sizes) for t in (out, cs, ns, ms)), strict=True))
    prev = previous_states(new, tuple(states), batch_sizes, reverse)
    step_backward = partial(slstm.backward, r=params[0], heads=heads)
    dxp, _, _, d_states0 = bptt_backward(step_backward, d_out.split(sizes), tuple(d_states_n), new, prev,
                                         pre.split(sizes), batch_sizes, reverse)
    dxp = torch.cat(dxp)  # (N, 4H) = dhr at every step
    dr = slstm.weight_grad(dxp, stack(prev, 0), heads)
    return dxp, list(d_states0), [dr]
