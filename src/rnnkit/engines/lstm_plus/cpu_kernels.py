"""Numba-compiled time loops of the lstm_plus CPU engine: one forward and one backward kernel.

The math is rnnkit.cells.lstm_plus (equations and backward in its docstring), the loop is
rnnkit.engines.reference's, the conventions are rnnkit.engines.cpu_kernels' (KERNEL options, the
dtype-dispatched tanh/sigmoid, BLAS from torch for each step's recurrent product, packed rows).
Each option is a runtime flag: one compiled kernel per dtype serves every config.

A step of the forward, for the bs running rows:
    hp = hm W_hh^T                               one BLAS call for the step's rows (hm = h * r with
                                                 rdrop, kept up to date by the previous step; else h)
    per row: LN of hp over 4H (two passes: mean, then variance), then one pass over the hidden
    units for i, f, g, c~ and o, LN of c~ over H (two passes), and a last pass for h~ and the
    zoneout mixes, which writes the state in place (h, c (B, H): initial on entry, final on exit).

A step of the backward, for the bs running rows (dh, dc (B, H): the gradient at the final state on
entry, at the initial state on exit):
    per row: a pass for dh~, do and dy (and the sums LN(c~)'s backward needs), a pass for dc~, the gate
    gradients and dc_prev, then LN(hp)'s backward over 4H (dz); then
    dh[:bs] = zh dh' + (dz W_hh) * r              one BLAS call for the step's rows
Both kernels run the processing steps k0 <= k < k1 and, with own_product=False, leave the recurrent
product to the caller, as rnnkit.engines.cpu_kernels' do (read its docstring): forward, hp holds
hm[:bs] W_hh^T on entry; backward, the caller adds (dz W_hh) * r to dh[:bs] after the step.
The small parameters' gradients (peepholes, LN of c~) are summed over rows inside the loop (dsmall);
dW_hh, db_hh and the LN(hp) parameters' gradients are single products/sums over all rows in cpu.py.
"""

from __future__ import annotations

import math

from numba import njit

from ..cpu_kernels import KERNEL, prev_row, product_from_state, product_to_prev, sigmoid, step_at, tanh

EPS = 1e-5


@njit(inline="always")
def row_stats(v, n):
    """mean and 1/sqrt(biased variance + eps) of v[:n], two passes, accumulated in v's dtype: the sums then
    vectorise (several partial sums in parallel), which also keeps float32's rounding small at these widths."""
    s = v.dtype.type(0)
    for q in range(n):
        s += v[q]
    count = v.dtype.type(n)
    mean = s / count
    ss = v.dtype.type(0)
    for q in range(n):
        d = v[q] - mean
        ss += d * d
    return mean, v.dtype.type(1) / math.sqrt(ss / count + v.dtype.type(EPS))


@njit(**KERNEL)
def forward(fn, ln, peep, rdrop, zon_h, zon_c, xp, w_hh, w_hh_packed, b_hh, ln_w, ln_b, lnc_w, lnc_b, p, r, zh, zc,
            h, c, batch_sizes, offsets, reverse, out, cs, ct, gates, zn, stats, hm, hp, c_tilde, k0, k1, own_product):
    """out (N, H), cs (N, H) = c', ct (N, H) = c~ (zon_c), gates (N, 4H), zn (N, 4H) and stats (N, 3) (ln);
    h, c (B, H) initial -> final; with rdrop hm (B, H) = h * r, the state the recurrent product reads: the
    caller's h0 * r on entry, kept up to date for the running rows (unused without rdrop); hp (B, 4H)
    (the caller's product with own_product=False; overwritten in place by LN) and c_tilde (B, H) scratch.
    b_hh is (4H) (zeros without a bias); arrays of options that are off may be empty."""
    num_steps, hidden = batch_sizes.shape[0], c.shape[1]
    width = 4 * hidden
    dt = xp.dtype.type
    one = dt(1)
    src = hm if rdrop else h  # the recurrent product reads the dropped-out state; the zoneout mix the plain one
    for k in range(k0, k1):
        t = step_at(k, num_steps, reverse)
        bs, off = batch_sizes[t], offsets[t]
        if own_product:
            product_from_state(fn, src, w_hh, w_hh_packed, hp, bs)  # hp[:bs] = hm W_hh^T
        for b in range(bs):
            row = off + b
            hp_row, x_row, g_row, ct_row = hp[b], xp[row], gates[row], c_tilde[b]
            if ln:
                mean, rstd = row_stats(hp_row, width)
                zn_row = zn[row]
                for q in range(width):
                    v = dt((hp_row[q] - mean) * rstd)
                    zn_row[q] = v
                    hp_row[q] = v * ln_w[q] + ln_b[q]
                stats[row, 0] = dt(rstd)
            for j in range(hidden):
                c_prev = c[b, j]
                a_i = x_row[j] + hp_row[j] + b_hh[j]
                a_f = x_row[hidden + j] + hp_row[hidden + j] + b_hh[hidden + j]
                a_g = x_row[2 * hidden + j] + hp_row[2 * hidden + j] + b_hh[2 * hidden + j]
                a_o = x_row[3 * hidden + j] + hp_row[3 * hidden + j] + b_hh[3 * hidden + j]
                if peep:
                    a_i += p[j] * c_prev
                    a_f += p[hidden + j] * c_prev
                i, f, g = sigmoid(a_i), sigmoid(a_f), tanh(a_g)
                c_new = f * c_prev + i * g
                if peep:
                    a_o += p[2 * hidden + j] * c_new
                g_row[j], g_row[hidden + j], g_row[2 * hidden + j], g_row[3 * hidden + j] = i, f, g, sigmoid(a_o)
                ct_row[j] = c_new
            mean_c, rstd_c = dt(0), one
            if ln:
                mean_c, rstd_c = row_stats(ct_row, hidden)
                stats[row, 1], stats[row, 2] = dt(mean_c), dt(rstd_c)
            for j in range(hidden):
                y = ct_row[j]
                if ln:
                    y = dt((y - mean_c) * rstd_c) * lnc_w[j] + lnc_b[j]
                h_t = g_row[3 * hidden + j] * tanh(y)
                c_new = ct_row[j]
                if zon_c:
                    ct[row, j] = c_new
                    c_new = zc[row, j] * c[b, j] + (one - zc[row, j]) * c_new
                if zon_h:
                    h_t = zh[row, j] * h[b, j] + (one - zh[row, j]) * h_t
                h[b, j], c[b, j] = h_t, c_new
                out[row, j], cs[row, j] = h_t, c_new
            if rdrop:  # a loop of its own: a condition inside the loop above could keep it from vectorising
                for j in range(hidden):
                    hm[b, j] = h[b, j] * r[b, j]


@njit(**KERNEL)
def backward(fn, ln, peep, rdrop, zon_h, zon_c, w_hh, ln_w, lnc_w, lnc_b, p, r, zh, zc, h0, c0, out, cs, ct, gates,
             zn, stats, dout, dh, dc, batch_sizes, offsets, reverse, da, dz, hm_prev, dsmall, tmp, dhm, k0, k1,
             own_product):
    """da (N, 4H) = dxp; dz (N, 4H) the gradient of hm W_hh^T (ln; else da serves); hm_prev (N, H) the
    (dropped-out) state each step's product read; dsmall (5H) += [dp_i, dp_f, dp_o, dw_c_ln, db_c_ln];
    dh, dc (B, H) final -> initial; tmp (B, H), dhm (B, H) scratch. ct is (N, H) with zon_c (else cs is c~)."""
    num_steps, hidden = batch_sizes.shape[0], c0.shape[1]
    width = 4 * hidden
    dt = out.dtype.type
    one = dt(1)
    for k in range(k0, k1):
        t = step_at(k, num_steps, not reverse)  # backward visits the steps in the opposite order
        bs, off = batch_sizes[t], offsets[t]
        for b in range(bs):
            row = off + b
            pr = prev_row(t, b, batch_sizes, offsets, reverse)
            h_prev = out[pr] if pr >= 0 else h0[b]
            c_prev = cs[pr] if pr >= 0 else c0[b]
            for j in range(hidden):
                hm_prev[row, j] = h_prev[j] * r[b, j] if rdrop else h_prev[j]
            g_row, d_row, ct_row = gates[row], da[row], ct[row] if zon_c else cs[row]
            mean_c, rstd_c = dt(0), dt(1)
            if ln:
                mean_c, rstd_c = stats[row, 1], stats[row, 2]
            s1, s2 = dt(0), dt(0)  # sums of dcn and dcn * cn over the row (LN(c~)'s backward)
            for j in range(hidden):
                dh_new = dh[b, j] + dout[row, j]  # from the output at t and from step t+1
                dh_t = (one - zh[row, j]) * dh_new if zon_h else dh_new
                o = g_row[3 * hidden + j]
                y = ct_row[j]
                cn = (y - mean_c) * rstd_c
                if ln:
                    y = cn * lnc_w[j] + lnc_b[j]
                ty = tanh(y)
                dy = dh_t * o * (one - ty * ty)
                d_row[3 * hidden + j] = dh_t * ty * o * (one - o)  # da_o
                if ln:
                    dcn = dy * lnc_w[j]
                    s1 += dcn
                    s2 += dcn * cn
                    dsmall[3 * hidden + j] += dy * cn
                    dsmall[4 * hidden + j] += dy
                    tmp[b, j] = dcn
                else:
                    tmp[b, j] = dy
                dh[b, j] = zh[row, j] * dh_new if zon_h else dt(0)  # the zoneout path to h_{t-1}
            m1, m2 = dt(s1 / hidden), dt(s2 / hidden)
            for j in range(hidden):
                i, f, g = g_row[j], g_row[hidden + j], g_row[2 * hidden + j]
                dc_new = dc[b, j]
                dc_t = (one - zc[row, j]) * dc_new if zon_c else dc_new
                if ln:
                    cn = (ct_row[j] - mean_c) * rstd_c
                    dc_t += rstd_c * (tmp[b, j] - m1 - cn * m2)
                else:
                    dc_t += tmp[b, j]
                da_o = d_row[3 * hidden + j]
                if peep:
                    dc_t += p[2 * hidden + j] * da_o
                    dsmall[2 * hidden + j] += da_o * ct_row[j]
                cp = c_prev[j]
                da_i = dc_t * g * i * (one - i)
                da_f = dc_t * cp * f * (one - f)
                d_row[j], d_row[hidden + j], d_row[2 * hidden + j] = da_i, da_f, dc_t * i * (one - g * g)
                dc_prev = dc_t * f
                if peep:
                    dc_prev += p[j] * da_i + p[hidden + j] * da_f
                    dsmall[j] += da_i * cp
                    dsmall[hidden + j] += da_f * cp
                if zon_c:
                    dc_prev += zc[row, j] * dc_new
                dc[b, j] = dc_prev
            if ln:  # dz = rstd (dzn - mean(dzn) - zn mean(dzn * zn)), dzn = da * w_ln
                z_row, dz_row = zn[row], dz[row]
                s1, s2 = dt(0), dt(0)
                for q in range(width):
                    v = d_row[q] * ln_w[q]
                    s1 += v
                    s2 += v * z_row[q]
                m1, m2, rstd = dt(s1 / width), dt(s2 / width), stats[row, 0]
                for q in range(width):
                    dz_row[q] = rstd * (d_row[q] * ln_w[q] - m1 - z_row[q] * m2)
        if own_product:
            product_to_prev(fn, dz[off:] if ln else da[off:], w_hh, dhm, bs, False)  # dhm[:bs] = dz W_hh
            for b in range(bs):
                for j in range(hidden):
                    dh[b, j] += dhm[b, j] * r[b, j] if rdrop else dhm[b, j]
