"""Numba-compiled time loops of the sLSTM CPU engine: forward and hand-derived BPTT.

The math is rnnkit.cells.slstm's (read it for the equations and their derivative), the loop and
the packed layout are rnnkit.engines.cpu_kernels' (step_at, prev_row, the BLAS call, KERNEL's
options: fastmath without nnan/ninf, vectorisable tanh and sigmoid in float32).

Block-diagonal recurrent weights: the wrapper passes them per head, r_heads (K, 4dh, dh) with
r_heads[k, q*dh + u, v] = r[q*H + k*dh + u, v], so each head's product for all four gates is one
gemm on that head's columns of h. Its result lands in a (B, 4H) scratch in head-major order,
hp[b, k*4dh + q*dh + u], which a copy loop turns into the gate-major order of xp (and the
backward the other way round, for the gemm of dh).

Vectorisation: LLVM vectorises a gate loop only when every array the loop stores to is stored
once per unit and not read in the loop (two stores into one array at a distance it cannot see,
or a store into an array it reads, make it give up). So each gate's pre-activations (and, in
the backward, each gate's gradient) is a separate array, and the state the next step starts from
is copied after the loop.

States are updated in place: on entry the initial state (backward: the gradient at the final
state), on exit the final state (the gradient at the initial state). Rows beyond batch_sizes[t]
are not touched at step t.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from ..blas import gemm
from ..cpu_kernels import FASTMATH, KERNEL, prev_row, sigmoid, step_at, tanh

# ---------------------------------------------------------------- exp and log1p that vectorise
#
# libm's exp and log1p are calls LLVM cannot vectorise, and a step's gates take four of them per unit
# (about 18 ns each here: most of a step's time at H=256). float32 therefore computes them in plain
# float64 arithmetic, accurate to about 1e-10 relative, far below float32's 6e-8 rounding
# (tests/test_slstm.py checks it); float64 keeps libm, so that it matches torch to 1e-10.

LOG2E, LN2 = 1.4426950408889634, 0.6931471805599453
EXP_HI, EXP_LO = 88.8, -104.0  # exp beyond rounds to inf / 0 in float32
# exp(r) = sum r^k / k! for |r| <= ln(2)/2: the degree-8 remainder is below 2.1e-10 relative
EXP_TAYLOR = (1.0, 1.0, 1 / 2, 1 / 6, 1 / 24, 1 / 120, 1 / 720, 1 / 5040, 1 / 40320)


@intrinsic
def _bits_as_float64(typingctx, bits):
    """The float64 whose IEEE bit pattern is the int64 `bits` (a bit cast, which vectorises)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@njit(fastmath=FASTMATH, error_model="numpy", cache=True)
def poly_exp(x):
    """exp(x) in float64 arithmetic: x = k ln2 + r, exp(x) = 2^k exp(r), 2^k built from its bits. NaN stays NaN."""
    x = EXP_HI if x > EXP_HI else x
    x = EXP_LO if x < EXP_LO else x
    k = math.floor(x * LOG2E + 0.5)
    r = x - k * LN2
    c = EXP_TAYLOR
    p = c[0] + r * (c[1] + r * (c[2] + r * (c[3] + r * (c[4] + r * (c[5] + r * (c[6] + r * (c[7] + r * c[8])))))))
    return p * _bits_as_float64((np.int64(k) + 1023) << 52)


@njit(fastmath=FASTMATH, error_model="numpy", cache=True)
def poly_log1p(e):
    """log1p(e) for 0 <= e <= 1: 2 atanh(s), s = e / (2 + e) <= 1/3, as its odd series (remainder < 1e-11)."""
    s = e / (2.0 + e)
    q = s * s
    p = 1 / 19
    for k in range(8, -1, -1):  # Horner from the s^18 / 19 term down to 1
        p = 1 / (2 * k + 1) + q * p
    return 2.0 * s * p


def exp(x):
    """Dtype-dispatched exp for the kernels (implemented by the overload below)."""
    raise NotImplementedError("only callable from compiled code")


def log1p_exp_neg_abs(x):
    """log1p(exp(-|x|)), dtype-dispatched, for the kernels."""
    raise NotImplementedError("only callable from compiled code")


@overload(exp, inline="always", fastmath=FASTMATH)
def _exp(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        return lambda x: np.float32(poly_exp(np.float64(x)))
    return lambda x: math.exp(x)


@overload(log1p_exp_neg_abs, inline="always", fastmath=FASTMATH)
def _log1p_exp_neg_abs(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        return lambda x: np.float32(poly_log1p(poly_exp(-abs(np.float64(x)))))
    return lambda x: math.log1p(math.exp(-abs(x)))


@njit(inline="always")
def logsigmoid(x):
    """log(sigmoid(x)) = min(x, 0) - log1p(exp(-|x|)), finite for any finite x (as torch computes it)."""
    return min(x, np.float32(0)) - log1p_exp_neg_abs(x)  # float32 0: an int 0 would promote float32 to float64


@njit(inline="always")
def heads_product(fn, h, r_heads, hp, bs, heads, dh):
    """hp[:bs, k*4dh:(k+1)*4dh] = h[:bs, k*dh:(k+1)*dh] r_heads[k]^T for every head k."""
    width, ld_hp = h.shape[1], hp.shape[1]
    one, zero = hp.dtype.type(1), hp.dtype.type(0)
    for k in range(heads):
        gemm(fn, True, False, 4 * dh, bs, dh, one, r_heads[k], dh, h[:, k * dh:], width, zero,
             hp[:, k * 4 * dh:], ld_hp)


@njit(inline="always")
def heads_product_to_prev(fn, dah, r_heads, dh_state, bs, heads, dh):
    """dh_state[:bs, k*dh:(k+1)*dh] = dah[:bs, k*4dh:(k+1)*4dh] r_heads[k] for every head k."""
    width, ld_da = dh_state.shape[1], dah.shape[1]
    one, zero = dah.dtype.type(1), dah.dtype.type(0)
    for k in range(heads):
        gemm(fn, False, False, dh, bs, 4 * dh, one, r_heads[k], dh, dah[:, k * 4 * dh:], ld_da, zero,
             dh_state[:, k * dh:], width)


@njit(**KERNEL)
def slstm_forward(fn, xp, r_heads, h, c, n, m, batch_sizes, offsets, reverse, out, cs, ns, ms, p_i, p_f, p_z, p_o,
                  hp, hpg):
    """out, cs, ns, ms (N, H); the pre-activations p_i, p_f, p_z, p_o (N, H) each; h, c, n, m (B, H) initial ->
    final; hp, hpg (B, 4H) scratch: a step's product in the heads' order, then in the gates' order (see the
    module docstring for why the gate loop stores to separate arrays and copies the state after it)."""
    num_steps, hidden = batch_sizes.shape[0], h.shape[1]
    heads, dh = r_heads.shape[0], r_heads.shape[2]
    for s in range(num_steps):
        t = step_at(s, num_steps, reverse)
        bs, off = batch_sizes[t], offsets[t]
        heads_product(fn, h, r_heads, hp, bs, heads, dh)
        for b in range(bs):
            gate_major(hp[b], hpg[b], heads, dh)
        for b in range(bs):
            row = off + b
            x_row, hp_row, c_prev, n_prev, m_prev = xp[row], hpg[b], c[b], n[b], m[b]
            for j in range(hidden):
                a_i = x_row[j] + hp_row[j]
                a_f = x_row[hidden + j] + hp_row[hidden + j]
                a_z = x_row[2 * hidden + j] + hp_row[2 * hidden + j]
                a_o = x_row[3 * hidden + j] + hp_row[3 * hidden + j]
                lfm = logsigmoid(a_f) + m_prev[j]
                m_new = lfm if lfm > a_i else a_i
                i = exp(a_i - m_new)
                f = exp(lfm - m_new)
                c_new = f * c_prev[j] + i * tanh(a_z)
                n_new = f * n_prev[j] + i
                p_i[row, j], p_f[row, j], p_z[row, j], p_o[row, j] = a_i, a_f, a_z, a_o
                out[row, j], cs[row, j], ns[row, j], ms[row, j] = sigmoid(a_o) * c_new / n_new, c_new, n_new, m_new
            # the state the next step starts from, as separate copies: the gate loop above stores only to
            # arrays it does not read, which lets LLVM vectorise it
            h[b, :], c[b, :], n[b, :], m[b, :] = out[row], cs[row], ns[row], ms[row]


@njit(inline="always")
def gate_major(hp_row, hpg_row, heads, dh):
    """A step's product row from the heads' order (k*4dh + q*dh + u) to the gates' order (q*H + k*dh + u)."""
    hidden = heads * dh
    for q in range(4):
        for k in range(heads):
            for u in range(dh):
                hpg_row[q * hidden + k * dh + u] = hp_row[k * 4 * dh + q * dh + u]


@njit(**KERNEL)
def slstm_backward(fn, r_heads, c0, n0, m0, out, cs, ns, ms, p_i, p_f, p_z, p_o, dout, dh, dc, dn, dm, batch_sizes,
                   offsets, reverse, dxp, dah, d_i, d_f, d_z, d_o):
    """dxp (N, 4H) = dhr at every step (gate-major); dah (B, 4H) scratch, the same step in head-major order for
    the products per head; d_i, d_f, d_z, d_o (B, H) scratch, the gate loop's results (separate arrays, so the
    loop vectorises; a plain copy loop then lays them out in dxp and dah). dh, dc, dn, dm (B, H): the gradient
    at the final states on entry, at the initial states on exit."""
    num_steps, hidden = batch_sizes.shape[0], c0.shape[1]
    heads, dh_ = r_heads.shape[0], r_heads.shape[2]
    one, half, zero = out.dtype.type(1), out.dtype.type(0.5), out.dtype.type(0)
    for s in range(num_steps):
        t = step_at(s, num_steps, not reverse)  # backward visits the steps in the opposite order
        bs, off = batch_sizes[t], offsets[t]
        for b in range(bs):
            row = off + b
            pr = prev_row(t, b, batch_sizes, offsets, reverse)
            c_prev, n_prev, m_prev = (cs[pr], ns[pr], ms[pr]) if pr >= 0 else (c0[b], n0[b], m0[b])
            for j in range(hidden):
                a_i, a_f, a_z, a_o = p_i[row, j], p_f[row, j], p_z[row, j], p_o[row, j]
                lfm = logsigmoid(a_f) + m_prev[j]
                m_new = ms[row, j]
                i = exp(a_i - m_new)
                f = exp(lfm - m_new)
                o, g = sigmoid(a_o), tanh(a_z)
                c_new, n_new = cs[row, j], ns[row, j]
                d_h = dh[b, j] + dout[row, j]  # from the output at t and from step t+1
                d_c = dc[b, j] + d_h * o / n_new
                d_n = dn[b, j] - d_h * out[row, j] / n_new
                da_o = d_h * (c_new / n_new) * o * (one - o)
                da_z = d_c * i * (one - g * g)
                di_e = (d_c * g + d_n) * i
                df_e = (d_c * c_prev[j] + d_n * n_prev[j]) * f
                dm_total = dm[b, j] - di_e - df_e
                w_a = one if lfm > a_i else (half if lfm == a_i else zero)  # torch.maximum's split of a tie
                d_lfm = df_e + w_a * dm_total
                d_i[b, j], d_f[b, j], d_z[b, j], d_o[b, j] = di_e + (one - w_a) * dm_total, d_lfm * sigmoid(-a_f), \
                    da_z, da_o
                dc[b, j], dn[b, j], dm[b, j] = d_c * f, d_n * f, d_lfm
        for b in range(bs):
            lay_out(d_i[b], dxp[off + b], dah[b], 0, heads, dh_)
            lay_out(d_f[b], dxp[off + b], dah[b], 1, heads, dh_)
            lay_out(d_z[b], dxp[off + b], dah[b], 2, heads, dh_)
            lay_out(d_o[b], dxp[off + b], dah[b], 3, heads, dh_)
        heads_product_to_prev(fn, dah, r_heads, dh, bs, heads, dh_)


@njit(inline="always")
def lay_out(d, dxp_row, dah_row, q, heads, dh):
    """Gate q's gradient row d (H) into dxp's gate-major row (q*H + j) and dah's head-major row (k*4dh + q*dh + u)."""
    hidden = d.shape[0]
    for j in range(hidden):
        dxp_row[q * hidden + j] = d[j]
    for k in range(heads):
        for u in range(dh):
            dah_row[k * 4 * dh + q * dh + u] = d[k * dh + u]
