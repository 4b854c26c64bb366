r"""Triton kernels of minGRU / minLSTM: the recurrence h_t = a_t h_{t-1} + b_t as a blocked associative scan.

Program (j, hb) owns sequence j and hidden units hb*BLOCK_H + [0, BLOCK_H). It walks time in chunks
of BLOCK_T steps; in a chunk it computes (a, b) of every step from xp, scans the pairs with

    combine((a1, b1), (a2, b2)) = (a1 a2, a2 b1 + b2)       (apply step 1, then step 2)

(tl.associative_scan along the time axis: log2(BLOCK_T) levels instead of BLOCK_T dependent steps),
and applies the result to the state carried in from the previous chunk: h = A h_carry + B. The scan
is in linear space: products of a in (0, 1) only shrink towards 0 (an underflow to 0 is the exact
limit), and nothing cancels, so float32 is accurate at any length (unlike the log-space form).

`rows` (T, B) int32 maps (processing position p, sequence j) to a packed row of xp, or -1 past the
sequence's end; such steps have a = 1, b = 0, so the state carries through to the last position
(h_n). Processing position p is time p, or time L_j - 1 - p in reverse (see reference.py's layout).

Backward: G_p = c_p + a_{p+1} G_{p+1} (c = dout, G_T = dh_n) is the same scan run from the end: the
chunk's positions are loaded in decreasing order, so element q holds position p = end - 1 - q with
coefficient alpha_q = a_{p+1} (1 at p = T-1 and on padding). Scanning down to position -1, whose
coefficient is a_0 and whose c is 0, leaves dh_0 = a_0 G_0 as the final carry.

Gate arithmetic is float32 whatever the input dtype; sigmoid and softplus are built from exp and
log (libdevice's log1p and tanh do not run under TRITON_INTERPRET=1).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def sigmoid(x):
    e = tl.exp(-tl.abs(x))
    return tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def softplus(x):
    return tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def combine(a1, b1, a2, b2):
    return a1 * a2, a2 * b1 + b2


@triton.jit
def load_gates(xp_ptr, r, ok, cols, H: tl.constexpr, MINLSTM: tl.constexpr):
    """(u, k_h) at packed rows r (BLOCK_T,) and units cols (BLOCK_H,): a = sigmoid(u). Zeros where not ok."""
    width = 3 * H if MINLSTM else 2 * H
    base = xp_ptr + tl.where(ok, r, 0).to(tl.int64)[:, None] * width + cols[None, :]
    m = ok[:, None] & (cols < H)[None, :]
    if MINLSTM:
        k_f = tl.load(base, mask=m, other=0.0).to(tl.float32)
        k_i = tl.load(base + H, mask=m, other=0.0).to(tl.float32)
        k_h = tl.load(base + 2 * H, mask=m, other=0.0).to(tl.float32)
        u = softplus(-k_i) - softplus(-k_f)  # log sigmoid(k_f) - log sigmoid(k_i)
    else:
        u = -tl.load(base, mask=m, other=0.0).to(tl.float32)
        k_h = tl.load(base + H, mask=m, other=0.0).to(tl.float32)
    return u, k_h


@triton.jit
def last_row(x, q, BLOCK_T: tl.constexpr):
    return tl.sum(tl.where((q == BLOCK_T - 1)[:, None], x, 0.0), axis=0)


@triton.jit
def minimal_forward(xp_ptr, rows_ptr, h0_ptr, out_ptr, hn_ptr, T, B, H: tl.constexpr, MINLSTM: tl.constexpr,
                    BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr):
    j = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    cmask = cols < H
    q = tl.arange(0, BLOCK_T)
    carry = tl.load(h0_ptr + j * H + cols, mask=cmask, other=0.0).to(tl.float32)  # (BLOCK_H,)
    for start in range(0, T, BLOCK_T):
        p = start + q
        r = tl.load(rows_ptr + p * B + j, mask=p < T, other=-1)
        ok = r >= 0
        u, k_h = load_gates(xp_ptr, r, ok, cols, H, MINLSTM)
        g = tl.where(k_h >= 0, k_h + 0.5, sigmoid(k_h))
        a = tl.where(ok[:, None], sigmoid(u), 1.0)  # padding keeps the state: a = 1, b = 0
        b = tl.where(ok[:, None], sigmoid(-u) * g, 0.0)
        big_a, big_b = tl.associative_scan((a, b), 0, combine)
        h = big_a * carry[None, :] + big_b  # (BLOCK_T, BLOCK_H)
        dst = out_ptr + tl.where(ok, r, 0).to(tl.int64)[:, None] * H + cols[None, :]
        tl.store(dst, h.to(out_ptr.dtype.element_ty), mask=ok[:, None] & cmask[None, :])
        carry = last_row(h, q, BLOCK_T)
    tl.store(hn_ptr + j * H + cols, carry.to(hn_ptr.dtype.element_ty), mask=cmask)


@triton.jit
def minimal_backward(xp_ptr, rows_ptr, h0_ptr, out_ptr, dout_ptr, dhn_ptr, dxp_ptr, dh0_ptr, T, B,
                     H: tl.constexpr, MINLSTM: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr):
    j = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    cmask = cols < H
    q = tl.arange(0, BLOCK_T)
    carry = tl.load(dhn_ptr + j * H + cols, mask=cmask, other=0.0).to(tl.float32)  # G at position T
    h_first = tl.load(h0_ptr + j * H + cols, mask=cmask, other=0.0).to(tl.float32)
    width = 3 * H if MINLSTM else 2 * H
    for chunk in range(0, tl.cdiv(T + 1, BLOCK_T)):  # positions T-1 down to -1
        p = T - 1 - chunk * BLOCK_T - q  # decreasing
        r = tl.load(rows_ptr + p * B + j, mask=(p >= 0) & (p < T), other=-1)
        ok = r >= 0
        r_next = tl.load(rows_ptr + (p + 1) * B + j, mask=(p + 1 >= 0) & (p + 1 < T), other=-1)
        ok_next = r_next >= 0
        u_next, _ = load_gates(xp_ptr, r_next, ok_next, cols, H, MINLSTM)
        alpha = tl.where(ok_next[:, None], sigmoid(u_next), 1.0)  # a_{p+1}; 1 past the end
        m = ok[:, None] & cmask[None, :]
        rr = tl.where(ok, r, 0).to(tl.int64)[:, None]
        c = tl.load(dout_ptr + rr * H + cols[None, :], mask=m, other=0.0).to(tl.float32)
        big_a, big_b = tl.associative_scan((alpha, c), 0, combine)
        grad = big_a * carry[None, :] + big_b  # G_p (BLOCK_T, BLOCK_H)
        carry = last_row(grad, q, BLOCK_T)
        # h_{p-1}: the previous position's output row, or h_0 at p = 0
        r_prev = tl.load(rows_ptr + (p - 1) * B + j, mask=ok & (p >= 1), other=-1)
        h_prev = tl.load(out_ptr + tl.where(r_prev >= 0, r_prev, 0).to(tl.int64)[:, None] * H + cols[None, :],
                         mask=(r_prev >= 0)[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        h_prev = tl.where((p == 0)[:, None], h_first[None, :], h_prev)
        u, k_h = load_gates(xp_ptr, r, ok, cols, H, MINLSTM)
        a, one_minus_a = sigmoid(u), sigmoid(-u)
        s = sigmoid(k_h)
        g = tl.where(k_h >= 0, k_h + 0.5, s)
        dg = tl.where(k_h >= 0, 1.0, s * (1.0 - s))
        du = grad * (h_prev - g) * a * one_minus_a  # da - db g, through a and through b = (1 - a) g
        dk_h = grad * one_minus_a * dg
        dst = dxp_ptr + rr * width + cols[None, :]
        ty = dxp_ptr.dtype.element_ty
        if MINLSTM:
            src = xp_ptr + rr * width + cols[None, :]
            k_f = tl.load(src, mask=m, other=0.0).to(tl.float32)
            k_i = tl.load(src + H, mask=m, other=0.0).to(tl.float32)
            tl.store(dst, (du * sigmoid(-k_f)).to(ty), mask=m)
            tl.store(dst + H, (-du * sigmoid(-k_i)).to(ty), mask=m)
            tl.store(dst + 2 * H, dk_h.to(ty), mask=m)
        else:
            tl.store(dst, (-du).to(ty), mask=m)
            tl.store(dst + H, dk_h.to(ty), mask=m)
    tl.store(dh0_ptr + j * H + cols, carry.to(dh0_ptr.dtype.element_ty), mask=cmask)  # a_0 G_0
