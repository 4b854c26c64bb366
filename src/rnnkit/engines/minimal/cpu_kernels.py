"""Numba loops of the minimal family's CPU engine: the recurrence h_t = a_t h_{t-1} + b_t, one fused pass
forward and one backward (math and derivation: rnnkit.cells.minimal, rnnkit.engines.minimal.reference).

Layouts are the stock CPU engine's (rnnkit.engines.cpu_kernels): packed time-major rows (N, .),
batch_sizes[t] running rows from offsets[t], states (B, H) updated in place (forward: h_0 in, h_n out;
backward: dh_n in, dh_0 out); rows beyond batch_sizes[t] are not touched at step t, so they keep
their state.

Speed: what a row of a step costs is its gate arithmetic, so that is one branch-free loop over the
H units that LLVM vectorises (into a few per-row float64 scratch arrays), then the state update,
another. libm's exp does not vectorise; float32 therefore builds sigmoid from the stock engine's
rational tanh (absolute error 1.4e-9, evaluated in float64), float64 keeps libm's exp. The gate
arithmetic runs in float64 for both dtypes; the state and the outputs keep the array's dtype.

minLSTM's a = f / (f + i) in linear space is exact as long as f and i are not both tiny; a row whose
k_f or k_i falls below LOW (where the rational sigmoid's absolute error would be a visible relative
error of f or i, or, in float64, where exp underflows) redoes those units with the stable form
a = sigmoid(log sigmoid(k_f) - log sigmoid(k_i)), as a scalar loop: rare inputs pay, common ones do not.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, types
from numba.extending import overload

from ..cpu_kernels import FASTMATH, KERNEL, prev_row, rational_tanh, step_at

# below these logits the fast minLSTM gate is redone exactly: sigmoid(-8) = 3.4e-4, where the fit's absolute
# error (at most 7e-10 for the sigmoid) is 2e-6 relative, 17 float32 ulp; float64's libm sigmoid is exact
# down to underflow
LOW_FAST, LOW_EXACT = -8.0, -700.0


def sig(x, like):
    """Logistic sigmoid of a float64 x, for arrays of like's dtype (implemented by the overload below)."""
    raise NotImplementedError("only callable from compiled code")


@overload(sig, inline="always", fastmath=FASTMATH)
def _sig(x, like):
    if isinstance(like, types.Float) and like.bitwidth == 32:  # vectorisable, absolute error 1.4e-9
        return lambda x, like: 0.5 + 0.5 * rational_tanh(0.5 * x)
    return lambda x, like: 1.0 / (1.0 + math.exp(-x))  # libm; exp(-x) = inf for x << 0 gives exactly 0


def low(like):
    """The logit below which the fast minLSTM gate is redone exactly, for arrays of like's dtype."""
    raise NotImplementedError("only callable from compiled code")


@overload(low, inline="always")
def _low(like):
    if isinstance(like, types.Float) and like.bitwidth == 32:
        return lambda like: LOW_FAST
    return lambda like: LOW_EXACT


@njit(inline="always")
def stable_sigmoid(x):
    e = math.exp(-abs(x))
    return 1.0 / (1.0 + e) if x >= 0 else e / (1.0 + e)


@njit(inline="always")
def softplus(x):
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


@njit(inline="always")
def gates_row(minlstm, row, hidden, a, oma, gk, dg, sf, si):
    """The gates of one row (all units) into float64 scratch: a, 1 - a, g(k_h), g'(k_h), and for minLSTM
    sigmoid(-k_f), sigmoid(-k_i) (the derivatives of log sigmoid). Each loop is branch-free (selects)."""
    like = row[0]
    if minlstm:
        redo = False
        for j in range(hidden):
            kf, ki = np.float64(row[j]), np.float64(row[hidden + j])
            f, i = sig(kf, like), sig(ki, like)
            a[j], oma[j] = f / (f + i), i / (f + i)
            sf[j], si[j] = 1.0 - f, 1.0 - i
            redo |= min(kf, ki) < low(like)
        if redo:
            for j in range(hidden):
                kf, ki = np.float64(row[j]), np.float64(row[hidden + j])
                if min(kf, ki) < low(like):
                    u = softplus(-ki) - softplus(-kf)  # log sigmoid(k_f) - log sigmoid(k_i)
                    a[j], oma[j] = stable_sigmoid(u), stable_sigmoid(-u)
                    sf[j], si[j] = stable_sigmoid(-kf), stable_sigmoid(-ki)
        candidates = row[2 * hidden:]
    else:
        for j in range(hidden):
            kz = np.float64(row[j])
            a[j], oma[j] = sig(-kz, like), sig(kz, like)
        candidates = row[hidden:]
    for j in range(hidden):
        kh = np.float64(candidates[j])
        s = sig(kh, like)
        gk[j] = kh + 0.5 if kh >= 0 else s
        dg[j] = 1.0 if kh >= 0 else s * (1.0 - s)


@njit(**KERNEL)
def forward(minlstm, xp, h, batch_sizes, offsets, reverse, out):
    """out[rows of t] = h = a_t h + b_t for every step in processing order; h (B, H) ends as h_n."""
    num_steps, hidden = batch_sizes.shape[0], h.shape[1]
    scratch = np.empty((6, hidden))  # float64 gates of one row
    a, oma, gk, dg, sf, si = scratch[0], scratch[1], scratch[2], scratch[3], scratch[4], scratch[5]
    for k in range(num_steps):
        t = step_at(k, num_steps, reverse)
        off = offsets[t]
        for i in range(batch_sizes[t]):
            gates_row(minlstm, xp[off + i], hidden, a, oma, gk, dg, sf, si)
            state, o = h[i], out[off + i]
            for j in range(hidden):
                new = a[j] * state[j] + oma[j] * gk[j]  # b = (1 - a) g(k_h)
                state[j] = new
                o[j] = new


@njit(**KERNEL)
def backward(minlstm, xp, h0, out, d_out, dh, batch_sizes, offsets, reverse, dxp):
    """dxp of every step, visiting them in reverse processing order; dh (B, H): dh_n in, dh_0 out.

    G = dh + dout_t is the total gradient reaching h_t; da = G h_{t-1}, db = G; dh becomes a_t G."""
    num_steps, hidden = batch_sizes.shape[0], h0.shape[1]
    scratch = np.empty((6, hidden))  # float64 gates of one row
    a, oma, gk, dg, sf, si = scratch[0], scratch[1], scratch[2], scratch[3], scratch[4], scratch[5]
    for k in range(num_steps - 1, -1, -1):
        t = step_at(k, num_steps, reverse)
        off = offsets[t]
        for i in range(batch_sizes[t]):
            gates_row(minlstm, xp[off + i], hidden, a, oma, gk, dg, sf, si)
            pr = prev_row(t, i, batch_sizes, offsets, reverse)
            prev = out[pr] if pr >= 0 else h0[i]
            d, dr, grad = d_out[off + i], dxp[off + i], dh[i]
            for j in range(hidden):
                big_g = grad[j] + d[j]
                du = big_g * (prev[j] - gk[j]) * a[j] * oma[j]  # da - db g: through a, and b = (1 - a) g
                dkh = big_g * oma[j] * dg[j]
                if minlstm:
                    dr[j] = du * sf[j]
                    dr[hidden + j] = -du * si[j]
                    dr[2 * hidden + j] = dkh
                else:
                    dr[j] = -du
                    dr[hidden + j] = dkh
                grad[j] = a[j] * big_g
