r"""Triton kernels of the GRU+ engine (math: rnnkit.cells.gru_plus), launched once per phase and step.

Layer normalisation of the recurrent product needs the whole 3H-wide row of g = hm W_hh^T before any
gate of that row can be formed, so each step is split at that point into two launches:

    forward_product   grid (row tiles, column tiles of 3H): g[rows, cols] = (h_prev * rdrop) W_hh[cols]^T,
                      float32, into g (N, 3H)
    forward_gates     grid (row tiles,): a program owns BLOCK_B whole rows. With layer norm it sums each
                      row in two passes over its column chunks (mean, then variance), then in one pass over
                      the H units: ĝ (written over g: the saved ĝ), hp = ĝ * gamma + beta + b_hh, the
                      gates, zoneout, the new state into out, h_n and the cache [r, z, n, h_n]

and the backward of a step likewise:

    backward_gates    grid (row tiles,): dh' = d_state + d_out_t; dxp, dhp = [da_r, da_z, da_n * r] (float32),
                      d_state = the direct paths (zoneout's zh * dh', z * dh~). With layer norm, two row sums
                      over the 3H features in the same pass, then a second pass writes
                      dg = rstd * (dĝ - mean(dĝ) - ĝ * mean(dĝ ĝ)), dĝ = dhp * gamma; without, dg = dhp.
    backward_product  grid (row tiles, column tiles of H): d_state[rows, cols] += (dg W_hh)[rows, cols] * rdrop

The launch boundary is the barrier between phases and steps (no grid-wide barrier, no persistent
strategy). The helpers (step order, previous-state tiles, products, rounding) are
rnnkit.engines.triton_kernels'; read its docstring for the conventions: loop index k runs the steps in
processing order, "prev" is the step a state comes from, rows beyond its batch size start from h0.
Precision as the stock kernels: matrix operands in the input dtype, float32 accumulation; g, ĝ, rstd,
the cache and dhp are float32; dg (the product operand) is in the input dtype.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..triton_kernels import INTERPRETED, mma, narrow, prev_tile, row_offsets, rows_product, sigmoid, step_at, tanh, \
    w_tile

__all__ = ["INTERPRETED", "forward_product", "forward_gates", "backward_gates", "backward_product"]

NOT_SPECIALIZED = ["k"]  # a new value every step: one compiled variant for all


@triton.jit(do_not_specialize=NOT_SPECIALIZED)
def forward_product(w_hh_ptr, rdrop_ptr, h0_ptr, out_ptr, g_ptr, sizes_ptr, offsets_ptr, T, k, H,
                    REVERSE: tl.constexpr, RDROP: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """g[off + rows, cols] = (h_{t-1} * rdrop)[rows] @ W_hh[cols]^T, cols within 3H; g float32 (N, 3H)."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < 3 * H
    off, bs, off_prev, bs_prev = step_at(k, T, sizes_ptr, offsets_ptr, REVERSE, False)
    row_mask = rows < bs
    acc = tl.zeros([BLOCK_B, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        m = row_mask[:, None] & (ks < H)[None, :]
        h = prev_tile(out_ptr, h0_ptr, off_prev, bs_prev, rows, ks, H, m)
        if RDROP:  # one mask row per sequence, the same at every step
            d = tl.load(rdrop_ptr + row_offsets(0, rows, H, ks), mask=m, other=0.0)
            h = (h.to(tl.float32) * d.to(tl.float32)).to(h.dtype)
        acc = mma(h, w_tile(w_hh_ptr, cols, col_mask, ks, H), acc, PRECISION, UPCAST)
    tl.store(g_ptr + row_offsets(off, rows, 3 * H, cols), acc, mask=row_mask[:, None] & col_mask[None, :])


@triton.jit
def row_stats(g_ptr, off, rows, row_mask, H, EPS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """Mean and 1/sqrt(var + EPS) of each row of g[off + rows, :3H] (biased variance), two passes. (BLOCK_B,) each"""
    total = tl.zeros([BLOCK_B], dtype=tl.float32)
    for c0 in range(0, 3 * H, BLOCK_H):
        cs = c0 + tl.arange(0, BLOCK_H)
        m = row_mask[:, None] & (cs < 3 * H)[None, :]
        total += tl.sum(tl.load(g_ptr + row_offsets(off, rows, 3 * H, cs), mask=m, other=0.0), axis=1)
    mean = total / (3 * H)
    total = tl.zeros([BLOCK_B], dtype=tl.float32)
    for c0 in range(0, 3 * H, BLOCK_H):
        cs = c0 + tl.arange(0, BLOCK_H)
        m = row_mask[:, None] & (cs < 3 * H)[None, :]
        d = tl.where(m, tl.load(g_ptr + row_offsets(off, rows, 3 * H, cs), mask=m, other=0.0) - mean[:, None], 0.0)
        total += tl.sum(d * d, axis=1)
    return mean, 1.0 / tl.sqrt(total / (3 * H) + EPS)


@triton.jit
def normalised(g_ptr, ln_w_ptr, ln_b_ptr, b_hh_ptr, off, rows, gate_cols, col_mask, mask, mean, r_std, H,
               LN: tl.constexpr):
    """hp of one gate's columns (3H-wide index gate_cols): ĝ * gamma + beta + b_hh, or g + b_hh without
    layer norm. With layer norm ĝ replaces g in the buffer (the saved ĝ)."""
    g = tl.load(g_ptr + row_offsets(off, rows, 3 * H, gate_cols), mask=mask, other=0.0)
    if LN:
        g = (g - mean[:, None]) * r_std[:, None]
        tl.store(g_ptr + row_offsets(off, rows, 3 * H, gate_cols), g, mask=mask)
        g = g * tl.load(ln_w_ptr + gate_cols, mask=col_mask, other=0.0).to(tl.float32)[None, :] \
            + tl.load(ln_b_ptr + gate_cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    return g + tl.load(b_hh_ptr + gate_cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]


@triton.jit(do_not_specialize=NOT_SPECIALIZED)
def forward_gates(xp_ptr, b_hh_ptr, ln_w_ptr, ln_b_ptr, zoneout_ptr, h0_ptr, out_ptr, h_n_ptr, g_ptr, cache_ptr,
                  rstd_ptr, sizes_ptr, offsets_ptr, T, k, H,
                  REVERSE: tl.constexpr, LN: tl.constexpr, ZONEOUT: tl.constexpr, EPS: tl.constexpr,
                  UPCAST: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """One step's gates for whole rows (b_hh, gamma, beta are always given: zeros, ones, zeros when absent):

        hp = LN(g) * gamma + beta + b_hh;  r = sigmoid(x_r + h_r);  z = sigmoid(x_z + h_z)
        n = tanh(x_n + r * h_n);  h~ = (1 - z) * n + z * h_{t-1};  h_t = zh * h_{t-1} + (1 - zh) * h~
    writes out, h_n, cache (N, 4H) = [r, z, n, h_n] float32, and with LN ĝ over g and rstd (N,).
    """
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    off, bs, off_prev, bs_prev = step_at(k, T, sizes_ptr, offsets_ptr, REVERSE, False)
    row_mask = rows < bs
    mean = tl.zeros([BLOCK_B], dtype=tl.float32)
    r_std = tl.zeros([BLOCK_B], dtype=tl.float32)
    if LN:
        mean, r_std = row_stats(g_ptr, off, rows, row_mask, H, EPS, BLOCK_B, BLOCK_H)
        tl.store(rstd_ptr + off + rows, r_std, mask=row_mask)
    for c0 in range(0, H, BLOCK_H):
        cols = c0 + tl.arange(0, BLOCK_H)
        col_mask = cols < H
        mask = row_mask[:, None] & col_mask[None, :]
        h_r = normalised(g_ptr, ln_w_ptr, ln_b_ptr, b_hh_ptr, off, rows, cols, col_mask, mask, mean, r_std, H, LN)
        h_z = normalised(g_ptr, ln_w_ptr, ln_b_ptr, b_hh_ptr, off, rows, H + cols, col_mask, mask, mean, r_std, H, LN)
        h_n = normalised(g_ptr, ln_w_ptr, ln_b_ptr, b_hh_ptr, off, rows, 2 * H + cols, col_mask, mask, mean, r_std, H,
                         LN)
        x_r = tl.load(xp_ptr + row_offsets(off, rows, 3 * H, cols), mask=mask, other=0.0).to(tl.float32)
        x_z = tl.load(xp_ptr + row_offsets(off, rows, 3 * H, H + cols), mask=mask, other=0.0).to(tl.float32)
        x_n = tl.load(xp_ptr + row_offsets(off, rows, 3 * H, 2 * H + cols), mask=mask, other=0.0).to(tl.float32)
        r = sigmoid(x_r + h_r)
        z = sigmoid(x_z + h_z)
        n = tanh(x_n + r * h_n)  # r gates the recurrent term with its bias
        h_prev = prev_tile(out_ptr, h0_ptr, off_prev, bs_prev, rows, cols, H, mask).to(tl.float32)
        h = (1.0 - z) * n + z * h_prev
        if ZONEOUT:
            zh = tl.load(zoneout_ptr + row_offsets(off, rows, H, cols), mask=mask, other=0.0).to(tl.float32)
            h = zh * h_prev + (1.0 - zh) * h
        h = narrow(h, out_ptr, UPCAST)
        tl.store(cache_ptr + row_offsets(off, rows, 4 * H, cols), r, mask=mask)
        tl.store(cache_ptr + row_offsets(off, rows, 4 * H, H + cols), z, mask=mask)
        tl.store(cache_ptr + row_offsets(off, rows, 4 * H, 2 * H + cols), n, mask=mask)
        tl.store(cache_ptr + row_offsets(off, rows, 4 * H, 3 * H + cols), h_n, mask=mask)
        tl.store(out_ptr + row_offsets(off, rows, H, cols), h, mask=mask)
        tl.store(h_n_ptr + row_offsets(0, rows, H, cols), h, mask=mask)


@triton.jit
def weighted(dp, gh_ptr, ln_w_ptr, off, rows, gate_cols, col_mask, mask, H):
    """Row sums of dĝ = dhp * gamma and of dĝ * ĝ over one gate's columns. (BLOCK_B,) each"""
    d_hat = tl.where(mask, dp * tl.load(ln_w_ptr + gate_cols, mask=col_mask, other=0.0).to(tl.float32)[None, :], 0.0)
    g_hat = tl.load(gh_ptr + row_offsets(off, rows, 3 * H, gate_cols), mask=mask, other=0.0)
    return tl.sum(d_hat, axis=1), tl.sum(d_hat * g_hat, axis=1)


@triton.jit(do_not_specialize=NOT_SPECIALIZED)
def backward_gates(ln_w_ptr, zoneout_ptr, h0_ptr, out_ptr, cache_ptr, g_hat_ptr, rstd_ptr, d_out_ptr, d_state_ptr,
                   dxp_ptr, dhp_ptr, dg_ptr, sizes_ptr, offsets_ptr, T, k, H,
                   REVERSE: tl.constexpr, LN: tl.constexpr, ZONEOUT: tl.constexpr, UPCAST: tl.constexpr,
                   BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """One step's gate gradients for whole rows; d_state (B, H) float32 holds dh from step t+1 on entry and
    the direct paths on exit (backward_product adds the path through W_hh):

        dh' = d_state + d_out_t;  dh~ = dh' (1 - zh);  d_state = dh' zh + dh~ z
        da_n = dh~ (1 - z)(1 - n^2);  da_r = da_n h_n r(1-r);  da_z = dh~ (h_{t-1} - n) z(1-z)
        dxp = [da_r, da_z, da_n];  dhp = [da_r, da_z, da_n r];  dg = LN's backward of dhp (or dhp)
    """
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    off, bs, off_prev, bs_prev = step_at(k, T, sizes_ptr, offsets_ptr, REVERSE, True)
    row_mask = rows < bs
    s1 = tl.zeros([BLOCK_B], dtype=tl.float32)
    s2 = tl.zeros([BLOCK_B], dtype=tl.float32)
    for c0 in range(0, H, BLOCK_H):
        cols = c0 + tl.arange(0, BLOCK_H)
        col_mask = cols < H
        mask = row_mask[:, None] & col_mask[None, :]
        d = tl.load(d_state_ptr + row_offsets(0, rows, H, cols), mask=mask, other=0.0)
        d += tl.load(d_out_ptr + row_offsets(off, rows, H, cols), mask=mask, other=0.0).to(tl.float32)
        r = tl.load(cache_ptr + row_offsets(off, rows, 4 * H, cols), mask=mask, other=0.0)
        z = tl.load(cache_ptr + row_offsets(off, rows, 4 * H, H + cols), mask=mask, other=0.0)
        n = tl.load(cache_ptr + row_offsets(off, rows, 4 * H, 2 * H + cols), mask=mask, other=0.0)
        h_n = tl.load(cache_ptr + row_offsets(off, rows, 4 * H, 3 * H + cols), mask=mask, other=0.0)
        h_prev = prev_tile(out_ptr, h0_ptr, off_prev, bs_prev, rows, cols, H, mask).to(tl.float32)
        d_tilde = d
        direct = tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)
        if ZONEOUT:
            zh = tl.load(zoneout_ptr + row_offsets(off, rows, H, cols), mask=mask, other=0.0).to(tl.float32)
            d_tilde = d * (1.0 - zh)
            direct = d * zh
        da_n = d_tilde * (1.0 - z) * (1.0 - n * n)
        da_r = da_n * h_n * r * (1.0 - r)
        da_z = d_tilde * (h_prev - n) * z * (1.0 - z)
        dp_n = da_n * r
        tl.store(dxp_ptr + row_offsets(off, rows, 3 * H, cols), narrow(da_r, dxp_ptr, UPCAST), mask=mask)
        tl.store(dxp_ptr + row_offsets(off, rows, 3 * H, H + cols), narrow(da_z, dxp_ptr, UPCAST), mask=mask)
        tl.store(dxp_ptr + row_offsets(off, rows, 3 * H, 2 * H + cols), narrow(da_n, dxp_ptr, UPCAST), mask=mask)
        tl.store(dhp_ptr + row_offsets(off, rows, 3 * H, cols), da_r, mask=mask)
        tl.store(dhp_ptr + row_offsets(off, rows, 3 * H, H + cols), da_z, mask=mask)
        tl.store(dhp_ptr + row_offsets(off, rows, 3 * H, 2 * H + cols), dp_n, mask=mask)
        tl.store(d_state_ptr + row_offsets(0, rows, H, cols), direct + d_tilde * z, mask=mask)
        if LN:
            a1, a2 = weighted(da_r, g_hat_ptr, ln_w_ptr, off, rows, cols, col_mask, mask, H)
            b1, b2 = weighted(da_z, g_hat_ptr, ln_w_ptr, off, rows, H + cols, col_mask, mask, H)
            c1, c2 = weighted(dp_n, g_hat_ptr, ln_w_ptr, off, rows, 2 * H + cols, col_mask, mask, H)
            s1 += a1 + b1 + c1
            s2 += a2 + b2 + c2
        else:
            tl.store(dg_ptr + row_offsets(off, rows, 3 * H, cols), narrow(da_r, dg_ptr, UPCAST), mask=mask)
            tl.store(dg_ptr + row_offsets(off, rows, 3 * H, H + cols), narrow(da_z, dg_ptr, UPCAST), mask=mask)
            tl.store(dg_ptr + row_offsets(off, rows, 3 * H, 2 * H + cols), narrow(dp_n, dg_ptr, UPCAST), mask=mask)
    if LN:  # dg = rstd * (dĝ - mean(dĝ) - ĝ * mean(dĝ * ĝ))
        tl.debug_barrier()  # the pass below reads dhp that other threads of this program stored
        m1, m2 = s1 / (3 * H), s2 / (3 * H)
        r_std = tl.load(rstd_ptr + off + rows, mask=row_mask, other=0.0)
        for c0 in range(0, 3 * H, BLOCK_H):
            cs = c0 + tl.arange(0, BLOCK_H)
            c_mask = cs < 3 * H
            m = row_mask[:, None] & c_mask[None, :]
            dp = tl.load(dhp_ptr + row_offsets(off, rows, 3 * H, cs), mask=m, other=0.0)
            g_hat = tl.load(g_hat_ptr + row_offsets(off, rows, 3 * H, cs), mask=m, other=0.0)
            d_hat = dp * tl.load(ln_w_ptr + cs, mask=c_mask, other=0.0).to(tl.float32)[None, :]
            dg = r_std[:, None] * (d_hat - m1[:, None] - g_hat * m2[:, None])
            tl.store(dg_ptr + row_offsets(off, rows, 3 * H, cs), narrow(dg, dg_ptr, UPCAST), mask=m)


@triton.jit(do_not_specialize=NOT_SPECIALIZED)
def backward_product(w_hh_ptr, rdrop_ptr, dg_ptr, d_state_ptr, sizes_ptr, offsets_ptr, T, k, H,
                     REVERSE: tl.constexpr, RDROP: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                     BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """d_state[rows, cols] += (dg_t W_hh)[rows, cols] * rdrop[rows, cols]: the path through hm = h * rdrop."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    col_mask = cols < H
    off, bs, off_prev, bs_prev = step_at(k, T, sizes_ptr, offsets_ptr, REVERSE, True)
    row_mask = rows < bs
    mask = row_mask[:, None] & col_mask[None, :]
    dhm = tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)
    dhm = rows_product(dhm, dg_ptr, 3 * H, 0, w_hh_ptr, H, 0, off, rows, row_mask, cols, col_mask, 3 * H,
                       PRECISION, UPCAST, BLOCK_K)  # (BLOCK_B, BLOCK_H) dg_t W_hh
    if RDROP:
        dhm *= tl.load(rdrop_ptr + row_offsets(0, rows, H, cols), mask=mask, other=0.0).to(tl.float32)
    d = tl.load(d_state_ptr + row_offsets(0, rows, H, cols), mask=mask, other=0.0)
    tl.store(d_state_ptr + row_offsets(0, rows, H, cols), d + dhm, mask=mask)
