"""Numba loops of the minimal family's CPU engine: the recurrence h_t = a_t h_{t-1} + b_t, one fused pass
forward and one backward (math and derivation: rnnkit.cells.minimal, rnnkit.engines.minimal.reference).

Layouts are the stock CPU engine's (rnnkit.engines.cpu_kernels): packed time-major rows (N, .),
batch_sizes[t] running rows from offsets[t], states (B, H) updated in place (forward: h_0 in, h_n out;
backward: dh_n in, dh_0 out); rows beyond batch_sizes[t] are not touched at step t, so they keep
their state. The scalar math runs in float64 whatever the array dtype (a few flops per element of a
memory-bound pass), so float32 and float64 share one code path and the float32 results round once.
"""

from __future__ import annotations

import math

from numba import njit

from ..cpu_kernels import KERNEL, prev_row, step_at


@njit(inline="always")
def softplus(x):
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


@njit(inline="always")
def sigmoid(x):
    e = math.exp(-abs(x))  # never overflows; NaN stays NaN
    return 1.0 / (1.0 + e) if x >= 0 else e / (1.0 + e)


@njit(inline="always")
def logit_and_candidate(minlstm, row, j, hidden):
    """(u, k_h) of unit j: a = sigmoid(u); u = -k_z (minGRU), log sigmoid(k_f) - log sigmoid(k_i) (minLSTM)."""
    if minlstm:
        kf, ki = float(row[j]), float(row[hidden + j])
        return softplus(-ki) - softplus(-kf), float(row[2 * hidden + j])
    return -float(row[j]), float(row[hidden + j])


@njit(inline="always")
def g(x):
    return x + 0.5 if x >= 0 else sigmoid(x)


@njit(**KERNEL)
def forward(minlstm, xp, h, batch_sizes, offsets, reverse, out):
    """out[rows of t] = h = a_t h + b_t for every step in processing order; h (B, H) ends as h_n."""
    num_steps, hidden = batch_sizes.shape[0], h.shape[1]
    for k in range(num_steps):
        t = step_at(k, num_steps, reverse)
        off = offsets[t]
        for i in range(batch_sizes[t]):
            row, state, o = xp[off + i], h[i], out[off + i]
            for j in range(hidden):
                u, kh = logit_and_candidate(minlstm, row, j, hidden)
                a, one_minus_a = sigmoid(u), sigmoid(-u)
                new = a * float(state[j]) + one_minus_a * g(kh)
                state[j] = new
                o[j] = new


@njit(**KERNEL)
def backward(minlstm, xp, h0, out, d_out, dh, batch_sizes, offsets, reverse, dxp):
    """dxp of every step, visiting them in reverse processing order; dh (B, H): dh_n in, dh_0 out.

    G = dh + dout_t is the total gradient reaching h_t; da = G h_{t-1}, db = G; dh becomes a_t G."""
    num_steps, hidden = batch_sizes.shape[0], h0.shape[1]
    for k in range(num_steps - 1, -1, -1):
        t = step_at(k, num_steps, reverse)
        off = offsets[t]
        for i in range(batch_sizes[t]):
            pr = prev_row(t, i, batch_sizes, offsets, reverse)
            prev = out[pr] if pr >= 0 else h0[i]
            row, d, dr, grad = xp[off + i], d_out[off + i], dxp[off + i], dh[i]
            for j in range(hidden):
                u, kh = logit_and_candidate(minlstm, row, j, hidden)
                a, one_minus_a = sigmoid(u), sigmoid(-u)
                big_g = float(grad[j]) + float(d[j])
                s = sigmoid(kh)
                gk, dg = (kh + 0.5, 1.0) if kh >= 0 else (s, s * (1.0 - s))
                du = big_g * (float(prev[j]) - gk) * a * one_minus_a  # da - db g, through a and b = (1 - a) g
                dkh = big_g * one_minus_a * dg
                if minlstm:
                    dr[j] = du * sigmoid(-float(row[j]))
                    dr[hidden + j] = -du * sigmoid(-float(row[hidden + j]))
                    dr[2 * hidden + j] = dkh
                else:
                    dr[j] = -du
                    dr[hidden + j] = dkh
                grad[j] = a * big_g
