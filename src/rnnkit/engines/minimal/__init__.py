"""The "minimal" family: minGRU and minLSTM (Feng et al. 2024), whose gates do not read the state.

config: "mingru" (xp (N, 2H) = [k_z, k_h]) or "minlstm" (xp (N, 3H) = [k_f, k_i, k_h]); the math is
rnnkit.cells.minimal. states: [h (B, H)], params: [], masks: []. out (N, H).

Because a_t and b_t of h_t = a_t h_{t-1} + b_t come from the input alone, the recurrence is an
associative scan over time: `reference` runs it in log space (torch.logcumsumexp, the paper's
form), `triton` as tl.associative_scan over blocks of steps, and `cpu` as the plain sequential loop
(one memory-bound pass: see cpu.py for why that is the right scan on a CPU).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...cells import minimal as cell
from ..reference import merge_rows, time_order
from . import cpu, reference, triton

ENGINES = {"reference": reference, "cpu": cpu, "triton": triton}


def out_features(config: str, states: list[Tensor], params: list[Tensor]) -> int:
    cell.blocks(config)  # an unknown config raises here, before any shape is made up for it
    return states[0].shape[-1]


def autograd_forward(config: str, xp: Tensor, batch_sizes: tuple[int, ...], states: list[Tensor],
                     params: list[Tensor], masks: list[Tensor], reverse: bool):
    """The sequential recurrence as plain torch ops, for autograd (double backward, torch.func). (out, [h_n])"""
    (h,) = states
    steps = xp.split(list(batch_sizes))
    outs = [None] * len(batch_sizes)
    for t in time_order(len(batch_sizes), reverse):
        bs = batch_sizes[t]
        new = cell.forward(config, steps[t], h[:bs])
        h = merge_rows(new, h)
        outs[t] = new
    return torch.cat(outs), [h]
