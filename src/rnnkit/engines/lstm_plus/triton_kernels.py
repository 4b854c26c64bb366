r"""Triton kernels of the lstm_plus family: one forward and one backward kernel, each the whole time loop.

The math is rnnkit.cells.lstm_plus (equations and backward in its docstring); the helpers (sigmoid,
tanh from exp, mma, narrow, prev_tile, w_tile, step_at) are rnnkit.engines.triton_kernels'.

Work split, chosen to be simple and correct rather than fast: program p owns batch rows
p*BLOCK_B + [0, BLOCK_B) and ALL hidden units (BLOCK_H = next power of two >= H) for every step,
in one launch. Both layer norms reduce over a row's features (4H and H), and every unit of a row
needs every unit of the previous state, so with whole rows per program no program ever waits for
another: no grid-wide barrier, only tl.debug_barrier() between a step's stores and the next
reads of the same program (other warps of the program wrote them). The price: the grid has
ceil(B / BLOCK_B) programs (little parallelism at small batches) and a program holds several
BLOCK_B x BLOCK_H float32 tiles, which spill to the stack beyond BLOCK_H = 64 (ptxas for sm_90: a few
KB per thread at 256 to 1024 with triton.py's num_warps). A faster design would split the columns
over programs and reduce the layer norms' sums across them (a grid barrier per step, as the stock
persistent kernels have); not done here.

Forward, per step t, the program's running rows:
    z = (h_{t-1} * r) W_hh^T as four (BLOCK_B, BLOCK_H) gate tiles, K loop over H in BLOCK_K
    LN over the 4H features (ln), + xp_t + b_hh, peepholes, gates, c~, LN over H, h~, zoneout
    writes gates, cs = c', ct = c~ (zoneout_c), zn and stats (ln) in float32, out and h_n, c_n
Backward, per step (latest first), d_state / dc_state (B, H) float32 carry the gradient reaching
each row's h and c (d_h_n, d_c_n at the start, dh_0, dc_0 at the end):
    dh~, do, dy, LN(c~)'s backward, dc~, the gate gradients da (written to da), dc_state = dc_prev,
    LN(hp)'s backward dz (written to dz with ln), then d_state = zh dh' + (dz W_hh) * r, the
    product read back from the rows just written (K loop over 4H).
The small parameters' gradients [dp_i, dp_f, dp_o, dw_c_ln, db_c_ln] are summed over the program's
rows and steps in registers and written once per program to partial (programs, 5H); triton.py sums them.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..triton_kernels import INTERPRETED  # noqa: F401  (how the kernels below were decorated)
from ..triton_kernels import mma, narrow, prev_tile, row_offsets, sigmoid, step_at, tanh, w_tile

@triton.jit
def load_rows(ptr, off, rows, width, cols, mask):
    return tl.load(ptr + row_offsets(off, rows, width, cols), mask=mask, other=0.0).to(tl.float32)


@triton.jit
def load_vec(ptr, cols, col_mask):
    return tl.load(ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]


@triton.jit
def f32_product(acc, a_ptr, w_ptr, off, rows, row_mask, cols, col_mask, K, N, PRECISION: tl.constexpr,
                UPCAST: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc + A[off + rows, :K] @ W[:K, cols] for float32 A (N', K) written earlier in this launch and W (K, N) of any
    float dtype, multiplied in float32 (16-bit W is widened: the gradient keeps float32's accuracy)."""
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(a_ptr + (off + rows).to(tl.int64)[:, None] * K + ks[None, :],
                    mask=row_mask[:, None] & (ks < K)[None, :], other=0.0, cache_modifier=".cg")
        w = tl.load(w_ptr + ks.to(tl.int64)[:, None] * N + cols[None, :], mask=(ks < K)[:, None] & col_mask[None, :],
                    other=0.0).to(tl.float32)
        if UPCAST:
            acc = tl.dot(a, w, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, w, acc, input_precision=PRECISION)
    return acc


@triton.jit
def lstm_plus_forward(xp_ptr, w_hh_ptr, b_hh_ptr, ln_w_ptr, ln_b_ptr, lnc_w_ptr, lnc_b_ptr, peep_ptr, r_ptr, zh_ptr,
                      zc_ptr, h0_ptr, c0_ptr, out_ptr, cs_ptr, ct_ptr, gates_ptr, zn_ptr, stats_ptr, h_n_ptr, c_n_ptr,
                      sizes_ptr, offsets_ptr, T, H,
                      REVERSE: tl.constexpr, HAS_BIAS: tl.constexpr, LN: tl.constexpr, PEEP: tl.constexpr,
                      RDROP: tl.constexpr, ZH: tl.constexpr, ZC: tl.constexpr, PRECISION: tl.constexpr,
                      UPCAST: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """All steps for the program's rows. cs, ct, gates, zn, stats are float32; c_n the input dtype; out and h_n
    float32 (triton.py rounds them for 16-bit inputs once, at the end: the next step reads h_{t-1} from out)."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_H)
    col_mask = cols < H
    for k in range(0, T):
        off, bs, off_prev, bs_prev = step_at(k, T, sizes_ptr, offsets_ptr, REVERSE, False)
        if tl.program_id(0) * BLOCK_B < bs:  # skip row blocks whose sequences have all finished
            row_mask = rows < bs
            mask = row_mask[:, None] & col_mask[None, :]
            a_i = tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)
            a_f = tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)
            a_g = tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)
            a_o = tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)
            for k0 in range(0, H, BLOCK_K):  # z = hm W_hh^T, each hm tile serving the four gates
                kk = k0 + tl.arange(0, BLOCK_K)
                k_mask = row_mask[:, None] & (kk < H)[None, :]
                h = prev_tile(out_ptr, h0_ptr, off_prev, bs_prev, rows, kk, H, k_mask)  # (BLOCK_B, BLOCK_K)
                if RDROP:
                    h = h.to(tl.float32) * load_rows(r_ptr, 0, rows, H, kk, k_mask)
                h = h.to(w_hh_ptr.dtype.element_ty)  # the product's operands in the input dtype
                a_i = mma(h, w_tile(w_hh_ptr, 0 * H + cols, col_mask, kk, H), a_i, PRECISION, UPCAST)
                a_f = mma(h, w_tile(w_hh_ptr, 1 * H + cols, col_mask, kk, H), a_f, PRECISION, UPCAST)
                a_g = mma(h, w_tile(w_hh_ptr, 2 * H + cols, col_mask, kk, H), a_g, PRECISION, UPCAST)
                a_o = mma(h, w_tile(w_hh_ptr, 3 * H + cols, col_mask, kk, H), a_o, PRECISION, UPCAST)
            if LN:  # over the 4H features of each row; masked columns hold 0 and are left out
                mean = (tl.sum(a_i, 1) + tl.sum(a_f, 1) + tl.sum(a_g, 1) + tl.sum(a_o, 1)) / (4 * H)
                a_i = tl.where(col_mask[None, :], a_i - mean[:, None], 0.0)
                a_f = tl.where(col_mask[None, :], a_f - mean[:, None], 0.0)
                a_g = tl.where(col_mask[None, :], a_g - mean[:, None], 0.0)
                a_o = tl.where(col_mask[None, :], a_o - mean[:, None], 0.0)
                var = (tl.sum(a_i * a_i, 1) + tl.sum(a_f * a_f, 1) + tl.sum(a_g * a_g, 1)
                       + tl.sum(a_o * a_o, 1)) / (4 * H)
                rstd_z = 1.0 / tl.sqrt(var + 1e-5)  # eps as torch's layer_norm
                rstd = rstd_z[:, None]
                a_i, a_f, a_g, a_o = a_i * rstd, a_f * rstd, a_g * rstd, a_o * rstd
                tl.store(zn_ptr + row_offsets(off, rows, 4 * H, 0 * H + cols), a_i, mask=mask)
                tl.store(zn_ptr + row_offsets(off, rows, 4 * H, 1 * H + cols), a_f, mask=mask)
                tl.store(zn_ptr + row_offsets(off, rows, 4 * H, 2 * H + cols), a_g, mask=mask)
                tl.store(zn_ptr + row_offsets(off, rows, 4 * H, 3 * H + cols), a_o, mask=mask)
                tl.store(stats_ptr + (off + rows).to(tl.int64) * 3, rstd_z, mask=row_mask)
                a_i = a_i * load_vec(ln_w_ptr, 0 * H + cols, col_mask) + load_vec(ln_b_ptr, 0 * H + cols, col_mask)
                a_f = a_f * load_vec(ln_w_ptr, 1 * H + cols, col_mask) + load_vec(ln_b_ptr, 1 * H + cols, col_mask)
                a_g = a_g * load_vec(ln_w_ptr, 2 * H + cols, col_mask) + load_vec(ln_b_ptr, 2 * H + cols, col_mask)
                a_o = a_o * load_vec(ln_w_ptr, 3 * H + cols, col_mask) + load_vec(ln_b_ptr, 3 * H + cols, col_mask)
            a_i += load_rows(xp_ptr, off, rows, 4 * H, 0 * H + cols, mask)
            a_f += load_rows(xp_ptr, off, rows, 4 * H, 1 * H + cols, mask)
            a_g += load_rows(xp_ptr, off, rows, 4 * H, 2 * H + cols, mask)
            a_o += load_rows(xp_ptr, off, rows, 4 * H, 3 * H + cols, mask)
            if HAS_BIAS:
                a_i += load_vec(b_hh_ptr, 0 * H + cols, col_mask)
                a_f += load_vec(b_hh_ptr, 1 * H + cols, col_mask)
                a_g += load_vec(b_hh_ptr, 2 * H + cols, col_mask)
                a_o += load_vec(b_hh_ptr, 3 * H + cols, col_mask)
            c_prev = prev_tile(cs_ptr, c0_ptr, off_prev, bs_prev, rows, cols, H, mask).to(tl.float32)
            if PEEP:
                a_i += load_vec(peep_ptr, 0 * H + cols, col_mask) * c_prev
                a_f += load_vec(peep_ptr, 1 * H + cols, col_mask) * c_prev
            i, f, g = sigmoid(a_i), sigmoid(a_f), tanh(a_g)
            c_t = f * c_prev + i * g  # c~
            if PEEP:
                a_o += load_vec(peep_ptr, 2 * H + cols, col_mask) * c_t
            o = sigmoid(a_o)
            y = c_t
            if LN:  # over the H units of each row
                mean_c = tl.sum(tl.where(col_mask[None, :], c_t, 0.0), 1) / H
                d = tl.where(col_mask[None, :], c_t - mean_c[:, None], 0.0)
                rstd_c = 1.0 / tl.sqrt(tl.sum(d * d, 1) / H + 1e-5)
                tl.store(stats_ptr + (off + rows).to(tl.int64) * 3 + 1, mean_c, mask=row_mask)
                tl.store(stats_ptr + (off + rows).to(tl.int64) * 3 + 2, rstd_c, mask=row_mask)
                y = d * rstd_c[:, None] * load_vec(lnc_w_ptr, cols, col_mask) + load_vec(lnc_b_ptr, cols, col_mask)
            h_t = o * tanh(y)  # h~
            c_new = c_t
            if ZC:
                zc = load_rows(zc_ptr, off, rows, H, cols, mask)
                c_new = zc * c_prev + (1.0 - zc) * c_t
                tl.store(ct_ptr + row_offsets(off, rows, H, cols), c_t, mask=mask)
            if ZH:
                zh = load_rows(zh_ptr, off, rows, H, cols, mask)
                h_prev = prev_tile(out_ptr, h0_ptr, off_prev, bs_prev, rows, cols, H, mask).to(tl.float32)
                h_t = zh * h_prev + (1.0 - zh) * h_t
            tl.store(gates_ptr + row_offsets(off, rows, 4 * H, 0 * H + cols), i, mask=mask)
            tl.store(gates_ptr + row_offsets(off, rows, 4 * H, 1 * H + cols), f, mask=mask)
            tl.store(gates_ptr + row_offsets(off, rows, 4 * H, 2 * H + cols), g, mask=mask)
            tl.store(gates_ptr + row_offsets(off, rows, 4 * H, 3 * H + cols), o, mask=mask)
            tl.store(cs_ptr + row_offsets(off, rows, H, cols), c_new, mask=mask)
            tl.store(c_n_ptr + row_offsets(0, rows, H, cols), narrow(c_new, c_n_ptr, UPCAST), mask=mask)
            h_t = narrow(h_t, out_ptr, UPCAST)
            tl.store(out_ptr + row_offsets(off, rows, H, cols), h_t, mask=mask)
            tl.store(h_n_ptr + row_offsets(0, rows, H, cols), h_t, mask=mask)  # the last step a row runs wins
        tl.debug_barrier()  # the next step reads h_t and c_t, which other warps of this program stored


@triton.jit
def lstm_plus_backward(w_hh_ptr, ln_w_ptr, lnc_w_ptr, lnc_b_ptr, peep_ptr, r_ptr, zh_ptr, zc_ptr, c0_ptr,
                       cs_ptr, ct_ptr, gates_ptr, zn_ptr, stats_ptr, d_out_ptr, d_state_ptr, dc_state_ptr,
                       da_ptr, dz_ptr, partial_ptr, sizes_ptr, offsets_ptr, T, H,
                       REVERSE: tl.constexpr, LN: tl.constexpr, PEEP: tl.constexpr, RDROP: tl.constexpr,
                       ZH: tl.constexpr, ZC: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                       BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """BPTT over all steps (latest first) for the program's rows. d_state, dc_state (B, H) float32, in place.
    da (N, 4H) in the input dtype; dz (N, 4H) float32, the gradient of z = hm W_hh^T (da without ln), which
    the product dz W_hh reads back in float32; partial (programs, 5H) float32."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_H)
    col_mask = cols < H
    acc_pi = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc_pf = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc_po = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc_cw = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc_cb = tl.zeros([BLOCK_H], dtype=tl.float32)
    for k in range(0, T):
        off, bs, off_prev, bs_prev = step_at(k, T, sizes_ptr, offsets_ptr, REVERSE, True)
        if tl.program_id(0) * BLOCK_B < bs:
            row_mask = rows < bs
            mask = row_mask[:, None] & col_mask[None, :]
            dh_new = tl.load(d_state_ptr + row_offsets(0, rows, H, cols), mask=mask, other=0.0)
            dh_new += load_rows(d_out_ptr, off, rows, H, cols, mask)  # from the output at t and from step t+1
            dc_new = tl.load(dc_state_ptr + row_offsets(0, rows, H, cols), mask=mask, other=0.0)
            i = tl.load(gates_ptr + row_offsets(off, rows, 4 * H, 0 * H + cols), mask=mask, other=0.0)
            f = tl.load(gates_ptr + row_offsets(off, rows, 4 * H, 1 * H + cols), mask=mask, other=0.0)
            g = tl.load(gates_ptr + row_offsets(off, rows, 4 * H, 2 * H + cols), mask=mask, other=0.0)
            o = tl.load(gates_ptr + row_offsets(off, rows, 4 * H, 3 * H + cols), mask=mask, other=0.0)
            if ZC:
                c_t = tl.load(ct_ptr + row_offsets(off, rows, H, cols), mask=mask, other=0.0)
            else:
                c_t = tl.load(cs_ptr + row_offsets(off, rows, H, cols), mask=mask, other=0.0)
            c_prev = prev_tile(cs_ptr, c0_ptr, off_prev, bs_prev, rows, cols, H, mask).to(tl.float32)
            dh_t = dh_new
            direct = tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)  # the zoneout path to h_{t-1}
            if ZH:
                zh = load_rows(zh_ptr, off, rows, H, cols, mask)
                dh_t = (1.0 - zh) * dh_new
                direct = zh * dh_new
            y = c_t
            if LN:
                mean_c = tl.load(stats_ptr + (off + rows).to(tl.int64) * 3 + 1, mask=row_mask, other=0.0)
                rstd_c = tl.load(stats_ptr + (off + rows).to(tl.int64) * 3 + 2, mask=row_mask, other=0.0)
                cn = tl.where(mask, (c_t - mean_c[:, None]) * rstd_c[:, None], 0.0)
                lnc_w = load_vec(lnc_w_ptr, cols, col_mask)
                y = cn * lnc_w + load_vec(lnc_b_ptr, cols, col_mask)
            ty = tanh(y)
            dy = dh_t * o * (1.0 - ty * ty)
            da_o = dh_t * ty * o * (1.0 - o)
            dc_t = dc_new
            if ZC:
                zc = load_rows(zc_ptr, off, rows, H, cols, mask)
                dc_t = (1.0 - zc) * dc_new
            if LN:  # dc~ += rstd (dcn - mean(dcn) - cn mean(dcn * cn)), dcn = dy * w_c_ln
                dcn = dy * lnc_w
                m1 = tl.sum(dcn, 1) / H
                m2 = tl.sum(dcn * cn, 1) / H
                dc_t += rstd_c[:, None] * (dcn - m1[:, None] - cn * m2[:, None])
                acc_cw += tl.sum(dy * cn, 0)
                acc_cb += tl.sum(dy, 0)
            else:
                dc_t += dy
            if PEEP:
                dc_t += load_vec(peep_ptr, 2 * H + cols, col_mask) * da_o
                acc_po += tl.sum(da_o * c_t, 0)
            da_i = dc_t * g * i * (1.0 - i)
            da_f = dc_t * c_prev * f * (1.0 - f)
            da_g = dc_t * i * (1.0 - g * g)
            dc_prev = dc_t * f
            if PEEP:
                dc_prev += load_vec(peep_ptr, 0 * H + cols, col_mask) * da_i
                dc_prev += load_vec(peep_ptr, 1 * H + cols, col_mask) * da_f
                acc_pi += tl.sum(da_i * c_prev, 0)
                acc_pf += tl.sum(da_f * c_prev, 0)
            if ZC:
                dc_prev += zc * dc_new
            tl.store(dc_state_ptr + row_offsets(0, rows, H, cols), dc_prev, mask=mask)
            tl.store(da_ptr + row_offsets(off, rows, 4 * H, 0 * H + cols), narrow(da_i, da_ptr, UPCAST), mask=mask)
            tl.store(da_ptr + row_offsets(off, rows, 4 * H, 1 * H + cols), narrow(da_f, da_ptr, UPCAST), mask=mask)
            tl.store(da_ptr + row_offsets(off, rows, 4 * H, 2 * H + cols), narrow(da_g, da_ptr, UPCAST), mask=mask)
            tl.store(da_ptr + row_offsets(off, rows, 4 * H, 3 * H + cols), narrow(da_o, da_ptr, UPCAST), mask=mask)
            if LN:  # dz = rstd (dzn - mean(dzn) - zn mean(dzn * zn)) over 4H, dzn = da * w_hh_ln
                d_i = da_i * load_vec(ln_w_ptr, 0 * H + cols, col_mask)
                d_f = da_f * load_vec(ln_w_ptr, 1 * H + cols, col_mask)
                d_g = da_g * load_vec(ln_w_ptr, 2 * H + cols, col_mask)
                d_o = da_o * load_vec(ln_w_ptr, 3 * H + cols, col_mask)
                z_i = tl.load(zn_ptr + row_offsets(off, rows, 4 * H, 0 * H + cols), mask=mask, other=0.0)
                z_f = tl.load(zn_ptr + row_offsets(off, rows, 4 * H, 1 * H + cols), mask=mask, other=0.0)
                z_g = tl.load(zn_ptr + row_offsets(off, rows, 4 * H, 2 * H + cols), mask=mask, other=0.0)
                z_o = tl.load(zn_ptr + row_offsets(off, rows, 4 * H, 3 * H + cols), mask=mask, other=0.0)
                m1 = ((tl.sum(d_i, 1) + tl.sum(d_f, 1) + tl.sum(d_g, 1) + tl.sum(d_o, 1)) / (4 * H))[:, None]
                m2 = ((tl.sum(d_i * z_i, 1) + tl.sum(d_f * z_f, 1) + tl.sum(d_g * z_g, 1)
                       + tl.sum(d_o * z_o, 1)) / (4 * H))[:, None]
                rstd = tl.load(stats_ptr + (off + rows).to(tl.int64) * 3, mask=row_mask, other=0.0)[:, None]
                tl.store(dz_ptr + row_offsets(off, rows, 4 * H, 0 * H + cols), rstd * (d_i - m1 - z_i * m2), mask=mask)
                tl.store(dz_ptr + row_offsets(off, rows, 4 * H, 1 * H + cols), rstd * (d_f - m1 - z_f * m2), mask=mask)
                tl.store(dz_ptr + row_offsets(off, rows, 4 * H, 2 * H + cols), rstd * (d_g - m1 - z_g * m2), mask=mask)
                tl.store(dz_ptr + row_offsets(off, rows, 4 * H, 3 * H + cols), rstd * (d_o - m1 - z_o * m2), mask=mask)
            if not LN:
                tl.store(dz_ptr + row_offsets(off, rows, 4 * H, 0 * H + cols), da_i, mask=mask)
                tl.store(dz_ptr + row_offsets(off, rows, 4 * H, 1 * H + cols), da_f, mask=mask)
                tl.store(dz_ptr + row_offsets(off, rows, 4 * H, 2 * H + cols), da_g, mask=mask)
                tl.store(dz_ptr + row_offsets(off, rows, 4 * H, 3 * H + cols), da_o, mask=mask)
            tl.debug_barrier()  # the product reads every column of the rows just stored (other warps')
            dhm = tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)
            dhm = f32_product(dhm, dz_ptr, w_hh_ptr, off, rows, row_mask, cols, col_mask, 4 * H, H, PRECISION,
                              UPCAST, BLOCK_K)  # dz_t W_hh
            if RDROP:
                dhm = dhm * load_rows(r_ptr, 0, rows, H, cols, mask)
            tl.store(d_state_ptr + row_offsets(0, rows, H, cols), direct + dhm, mask=mask)
        tl.debug_barrier()  # the next step reads d_state and dc_state stored by other warps
    base = partial_ptr + tl.program_id(0).to(tl.int64) * 5 * H
    tl.store(base + 0 * H + cols, acc_pi, mask=col_mask)
    tl.store(base + 1 * H + cols, acc_pf, mask=col_mask)
    tl.store(base + 2 * H + cols, acc_po, mask=col_mask)
    tl.store(base + 3 * H + cols, acc_cw, mask=col_mask)
    tl.store(base + 4 * H + cols, acc_cb, mask=col_mask)
