"""CPU engine of minGRU / minLSTM: the recurrence as one compiled sequential pass (Numba), forward and back.

Why sequential and not a parallel scan: a scan's parallelism is over time, and a CPU does not need
it. The B*H recurrences are independent, which already fills the vector lanes; what a step costs is
its gate arithmetic and reading xp / writing out. The loop over time does that in one pass with
O(N H) work and no extra (N, H) buffers: per row of a step, one vectorised loop of gate arithmetic
(sigmoid from a rational tanh in float32: no exp or log, which do not vectorise here) and one of
h = a h + b, a single multiply-add per element. A parallel scan does at least twice the work and
passes over memory several times (up-sweep and down-sweep; the log-space form's cumsum,
logcumsumexp and exp, plus a log and an exp of every element). The sequential form is also the
exact one: no cumulative sums of logs whose difference cancels (see reference.py on precision), and
any sign of h_0 and of the upstream gradient without a split. The backward is the same loop
backwards in time, recomputing the gates from xp (nothing is saved beyond out).

Same layout and results as reference.py. float32 and float64 run their own compiled loops (float64
with libm's exp); bfloat16 runs the float32 loop on float32 copies.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from ...cells import minimal as cell
from ..cpu import DTYPES, _import_error, plan

__all__ = ["forward", "backward", "saved_shapes", "why_not", "empty"]


def why_not(x: Tensor) -> str | None:
    if (err := _import_error()) is not None:
        return err
    if x.device.type != "cpu":
        return f"it runs on CPU tensors, got a tensor on {x.device}"
    if x.dtype not in DTYPES:
        return f"it supports float32, float64 and bfloat16, got {x.dtype}"
    return None


def empty(like: Tensor, *shape: int) -> Tensor:
    """Every buffer the kernels write to comes from here (tests poison it with NaN: an unwritten element fails)."""
    return like.new_empty(shape)


@lru_cache(maxsize=1)
def kernels():
    from . import cpu_kernels
    return cpu_kernels


def arr(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


def compute_dtype(t: Tensor) -> Tensor:
    return t.float() if t.dtype == torch.bfloat16 else t


def forward(config, xp, batch_sizes, states, params, masks, reverse):
    (h0,) = states
    sizes, offsets = plan(tuple(batch_sizes))
    x = compute_dtype(xp)
    out = empty(x, x.shape[0], h0.shape[1])
    h = compute_dtype(h0).detach().clone(memory_format=torch.contiguous_format)
    kernels().forward(cell.blocks(config) == 3, arr(x), arr(h), sizes, offsets, reverse,
                      arr(out))
    return out.to(xp.dtype), [h.to(h0.dtype)], []


def backward(config, xp, batch_sizes, states, params, masks, reverse, out, saved, d_out, d_states_n):
    (h0,), (dh_n,) = states, d_states_n
    sizes, offsets = plan(tuple(batch_sizes))
    x = compute_dtype(xp)
    dxp = empty(x, *x.shape)
    dh = compute_dtype(dh_n).detach().clone(memory_format=torch.contiguous_format)
    kernels().backward(cell.blocks(config) == 3, arr(x), arr(compute_dtype(h0)),
                       arr(compute_dtype(out)), arr(compute_dtype(d_out).to(x.dtype)), arr(dh), sizes, offsets, reverse,
                       arr(dxp))
    return dxp.to(xp.dtype), [dh.to(h0.dtype)], []


def saved_shapes(config, n, states, params, dtype):
    return []
