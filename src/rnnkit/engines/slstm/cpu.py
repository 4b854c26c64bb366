"""sLSTM, CPU engine: the reference engine's algorithm with the time loops compiled by Numba.

Same signature and saved tensors as rnnkit.engines.slstm.reference, but for the layout of the
pre-activations, (4, N, H) (see saved_shapes); the loops live in cpu_kernels.py. What stays in
torch: the weight gradient summed over steps, one batched product over heads
(rnnkit.cells.slstm.weight_grad).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from ...cells import slstm
from ..cpu import arr, gemm_fn, plan
from ..cpu import why_not as stock_why_not
from .reference import check

DTYPES = (torch.float32, torch.float64)


def why_not(x: Tensor) -> str | None:
    if x.dtype not in DTYPES:
        return f"it supports float32 and float64, got {x.dtype}"
    return stock_why_not(x)


def kernels():
    from . import cpu_kernels
    return cpu_kernels


def saved_shapes(config: str, n: int, states: list[Tensor], params: list[Tensor], dtype: torch.dtype):
    """c, n, m (N, H) as the reference engine; the pre-activations as (4, N, H), one (N, H) block per gate
    (the kernels' stores must go to separate arrays to vectorise)."""
    hidden = states[0].shape[1]
    return [((n, hidden), dtype)] * 3 + [((4, n, hidden), dtype)]


def empty(like: Tensor, *shape: int) -> Tensor:
    """Every buffer the kernels write to comes from here (tests poison it with NaN)."""
    return like.new_empty(shape)


def per_head(r: Tensor, heads: int) -> Tensor:
    """r (4H, dh) as r_heads (K, 4dh, dh), r_heads[k, q*dh + u, v] = r[q*H + k*dh + u, v], contiguous."""
    dh = r.shape[1]
    return slstm.blocks(r, heads).transpose(0, 1).reshape(heads, 4 * dh, dh).contiguous()


@lru_cache(maxsize=64)
def _prev_index(batch_sizes: tuple[int, ...], reverse: bool) -> np.ndarray:
    sizes, offsets = plan(batch_sizes)
    n, num_steps = int(sizes.sum()), len(batch_sizes)
    index = np.empty(n, dtype=np.int64)
    for t in range(num_steps):
        before = t + 1 if reverse else t - 1
        bs = batch_sizes[t]
        ran = batch_sizes[before] if 0 <= before < num_steps else 0
        rows = np.arange(bs)
        index[offsets[t]:offsets[t] + bs] = np.where(rows < ran, (offsets[before] if ran else 0) + rows, n + rows)
    return index


def previous_h(out: Tensor, h0: Tensor, batch_sizes, reverse: bool) -> Tensor:
    """The h each packed row's step started from (a row of out, or of h0), as one gather. (N, H)"""
    index = torch.from_numpy(_prev_index(tuple(batch_sizes), reverse)).to(out.device)
    return torch.cat([out, h0.to(out.dtype)]).index_select(0, index)


def contiguous_copy(t: Tensor) -> Tensor:
    return t.detach().clone(memory_format=torch.contiguous_format)


def forward(config, xp, batch_sizes, states, params, masks, reverse):
    heads = check(config, states, params)
    sizes, offsets = plan(tuple(batch_sizes))
    n, hidden = xp.shape[0], states[0].shape[1]
    h, c, nn, m = (contiguous_copy(s) for s in states)
    out, cs, ns, ms = (empty(xp, n, hidden) for _ in range(4))
    pre = empty(xp, 4, n, hidden)
    hp = empty(xp, h.shape[0], 4 * hidden)
    kernels().slstm_forward(gemm_fn(xp.dtype), arr(xp), arr(per_head(params[0], heads)), arr(h), arr(c), arr(nn),
                            arr(m), sizes, offsets, reverse, arr(out), arr(cs), arr(ns), arr(ms),
                            *(arr(p) for p in pre), arr(hp), arr(empty(xp, *hp.shape)))
    return out, [h, c, nn, m], (cs, ns, ms, pre)


def backward(config, xp, batch_sizes, states, params, masks, reverse, out, saved, d_out, d_states_n):
    heads = check(config, states, params)
    sizes, offsets = plan(tuple(batch_sizes))
    cs, ns, ms, pre = saved
    dh, dc, dn, dm = (contiguous_copy(d) for d in d_states_n)
    dxp, dah = empty(xp, xp.shape[0], xp.shape[1]), empty(xp, dh.shape[0], xp.shape[1])
    gate_grads = [arr(empty(xp, *dh.shape)) for _ in range(4)]  # scratch: d_i, d_f, d_z, d_o of one step
    _, c0, n0, m0 = states
    kernels().slstm_backward(gemm_fn(xp.dtype), arr(per_head(params[0], heads)), arr(c0), arr(n0), arr(m0), arr(out),
                             arr(cs), arr(ns), arr(ms), *(arr(p) for p in pre), arr(d_out), arr(dh), arr(dc), arr(dn),
                             arr(dm), sizes, offsets, reverse, arr(dxp), arr(dah), *gate_grads)
    dr = slstm.weight_grad(dxp, previous_h(out, states[0], batch_sizes, reverse), heads)
    return dxp, [dh, dc, dn, dm], [dr]
