"""The CPU engine's entry for short no-grad float32 calls: one compiled call per layer and direction.

Why: a decoder calls its layer once per step (T=1), and there a step's arithmetic takes a few
microseconds while the general entry (cpu.infer) spends 30-40 us in Python around it: a torch addmm
for the input projection, numpy views of about ten tensors, buffers. That is more than torch.gru
spends on its whole call. Here Python hands over data pointers (one ctypes call, about 2 us) and
one compiled function does the rest: the input projection, the scratch buffers and the same time
loop (cpu_kernels) as the general entry.

It serves the calls where the general entry would run torch's plain product for the input
projection and BLAS inside the loop (cpu.small_shape: fewer steps than cpu.MIN_PACKED_STEPS, products
below cpu.ONEDNN_MIN_MACS and cpu.STEPWISE_MIN_MACS), padded, without a projection. Products of one
or two rows (a decoder's B=1) are dot products here, which read W once at cache speed where
sgemm_ spends about 1.5 us more per call (Zen 4: 2.3 against 3.6 us for a 1 x 128 by 128 x 384
product); more rows go to the same sgemm_ as the general entry. tests/test_cpu_engine.py checks this
entry against the general one and torch.nn.
"""

from __future__ import annotations

import numpy as np
from numba import carray, cfunc, njit, types

from .blas import gemm
from .cpu_kernels import FASTMATH, gru_forward, lstm_forward, rnn_forward

MODES = {"RNN_TANH": 0, "RNN_RELU": 1, "LSTM": 2, "GRU": 3}
GATES = (1, 1, 4, 3)
DOT_MAX_ROWS = 2  # products of at most this many rows: dot products (see above)

_p = types.voidptr
SIGNATURE = types.void(types.int64, types.int64, _p, _p, _p, _p, _p, _p, _p, _p, _p, _p, types.int64, types.int64,
                       types.int64, types.int64, types.boolean, types.boolean)


@njit(fastmath=FASTMATH, error_model="numpy", cache=True)
def times_transposed(fn, a, w, c, rows, beta):
    """c[:rows] = a[:rows] W^T (+ c[:rows] with beta 1) for W (G, K): the input projection and each step's product."""
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


@cfunc(SIGNATURE, cache=True, fastmath=FASTMATH, error_model="numpy")
def run(mode, fn, x, w_ih, b_ih, w_hh, b_hh, h0, c0, h_n, c_n, out, steps, batch, inputs, hidden, bias, reverse):
    """One layer, one direction, every step: out (T*B, H), h_n (B, H) and for LSTM c_n (B, H), written at the
    given addresses. mode: MODES; fn: the BLAS sgemm_ address; b_ih, b_hh, c0, c_n are not read when absent."""
    f32 = np.float32
    g = GATES[mode] * hidden
    n = steps * batch
    w_hh_ = carray(w_hh, (g, hidden), f32)
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
    h = carray(h_n, (batch, hidden), f32)
    h[:, :] = carray(h0, (batch, hidden), f32)
    out_ = carray(out, (n, hidden), f32)
    hp = np.empty((batch, g), f32)  # each step's h W_hh^T, formed here (own_product=False) for the kernel
    c, cs, gates, m, cache = h, h, hp, h, hp  # typed placeholders; LSTM and GRU replace theirs
    if mode == 2:
        c = carray(c_n, (batch, hidden), f32)
        c[:, :] = carray(c0, (batch, hidden), f32)
        cs, gates, m = np.empty((batch, hidden), f32), np.empty((batch, g), f32), np.empty((batch, hidden), f32)
    elif mode == 3:
        cache = np.empty((batch, 4 * hidden), f32)
    for k in range(steps):
        times_transposed(fn, h, w_hh_, hp, batch, 0)
        if mode == 2:
            lstm_forward(fn, xp, w_hh_, no_pack, b_hh_, np.zeros((0, hidden), f32), no_pack, h, c, sizes, offsets,
                         reverse, out_, cs, gates, hp, m, False, k, k + 1, False)
        elif mode == 3:
            gru_forward(fn, xp, w_hh_, no_pack, b_hh_, h, sizes, offsets, reverse, out_, cache, hp, False, k, k + 1,
                        False)
        else:
            rnn_forward(fn, mode == 1, xp, w_hh_, no_pack, b_hh_, h, sizes, offsets, reverse, out_, hp, k, k + 1,
                        False)


call = run.ctypes
