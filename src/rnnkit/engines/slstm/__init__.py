"""The sLSTM family (xLSTM's scalar-memory LSTM) as rnnkit operators: see rnnkit.cells.slstm for the math.

config: "heads=K" (K divides H; default 1). xp (N, 4H) = W_ih x + b_ih, gate order (i, f, z, o).
states: [h, c, n, m], each (B, H). params: [r (4H, H/K)], the block-diagonal recurrent weights.
masks: none. out (N, H) = h at every step.
"""

from __future__ import annotations

from functools import partial

from torch import Tensor

from ...cells import slstm
from ..reference import bptt_forward, stack
from . import cpu, reference, triton

ENGINES = {"reference": reference, "cpu": cpu, "triton": triton}


def out_features(config: str, states: list[Tensor], params: list[Tensor]) -> int:
    return states[0].shape[1]


def autograd_forward(config: str, xp: Tensor, batch_sizes, states: list[Tensor], params: list[Tensor],
                     masks: list[Tensor], reverse: bool):
    """The recurrence as plain torch ops (the cell's forward in the reference loop): (out, [h_n, c_n, n_n, m_n])."""
    step = partial(slstm.forward, r=params[0], heads=slstm.heads_of(config))
    new, _, final = bptt_forward(step, xp.split(list(batch_sizes)), tuple(states), batch_sizes, reverse)
    return stack(new, 0), list(final)
