"""Numba-compiled time loops of the sLSTM CPU engine: forward and hand-derived BPTT.

The math is rnnkit.cells.slstm's (read it for the equations and their derivative), the loop and
the packed layout are rnnkit.engines.cpu_kernels' (step_at, prev_row, the BLAS call, KERNEL's
options: fastmath without nnan/ninf, vectorisable tanh and sigmoid in float32).

Block-diagonal recurrent weights: the wrapper passes them per head, r_heads (K, 4dh, dh) with
r_heads[k, q*dh + u, v] = r[q*H + k*dh + u, v], so each head's product for all four gates is one
gemm on that head's columns of h. Its result lands in a (B, 4H) scratch in head-major order,
hp[b, k*4dh + q*dh + u]; the packed pre-activations and dxp keep the gate-major order of xp.

States are updated in place: on entry the initial state (backward: the gradient at the final
state), on exit the final state (the gradient at the initial state). Rows beyond batch_sizes[t]
are not touched at step t.
"""

from __future__ import annotations

import math

from numba import njit

from ..blas import gemm
from ..cpu_kernels import KERNEL, prev_row, sigmoid, step_at, tanh


@njit(inline="always")
def logsigmoid(x):
    """log(sigmoid(x)) = min(x, 0) - log1p(exp(-|x|)), finite for any finite x (as torch computes it)."""
    neg = x if x < 0 else x * 0
    return neg - math.log1p(math.exp(-abs(x)))


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
def slstm_forward(fn, xp, r_heads, h, c, n, m, batch_sizes, offsets, reverse, out, cs, ns, ms, pre, hp):
    """out, cs, ns, ms (N, H); pre (N, 4H) = [i~, f~, z~, o~]; h, c, n, m (B, H) initial -> final; hp (B, 4H)."""
    num_steps, hidden = batch_sizes.shape[0], h.shape[1]
    heads, dh = r_heads.shape[0], r_heads.shape[2]
    for s in range(num_steps):
        t = step_at(s, num_steps, reverse)
        bs, off = batch_sizes[t], offsets[t]
        heads_product(fn, h, r_heads, hp, bs, heads, dh)
        for b in range(bs):
            row = off + b
            x_row, hp_row, p_row = xp[row], hp[b], pre[row]
            for k in range(heads):
                for u in range(dh):
                    j, q0 = k * dh + u, k * 4 * dh + u
                    a_i = x_row[j] + hp_row[q0]
                    a_f = x_row[hidden + j] + hp_row[q0 + dh]
                    a_z = x_row[2 * hidden + j] + hp_row[q0 + 2 * dh]
                    a_o = x_row[3 * hidden + j] + hp_row[q0 + 3 * dh]
                    lfm = logsigmoid(a_f) + m[b, j]
                    m_new = lfm if lfm > a_i else a_i
                    i = math.exp(a_i - m_new)
                    f = math.exp(lfm - m_new)
                    c_new = f * c[b, j] + i * tanh(a_z)
                    n_new = f * n[b, j] + i
                    h_new = sigmoid(a_o) * c_new / n_new
                    p_row[j], p_row[hidden + j], p_row[2 * hidden + j], p_row[3 * hidden + j] = a_i, a_f, a_z, a_o
                    h[b, j], c[b, j], n[b, j], m[b, j] = h_new, c_new, n_new, m_new
                    out[row, j], cs[row, j], ns[row, j], ms[row, j] = h_new, c_new, n_new, m_new


@njit(**KERNEL)
def slstm_backward(fn, r_heads, c0, n0, m0, out, cs, ns, ms, pre, dout, dh, dc, dn, dm, batch_sizes, offsets, reverse,
                   dxp, dah):
    """dxp (N, 4H) = dhr at every step (gate-major); dah (B, 4H) scratch, the same step in head-major order;
    dh, dc, dn, dm (B, H): gradient at the final states on entry, at the initial states on exit."""
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
            p_row, d_row, da_row = pre[row], dxp[row], dah[b]
            for k in range(heads):
                for u in range(dh_):
                    j, q0 = k * dh_ + u, k * 4 * dh_ + u
                    a_i, a_f, a_z, a_o = p_row[j], p_row[hidden + j], p_row[2 * hidden + j], p_row[3 * hidden + j]
                    lfm = logsigmoid(a_f) + m_prev[j]
                    m_new = ms[row, j]
                    i = math.exp(a_i - m_new)
                    f = math.exp(lfm - m_new)
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
                    da_i = di_e + (one - w_a) * dm_total
                    da_f = d_lfm * sigmoid(-a_f)
                    d_row[j], d_row[hidden + j], d_row[2 * hidden + j], d_row[3 * hidden + j] = da_i, da_f, da_z, da_o
                    da_row[q0], da_row[q0 + dh_], da_row[q0 + 2 * dh_], da_row[q0 + 3 * dh_] = da_i, da_f, da_z, da_o
                    dc[b, j], dn[b, j], dm[b, j] = d_c * f, d_n * f, d_lfm
        heads_product_to_prev(fn, dah, r_heads, dh, bs, heads, dh_)
