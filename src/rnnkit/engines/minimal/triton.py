"""Triton engine of minGRU / minLSTM: the recurrence as a blocked associative scan over time.

The kernels (triton_kernels.py) scan (a, b) pairs in linear space with tl.associative_scan over
BLOCK_T steps at a time and carry the state from chunk to chunk; one program per sequence and
block of hidden units. Same layout and results as reference.py; saves nothing beyond out.

Packed and reverse input: `rows` (T, B) maps each sequence's processing position to its packed row
(-1 past its end), from reference.layout, so one kernel serves padded, packed and reverse calls.

Block sizes are simple, not tuned (no GPU was at hand when they were chosen): BLOCK_H = 32 units,
BLOCK_T = 64 steps (both lower powers of two for small sizes).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from ...cells import minimal as cell
from .. import triton as stock
from .reference import layout

BLOCK_H = 32
BLOCK_T = 64


def why_not(x: Tensor) -> str | None:
    return stock.why_not(x)


def kernels():
    from . import triton_kernels
    return triton_kernels


def empty(like: Tensor, *shape: int, dtype: torch.dtype | None = None) -> Tensor:
    """Every buffer the kernels write to comes from here (tests poison it with NaN: an unwritten element fails)."""
    return like.new_empty(shape, dtype=dtype)


@lru_cache(maxsize=64)
def _rows(batch_sizes: tuple[int, ...], reverse: bool, device: str) -> Tensor:
    flat, num_steps, batch = layout(batch_sizes, reverse, "cpu")
    rows = torch.full((num_steps * batch,), -1, dtype=torch.int32)
    rows[flat] = torch.arange(flat.shape[0], dtype=torch.int32)
    return rows.to(device)


def pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def blocks(num_steps: int, hidden: int) -> tuple[int, int]:
    return min(BLOCK_T, max(2, pow2(num_steps))), min(BLOCK_H, pow2(hidden))


def forward(config, xp, batch_sizes, states, params, masks, reverse):
    (h0,) = states
    batch_sizes = tuple(batch_sizes)
    num_steps, batch, hidden = len(batch_sizes), batch_sizes[0], h0.shape[1]
    rows = _rows(batch_sizes, reverse, str(xp.device))
    xp, h0 = xp.contiguous(), h0.contiguous()
    out, h_n = empty(xp, xp.shape[0], hidden), empty(xp, batch, hidden, dtype=h0.dtype)
    block_t, block_h = blocks(num_steps, hidden)
    grid = (batch, -(-hidden // block_h))
    kernels().minimal_forward[grid](xp, rows, h0, out, h_n, num_steps, batch, hidden, cell.blocks(config) == 3,
                                    block_t, block_h)
    return out, [h_n], []


def backward(config, xp, batch_sizes, states, params, masks, reverse, out, saved, d_out, d_states_n):
    (h0,), (dh_n,) = states, d_states_n
    batch_sizes = tuple(batch_sizes)
    num_steps, batch, hidden = len(batch_sizes), batch_sizes[0], h0.shape[1]
    rows = _rows(batch_sizes, reverse, str(xp.device))
    xp, h0, out, d_out, dh_n = (t.contiguous() for t in (xp, h0, out, d_out, dh_n))
    dxp, dh0 = empty(xp, *xp.shape), empty(xp, batch, hidden, dtype=h0.dtype)
    block_t, block_h = blocks(num_steps, hidden)
    grid = (batch, -(-hidden // block_h))
    kernels().minimal_backward[grid](xp, rows, h0, out, d_out, dh_n, dxp, dh0, num_steps, batch, hidden,
                                     cell.blocks(config) == 3, block_t, block_h)
    return dxp, [dh0], []


def saved_shapes(config, n, states, params, dtype):
    return []
