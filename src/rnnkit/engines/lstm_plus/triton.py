"""Triton engine of the lstm_plus family: the reference engine's algorithm as two GPU kernels.

Same signature and saved tensors as .reference (read it and rnnkit.cells.lstm_plus for the math), except
that every saved activation is float32 whatever the input dtype (as the stock Triton engine keeps them), and
the state h carried between steps too (the recurrent product's operands are in the input dtype).
The kernels (.triton_kernels) run the whole time loop in one launch each: program p owns 16 batch rows
and all hidden units (so the layer norms over a row's features need no cross-program reduction, and no
program waits for another). Simple and correct, not tuned: see the kernels' docstring for the costs.
What stays in torch: dW_hh = DZ^T HM_prev, db_hh and the LN(hp) parameters' gradients, each one
product or sum over all rows, and the sum of the kernels' per-program partial sums of the small
parameters' gradients.

float32, bfloat16 and float16 CUDA tensors; CPU tensors under TRITON_INTERPRET=1 (the tests).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ...cells import lstm_plus as cell
from .. import triton as stock

BLOCK_B = 16  # rows per program: tl.dot needs at least 16
BLOCK_K = 32  # reduction tile of the recurrent products (16 above BLOCK_H = 1024: see tiles)
MAX_HIDDEN = 2048  # a program holds whole rows: beyond this its W_hh tiles no longer fit in shared memory
SHARED_LIMIT = 232448  # bytes of shared memory a block may have on an H100/H200 (sm_90)


def why_not(x: Tensor) -> str | None:
    return stock.why_not(x)


def kernels():
    """The kernel module, imported on first use (decorating the kernels reads TRITON_INTERPRET then)."""
    from . import triton_kernels
    return triton_kernels


def empty(like: Tensor, *shape: int, dtype: torch.dtype | None = None) -> Tensor:
    """Every buffer the kernels write to comes from here (tests poison it with NaN: an unwritten element fails)."""
    return like.new_empty(shape, dtype=dtype)


def saved_shapes(config: str, n: int, states, params, dtype: torch.dtype) -> list[tuple[tuple, torch.dtype]]:
    """The reference engine's saved tensors, in float32."""
    from .reference import saved_shapes as reference_saved_shapes
    return [(shape, torch.float32) for shape, _ in reference_saved_shapes(config, n, states, params, dtype)]


def c(t: Tensor, like: Tensor) -> Tensor:
    """A contiguous tensor for a kernel argument; an absent (empty) one as `like`: no kernel should see the null
    pointer of an empty tensor (the kernel never reads it: its flag is off)."""
    return t.detach().contiguous() if t.numel() else like


def num_warps(block_h: int) -> int:
    """Warps per program: a program holds whole rows (several BLOCK_B x BLOCK_H float32 tiles), so more threads
    share them as the rows widen. Chosen from what ptxas reports for sm_90 (not from timings; no GPU here): with
    every option on, 4 warps spilled 0.9 KB of stack per thread at BLOCK_H=64 and 30 KB at 1024 (148 s to
    compile); 8 warps none at 64, 0.9 KB at 128; 16 warps 2.0 KB at 256; 32 warps 5.0 KB at 1024 (3 s)."""
    return max(8, min(32, block_h // 16))


def tiles(hidden: int, x: Tensor) -> dict:
    """The launch's tiles. One software-pipelining stage (num_stages=1): the forward's K loop stages four
    BLOCK_K x BLOCK_H tiles of W_hh in shared memory, and Triton's default of 3 stages needed 278 KB at
    BLOCK_H = 256 in float32 (over the 227 KB a block may have; it failed so on an H200, 2026-11-30). With one
    stage, ptxas for sm_90 reports at most 133 KB up to BLOCK_H = 1024 with BLOCK_K = 32, and 132 KB at 2048
    with BLOCK_K = 16 (tests/test_lstm_plus.py compiles each)."""
    if hidden > MAX_HIDDEN:
        raise ValueError(f"the Triton engine's lstm_plus kernels take hidden_size up to {MAX_HIDDEN} (a program holds "
                         f"whole rows), got {hidden}; use engine='reference' on the GPU for larger layers")
    interpreted = kernels().INTERPRETED
    block_h = stock.pow2(hidden)
    return dict(PRECISION=stock.precision(x), UPCAST=interpreted and x.dtype != torch.float32, BLOCK_B=BLOCK_B,
                BLOCK_H=block_h, BLOCK_K=BLOCK_K if block_h <= 1024 else 16, num_warps=num_warps(block_h),
                num_stages=1)


def forward(config: str, xp: Tensor, batch_sizes, states: list[Tensor], params: list[Tensor], masks: list[Tensor],
            reverse: bool):
    """out (N, H), [h_n, c_n], saved (saved_shapes)."""
    flags = cell.parse(config)
    batch_sizes = tuple(int(b) for b in batch_sizes)
    ln, zon_c = "ln" in flags, "zoneout_c" in flags
    h0, c0 = states
    (batch, hidden), n = c0.shape, xp.shape[0]
    f32 = torch.float32
    # the state h lives in out's rows, which the next step reads: float32 for 16-bit inputs too (rounded once, at
    # the end), so the rounding of h does not compound over steps (the layer norms amplify it)
    out, h_n, c_n = empty(xp, n, hidden, dtype=f32), empty(xp, batch, hidden, dtype=f32), empty(xp, batch, hidden)
    cs, gates = empty(xp, n, hidden, dtype=f32), empty(xp, n, 4 * hidden, dtype=f32)
    ct = empty(xp, n, hidden, dtype=f32) if zon_c else xp.new_empty(0, dtype=f32)
    zn = empty(xp, n, 4 * hidden, dtype=f32) if ln else xp.new_empty(0, dtype=f32)
    stats = empty(xp, n, 3, dtype=f32) if ln else xp.new_empty(0, dtype=f32)
    sizes, offsets = stock.layout(batch_sizes, xp.device)
    xp = xp.detach().contiguous()
    args = [xp, *(c(p, xp) for p in params), *(c(m, xp) for m in masks), c(h0, xp), c(c0, xp), out, cs,
            ct if zon_c else cs, gates, zn if ln else gates, stats if ln else gates, h_n, c_n, sizes, offsets]
    kernels().lstm_plus_forward[(math.ceil(batch / BLOCK_B),)](
        *args, len(batch_sizes), hidden, REVERSE=reverse, HAS_BIAS="bias" in flags, LN=ln,
        PEEP="peephole" in flags, RDROP="rdrop" in flags, ZH="zoneout_h" in flags, ZC=zon_c, **tiles(hidden, xp))
    return out.to(xp.dtype), [h_n.to(xp.dtype), c_n], [cs, ct, gates, zn, stats]


def backward(config: str, xp: Tensor, batch_sizes, states: list[Tensor], params: list[Tensor], masks: list[Tensor],
             reverse: bool, out: Tensor, saved, d_out: Tensor, d_states_n: list[Tensor]):
    """BPTT: dxp (N, 4H), [dh0, dc0], the gradient of every param (empty for an absent one)."""
    flags = cell.parse(config)
    batch_sizes = tuple(int(b) for b in batch_sizes)
    ln, zon_c = "ln" in flags, "zoneout_c" in flags
    cs, ct, gates, zn, stats = saved
    h0, c0 = states
    (batch, hidden), n = c0.shape, xp.shape[0]
    w_hh, b_hh, ln_w, ln_b, lnc_w, lnc_b, peep = params
    programs = math.ceil(batch / BLOCK_B)
    da = empty(xp, n, 4 * hidden)  # (N, 4H) = dxp
    # the gradient of z = hm W_hh^T in float32 (the backward product reads it; da itself without ln in float32)
    dz = empty(xp, n, 4 * hidden, dtype=torch.float32) if ln or xp.dtype != torch.float32 else da
    partial = empty(xp, programs, 5 * hidden, dtype=torch.float32)  # per program: [dp_i, dp_f, dp_o, dw_c, db_c]
    d_state = d_states_n[0].detach().to(torch.float32, copy=True).contiguous()  # (B, H): d_h_n in, dh_0 out
    dc_state = d_states_n[1].detach().to(torch.float32, copy=True).contiguous()  # (B, H): d_c_n in, dc_0 out
    sizes, offsets = stock.layout(batch_sizes, xp.device)
    args = [c(w_hh, xp), c(ln_w, xp), c(lnc_w, xp), c(lnc_b, xp), c(peep, xp), *(c(m, xp) for m in masks),
            c(c0, xp), cs, ct if zon_c else cs, gates, zn if ln else gates, stats if ln else gates,
            d_out.detach().contiguous(), d_state, dc_state, da, dz, partial, sizes, offsets]
    kernels().lstm_plus_backward[(programs,)](
        *args, len(batch_sizes), hidden, REVERSE=reverse, LN=ln, PEEP="peephole" in flags, RDROP="rdrop" in flags,
        ZH="zoneout_h" in flags, ZC=zon_c, **tiles(hidden, xp))
    h_prev = stock.previous_states(h0.detach(), out.detach(), batch_sizes, reverse)  # (N, H)
    if "rdrop" in flags:
        h_prev = h_prev * masks[0].index_select(0, batch_rows(batch_sizes, xp.device))  # HM_prev
    dtype = xp.dtype
    small = partial.sum(0).to(dtype)  # (5H)
    grads = [(dz.t() @ h_prev.float()).to(dtype),  # dW_hh = sum_t dz_t^T hm_{t-1}  (4H, H)
             stock.bias_sum(da) if "bias" in flags else torch.zeros_like(b_hh)]
    if ln:
        grads += [(da.float() * zn).sum(0).to(dtype), stock.bias_sum(da), small[3 * hidden:4 * hidden].clone(),
                  small[4 * hidden:].clone()]
    else:
        grads += [torch.zeros_like(p) for p in (ln_w, ln_b, lnc_w, lnc_b)]
    grads.append(small[:3 * hidden].clone() if "peephole" in flags else torch.zeros_like(peep))
    return da, [d_state.to(h0.dtype), dc_state.to(c0.dtype)], grads


def batch_rows(batch_sizes: tuple[int, ...], device) -> Tensor:
    """The sequence (state row) of each packed row. (N,)"""
    return torch.cat([torch.arange(bs, device=device) for bs in batch_sizes])
