"""The GRU+ family: a GRU with layer normalisation of the recurrent pre-activations, variational recurrent
dropout and zoneout, any combination in one fused recurrence (the step math: rnnkit.cells.gru_plus).

The operator contract (rnnkit.engines.variant_ops), as this family fills it:

    config   comma-separated words, any subset of "bias" (b_hh given), "ln" (layer norm of h W_hh^T over its
             3H features), "rdrop" (variational recurrent dropout), "zoneout_h" (zoneout of h)
    xp       (N, 3H) packed rows, gates (r, z, n): the input side W_ih x + b_ih, or LN(W_ih x; ln_ih) + b_ih
    states   [h (B, H)]; the output row at step t is h_t after zoneout, out_features = H
    params   [w_hh (3H, H), b_hh (3H), ln_hh_weight (3H), ln_hh_bias (3H)], absent ones empty tensors
    masks    [rdrop (B, H), scaled by 1/(1-p), one per sequence for all steps; zoneout_h (N, H) in {0, 1},
              1 = keep the previous value, in packed row order], absent ones empty tensors

Engines: `reference` (a loop of rnnkit.cells.gru_plus steps and its hand BPTT, the ground truth), `cpu`
(Numba time loops, the recurrent product through BLAS), `triton` (GPU kernels, one launch per phase and step).
"""

from __future__ import annotations

from . import cpu, reference, triton

ENGINES = {"reference": reference, "cpu": cpu, "triton": triton}


def out_features(config: str, states, params) -> int:
    return states[0].shape[1]


def autograd_forward(config, xp, batch_sizes, states, params, masks, reverse):
    """The recurrence as plain torch ops (for double backward and torch.func): (out (N, H), [h_n (B, H)])."""
    return reference.autograd_forward(config, xp, batch_sizes, states, params, masks, reverse)
