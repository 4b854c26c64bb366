"""sLSTM, Triton engine: the reference engine's algorithm as two GPU kernels (triton_kernels.py).

Same signature and saved tensors as rnnkit.engines.slstm.reference. One launch runs the whole
forward, one the whole backward: a program per (tile of 16 batch rows, head) owns its head for
every step (heads never read each other's state). What stays in torch: the weight gradient summed
over steps, one batched product over heads.

float32 only (the state, the saved tensors and the gate arithmetic are float32 anyway; 16-bit
inputs are not supported yet). Under TRITON_INTERPRET=1 the kernels run on CPU tensors (the tests).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...cells import slstm
from .. import triton as stock
from ..triton import layout, pow2, precision
from .cpu import previous_h
from .reference import check, saved_shapes  # noqa: F401  (the same tensors as the reference engine)

DTYPES = (torch.float32,)
BLOCK_B = 16  # rows per program: tl.dot needs at least 16
MAX_BLOCK = 64  # column tiles of a head: up to 64 units (and 64 of the product's K) at a time


def kernels():
    """The kernel module, imported on first use (decorating the kernels reads TRITON_INTERPRET then)."""
    from . import triton_kernels
    return triton_kernels


def why_not(x: Tensor) -> str | None:
    return stock.why_not(x, DTYPES)


def empty(like: Tensor, *shape: int, dtype: torch.dtype | None = None) -> Tensor:
    """Every buffer the kernels write to comes from here (tests poison it with NaN)."""
    return like.new_empty(shape, dtype=dtype)


def contiguous_copy(t: Tensor) -> Tensor:
    return t.detach().clone(memory_format=torch.contiguous_format)


def launch(kernel, args, batch: int, heads: int, dh: int, batch_sizes, reverse: bool, like: Tensor) -> None:
    block = min(MAX_BLOCK, pow2(dh))
    grid = (-(-batch // BLOCK_B), heads)  # (row tiles, heads)
    kernel[grid](*args, len(batch_sizes), heads * dh, dh, REVERSE=reverse, PRECISION=precision(like),
                 BLOCK_B=BLOCK_B, BLOCK_U=block, BLOCK_V=block)


def forward(config, xp, batch_sizes, states, params, masks, reverse):
    heads = check(config, states, params)
    sizes, offsets = layout(batch_sizes, xp.device)
    n, (batch, hidden) = xp.shape[0], states[0].shape
    out, cs, ns, ms = (empty(xp, n, hidden) for _ in range(4))
    pre = empty(xp, n, 4 * hidden)
    h_n, c, nn, m = (contiguous_copy(s) for s in states)  # initial -> final (the kernel writes running rows)
    args = (xp.contiguous(), params[0].contiguous(), states[0].contiguous(), out, h_n, c, nn, m, cs, ns, ms, pre,
            sizes, offsets)
    launch(kernels().slstm_forward, args, batch, heads, hidden // heads, batch_sizes, reverse, xp)
    return out, [h_n, c, nn, m], (cs, ns, ms, pre)


def backward(config, xp, batch_sizes, states, params, masks, reverse, out, saved, d_out, d_states_n):
    heads = check(config, states, params)
    sizes, offsets = layout(batch_sizes, xp.device)
    batch, hidden = states[0].shape
    cs, ns, ms, pre = saved
    dh, dc, dn, dm = (contiguous_copy(d) for d in d_states_n)
    dxp = empty(xp, xp.shape[0], 4 * hidden)
    args = (params[0].contiguous(), *(s.contiguous() for s in states[1:]), out, cs, ns, ms, pre, d_out.contiguous(),
            dh, dc, dn, dm, dxp, sizes, offsets)
    launch(kernels().slstm_backward, args, batch, heads, hidden // heads, batch_sizes, reverse, xp)
    dr = slstm.weight_grad(dxp, previous_h(out, states[0], batch_sizes, reverse), heads)
    return dxp, [dh, dc, dn, dm], [dr]
