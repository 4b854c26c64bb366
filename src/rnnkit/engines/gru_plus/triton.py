"""GRU+ Triton engine: the reference engine's algorithm as Triton kernels (triton_kernels.py), two launches per
step forward and two per step backward, launched from Python (on CUDA captured once per shape as a CUDA
graph and replayed, through rnnkit.engines.triton's `launch`).

What stays in torch: dW_hh = dG^T HM, the parameter sums (rnnkit.engines.gru_plus.reference's param_grads)
and HM, the previous states times the rdrop rows. Inputs float32, bfloat16 or float16 (the stock engine's
dtypes and precision: float32 accumulation, float32 activations saved). Under TRITON_INTERPRET=1 the
kernels run on CPU tensors (the tests); tile sizes there are small so that the tests' small sizes still
loop over several tiles and chunks. No tuning: the tiles are plain powers of two.

Memory beyond the reference engine's saved tensors: g (N, 3H) float32 is written even without layer norm
(then a scratch buffer, dropped after the forward), and the backward keeps dhp (N, 3H) float32 for the
parameter sums beside dg (N, 3H) in the input dtype for the products.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import triton as stock
from . import reference
from .reference import mask_rows, param_grads, unpack

BLOCK_B = 16  # rows per program: tl.dot needs at least 16


def kernels():
    """The kernel module, imported on first use (decorating the kernels reads TRITON_INTERPRET then)."""
    from . import triton_kernels
    return triton_kernels


def why_not(x: Tensor) -> str | None:
    return stock.why_not(x)


def saved_shapes(config, n, states, params, dtype):
    """gates (N, 4H), g_hat (N, 3H) and rstd (N,) with "ln" (else empty), float32 whatever the input dtype."""
    return [(shape, torch.float32) for shape, _ in reference.saved_shapes(config, n, states, params, dtype)]


def empty(like: Tensor, *shape: int, dtype: torch.dtype | None = None) -> Tensor:
    """Every buffer the kernels write to comes from here (tests poison it with NaN: an unwritten element fails)."""
    return like.new_empty(shape, dtype=dtype)


def tiles(x: Tensor) -> dict:
    """BLOCK_N: columns of g per product program; BLOCK_H: units per gates chunk; BLOCK_K: reduction tile."""
    if x.device.type == "cuda":
        return dict(BLOCK_N=64, BLOCK_H=64, BLOCK_K=64)
    return dict(BLOCK_N=32, BLOCK_H=16, BLOCK_K=32)  # the interpreter: small tiles, so tests cover the loops


def precision(x: Tensor) -> dict:
    return dict(PRECISION=stock.precision(x), UPCAST=kernels().INTERPRETED and x.dtype != torch.float32)


def c(t: Tensor) -> Tensor:
    return t.detach().contiguous()


def filled(t: Tensor | None, size: int, value: float, like: Tensor) -> Tensor:
    """t, or `size` copies of `value` where it is absent (the kernels always read b_hh, gamma, beta)."""
    return c(t) if t is not None else torch.full((size,), value, dtype=like.dtype, device=like.device)


def run(body, tensors: dict, inputs: tuple, outputs: tuple, key: tuple) -> None:
    plan = stock.Plan(False, BLOCK_B, 0, 0, False, 4)  # stepwise: launch() may capture it as a CUDA graph
    stock.launch(body, tensors, inputs, outputs, key, plan)


def forward(config, xp, batch_sizes, states, params, masks, reverse):
    """out (N, H), [h_n (B, H)], saved (gates (N, 4H), g_hat (N, 3H) or empty, rstd (N,) or empty), float32 saved."""
    opts, w_hh, b_hh, ln, rdrop, zoneout = unpack(config, params, masks)
    batch_sizes = tuple(int(b) for b in batch_sizes)
    h0 = states[0]
    n, batch, hidden = xp.shape[0], h0.shape[0], h0.shape[1]
    gamma, beta = ln if ln is not None else (None, None)
    f32 = torch.float32
    out, h_n = empty(xp, n, hidden), empty(xp, batch, hidden)
    cache, g = empty(xp, n, 4 * hidden, dtype=f32), empty(xp, n, 3 * hidden, dtype=f32)  # g: ĝ with "ln"
    rstd = empty(xp, n, dtype=f32) if opts.ln else xp.new_empty(0, dtype=f32)
    xp_ = c(xp)
    # unused pointer arguments get a real tensor (xp): no kernel should see the null pointer of an empty one
    t = dict(xp=xp_, w_hh=c(w_hh), b_hh=filled(b_hh, 3 * hidden, 0.0, xp), ln_w=filled(gamma, 3 * hidden, 1.0, xp),
             ln_b=filled(beta, 3 * hidden, 0.0, xp), rdrop=c(rdrop) if rdrop is not None else xp_,
             zoneout=c(zoneout) if zoneout is not None else xp_, h0=c(h0), out=out, h_n=h_n, g=g, cache=cache,
             rstd=rstd if opts.ln else cache)
    sizes, offsets = stock.layout(batch_sizes, xp.device)
    tile, prec = tiles(xp), precision(xp)
    num_steps = len(batch_sizes)

    def body(t):
        K = kernels()
        for k, bs in stock.steps_in_order(batch_sizes, reverse, False):
            rows = math.ceil(bs / BLOCK_B)
            K.forward_product[(rows, math.ceil(3 * hidden / tile["BLOCK_N"]))](
                t["w_hh"], t["rdrop"], t["h0"], t["out"], t["g"], sizes, offsets, num_steps, k, hidden,
                REVERSE=reverse, RDROP=opts.rdrop, **prec, BLOCK_B=BLOCK_B, BLOCK_N=tile["BLOCK_N"],
                BLOCK_K=tile["BLOCK_K"])
            K.forward_gates[(rows,)](
                t["xp"], t["b_hh"], t["ln_w"], t["ln_b"], t["zoneout"], t["h0"], t["out"], t["h_n"], t["g"],
                t["cache"], t["rstd"], sizes, offsets, num_steps, k, hidden,
                REVERSE=reverse, LN=opts.ln, ZONEOUT=opts.zoneout, EPS=1e-5, UPCAST=prec["UPCAST"], BLOCK_B=BLOCK_B,
                BLOCK_H=tile["BLOCK_H"])

    run(body, t, ("xp", "w_hh", "b_hh", "ln_w", "ln_b", "rdrop", "zoneout", "h0"),
        ("out", "h_n", "g", "cache") + ("rstd",) * opts.ln, ("gru_plus_forward", batch_sizes, reverse, opts))
    return out, [h_n], (cache, g if opts.ln else xp.new_empty(0, dtype=f32), rstd)


def backward(config, xp, batch_sizes, states, params, masks, reverse, out, saved, d_out, d_states_n):
    """BPTT for `forward`: (dxp (N, 3H), [dh0 (B, H)], [dW_hh, db_hh, dgamma, dbeta])."""
    opts, w_hh, b_hh, ln, rdrop, zoneout = unpack(config, params, masks)
    batch_sizes = tuple(int(b) for b in batch_sizes)
    cache, g_hat, rstd = saved
    h0 = states[0]
    n, hidden = xp.shape[0], h0.shape[1]
    gamma = ln[0] if ln is not None else None
    dxp, dg = empty(xp, n, 3 * hidden), empty(xp, n, 3 * hidden)  # dg: the product operand, input dtype
    dhp = empty(xp, n, 3 * hidden, dtype=torch.float32)
    d_state = d_states_n[0].detach().to(torch.float32, copy=True)  # (B, H): d_h_n in, dh_0 out
    xp_ = c(xp)
    t = dict(w_hh=c(w_hh), ln_w=filled(gamma, 3 * hidden, 1.0, xp), rdrop=c(rdrop) if rdrop is not None else xp_,
             zoneout=c(zoneout) if zoneout is not None else xp_, h0=c(h0), out=c(out), cache=cache,
             g_hat=g_hat if opts.ln else cache, rstd=rstd if opts.ln else cache, d_out=c(d_out), d_state=d_state,
             dxp=dxp, dhp=dhp, dg=dg)
    sizes, offsets = stock.layout(batch_sizes, xp.device)
    tile, prec = tiles(xp), precision(xp)
    num_steps = len(batch_sizes)

    def body(t):
        K = kernels()
        for k, bs in stock.steps_in_order(batch_sizes, reverse, True):
            rows = math.ceil(bs / BLOCK_B)
            K.backward_gates[(rows,)](
                t["ln_w"], t["zoneout"], t["h0"], t["out"], t["cache"], t["g_hat"], t["rstd"], t["d_out"],
                t["d_state"], t["dxp"], t["dhp"], t["dg"], sizes, offsets, num_steps, k, hidden,
                REVERSE=reverse, LN=opts.ln, ZONEOUT=opts.zoneout, UPCAST=prec["UPCAST"], BLOCK_B=BLOCK_B,
                BLOCK_H=tile["BLOCK_H"])
            K.backward_product[(rows, math.ceil(hidden / tile["BLOCK_H"]))](
                t["w_hh"], t["rdrop"], t["dg"], t["d_state"], sizes, offsets, num_steps, k, hidden,
                REVERSE=reverse, RDROP=opts.rdrop, **prec, BLOCK_B=BLOCK_B, BLOCK_H=tile["BLOCK_H"],
                BLOCK_K=tile["BLOCK_K"])

    run(body, t, ("w_hh", "ln_w", "rdrop", "zoneout", "h0", "out", "cache", "g_hat", "rstd", "d_out", "d_state"),
        ("d_state", "dxp", "dhp", "dg"), ("gru_plus_backward", batch_sizes, reverse, opts))
    hm = stock.previous_states(h0, out, batch_sizes, reverse)  # (N, H) the state each step started from
    if rdrop is not None:
        hm = hm * mask_rows(rdrop, batch_sizes)
    d_params = param_grads(opts, params, dhp, dg, hm.to(dg.dtype), g_hat if opts.ln else None)
    return dxp, [d_state.to(h0.dtype)], d_params
