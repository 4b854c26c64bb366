"""The "lstm_plus" family: an LSTM with layer normalisation, peephole connections, variational recurrent
dropout and zoneout, any combination, as one fused recurrence (step math: rnnkit.cells.lstm_plus).

    config     comma-separated words, any subset of: bias, ln, peephole, rdrop, zoneout_h, zoneout_c
    xp         (N, 4H) packed rows, gates (i, f, g, o): W_ih x + b_ih, or LN(W_ih x) + b_ih with "ln"
    states     [h (B, H), c (B, H)]; the output row of step t is h_t (after zoneout)
    params     [w_hh (4H, H), b_hh (4H), ln_hh_weight (4H), ln_hh_bias (4H), ln_cell_weight (H),
                ln_cell_bias (H), w_peephole (3H) = [p_i, p_f, p_o]]; absent ones are empty tensors
    masks      [rdrop (B, H) scaled by 1/(1-p), one per sequence for all steps; zoneout_h (N, H) and
                zoneout_c (N, H) in {0, 1}, 1 = keep the previous value]; absent ones are empty tensors
    saved      [cs (N, H) the cell state after zoneout, c~ (N, H) before zoneout (only with zoneout_c),
                gates (N, 4H), zn (N, 4H) the normalised recurrent product (only with ln),
                stats (N, 3) = [rstd of the recurrent product, mean and rstd of c~] (only with ln)]

Engines: reference (a torch loop over time with the hand-derived BPTT), cpu (Numba), triton (GPU; CPU
tensors under TRITON_INTERPRET=1).
"""

from __future__ import annotations

from torch import Tensor

from ...cells import lstm_plus as cell
from ..reference import bptt_forward, stack
from . import cpu, reference, triton
from .reference import step_inputs

ENGINES = {"reference": reference, "cpu": cpu, "triton": triton}


def out_features(config: str, states: list[Tensor], params: list[Tensor]) -> int:
    return states[0].shape[1]


def autograd_forward(config: str, xp: Tensor, batch_sizes, states: list[Tensor], params: list[Tensor],
                     masks: list[Tensor], reverse: bool):
    """The same recurrence in plain torch ops (the cell's forward), for autograd: (out, [h_n, c_n])."""
    flags = cell.parse(config)

    def step(inputs, state):
        xp_t, masks_t = inputs
        return cell.forward(xp_t, state, params, masks_t, flags, keep=False)

    new, _, final = bptt_forward(step, step_inputs(xp, masks, flags, batch_sizes), tuple(states), batch_sizes,
                                 reverse)
    return stack(new, 0), list(final)


