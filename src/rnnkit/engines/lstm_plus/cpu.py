"""CPU engine of the lstm_plus family: the reference engine's algorithm with the time loops compiled by Numba.

Same signature, saved tensors and results as .reference (read it and rnnkit.cells.lstm_plus for the
math); the loops live in .cpu_kernels. Large float32 steps run one at a time from Python with the recurrent
product through oneDNN, under the stock engine's rule (rnnkit.engines.cpu.stepwise). What stays in torch: the sums over all rows that do not wait
for the previous step (dW_hh = DZ^T HM_prev, db_hh, the LN(hp) parameters' gradients).
float32 and float64; bfloat16 (what torch.autocast gives on CPU) runs the float32 kernels on the widened values,
keeps the state carried between steps and the saved tensors in float32, and rounds the results back.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ...cells import lstm_plus as cell
from .. import cpu as stock
from .reference import saved_shapes as reference_saved_shapes

DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def why_not(x: Tensor) -> str | None:
    """Why this engine cannot run on input x, or None if it can."""
    if x.dtype not in DTYPES:
        return f"it supports float32, float64 and bfloat16, got {x.dtype}"
    return stock.why_not(x)


def empty(like: Tensor, *shape: int) -> Tensor:
    """Every buffer the kernels write to comes from here (tests poison it with NaN: an unwritten element fails)."""
    return like.new_empty(shape)


def kernels():
    from . import cpu_kernels
    return cpu_kernels


def arr(t: Tensor, ndim: int) -> np.ndarray:
    """A numpy view of a CPU tensor; an absent (empty) one as an empty array of the rank the kernel expects."""
    if t.numel() == 0:
        return np.zeros((0,) * ndim, dtype=np.float32 if t.dtype == torch.float32 else np.float64)
    return t.detach().contiguous().numpy()


def saved_shapes(config: str, n: int, states, params, dtype: torch.dtype) -> list[tuple[tuple, torch.dtype]]:
    """The reference engine's saved tensors (float32 for bfloat16 input)."""
    return reference_saved_shapes(config, n, states, params, torch.float32 if dtype == torch.bfloat16 else dtype)


def widened(tensors) -> list[Tensor]:
    """bfloat16 tensors as float32 (the kernels' dtype); others as they are."""
    return [t.float() if t.dtype == torch.bfloat16 else t for t in tensors]


def narrowed(tensors, like) -> list[Tensor]:
    """Each result in the dtype of its counterpart in `like` (bfloat16 back from float32)."""
    return [t.to(k.dtype) for t, k in zip(tensors, like, strict=True)]


def forward(config: str, xp: Tensor, batch_sizes, states: list[Tensor], params: list[Tensor], masks: list[Tensor],
            reverse: bool):
    """out (N, H), [h_n, c_n], saved (saved_shapes)."""
    if xp.dtype == torch.bfloat16:
        out, states_n, saved = forward(config, xp.float(), batch_sizes, widened(states), widened(params),
                                       widened(masks), reverse)
        return out.to(xp.dtype), narrowed(states_n, states), saved  # saved stays float32 for the backward
    flags = cell.parse(config)
    ln, zon_c, rdrop = "ln" in flags, "zoneout_c" in flags, "rdrop" in flags
    h0, c0 = states
    (batch, hidden), n = c0.shape, xp.shape[0]
    sizes, offsets = stock.plan(tuple(batch_sizes))
    w_hh, b_hh, ln_w, ln_b, lnc_w, lnc_b, peep = params
    out, cs, gates = empty(xp, n, hidden), empty(xp, n, hidden), empty(xp, n, 4 * hidden)
    ct = empty(xp, n, hidden) if zon_c else xp.new_empty(0)
    zn, stats = (empty(xp, n, 4 * hidden), empty(xp, n, 3)) if ln else (xp.new_empty(0), xp.new_empty(0))
    h, c = (s.detach().clone(memory_format=torch.contiguous_format) for s in (h0, c0))
    # what the recurrent product reads: h * r with rdrop (the kernel keeps it up to date), else h itself
    hm = h * masks[0].detach() if rdrop else h
    hp, c_tilde = empty(xp, batch, 4 * hidden), empty(xp, batch, hidden)
    bias = b_hh if "bias" in flags else xp.new_zeros(4 * hidden)
    fixed = (stock.gemm_fn(xp.dtype), ln, "peephole" in flags, rdrop, "zoneout_h" in flags, zon_c, arr(xp, 2),
             arr(w_hh, 2), stock.packed_for_steps(w_hh, batch_sizes), arr(bias, 1), arr(ln_w, 1), arr(ln_b, 1),
             arr(lnc_w, 1), arr(lnc_b, 1), arr(peep, 1), arr(masks[0], 2), arr(masks[1], 2), arr(masks[2], 2),
             arr(h, 2), arr(c, 2), sizes, offsets, reverse, arr(out, 2), arr(cs, 2), arr(ct, 2), arr(gates, 2),
             arr(zn, 2), arr(stats, 2), arr(hm, 2))
    c_tilde_ = arr(c_tilde, 2)
    stock.forward_steps(lambda hp_, *k: kernels().forward(*fixed, hp_, c_tilde_, *k), hp, hm, w_hh.detach(),
                        batch_sizes, reverse)
    return out, [h, c], [cs, ct, gates, zn, stats]


def backward(config: str, xp: Tensor, batch_sizes, states: list[Tensor], params: list[Tensor], masks: list[Tensor],
             reverse: bool, out: Tensor, saved, d_out: Tensor, d_states_n: list[Tensor]):
    """BPTT: dxp (N, 4H), [dh0, dc0], the gradient of every param (empty for an absent one)."""
    if xp.dtype == torch.bfloat16:
        dxp, d_states, d_params = backward(config, xp.float(), batch_sizes, widened(states), widened(params),
                                           widened(masks), reverse, out.float(), saved, d_out.float(),
                                           widened(d_states_n))
        return dxp.to(xp.dtype), narrowed(d_states, states), narrowed(d_params, params)
    flags = cell.parse(config)
    ln, rdrop = "ln" in flags, "rdrop" in flags
    cs, ct, gates, zn, stats = saved
    h0, c0 = states
    (batch, hidden), n = c0.shape, xp.shape[0]
    sizes, offsets = stock.plan(tuple(batch_sizes))
    w_hh, b_hh, ln_w, ln_b, lnc_w, lnc_b, peep = params
    da, hm_prev = empty(xp, n, 4 * hidden), empty(xp, n, hidden)
    dz = empty(xp, n, 4 * hidden) if ln else xp.new_empty(0)
    dsmall = xp.new_zeros(5 * hidden)  # an accumulator: [dp_i, dp_f, dp_o, dw_c_ln, db_c_ln]
    dh, dc = (d.detach().clone(memory_format=torch.contiguous_format) for d in d_states_n)
    tmp, dhm = empty(xp, batch, hidden), empty(xp, batch, hidden)
    fixed = (stock.gemm_fn(xp.dtype), ln, "peephole" in flags, rdrop, "zoneout_h" in flags, "zoneout_c" in flags,
             arr(w_hh, 2), arr(ln_w, 1), arr(lnc_w, 1), arr(lnc_b, 1), arr(peep, 1), arr(masks[0], 2),
             arr(masks[1], 2), arr(masks[2], 2), arr(h0, 2), arr(c0, 2), arr(out, 2), arr(cs, 2), arr(ct, 2),
             arr(gates, 2), arr(zn, 2), arr(stats, 2), arr(d_out, 2), arr(dh, 2), arr(dc, 2), sizes, offsets,
             reverse, arr(da, 2), arr(dz, 2), arr(hm_prev, 2), dsmall.numpy(), arr(tmp, 2), arr(dhm, 2))
    dpre = dz if ln else da  # the gradient at hm W_hh^T

    def step_product(rows, w_t):  # (dz W_hh) * r, what the step sends back to h_{t-1}
        product = stock.linear(dpre[rows], w_t)
        return product * masks[0][:product.shape[0]] if rdrop else product

    stock.backward_steps(lambda *k: kernels().backward(*fixed, *k), dh, step_product, w_hh.detach(), batch_sizes,
                         reverse, True)
    grads = [stock.sum_over_steps(dz if ln else da, hm_prev),  # dW_hh = sum_t dz_t^T hm_{t-1}  (4H, H)
             da.sum(0) if "bias" in flags else torch.zeros_like(b_hh)]
    if ln:
        grads += [(da * zn).sum(0), da.sum(0), dsmall[3 * hidden:4 * hidden].clone(), dsmall[4 * hidden:].clone()]
    else:
        grads += [torch.zeros_like(p) for p in (ln_w, ln_b, lnc_w, lnc_b)]
    grads.append(dsmall[:3 * hidden].clone() if "peephole" in flags else torch.zeros_like(peep))
    return da, [dh, dc], grads
