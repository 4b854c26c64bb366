"""GRU+ CPU engine: the reference engine's algorithm with the time loops compiled by Numba (cpu_kernels.py).

Same signature, layout and saved tensors as rnnkit.engines.gru_plus.reference. What stays in torch: the
products over all steps, dW_hh = dG^T HM, and the parameter sums (rnnkit.engines.gru_plus.reference's
param_grads). float32 and float64. Large float32 steps run one at a time from Python with the recurrent product
through oneDNN, under the stock engine's rule (rnnkit.engines.cpu.stepwise).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .. import cpu as stock
from . import reference
from .reference import mask_rows, param_grads, unpack

DTYPES = (torch.float32, torch.float64)


def why_not(x: Tensor) -> str | None:
    """Why this engine cannot run on input x, or None if it can."""
    if x.dtype not in DTYPES:
        return f"its gru_plus kernels support float32 and float64, got {x.dtype}"
    return stock.why_not(x)


def saved_shapes(config, n, states, params, dtype):
    return reference.saved_shapes(config, n, states, params, dtype)


def empty(like: Tensor, *shape: int) -> Tensor:
    """Every buffer the kernels write to comes from here (tests poison it with NaN: an unwritten element fails)."""
    return like.new_empty(shape)


def kernels():
    from . import cpu_kernels
    return cpu_kernels


def arr(t: Tensor) -> np.ndarray:
    return stock.arr(t)


def filled(t: Tensor | None, size: int, value: float, like: Tensor) -> np.ndarray:
    """t as an array, or `size` copies of `value` where it is absent (the kernels always read b_hh, gamma, beta)."""
    return arr(t) if t is not None else np.full(size, value, dtype=stock.np_dtype(like))


def mask_or_none(t: Tensor | None, like: Tensor) -> np.ndarray:
    return arr(t) if t is not None else np.zeros((0, 0), dtype=stock.np_dtype(like))


def forward(config, xp, batch_sizes, states, params, masks, reverse):
    """out (N, H), [h_n (B, H)], saved (gates (N, 4H), g_hat (N, 3H) or empty, rstd (N,) or empty)."""
    opts, w_hh, b_hh, ln, rdrop, zoneout = unpack(config, params, masks)
    h0 = states[0]
    n, batch, hidden = xp.shape[0], h0.shape[0], h0.shape[1]
    sizes, offsets = stock.plan(tuple(batch_sizes))
    gamma, beta = ln if ln is not None else (None, None)
    out, cache = empty(xp, n, hidden), empty(xp, n, 4 * hidden)
    g_hat = empty(xp, n, 3 * hidden) if opts.ln else xp.new_empty(0)
    rstd = empty(xp, n) if opts.ln else xp.new_empty(0)
    h = h0.detach().clone(memory_format=torch.contiguous_format)
    hm = h * rdrop.detach() if rdrop is not None else h  # what the recurrent product reads (the kernel keeps it)
    g = empty(xp, batch, 3 * hidden)
    fixed = (stock.gemm_fn(xp.dtype), arr(xp), arr(w_hh), filled(b_hh, 3 * hidden, 0.0, xp),
             filled(gamma, 3 * hidden, 1.0, xp), filled(beta, 3 * hidden, 0.0, xp), mask_or_none(rdrop, xp),
             mask_or_none(zoneout, xp), arr(h), sizes, offsets, reverse, opts.ln, opts.rdrop, opts.zoneout, 1e-5,
             arr(out), arr(cache), arr(g_hat) if opts.ln else np.zeros((0, 0), dtype=stock.np_dtype(xp)),
             arr(rstd) if opts.ln else np.zeros(0, dtype=stock.np_dtype(xp)), arr(hm))
    stock.forward_steps(lambda g_, *k: kernels().forward(*fixed, g_, *k), g, hm, w_hh.detach(), batch_sizes,
                        reverse)
    return out, [h], (cache, g_hat, rstd)


def backward(config, xp, batch_sizes, states, params, masks, reverse, out, saved, d_out, d_states_n):
    """BPTT for `forward`: (dxp (N, 3H), [dh0 (B, H)], [dW_hh, db_hh, dgamma, dbeta])."""
    opts, w_hh, b_hh, ln, rdrop, zoneout = unpack(config, params, masks)
    cache, g_hat, rstd = saved
    h0 = states[0]
    n, batch, hidden = xp.shape[0], h0.shape[0], h0.shape[1]
    sizes, offsets = stock.plan(tuple(batch_sizes))
    gamma = ln[0] if ln is not None else None
    dxp, dhp = empty(xp, n, 3 * hidden), empty(xp, n, 3 * hidden)
    dg = empty(xp, n, 3 * hidden) if opts.ln else dhp  # without layer norm the gradient at g is dhp
    hprev, dhm = empty(xp, n, hidden), empty(xp, batch, hidden)
    dh = d_states_n[0].detach().clone(memory_format=torch.contiguous_format)
    none2 = np.zeros((0, 0), dtype=stock.np_dtype(xp))
    fixed = (stock.gemm_fn(xp.dtype), arr(w_hh), filled(gamma, 3 * hidden, 1.0, xp), mask_or_none(rdrop, xp),
             mask_or_none(zoneout, xp), arr(h0), arr(out), arr(cache), arr(g_hat) if opts.ln else none2,
             arr(rstd) if opts.ln else np.zeros(0, dtype=none2.dtype), arr(d_out), arr(dh), sizes, offsets, reverse,
             opts.ln, opts.rdrop, opts.zoneout, arr(dxp), arr(dhp), arr(dg), arr(hprev), arr(dhm))

    def step_product(rows, w_t):  # (dg W_hh) * rdrop, what the step sends back to h_{t-1}
        product = stock.linear(dg[rows], w_t)
        return product * rdrop[:product.shape[0]] if rdrop is not None else product

    stock.backward_steps(lambda *k: kernels().backward(*fixed, *k), dh, step_product, w_hh.detach(), batch_sizes,
                         reverse, True)
    hm = hprev * mask_rows(rdrop, batch_sizes) if rdrop is not None else hprev  # (N, H) what W_hh multiplied
    return dxp, [dh], param_grads(opts, params, dhp, dg, hm, g_hat if opts.ln else None)
