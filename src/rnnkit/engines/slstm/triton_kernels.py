"""Triton kernels of the sLSTM GPU engine: the forward time loop and its BPTT.

Read rnnkit.cells.slstm for the equations and their derivative, rnnkit.engines.triton_kernels for
the helpers shared with the stock cells (step_at, prev_tile, mma) and the packed layout.

The recurrent weights are block-diagonal: head k's units depend only on head k's slice of h. So a
program (pid_b, pid_k) owns batch rows pid_b*BLOCK_B + [0, BLOCK_B) and the whole of head k, and
runs every step of the sequence by itself: no other program reads what it writes, and no grid-wide
barrier is needed. Between steps (and, in the backward, between a step's gates and its product) a
block-level barrier makes this program's stores visible to all its warps; the state written at one
step is read back at the next with cache_modifier=".cg" (past L1).

Inside a step the program walks its head in column tiles of BLOCK_U units (the product's K loop in
tiles of BLOCK_V), so any head width runs; one program per (row tile, head) is the parallelism, which
is small for few heads and small batches. Nothing here is tuned: no GPU was at hand when it was written.

Precision: float32 only; tl.dot with float32 accumulation and PRECISION (triton.py's choice).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..triton_kernels import mma, prev_tile, row_offsets, sigmoid, step_at, tanh


@triton.jit
def logsigmoid(x):
    """min(x, 0) - log1p(exp(-|x|)); log1p from its series where 1 + e would round to 1."""
    e = tl.exp(-tl.abs(x))
    log1p = tl.where(e < 1e-4, e - 0.5 * e * e, tl.log(1.0 + e))
    return tl.where(x < 0, x, 0.0 * x) - log1p


@triton.jit
def slstm_forward(xp_ptr, r_ptr, h0_ptr, out_ptr, h_ptr, c_ptr, n_ptr, m_ptr, cs_ptr, ns_ptr, ms_ptr, pre_ptr,
                  sizes_ptr, offsets_ptr, T, H, DH,
                  REVERSE: tl.constexpr, PRECISION: tl.constexpr,
                  BLOCK_B: tl.constexpr, BLOCK_U: tl.constexpr, BLOCK_V: tl.constexpr):
    """Every step of rows pid_b's tile, head pid_k. h, c, n, m (B, H): c, n, m initial -> final (h: final only);
    out, cs, ns, ms (N, H), pre (N, 4H) packed rows."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    head0 = tl.program_id(1) * DH  # first unit of this head
    for s in range(0, T):
        off, bs, off_prev, bs_prev = step_at(s, T, sizes_ptr, offsets_ptr, REVERSE, False)
        if tl.program_id(0) * BLOCK_B < bs:  # skip row tiles whose sequences have all finished
            row_mask = rows < bs
            for u0 in range(0, DH, BLOCK_U):
                us = u0 + tl.arange(0, BLOCK_U)
                u_mask = us < DH
                cols = head0 + us
                mask = row_mask[:, None] & u_mask[None, :]
                a_i = tl.zeros([BLOCK_B, BLOCK_U], dtype=tl.float32)
                a_f = tl.zeros([BLOCK_B, BLOCK_U], dtype=tl.float32)
                a_z = tl.zeros([BLOCK_B, BLOCK_U], dtype=tl.float32)
                a_o = tl.zeros([BLOCK_B, BLOCK_U], dtype=tl.float32)
                for v0 in range(0, DH, BLOCK_V):
                    vs = v0 + tl.arange(0, BLOCK_V)
                    v_mask = vs < DH
                    h = prev_tile(out_ptr, h0_ptr, off_prev, bs_prev, rows, head0 + vs, H,
                                  row_mask[:, None] & v_mask[None, :])  # (BLOCK_B, BLOCK_V)
                    w_mask = v_mask[:, None] & u_mask[None, :]
                    # r[q*H + head0 + u, v]^T as a (BLOCK_V, BLOCK_U) tile, for each gate q
                    w_ptrs = r_ptr + (head0 + us).to(tl.int64)[None, :] * DH + vs[:, None]
                    a_i = mma(h, tl.load(w_ptrs, mask=w_mask, other=0.0), a_i, PRECISION, False)
                    a_f = mma(h, tl.load(w_ptrs + H * DH, mask=w_mask, other=0.0), a_f, PRECISION, False)
                    a_z = mma(h, tl.load(w_ptrs + 2 * H * DH, mask=w_mask, other=0.0), a_z, PRECISION, False)
                    a_o = mma(h, tl.load(w_ptrs + 3 * H * DH, mask=w_mask, other=0.0), a_o, PRECISION, False)
                x_ptrs = xp_ptr + row_offsets(off, rows, 4 * H, cols)
                a_i += tl.load(x_ptrs, mask=mask, other=0.0)
                a_f += tl.load(x_ptrs + H, mask=mask, other=0.0)
                a_z += tl.load(x_ptrs + 2 * H, mask=mask, other=0.0)
                a_o += tl.load(x_ptrs + 3 * H, mask=mask, other=0.0)
                state = row_offsets(0, rows, H, cols)  # element offsets in the (B, H) states
                c = tl.load(c_ptr + state, mask=mask, other=0.0, cache_modifier=".cg")
                n = tl.load(n_ptr + state, mask=mask, other=1.0, cache_modifier=".cg")
                m = tl.load(m_ptr + state, mask=mask, other=0.0, cache_modifier=".cg")
                lfm = logsigmoid(a_f) + m
                m_new = tl.where(lfm > a_i, lfm, a_i)
                i = tl.exp(a_i - m_new)
                f = tl.exp(lfm - m_new)
                c_new = f * c + i * tanh(a_z)
                n_new = f * n + i
                h_new = sigmoid(a_o) * c_new / n_new
                tl.store(c_ptr + state, c_new, mask=mask)
                tl.store(n_ptr + state, n_new, mask=mask)
                tl.store(m_ptr + state, m_new, mask=mask)
                tl.store(h_ptr + state, h_new, mask=mask)
                packed = row_offsets(off, rows, H, cols)
                tl.store(out_ptr + packed, h_new, mask=mask)
                tl.store(cs_ptr + packed, c_new, mask=mask)
                tl.store(ns_ptr + packed, n_new, mask=mask)
                tl.store(ms_ptr + packed, m_new, mask=mask)
                p_ptrs = pre_ptr + row_offsets(off, rows, 4 * H, cols)
                tl.store(p_ptrs, a_i, mask=mask)
                tl.store(p_ptrs + H, a_f, mask=mask)
                tl.store(p_ptrs + 2 * H, a_z, mask=mask)
                tl.store(p_ptrs + 3 * H, a_o, mask=mask)
        tl.debug_barrier()  # this step's out rows are the next step's h


@triton.jit
def slstm_backward(r_ptr, c0_ptr, n0_ptr, m0_ptr, out_ptr, cs_ptr, ns_ptr, ms_ptr, pre_ptr, dout_ptr,
                   dh_ptr, dc_ptr, dn_ptr, dm_ptr, dxp_ptr, sizes_ptr, offsets_ptr, T, H, DH,
                   REVERSE: tl.constexpr, PRECISION: tl.constexpr,
                   BLOCK_B: tl.constexpr, BLOCK_U: tl.constexpr, BLOCK_V: tl.constexpr):
    """BPTT of rows pid_b's tile, head pid_k. dh, dc, dn, dm (B, H): the gradient at the final states on entry,
    at the initial states on exit. dxp (N, 4H) = dhr at every step."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    head0 = tl.program_id(1) * DH
    for s in range(0, T):
        off, bs, off_prev, bs_prev = step_at(s, T, sizes_ptr, offsets_ptr, REVERSE, True)
        if tl.program_id(0) * BLOCK_B < bs:
            row_mask = rows < bs
            for u0 in range(0, DH, BLOCK_U):  # the gates: dxp of this step, and dc, dn, dm for the step before
                us = u0 + tl.arange(0, BLOCK_U)
                cols = head0 + us
                mask = row_mask[:, None] & (us < DH)[None, :]
                p_ptrs = pre_ptr + row_offsets(off, rows, 4 * H, cols)
                a_i = tl.load(p_ptrs, mask=mask, other=0.0)
                a_f = tl.load(p_ptrs + H, mask=mask, other=0.0)
                a_z = tl.load(p_ptrs + 2 * H, mask=mask, other=0.0)
                a_o = tl.load(p_ptrs + 3 * H, mask=mask, other=0.0)
                c_prev = prev_tile(cs_ptr, c0_ptr, off_prev, bs_prev, rows, cols, H, mask)
                n_prev = prev_tile(ns_ptr, n0_ptr, off_prev, bs_prev, rows, cols, H, mask)
                m_prev = prev_tile(ms_ptr, m0_ptr, off_prev, bs_prev, rows, cols, H, mask)
                packed = row_offsets(off, rows, H, cols)
                c_new = tl.load(cs_ptr + packed, mask=mask, other=0.0)
                n_new = tl.load(ns_ptr + packed, mask=mask, other=1.0)
                m_new = tl.load(ms_ptr + packed, mask=mask, other=0.0)
                h_new = tl.load(out_ptr + packed, mask=mask, other=0.0)
                state = row_offsets(0, rows, H, cols)
                d_h = tl.load(dh_ptr + state, mask=mask, other=0.0, cache_modifier=".cg")
                d_h += tl.load(dout_ptr + packed, mask=mask, other=0.0)  # from the output at t and from step t+1
                lfm = logsigmoid(a_f) + m_prev
                i = tl.exp(a_i - m_new)
                f = tl.exp(lfm - m_new)
                o = sigmoid(a_o)
                g = tanh(a_z)
                d_c = tl.load(dc_ptr + state, mask=mask, other=0.0, cache_modifier=".cg") + d_h * o / n_new
                d_n = tl.load(dn_ptr + state, mask=mask, other=0.0, cache_modifier=".cg") - d_h * h_new / n_new
                da_o = d_h * (c_new / n_new) * o * (1.0 - o)
                da_z = d_c * i * (1.0 - g * g)
                di_e = (d_c * g + d_n) * i
                df_e = (d_c * c_prev + d_n * n_prev) * f
                dm_total = tl.load(dm_ptr + state, mask=mask, other=0.0, cache_modifier=".cg") - di_e - df_e
                w_a = tl.where(lfm > a_i, 1.0, tl.where(lfm == a_i, 0.5, 0.0))  # torch.maximum's split of a tie
                d_lfm = df_e + w_a * dm_total
                da_i = di_e + (1.0 - w_a) * dm_total
                da_f = d_lfm * sigmoid(-a_f)
                d_ptrs = dxp_ptr + row_offsets(off, rows, 4 * H, cols)
                tl.store(d_ptrs, da_i, mask=mask)
                tl.store(d_ptrs + H, da_f, mask=mask)
                tl.store(d_ptrs + 2 * H, da_z, mask=mask)
                tl.store(d_ptrs + 3 * H, da_o, mask=mask)
                tl.store(dc_ptr + state, d_c * f, mask=mask)
                tl.store(dn_ptr + state, d_n * f, mask=mask)
                tl.store(dm_ptr + state, d_lfm, mask=mask)
            tl.debug_barrier()  # the whole head's dxp of this step is stored before the product reads it
            # the product sent back: dh[rows, head0 + v] = sum_q sum_u dxp[q*H + head0 + u] r[q*H + head0 + u, v]
            for v0 in range(0, DH, BLOCK_V):
                vs = v0 + tl.arange(0, BLOCK_V)
                v_mask = vs < DH
                acc = tl.zeros([BLOCK_B, BLOCK_V], dtype=tl.float32)
                for q in tl.static_range(4):
                    for u0 in range(0, DH, BLOCK_U):
                        us = u0 + tl.arange(0, BLOCK_U)
                        u_mask = us < DH
                        a = tl.load(dxp_ptr + row_offsets(off, rows, 4 * H, q * H + head0 + us),
                                    mask=row_mask[:, None] & u_mask[None, :], other=0.0, cache_modifier=".cg")
                        w = tl.load(r_ptr + (q * H + head0 + us).to(tl.int64)[:, None] * DH + vs[None, :],
                                    mask=u_mask[:, None] & v_mask[None, :], other=0.0)
                        acc = mma(a, w, acc, PRECISION, False)
                tl.store(dh_ptr + row_offsets(0, rows, H, head0 + vs), acc,
                         mask=row_mask[:, None] & v_mask[None, :])
        tl.debug_barrier()  # this step's dh, dc, dn, dm are the next step's
