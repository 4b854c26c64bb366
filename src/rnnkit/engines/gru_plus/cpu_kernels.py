"""Numba time loops of the GRU+ CPU engine: forward and hand-derived BPTT (math: rnnkit.cells.gru_plus).

The layout and conventions are rnnkit.engines.cpu_kernels' (read its docstring): packed time-major
rows, batch_sizes[t] rows from offsets[t], states (B, .) updated in place, rows beyond batch_sizes[t]
untouched at step t, the recurrent product of each step through torch's BLAS (`gemm`), float32 with
the rational tanh and float64 with libm. Like the stock kernels, both run the processing steps
k0 <= k < k1 and, with own_product=False, leave the recurrent product to the caller (the stock engine's
stepwise strategy for large float32 steps: forward, g holds hm[:bs] W_hh^T on entry; backward, the
caller adds (dg W_hh) * rdrop to dh[:bs] after the step); there is no one-row strategy here.

Per step, forward:
    g[:bs] = hm[:bs] W_hh^T                          one gemm (hm = h * rdrop with rdrop, kept up to
                                                     date by the previous step; else the product reads h)
    per row: layer norm over the 3H features         two passes for mean and variance (float64 sums)
             gates, zoneout, h updated in place

Per step, backward (steps in the opposite order):
    per row: dh' = dh + d_out_t; dxp, dhp; dh = the direct paths (zoneout, z * h)
             layer norm: two sums over the 3H features, then dg
    dhm[:bs] = dg[:bs] W_hh                          one gemm (or the row product for one row)
    dh[:bs] += dhm * rdrop[:bs]
"""

from __future__ import annotations

import math

from numba import njit

from ..blas import gemm
from ..cpu_kernels import KERNEL, gather_prev, product_to_prev, sigmoid, step_at, tanh


@njit(**KERNEL)
def forward(fn, xp, w_hh, b_hh, ln_w, ln_b, rdrop, zoneout, h, batch_sizes, offsets, reverse, use_ln, use_rdrop,
            use_zoneout, eps, out, cache, g_hat, rstd, hm, g, k0, k1, own_product):
    """out (N, H); cache (N, 4H) = [r, z, n, h_n]; g_hat (N, 3H) and rstd (N,) written with use_ln;
    h (B, H) initial -> final; with use_rdrop hm (B, H) = h * rdrop, what the product reads: the caller's
    h0 * rdrop on entry, kept up to date for the running rows (unused without rdrop); g (B, 3H) scratch (the
    caller's product with own_product=False; LN overwrites it in place). b_hh, ln_w, ln_b (3H) are zeros, ones,
    zeros where absent; rdrop (B, H), zoneout (N, H) are read only when used."""
    num_steps, hidden = batch_sizes.shape[0], h.shape[1]
    width = 3 * hidden
    one = out.dtype.type(1)
    src = hm if use_rdrop else h
    for k in range(k0, k1):
        t = step_at(k, num_steps, reverse)
        bs, off = batch_sizes[t], offsets[t]
        if own_product:
            gemm(fn, True, False, width, bs, hidden, g.dtype.type(1), w_hh, hidden, src, hidden, g.dtype.type(0),
                 g, width)  # g[:bs] = src[:bs] W_hh^T
        for b in range(bs):
            g_row, row = g[b], off + b
            if use_ln:  # g_row becomes hp = ĝ * gamma + beta in place; ĝ is saved
                total = 0.0
                for c in range(width):
                    total += g_row[c]
                mean = total / width
                total = 0.0
                for c in range(width):
                    d = g_row[c] - mean
                    total += d * d
                r_std = 1.0 / math.sqrt(total / width + eps)
                rstd[row] = r_std
                gh_row = g_hat[row]
                for c in range(width):
                    v = out.dtype.type((g_row[c] - mean) * r_std)
                    gh_row[c] = v
                    g_row[c] = v * ln_w[c] + ln_b[c]
            x_row, h_row, o_row, k_row = xp[row], h[b], out[row], cache[row]
            for j in range(hidden):
                r = sigmoid(x_row[j] + g_row[j] + b_hh[j])
                z = sigmoid(x_row[hidden + j] + g_row[hidden + j] + b_hh[hidden + j])
                h_n = g_row[2 * hidden + j] + b_hh[2 * hidden + j]
                n = tanh(x_row[2 * hidden + j] + r * h_n)
                h_prev = h_row[j]
                h_new = (one - z) * n + z * h_prev
                if use_zoneout:
                    zh = zoneout[row, j]
                    h_new = zh * h_prev + (one - zh) * h_new
                h_row[j] = h_new
                o_row[j] = h_new
                k_row[j], k_row[hidden + j], k_row[2 * hidden + j], k_row[3 * hidden + j] = r, z, n, h_n
            if use_rdrop:  # a loop of its own: a condition inside the loop above could keep it from vectorising
                for j in range(hidden):
                    hm[b, j] = h_row[j] * rdrop[b, j]


@njit(**KERNEL)
def backward(fn, w_hh, ln_w, rdrop, zoneout, h0, out, cache, g_hat, rstd, dout, dh, batch_sizes, offsets, reverse,
             use_ln, use_rdrop, use_zoneout, dxp, dhp, dg, hprev, dhm, k0, k1, own_product):
    """dxp, dhp (N, 3H): the gradients at xp and hp; dg (N, 3H) the gradient at g = hm W_hh^T (written with
    use_ln; without layer norm the caller passes dhp as dg); hprev (N, H) the state each step started from;
    dh (B, H) gradient at the final state -> at the initial state; dhm (B, H) scratch."""
    num_steps, hidden = batch_sizes.shape[0], h0.shape[1]
    width = 3 * hidden
    one, zero = out.dtype.type(1), out.dtype.type(0)
    for k in range(k0, k1):
        t = step_at(k, num_steps, not reverse)  # backward visits the steps in the opposite order
        bs, off = batch_sizes[t], offsets[t]
        gather_prev(t, bs, batch_sizes, offsets, reverse, out, h0, hprev, off)
        for b in range(bs):
            row = off + b
            k_row, do_row, dh_row, hp_row = cache[row], dout[row], dh[b], hprev[row]
            dx_row, dp_row = dxp[row], dhp[row]
            for j in range(hidden):
                r, z, n, h_n = k_row[j], k_row[hidden + j], k_row[2 * hidden + j], k_row[3 * hidden + j]
                d = dh_row[j] + do_row[j]  # from the output at t and from step t+1
                d_tilde = d
                direct = zero
                if use_zoneout:
                    zh = zoneout[row, j]
                    d_tilde = d * (one - zh)
                    direct = d * zh  # h' = zh * h + ...
                da_n = d_tilde * (one - z) * (one - n * n)
                da_r = da_n * h_n * r * (one - r)
                da_z = d_tilde * (hp_row[j] - n) * z * (one - z)
                dx_row[j], dx_row[hidden + j], dx_row[2 * hidden + j] = da_r, da_z, da_n
                dp_row[j], dp_row[hidden + j], dp_row[2 * hidden + j] = da_r, da_z, da_n * r
                dh_row[j] = direct + d_tilde * z  # h~ = ... + z * h
            if use_ln:  # dg = rstd * (dĝ - mean(dĝ) - ĝ * mean(dĝ * ĝ)), dĝ = dhp * gamma
                gh_row, dg_row = g_hat[row], dg[row]
                s1 = 0.0
                s2 = 0.0
                for c in range(width):
                    d_hat = dp_row[c] * ln_w[c]
                    s1 += d_hat
                    s2 += d_hat * gh_row[c]
                m1, m2, r_std = s1 / width, s2 / width, rstd[row]
                for c in range(width):
                    dg_row[c] = out.dtype.type(r_std * (dp_row[c] * ln_w[c] - m1 - gh_row[c] * m2))
        if not own_product:
            continue
        if use_rdrop:  # dh[:bs] += (dg W_hh) * rdrop
            product_to_prev(fn, dg[off:], w_hh, dhm, bs, False)
            for b in range(bs):
                for j in range(hidden):
                    dh[b, j] += dhm[b, j] * rdrop[b, j]
        else:
            product_to_prev(fn, dg[off:], w_hh, dh, bs, True)
