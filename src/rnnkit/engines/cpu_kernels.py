"""Numba-compiled time loops of the CPU engine: forward and hand-derived BPTT per cell family.

The math is rnnkit.cells' step math, the loop is rnnkit.engines.reference's, and the tests
chain the two. What differs is how it runs:

- the whole time loop is one compiled call, so a step costs no Python or dispatch overhead;
- each step's recurrent product runs in register tiles written in LLVM IR (small_product.py),
  or for large products in torch's own BLAS (blas.py), in place, on the rows of the sequences
  running at that step (packed batches spend nothing on padding);
- the gate arithmetic of a step is one fused loop over (sequence, unit) that LLVM vectorises.
  It vectorises only with error_model="numpy" (Python's model puts a zero-division check on
  every division) and with activation functions that are plain arithmetic: libm's exp and
  tanh do not vectorise. float32 therefore uses the rational tanh below, evaluated in float32
  (within 6 ulp); float64 keeps libm so that it matches torch to 1e-10.

Every kernel runs the processing steps k0 <= k < k1 (k counts steps in the order they run).
With own_product=True it forms each step's recurrent product itself; with False the caller
runs one step at a time and forms it (forward: fills hp; backward: adds the product to dh
after the step), which lets large products go to a faster library than the one callable here.

Layouts are those of the reference engine: x, xp, out and the caches are packed time-major
rows (N, .); batch_sizes[t] rows start at offsets[t]; states are (B, .) and rows beyond
batch_sizes[t] are not touched at step t. State arrays are updated in place: on entry they
hold the initial state (or, in backward, the gradient at the final state) and on exit the
final state (the gradient at the initial state).
"""

from __future__ import annotations

import math

import numpy as np
from numba import carray, cfunc, njit, types
from numba.extending import overload

from .blas import gemm
from .small_product import packed_product, product

# fastmath without nnan/ninf: a NaN that enters the loop must come out as NaN (no silent repair)
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
KERNEL = dict(cache=True, fastmath=FASTMATH, error_model="numpy", nogil=True)

# tanh(x) = x P(x^2) / Q(x^2) on |x| <= 9 (beyond, tanh rounds to +-1 in float32). Fitted by
# iteratively reweighted least squares on relative error: max relative error 1.4e-9 evaluated in
# float64 (tests/test_cpu_engine.py checks it), far below float32's 6e-8 rounding; the float32 kernels evaluate
# it in float32 (rational_tanh32), which rounding puts within 6 ulp.
TANH_P = (1.0, 0.13210027808919785, 0.0031669763917009147, 2.2205019385131047e-06,
          -2.821192657983773e-07, -1.0454174999497426e-09, -3.798014612208727e-13)
TANH_Q = (1.0, 0.46543361142253183, 0.024978180522683505, 0.00023871955683006786,
          -1.9820707213009453e-06, -2.1773391797024717e-08, -2.9559817360012014e-11)
TANH_CLAMP = 9.0


@njit(fastmath=FASTMATH, error_model="numpy", cache=True)
def rational_tanh(x):
    """tanh in plain float64 arithmetic, so a loop of it vectorises; NaN stays NaN."""
    x = TANH_CLAMP if x > TANH_CLAMP else x
    x = -TANH_CLAMP if x < -TANH_CLAMP else x
    s = x * x
    p = TANH_P[0] + s * (TANH_P[1] + s * (TANH_P[2] + s * (TANH_P[3] + s * (TANH_P[4] + s * (TANH_P[5] + s * TANH_P[6])))))
    q = TANH_Q[0] + s * (TANH_Q[1] + s * (TANH_Q[2] + s * (TANH_Q[3] + s * (TANH_Q[4] + s * (TANH_Q[5] + s * TANH_Q[6])))))
    return x * p / q


@njit(fastmath=FASTMATH, error_model="numpy", cache=True)
def rational_tanh32(x):
    """rational_tanh's formula evaluated in float32: twice the vector lanes of float64 and a cheaper division,
    which makes the gate arithmetic of a step 1.4-1.6x faster (measured on an AMD Zen 4). Rounding inside
    costs accuracy: at most 6 ulp from tanh over float32's range (float64's evaluation: 0.5 ulp), far inside
    the float32 tolerances the engine is tested to (rnnkit.testing)."""
    c = np.float32(TANH_CLAMP)
    x = c if x > c else x
    x = -c if x < -c else x
    s = x * x
    p = np.float32(TANH_P[0]) + s * (np.float32(TANH_P[1]) + s * (np.float32(TANH_P[2]) + s * (
        np.float32(TANH_P[3]) + s * (np.float32(TANH_P[4]) + s * (np.float32(TANH_P[5]) + s * np.float32(TANH_P[6]))))))
    q = np.float32(TANH_Q[0]) + s * (np.float32(TANH_Q[1]) + s * (np.float32(TANH_Q[2]) + s * (
        np.float32(TANH_Q[3]) + s * (np.float32(TANH_Q[4]) + s * (np.float32(TANH_Q[5]) + s * np.float32(TANH_Q[6]))))))
    return x * p / q


def tanh(x):
    """Dtype-dispatched tanh for the kernels (implemented by the overload below)."""
    raise NotImplementedError("only callable from compiled code")


def sigmoid(x):
    """Dtype-dispatched logistic sigmoid for the kernels."""
    raise NotImplementedError("only callable from compiled code")


@overload(tanh, inline="always", fastmath=FASTMATH)
def _tanh(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        return lambda x: rational_tanh32(x)
    return lambda x: math.tanh(x)


@overload(sigmoid, inline="always", fastmath=FASTMATH)
def _sigmoid(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:  # sigmoid(x) = (1 + tanh(x / 2)) / 2
        return lambda x: np.float32(0.5) + np.float32(0.5) * rational_tanh32(np.float32(0.5) * x)
    return lambda x: 1.0 / (1.0 + math.exp(-x))


@njit(inline="always")
def step_at(k, num_steps, reverse):
    """Time index of the k-th step processed."""
    return num_steps - 1 - k if reverse else k


@njit(inline="always")
def prev_row(t, b, batch_sizes, offsets, reverse):
    """Packed row holding the state that sequence b started step t from, or -1 for the initial state."""
    s = t + 1 if reverse else t - 1
    if 0 <= s < batch_sizes.shape[0] and b < batch_sizes[s]:
        return offsets[s] + b
    return -1


@njit(inline="always")
def gather_prev(t, bs, batch_sizes, offsets, reverse, seq, init, dest, off):
    """dest[off + b] = the state row b started step t from (a row of seq, or of init)."""
    for b in range(bs):
        pr = prev_row(t, b, batch_sizes, offsets, reverse)
        src = seq[pr] if pr >= 0 else init[b]
        row = dest[off + b]
        for j in range(row.shape[0]):
            row[j] = src[j]


# Up to this many multiply-adds a step's product runs in small_product's register tiles rather than
# through sgemm_. Measured on a Zen 4 (one thread, float32): the tiles run 110-116 GF/s from 4x64x256
# to 64x256x1024 (16.8M), where MKL's sgemm_ runs 35-89 GF/s; larger steps go stepwise to oneDNN
# anyway (cpu.STEPWISE_MIN_MACS). Above it (float64 or no oneDNN) BLAS keeps them.
TILE_MAX_MACS = 1 << 24


@njit(inline="always")
def product_from_state(fn, h, w, w_packed, hp, bs):
    """hp[:bs] = h[:bs] W^T for W (G, P): a step's recurrent product (or the LSTM projection).

    w_packed is small_product.pack(W), or (0, 0, 0) where too few steps repay packing: then BLAS."""
    g, p = w.shape
    if w_packed.shape[0] > 0 and bs * g * p <= TILE_MAX_MACS:
        packed_product(h, w_packed, hp, bs, g)
        return
    gemm(fn, True, False, g, bs, p, hp.dtype.type(1), w, p, h, p, hp.dtype.type(0), hp, g)


@njit(inline="always")
def product_to_prev(fn, d, w, dh, bs, accumulate):
    """dh[:bs] = d[:bs] W (or += it, for GRU's two parts) for W (K, P): the gradient a step sends back.

    d's rows may be longer than K (a column slice), hence the leading dimension from its strides.
    W's rows are already the tiles' B operand, so no packing here."""
    k, p = w.shape
    if bs * k * p <= TILE_MAX_MACS:
        product(d, w, dh, bs, accumulate)
        return
    beta = dh.dtype.type(1) if accumulate else dh.dtype.type(0)
    gemm(fn, False, False, p, bs, k, dh.dtype.type(1), w, p, d, d.strides[0] // d.itemsize, beta, dh, p)


# ---------------------------------------------------------------- RNN


@njit(**KERNEL)
def rnn_forward(fn, relu, xp, w_hh, w_hh_packed, b_hh, h, batch_sizes, offsets, reverse, out, hp, k0, k1, own_product):
    """out (N, H); h (B, H) initial -> final; hp (B, H) scratch; w_hh_packed = small_product.pack(W_hh), or
    (0, 0, 0)."""
    num_steps, hidden = batch_sizes.shape[0], h.shape[1]
    zero = xp.dtype.type(0)
    for k in range(k0, k1):
        t = step_at(k, num_steps, reverse)
        bs, off = batch_sizes[t], offsets[t]
        if own_product:
            product_from_state(fn, h, w_hh, w_hh_packed, hp, bs)
        for b in range(bs):
            x_row, h_row, hp_row, o_row = xp[off + b], h[b], hp[b], out[off + b]
            for j in range(hidden):
                pre = x_row[j] + hp_row[j] + b_hh[j]
                v = (pre if pre > zero else zero) if relu else tanh(pre)
                h_row[j] = v
                o_row[j] = v


@njit(**KERNEL)
def rnn_backward(fn, relu, w_hh, h0, out, dout, dh, batch_sizes, offsets, reverse, dpre, hprev, k0, k1, own_product):
    """dpre (N, H) = dxp = dhp; hprev (N, H) the state each step started from; dh (B, H) final -> initial."""
    num_steps, hidden = batch_sizes.shape[0], h0.shape[1]
    one, zero = out.dtype.type(1), out.dtype.type(0)
    for k in range(k0, k1):
        t = step_at(k, num_steps, not reverse)  # backward visits the steps in the opposite order
        bs, off = batch_sizes[t], offsets[t]
        gather_prev(t, bs, batch_sizes, offsets, reverse, out, h0, hprev, off)
        for b in range(bs):
            h_row, do_row, dh_row, d_row = out[off + b], dout[off + b], dh[b], dpre[off + b]
            for j in range(hidden):
                g = dh_row[j] + do_row[j]  # from the output at t and from step t+1
                v = h_row[j]
                d_row[j] = g * (one if v > zero else zero) if relu else g * (one - v * v)
        if own_product:
            product_to_prev(fn, dpre[off:], w_hh, dh, bs, False)


# ---------------------------------------------------------------- LSTM


@njit(**KERNEL)
def lstm_forward(fn, xp, w_hh, w_hh_packed, b_hh, w_hr, w_hr_packed, h, c, batch_sizes, offsets, reverse, out, cs,
                 gates, hp, m, save, k0, k1, own_product):
    """out (N, P), cs (N, H), gates (N, 4H) = [i, f, g, o]; h (B, P), c (B, H) initial -> final;
    hp (B, 4H) and m (B, H) scratch. w_hr is (P, H), or (0, H) without a projection; the packed weights are
    small_product.pack's, or (0, 0, 0). save=False (no backward to come): cs and gates are (B, .) scratch,
    and not written."""
    num_steps, hidden = batch_sizes.shape[0], c.shape[1]
    proj = w_hr.shape[0] > 0
    for k in range(k0, k1):
        t = step_at(k, num_steps, reverse)
        bs, off = batch_sizes[t], offsets[t]
        if own_product:
            product_from_state(fn, h, w_hh, w_hh_packed, hp, bs)
        for b in range(bs):
            row = off + b if save else b
            x_row, hp_row, g_row, c_row, cs_row = xp[off + b], hp[b], gates[row], c[b], cs[row]
            m_row = m[b] if proj else h[b]  # without a projection h_t = m_t: written in place (hp holds h W^T)
            for j in range(hidden):
                i = sigmoid(x_row[j] + hp_row[j] + b_hh[j])
                f = sigmoid(x_row[hidden + j] + hp_row[hidden + j] + b_hh[hidden + j])
                g = tanh(x_row[2 * hidden + j] + hp_row[2 * hidden + j] + b_hh[2 * hidden + j])
                o = sigmoid(x_row[3 * hidden + j] + hp_row[3 * hidden + j] + b_hh[3 * hidden + j])
                c_new = f * c_row[j] + i * g
                c_row[j] = c_new
                m_row[j] = o * tanh(c_new)
                if save:  # (without a backward to come, nothing reads them: not written)
                    cs_row[j] = c_new
                    g_row[j], g_row[hidden + j], g_row[2 * hidden + j], g_row[3 * hidden + j] = i, f, g, o
        if proj:  # h[:bs] = m W_hr^T
            product_from_state(fn, m, w_hr, w_hr_packed, h, bs)
        for b in range(bs):  # (element loops: a slice assignment costs Numba ~0.1 us of setup per row)
            h_row, o_row = h[b], out[off + b]
            for j in range(h_row.shape[0]):
                o_row[j] = h_row[j]


@njit(**KERNEL)
def lstm_backward(fn, w_hh, w_hr, h0, c0, out, cs, gates, dout, dh, dc, batch_sizes, offsets, reverse,
                  dgates, hprev, dh_total, m_all, dm, k0, k1, own_product):
    """dgates (N, 4H) = dxp = dhp; hprev (N, P); dh_total (N, P) the total gradient at each output;
    m_all (N, H) the projection's input (written only with a projection); dm (B, H) scratch.
    dh (B, P) and dc (B, H): gradient at the final states on entry, at the initial states on exit."""
    num_steps, hidden, out_size = batch_sizes.shape[0], c0.shape[1], h0.shape[1]
    proj = w_hr.shape[0] > 0
    one = out.dtype.type(1)
    for k in range(k0, k1):
        t = step_at(k, num_steps, not reverse)
        bs, off = batch_sizes[t], offsets[t]
        gather_prev(t, bs, batch_sizes, offsets, reverse, out, h0, hprev, off)
        for b in range(bs):
            for j in range(out_size):
                dh_total[off + b, j] = dh[b, j] + dout[off + b, j]  # from the output at t and from step t+1
        if proj:  # dm = dh_t W_hr
            product_to_prev(fn, dh_total[off:], w_hr, dm, bs, False)
        for b in range(bs):
            pr = prev_row(t, b, batch_sizes, offsets, reverse)
            c_prev = cs[pr] if pr >= 0 else c0[b]
            g_row, d_row, cs_row, dc_row = gates[off + b], dgates[off + b], cs[off + b], dc[b]
            dm_row = dm[b] if proj else dh_total[off + b]
            for j in range(hidden):
                i, f, g, o = g_row[j], g_row[hidden + j], g_row[2 * hidden + j], g_row[3 * hidden + j]
                tc = tanh(cs_row[j])
                if proj:
                    m_all[off + b, j] = o * tc
                d_m = dm_row[j]
                d_c = dc_row[j] + d_m * o * (one - tc * tc)  # through c_{t+1} and through h_t
                d_row[j] = d_c * g * i * (one - i)
                d_row[hidden + j] = d_c * c_prev[j] * f * (one - f)
                d_row[2 * hidden + j] = d_c * i * (one - g * g)
                d_row[3 * hidden + j] = d_m * tc * o * (one - o)
                dc_row[j] = d_c * f
        if own_product:
            product_to_prev(fn, dgates[off:], w_hh, dh, bs, False)


# ---------------------------------------------------------------- GRU


@njit(**KERNEL)
def gru_forward(fn, xp, w_hh, w_hh_packed, b_hh, h, batch_sizes, offsets, reverse, out, cache, hp, save, k0, k1,
                own_product):
    """out (N, H); cache (N, 4H) = [r, z, n, W_hn h + b_hn]; h (B, H) initial -> final; hp (B, 3H) scratch.
    save=False (no backward to come): cache is (B, 4H) scratch."""
    num_steps, hidden = batch_sizes.shape[0], h.shape[1]
    for k in range(k0, k1):
        t = step_at(k, num_steps, reverse)
        bs, off = batch_sizes[t], offsets[t]
        if own_product:
            product_from_state(fn, h, w_hh, w_hh_packed, hp, bs)
        for b in range(bs):
            x_row, hp_row, h_row, o_row, k_row = xp[off + b], hp[b], h[b], out[off + b], cache[off + b if save else b]
            for j in range(hidden):
                r = sigmoid(x_row[j] + hp_row[j] + b_hh[j])
                z = sigmoid(x_row[hidden + j] + hp_row[hidden + j] + b_hh[hidden + j])
                h_n = hp_row[2 * hidden + j] + b_hh[2 * hidden + j]
                n = tanh(x_row[2 * hidden + j] + r * h_n)
                h_new = n + z * (h_row[j] - n)
                h_row[j] = h_new
                o_row[j] = h_new
                k_row[j], k_row[hidden + j], k_row[2 * hidden + j], k_row[3 * hidden + j] = r, z, n, h_n


@njit(**KERNEL)
def gru_backward(fn, w_hh, h0, out, cache, dout, dh, batch_sizes, offsets, reverse, dxp, dhp_n, hprev, k0, k1,
                 own_product):
    """dxp (N, 3H); dhp_n (N, H) the n third of dhp (its r and z thirds equal dxp's, so they are not stored
    twice); hprev (N, H); dh (B, H) gradient at the final state -> at the initial state."""
    num_steps, hidden = batch_sizes.shape[0], h0.shape[1]
    one = out.dtype.type(1)
    for k in range(k0, k1):
        t = step_at(k, num_steps, not reverse)
        bs, off = batch_sizes[t], offsets[t]
        gather_prev(t, bs, batch_sizes, offsets, reverse, out, h0, hprev, off)
        for b in range(bs):
            k_row, do_row, dh_row, hp_row = cache[off + b], dout[off + b], dh[b], hprev[off + b]
            dx_row, dn_row = dxp[off + b], dhp_n[off + b]
            for j in range(hidden):
                r, z, n, h_n = k_row[j], k_row[hidden + j], k_row[2 * hidden + j], k_row[3 * hidden + j]
                g = dh_row[j] + do_row[j]  # from the output at t and from step t+1
                da_n = g * (one - z) * (one - n * n)
                da_r = da_n * h_n * r * (one - r)
                da_z = g * (hp_row[j] - n) * z * (one - z)
                dx_row[j], dx_row[hidden + j], dx_row[2 * hidden + j] = da_r, da_z, da_n
                dn_row[j] = da_n * r
                dh_row[j] = g * z  # the direct path through z * h
        if own_product:  # dh[:bs] += dhp W_hh = dxp[:, :2H] W_hh[:2H] + dhp_n W_hh[2H:]
            product_to_prev(fn, dxp[off:, :2 * hidden], w_hh[:2 * hidden], dh, bs, True)
            product_to_prev(fn, dhp_n[off:], w_hh[2 * hidden:], dh, bs, True)


# ---------------------------------------------------------------- short no-grad calls: one compiled call
#
# A decoder calls its layer once per step (T=1), and there a step's arithmetic takes a few microseconds
# while the general entry (cpu.infer) spends 30-40 us in Python around it: a torch addmm for the input
# projection, numpy views of about ten tensors, buffers; more than torch.gru spends on its whole call.
# short_call takes data pointers instead (one ctypes call, about 2 us) and does the rest itself: the input
# projection, the scratch buffers and the kernels above. It serves the calls where the general entry
# would run torch's plain product for the input projection and BLAS inside the loop (cpu.small_shape),
# padded, without a projection. Products of one or two rows (a decoder's B=1) are dot products here,
# which read W once at cache speed where sgemm_ spends about 1.5 us more per call (Zen 4: 2.3 against
# 3.6 us for a 1 x 128 by 128 x 384 product); more rows go to sgemm_ as in the general entry. It lives
# in this file so that Numba's cache of it is renewed whenever the kernels it calls change.

SHORT_MODES = {"RNN_TANH": 0, "RNN_RELU": 1, "LSTM": 2, "GRU": 3}
SHORT_GATES = (1, 1, 4, 3)
DOT_MAX_ROWS = 2  # products of at most this many rows: dot products (see above)

_p = types.voidptr
SHORT_SIGNATURE = types.void(types.int64, types.int64, _p, _p, _p, _p, _p, _p, _p, _p, _p, _p, _p, types.int64,
                             types.int64, types.int64, types.int64, types.int64, types.boolean, types.boolean)


@njit(fastmath=FASTMATH, error_model="numpy", cache=True)
def times_transposed(fn, a, w, c, rows, beta):
    """c[:rows] = a[:rows] W^T (+ c[:rows] with beta 1) for W (G, K): short_call's input projection and products."""
    g, k = w.shape
    if rows > DOT_MAX_ROWS:
        gemm(fn, True, False, g, rows, k, c.dtype.type(1), w, k, a, k, c.dtype.type(beta), c, g)
        return
    for r in range(rows):
        for j in range(g):
            acc = c.dtype.type(0)
            for q in range(k):
                acc += a[r, q] * w[j, q]
            c[r, j] = acc + c[r, j] if beta else acc  # beta 0: c may hold anything, NaN included


def short_call(mode, fn, x, w_ih, b_ih, w_hh, b_hh, w_hr, h0, c0, h_n, c_n, out, steps, batch, inputs, hidden,
               out_size, bias, reverse):
    """One layer, one direction, every step: out (T*B, P), h_n (B, P) and for LSTM c_n (B, H), written at the
    given addresses; P = out_size (an LSTM's proj_size, W_hr (P, H) at w_hr, or H). mode: SHORT_MODES; fn: the
    BLAS sgemm_ address; b_ih, b_hh, w_hr, c0, c_n are not read when absent (bias False, out_size == hidden)."""
    f32 = np.float32
    g = SHORT_GATES[mode] * hidden
    n = steps * batch
    w_hh_ = carray(w_hh, (g, out_size), f32)
    xp = np.empty((n, g), f32)  # (T*B, G*H) = x W_ih^T + b_ih, as torch.addmm forms it: C = b, then C += x W^T
    if bias:
        b_ih_ = carray(b_ih, (g,), f32)
        for r in range(n):
            xp[r, :] = b_ih_
        b_hh_ = carray(b_hh, (g,), f32)
    else:
        b_hh_ = np.zeros(g, f32)
    times_transposed(fn, carray(x, (n, inputs), f32), carray(w_ih, (g, inputs), f32), xp, n, 1 if bias else 0)
    sizes = np.full(steps, batch, np.int64)
    offsets = np.arange(steps) * batch
    no_pack = np.zeros((0, 0, 0), f32)
    h = carray(h_n, (batch, out_size), f32)
    h[:, :] = carray(h0, (batch, out_size), f32)
    out_ = carray(out, (n, out_size), f32)
    hp = np.empty((batch, g), f32)  # each step's h W_hh^T, formed here (own_product=False) for the kernel
    c, cs, gates, m, cache, w_hr_ = h, h, hp, h, hp, np.zeros((0, hidden), f32)  # placeholders of the right types
    if mode == 2:
        c = carray(c_n, (batch, hidden), f32)
        c[:, :] = carray(c0, (batch, hidden), f32)
        cs, gates, m = np.empty((batch, hidden), f32), np.empty((batch, g), f32), np.empty((batch, hidden), f32)
        if out_size != hidden:
            w_hr_ = carray(w_hr, (out_size, hidden), f32)
    elif mode == 3:
        cache = np.empty((batch, 4 * hidden), f32)
    for k in range(steps):
        times_transposed(fn, h, w_hh_, hp, batch, 0)
        if mode == 2:
            lstm_forward(fn, xp, w_hh_, no_pack, b_hh_, w_hr_, no_pack, h, c, sizes, offsets, reverse, out_, cs,
                         gates, hp, m, False, k, k + 1, False)
        elif mode == 3:
            gru_forward(fn, xp, w_hh_, no_pack, b_hh_, h, sizes, offsets, reverse, out_, cache, hp, False, k, k + 1,
                        False)
        else:
            rnn_forward(fn, mode == 1, xp, w_hh_, no_pack, b_hh_, h, sizes, offsets, reverse, out_, hp, k, k + 1,
                        False)


_short_entry = None


def short_call_entry():
    """short_call compiled as a C function (on first use, then from Numba's cache), called through ctypes."""
    global _short_entry
    if _short_entry is None:
        _short_entry = cfunc(SHORT_SIGNATURE, cache=True, fastmath=FASTMATH, error_model="numpy")(short_call).ctypes
    return _short_entry
