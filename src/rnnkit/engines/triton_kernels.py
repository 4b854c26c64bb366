r"""Triton kernels of the GPU engine: per family, a forward step kernel and its backward beside it.

Read rnnkit.engines.reference for the BPTT derivation and rnnkit.cells for the step math; these
kernels run the same algorithm. What lives here is only what must wait for the previous step:
the recurrent product of a step, fused with the gate arithmetic and the state update. The
products over all steps (input projection, weight gradients, dx) stay in torch (triton.py).

One kernel serves both strategies of triton.py:

    persistent   one launch runs steps k0..k1-1; programs wait for each other at a grid-wide
                 barrier between the phases of a step (SYNC=True). The grid must fit on the GPU
                 at once (no more programs than SMs), or the barrier never opens.
    stepwise     one launch per phase of one step (k1 = k0 + 1, SYNC=False); the launch
                 boundary is the barrier.

Work split: program (pid_b, pid_h) owns batch rows pid_b*BLOCK_B + [0, BLOCK_B) and feature
columns pid_h*BLOCK_H + [0, BLOCK_H): hidden units in the gate phases, projected (or hidden)
features in the product phases. A program whose rows have all finished at step t skips the
step's work, so packed sequences cost only the rows still running (at most BLOCK_B - 1 wasted).

Loop index k runs the steps in processing order: forward visits t = k (t = T-1-k when REVERSE),
backward visits them the other way round. "prev" is the step whose state step t starts from
(t-1, or t+1 when REVERSE); rows beyond its batch size start from h0 / c0.

Precision: matrix operands stay in the input dtype; tl.dot accumulates in float32; gate
arithmetic, the LSTM cell state and every saved activation (gates, c, GRU cache) are float32.
float32 operands use PRECISION (triton.py's choice: "tf32x3" by default, "tf32" when allowed). tanh and sigmoid are built
from exp: libdevice's tanh does not run under TRITON_INTERPRET=1.

Under the interpreter (TRITON_INTERPRET=1, read when this module is imported) programs run one
after another, so a barrier with more than one program would spin forever: triton.py runs the
persistent strategy there with a grid of one program. The interpreter's tl.dot also multiplies
bfloat16 operands as their uint16 bit patterns, so UPCAST=True turns 16-bit operands into
float32 first (exact: a product of two bf16/fp16 numbers is exact in float32).
"""

from __future__ import annotations

import triton
import triton.language as tl

from triton import knobs

INTERPRETED = bool(knobs.runtime.interpret)  # how the kernels below were decorated
# Stepwise launches pass a different k0, k1 every step; Triton would otherwise compile a variant for
# each of their value classes (== 1, divisible by 16, other).
NOT_SPECIALIZED = ["k0", "k1"]


# ---------------------------------------------------------------- helpers


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))  # exp(-x) = inf for x << 0 gives exactly 0; NaN stays NaN


@triton.jit
def tanh(x):
    return 2.0 * sigmoid(2.0 * x) - 1.0


@triton.jit
def mma(a, b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """acc + a @ b with float32 accumulation."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    elif a.dtype == tl.float32:
        return tl.dot(a, b, acc, input_precision=PRECISION)
    else:
        return tl.dot(a, b, acc)


@triton.jit
def narrow(x, ptr, UPCAST: tl.constexpr):
    """float32 x in the element type of ptr, rounded to nearest even.

    The interpreter (UPCAST) truncates float32 to bfloat16 (and turns some tiny values into the
    smallest normal number); round here instead, as the GPU does: add half a unit of the dropped
    bits (ties to even) and clear them, so the conversion is exact. inf and NaN pass unchanged.
    """
    if UPCAST and ptr.dtype.element_ty == tl.bfloat16:
        u = x.to(tl.uint32, bitcast=True)
        rounded = ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True)
        x = tl.where(tl.abs(x) < float("inf"), rounded, x)
    return x.to(ptr.dtype.element_ty)


@triton.jit
def grid_barrier(sync_ptr, count):
    """Wait until every program has arrived here `count` times in all (count = barriers passed so far + 1).

    release: this program's stores are visible before its arrival is; acquire: the stores of every
    program that arrived are visible to this program's loads after the wait.
    """
    tl.debug_barrier()  # every warp of this program has stored its part before the arrival is counted
    tl.atomic_add(sync_ptr, 1, sem="release")
    target = count * tl.num_programs(0) * tl.num_programs(1)
    while tl.atomic_add(sync_ptr, 0, sem="acquire") < target:
        pass


@triton.jit
def step_at(k, T, sizes_ptr, offsets_ptr, REVERSE: tl.constexpr, BACKWARD: tl.constexpr):
    """Time step t visited at loop index k, its batch size and first packed row, and the same for prev."""
    if REVERSE != BACKWARD:  # reverse forward, or the backward of a forward-direction layer
        t = T - 1 - k
    else:
        t = k
    if REVERSE:
        tp = t + 1
    else:
        tp = t - 1
    has_prev = (tp >= 0) & (tp < T)
    tp = tl.minimum(tl.maximum(tp, 0), T - 1)
    bs = tl.load(sizes_ptr + t)
    bs_prev = tl.where(has_prev, tl.load(sizes_ptr + tp), 0)
    return tl.load(offsets_ptr + t), bs, tl.load(offsets_ptr + tp), bs_prev


@triton.jit
def prev_tile(src_ptr, init_ptr, off_prev, bs_prev, rows, cols, width, mask):
    """The previous state's tile (rows x cols): the prev step's packed rows where they ran, else the initial state.

    src is (N, width) packed rows, init is (B, width). Cast to src's dtype.
    """
    from_prev = (rows < bs_prev)[:, None]
    a = tl.load(src_ptr + (off_prev + rows).to(tl.int64)[:, None] * width + cols[None, :], mask=mask & from_prev,
                other=0.0, cache_modifier=".cg")  # .cg: other programs wrote it during this launch
    b = tl.load(init_ptr + rows.to(tl.int64)[:, None] * width + cols[None, :], mask=mask & ~from_prev, other=0.0)
    return tl.where(from_prev, a, b.to(a.dtype))


@triton.jit
def w_tile(w_ptr, gate_rows, col_mask, ks, K):
    """W[gate_rows, ks]^T, a (BLOCK_K, BLOCK_H) tile of the row-major (G*H, K) weight."""
    return tl.load(w_ptr + gate_rows.to(tl.int64)[None, :] * K + ks[:, None],
                   mask=col_mask[None, :] & (ks < K)[:, None], other=0.0)


@triton.jit
def gate_product(acc, h_ptr, init_ptr, w_ptr, off_prev, bs_prev, rows, row_mask, gate_rows, col_mask, K,
                 PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc + h_prev @ W[gate_rows, :]^T, h_prev (B, K) the previous state, W (G*H, K) row-major."""
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        h = prev_tile(h_ptr, init_ptr, off_prev, bs_prev, rows, ks, K, row_mask[:, None] & (ks < K)[None, :])
        acc = mma(h, w_tile(w_ptr, gate_rows, col_mask, ks, K), acc, PRECISION, UPCAST)
    return acc


@triton.jit
def rows_product(acc, a_ptr, a_width, a_col0, w_ptr, w_width, w_row0, off, rows, row_mask, cols, col_mask, K,
                 PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc + A[off + rows, a_col0 : a_col0 + K] @ W[w_row0 : w_row0 + K, cols].

    A is (N, a_width) packed rows written earlier in this launch (read past L1); W is (., w_width).
    """
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(a_ptr + (off + rows).to(tl.int64)[:, None] * a_width + a_col0 + ks[None, :],
                    mask=row_mask[:, None] & (ks < K)[None, :], other=0.0, cache_modifier=".cg")
        w = tl.load(w_ptr + (w_row0 + ks).to(tl.int64)[:, None] * w_width + cols[None, :],
                    mask=(ks < K)[:, None] & col_mask[None, :], other=0.0)
        acc = mma(a, w, acc, PRECISION, UPCAST)
    return acc


@triton.jit
def row_offsets(off, rows, width, cols):
    """Element offsets of a (rows x cols) tile of a (., width) row-major buffer, rows starting at off."""
    return (off + rows).to(tl.int64)[:, None] * width + cols[None, :]


# ---------------------------------------------------------------- RNN (tanh, relu)


@triton.jit(do_not_specialize=NOT_SPECIALIZED)
def rnn_forward(xp_ptr, w_hh_ptr, b_hh_ptr, h0_ptr, out_ptr, h_n_ptr, sizes_ptr, offsets_ptr, sync_ptr,
                T, k0, k1, H,
                REVERSE: tl.constexpr, RELU: tl.constexpr, HAS_BIAS: tl.constexpr, SYNC: tl.constexpr,
                PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """h_t = act(xp_t + h_{t-1} W_hh^T + b_hh) for steps k0..k1-1; writes out rows and h_n."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    col_mask = cols < H
    for k in range(k0, k1):
        off, bs, off_prev, bs_prev = step_at(k, T, sizes_ptr, offsets_ptr, REVERSE, False)
        if tl.program_id(0) * BLOCK_B < bs:  # skip row blocks whose sequences have all finished
            row_mask = rows < bs
            mask = row_mask[:, None] & col_mask[None, :]
            pre = tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)
            pre = gate_product(pre, out_ptr, h0_ptr, w_hh_ptr, off_prev, bs_prev, rows, row_mask, cols, col_mask, H,
                               PRECISION, UPCAST, BLOCK_K)  # (BLOCK_B, BLOCK_H) h_{t-1} W_hh^T
            pre += tl.load(xp_ptr + row_offsets(off, rows, H, cols), mask=mask, other=0.0).to(tl.float32)
            if HAS_BIAS:
                pre += tl.load(b_hh_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
            if RELU:
                h = tl.where(pre > 0, pre, 0.0)  # where, not maximum: a NaN pre-activation stays NaN
            else:
                h = tanh(pre)
            h = narrow(h, out_ptr, UPCAST)
            tl.store(out_ptr + row_offsets(off, rows, H, cols), h, mask=mask)
            tl.store(h_n_ptr + row_offsets(0, rows, H, cols), h, mask=mask)  # the last step a row runs wins
        if SYNC:  # step t+1 reads every column of h_t
            grid_barrier(sync_ptr, k - k0 + 1)


@triton.jit(do_not_specialize=NOT_SPECIALIZED)
def rnn_backward(w_hh_ptr, out_ptr, d_out_ptr, d_state_ptr, dpre_ptr, sizes_ptr, offsets_ptr, sync_ptr,
                 T, k0, k1, H,
                 REVERSE: tl.constexpr, RELU: tl.constexpr, SYNC: tl.constexpr, DO_GATES: tl.constexpr,
                 DO_PRODUCT: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                 BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """BPTT over steps k0..k1-1 (latest first). d_state (B, H) float32 holds the gradient reaching each row's
    state from the steps already processed (d_h_n at the start, dh_0 at the end).

    gates phase:   dh = d_state + d_out_t;  dpre_t = dh * act'(pre) = dh * (1 - h_t^2) or dh * [h_t > 0]
    product phase: d_state[:bs_t] = dpre_t W_hh, the gradient of h_{t-1} (needs every column of dpre_t)
    """
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    col_mask = cols < H
    for k in range(k0, k1):
        off, bs, off_prev, bs_prev = step_at(k, T, sizes_ptr, offsets_ptr, REVERSE, True)
        active = tl.program_id(0) * BLOCK_B < bs
        row_mask = rows < bs
        mask = row_mask[:, None] & col_mask[None, :]
        if DO_GATES and active:
            dh = tl.load(d_state_ptr + row_offsets(0, rows, H, cols), mask=mask, other=0.0)
            dh += tl.load(d_out_ptr + row_offsets(off, rows, H, cols), mask=mask, other=0.0).to(tl.float32)
            h = tl.load(out_ptr + row_offsets(off, rows, H, cols), mask=mask, other=0.0).to(tl.float32)
            if RELU:
                dpre = tl.where(h > 0, dh, 0.0)  # relu'(pre) = [h > 0]
            else:
                dpre = dh * (1.0 - h * h)  # tanh'(pre) = 1 - h^2
            tl.store(dpre_ptr + row_offsets(off, rows, H, cols), narrow(dpre, dpre_ptr, UPCAST), mask=mask)
        if SYNC:  # the product reads every column of dpre_t
            grid_barrier(sync_ptr, k - k0 + 1)
        if DO_PRODUCT and active:
            dh_prev = tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)
            dh_prev = rows_product(dh_prev, dpre_ptr, H, 0, w_hh_ptr, H, 0, off, rows, row_mask, cols, col_mask, H,
                                   PRECISION, UPCAST, BLOCK_K)  # (BLOCK_B, BLOCK_H) dpre_t W_hh
            tl.store(d_state_ptr + row_offsets(0, rows, H, cols), dh_prev, mask=mask)
        # no barrier after the product: the next gates phase reads only this program's own d_state tile


# ---------------------------------------------------------------- LSTM (with and without projection)


@triton.jit(do_not_specialize=NOT_SPECIALIZED)
def lstm_forward(xp_ptr, w_hh_ptr, b_hh_ptr, w_hr_ptr, h0_ptr, c0_ptr,
                 out_ptr, cs_ptr, gates_ptr, m_ptr, h_n_ptr, c_n_ptr, sizes_ptr, offsets_ptr, sync_ptr,
                 T, k0, k1, H, P,
                 REVERSE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_PROJ: tl.constexpr, SYNC: tl.constexpr,
                 DO_GATES: tl.constexpr, DO_PROJ: tl.constexpr, W_RESIDENT: tl.constexpr,
                 PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                 BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """LSTM steps k0..k1-1.

    gates phase (columns = hidden units):
        a = xp_t + h_{t-1} W_hh^T + b_hh, four (BLOCK_B, BLOCK_H) blocks i, f, g, o
        c_t = f * c_{t-1} + i * g;  m_t = o * tanh(c_t)
        writes gates (N, 4H) and cs (N, H) in float32, c_n, and h_t = m_t (out, h_n) or m_t (m, no projection yet)
    projection phase (HAS_PROJ; columns = projected features < P):
        h_t = m_t W_hr^T, written to out and h_n; needs every column of m_t
    W_RESIDENT: the program's W_hh slice (4 x BLOCK_H rows, all P <= BLOCK_K columns) is loaded once,
    before the time loop, and stays in registers for every step.
    """
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    col_mask = cols < H
    if W_RESIDENT:
        ks = tl.arange(0, BLOCK_K)
        w_i = w_tile(w_hh_ptr, 0 * H + cols, col_mask, ks, P)
        w_f = w_tile(w_hh_ptr, 1 * H + cols, col_mask, ks, P)
        w_g = w_tile(w_hh_ptr, 2 * H + cols, col_mask, ks, P)
        w_o = w_tile(w_hh_ptr, 3 * H + cols, col_mask, ks, P)
    for k in range(k0, k1):
        off, bs, off_prev, bs_prev = step_at(k, T, sizes_ptr, offsets_ptr, REVERSE, False)
        active = tl.program_id(0) * BLOCK_B < bs
        row_mask = rows < bs
        mask = row_mask[:, None] & col_mask[None, :]
        if DO_GATES and active:
            a_i = tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)
            a_f = tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)
            a_g = tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)
            a_o = tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)
            if W_RESIDENT:
                h = prev_tile(out_ptr, h0_ptr, off_prev, bs_prev, rows, ks, P, row_mask[:, None] & (ks < P)[None, :])
                a_i = mma(h, w_i, a_i, PRECISION, UPCAST)
                a_f = mma(h, w_f, a_f, PRECISION, UPCAST)
                a_g = mma(h, w_g, a_g, PRECISION, UPCAST)
                a_o = mma(h, w_o, a_o, PRECISION, UPCAST)
            else:  # W_hh tiles come from memory (L2 after the first step) every step; each h tile serves 4 gates
                for k0 in range(0, P, BLOCK_K):
                    kk = k0 + tl.arange(0, BLOCK_K)
                    h = prev_tile(out_ptr, h0_ptr, off_prev, bs_prev, rows, kk, P,
                                  row_mask[:, None] & (kk < P)[None, :])  # (BLOCK_B, BLOCK_K) of h_{t-1}
                    a_i = mma(h, w_tile(w_hh_ptr, 0 * H + cols, col_mask, kk, P), a_i, PRECISION, UPCAST)
                    a_f = mma(h, w_tile(w_hh_ptr, 1 * H + cols, col_mask, kk, P), a_f, PRECISION, UPCAST)
                    a_g = mma(h, w_tile(w_hh_ptr, 2 * H + cols, col_mask, kk, P), a_g, PRECISION, UPCAST)
                    a_o = mma(h, w_tile(w_hh_ptr, 3 * H + cols, col_mask, kk, P), a_o, PRECISION, UPCAST)
            a_i += tl.load(xp_ptr + row_offsets(off, rows, 4 * H, 0 * H + cols), mask=mask, other=0.0).to(tl.float32)
            a_f += tl.load(xp_ptr + row_offsets(off, rows, 4 * H, 1 * H + cols), mask=mask, other=0.0).to(tl.float32)
            a_g += tl.load(xp_ptr + row_offsets(off, rows, 4 * H, 2 * H + cols), mask=mask, other=0.0).to(tl.float32)
            a_o += tl.load(xp_ptr + row_offsets(off, rows, 4 * H, 3 * H + cols), mask=mask, other=0.0).to(tl.float32)
            if HAS_BIAS:
                a_i += tl.load(b_hh_ptr + 0 * H + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
                a_f += tl.load(b_hh_ptr + 1 * H + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
                a_g += tl.load(b_hh_ptr + 2 * H + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
                a_o += tl.load(b_hh_ptr + 3 * H + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
            i, f, g, o = sigmoid(a_i), sigmoid(a_f), tanh(a_g), sigmoid(a_o)
            c_prev = prev_tile(cs_ptr, c0_ptr, off_prev, bs_prev, rows, cols, H, mask)  # float32
            c = f * c_prev + i * g
            m = o * tanh(c)  # (BLOCK_B, BLOCK_H)
            tl.store(gates_ptr + row_offsets(off, rows, 4 * H, 0 * H + cols), i, mask=mask)
            tl.store(gates_ptr + row_offsets(off, rows, 4 * H, 1 * H + cols), f, mask=mask)
            tl.store(gates_ptr + row_offsets(off, rows, 4 * H, 2 * H + cols), g, mask=mask)
            tl.store(gates_ptr + row_offsets(off, rows, 4 * H, 3 * H + cols), o, mask=mask)
            tl.store(cs_ptr + row_offsets(off, rows, H, cols), c, mask=mask)
            tl.store(c_n_ptr + row_offsets(0, rows, H, cols), narrow(c, c_n_ptr, UPCAST), mask=mask)
            if HAS_PROJ:
                tl.store(m_ptr + row_offsets(off, rows, H, cols), narrow(m, m_ptr, UPCAST), mask=mask)
            else:
                m = narrow(m, out_ptr, UPCAST)
                tl.store(out_ptr + row_offsets(off, rows, H, cols), m, mask=mask)
                tl.store(h_n_ptr + row_offsets(0, rows, H, cols), m, mask=mask)
        if SYNC and HAS_PROJ:  # the projection reads every column of m_t
            grid_barrier(sync_ptr, 2 * (k - k0) + 1)
        if HAS_PROJ and DO_PROJ and active and tl.program_id(1) * BLOCK_H < P:
            p_mask = cols < P
            h = tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)
            h = gate_product(h, m_ptr, m_ptr, w_hr_ptr, off, bs, rows, row_mask, cols, p_mask, H,
                             PRECISION, UPCAST, BLOCK_K)  # m_t W_hr^T; prev_tile reads step t's own rows (all < bs)
            h = narrow(h, out_ptr, UPCAST)
            pmask = row_mask[:, None] & p_mask[None, :]
            tl.store(out_ptr + row_offsets(off, rows, P, cols), h, mask=pmask)
            tl.store(h_n_ptr + row_offsets(0, rows, P, cols), h, mask=pmask)
        if SYNC:  # step t+1 reads every column of h_t
            if HAS_PROJ:
                grid_barrier(sync_ptr, 2 * (k - k0) + 2)
            else:
                grid_barrier(sync_ptr, k - k0 + 1)


@triton.jit(do_not_specialize=NOT_SPECIALIZED)
def lstm_backward(w_hh_ptr, w_hr_ptr, c0_ptr, cs_ptr, gates_ptr, d_out_ptr, d_state_ptr, dc_state_ptr,
                  dgates_ptr, dh_total_ptr, sizes_ptr, offsets_ptr, sync_ptr,
                  T, k0, k1, H, P,
                  REVERSE: tl.constexpr, HAS_PROJ: tl.constexpr, SYNC: tl.constexpr, DO_TOTAL: tl.constexpr,
                  DO_GATES: tl.constexpr, DO_PRODUCT: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                  BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """LSTM BPTT over steps k0..k1-1 (latest first). d_state (B, P) and dc_state (B, H), float32, hold the
    gradients reaching each row's h and c from the steps already processed (d_h_n, d_c_n at the start).

    total phase (HAS_PROJ; columns < P): dh_t = d_state + d_out_t, written to dh_total (N, P) for dW_hr
    gates phase (columns = hidden units):
        dm = dh_t (no projection: computed here) or dh_t W_hr (needs every column of dh_t)
        do = dm * tanh(c_t);  dc = dc_state + dm * o * (1 - tanh(c_t)^2)   (c_t reaches the loss via h_t and c_{t+1})
        da_i = dc * g * i(1-i);  da_f = dc * c_{t-1} * f(1-f);  da_g = dc * i * (1-g^2);  da_o = do * o(1-o)
        dc_state = dc * f   (the gradient of c_{t-1}); dgates_t = [da_i, da_f, da_g, da_o]
    product phase (columns < P): d_state[:bs_t] = dgates_t W_hh (needs every column of dgates_t)
    """
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    col_mask = cols < H
    p_mask = cols < P
    for k in range(k0, k1):
        off, bs, off_prev, bs_prev = step_at(k, T, sizes_ptr, offsets_ptr, REVERSE, True)
        active = tl.program_id(0) * BLOCK_B < bs
        row_mask = rows < bs
        mask = row_mask[:, None] & col_mask[None, :]
        pmask = row_mask[:, None] & p_mask[None, :]
        if HAS_PROJ:
            if DO_TOTAL and active and tl.program_id(1) * BLOCK_H < P:
                dh = tl.load(d_state_ptr + row_offsets(0, rows, P, cols), mask=pmask, other=0.0)
                dh += tl.load(d_out_ptr + row_offsets(off, rows, P, cols), mask=pmask, other=0.0).to(tl.float32)
                tl.store(dh_total_ptr + row_offsets(off, rows, P, cols), narrow(dh, dh_total_ptr, UPCAST),
                         mask=pmask)
            if SYNC:  # dm reads every column of dh_t
                grid_barrier(sync_ptr, 2 * (k - k0) + 1)
        if DO_GATES and active:
            if HAS_PROJ:
                dm = tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)
                dm = rows_product(dm, dh_total_ptr, P, 0, w_hr_ptr, H, 0, off, rows, row_mask, cols, col_mask, P,
                                  PRECISION, UPCAST, BLOCK_K)  # (BLOCK_B, BLOCK_H) dh_t W_hr
            else:
                dm = tl.load(d_state_ptr + row_offsets(0, rows, H, cols), mask=mask, other=0.0)
                dm += tl.load(d_out_ptr + row_offsets(off, rows, H, cols), mask=mask, other=0.0).to(tl.float32)
            i = tl.load(gates_ptr + row_offsets(off, rows, 4 * H, 0 * H + cols), mask=mask, other=0.0)
            f = tl.load(gates_ptr + row_offsets(off, rows, 4 * H, 1 * H + cols), mask=mask, other=0.0)
            g = tl.load(gates_ptr + row_offsets(off, rows, 4 * H, 2 * H + cols), mask=mask, other=0.0)
            o = tl.load(gates_ptr + row_offsets(off, rows, 4 * H, 3 * H + cols), mask=mask, other=0.0)
            c = tl.load(cs_ptr + row_offsets(off, rows, H, cols), mask=mask, other=0.0)
            c_prev = prev_tile(cs_ptr, c0_ptr, off_prev, bs_prev, rows, cols, H, mask)
            tc = tanh(c)
            do = dm * tc
            dc = tl.load(dc_state_ptr + row_offsets(0, rows, H, cols), mask=mask, other=0.0) + dm * o * (1.0 - tc * tc)
            tl.store(dgates_ptr + row_offsets(off, rows, 4 * H, 0 * H + cols), narrow(dc * g * i * (1.0 - i), dgates_ptr, UPCAST), mask=mask)
            tl.store(dgates_ptr + row_offsets(off, rows, 4 * H, 1 * H + cols), narrow(dc * c_prev * f * (1.0 - f), dgates_ptr, UPCAST),
                     mask=mask)
            tl.store(dgates_ptr + row_offsets(off, rows, 4 * H, 2 * H + cols), narrow(dc * i * (1.0 - g * g), dgates_ptr, UPCAST), mask=mask)
            tl.store(dgates_ptr + row_offsets(off, rows, 4 * H, 3 * H + cols), narrow(do * o * (1.0 - o), dgates_ptr, UPCAST), mask=mask)
            tl.store(dc_state_ptr + row_offsets(0, rows, H, cols), dc * f, mask=mask)
        if SYNC:  # the product reads every column of dgates_t
            if HAS_PROJ:
                grid_barrier(sync_ptr, 2 * (k - k0) + 2)
            else:
                grid_barrier(sync_ptr, k - k0 + 1)
        if DO_PRODUCT and active and tl.program_id(1) * BLOCK_H < P:
            dh_prev = tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)
            dh_prev = rows_product(dh_prev, dgates_ptr, 4 * H, 0, w_hh_ptr, P, 0, off, rows, row_mask, cols, p_mask,
                                   4 * H, PRECISION, UPCAST, BLOCK_K)  # (BLOCK_B, BLOCK_H) dgates_t W_hh
            tl.store(d_state_ptr + row_offsets(0, rows, P, cols), dh_prev, mask=pmask)
        # no barrier after the product: the next step's first phase reads only this program's d_state tile


# ---------------------------------------------------------------- GRU


@triton.jit(do_not_specialize=NOT_SPECIALIZED)
def gru_forward(xp_ptr, w_hh_ptr, b_hh_ptr, h0_ptr, out_ptr, cache_ptr, h_n_ptr, sizes_ptr, offsets_ptr, sync_ptr,
                T, k0, k1, H,
                REVERSE: tl.constexpr, HAS_BIAS: tl.constexpr, SYNC: tl.constexpr,
                PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """GRU steps k0..k1-1:

        hp = h_{t-1} W_hh^T + b_hh = [h_r, h_z, h_n]
        r = sigmoid(x_r + h_r);  z = sigmoid(x_z + h_z);  n = tanh(x_n + r * h_n);  h_t = n + z * (h_{t-1} - n)
    writes out, h_n and cache (N, 4H) = [r, z, n, h_n] in float32.
    """
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    col_mask = cols < H
    for k in range(k0, k1):
        off, bs, off_prev, bs_prev = step_at(k, T, sizes_ptr, offsets_ptr, REVERSE, False)
        if tl.program_id(0) * BLOCK_B < bs:
            row_mask = rows < bs
            mask = row_mask[:, None] & col_mask[None, :]
            h_r = tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)
            h_z = tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)
            h_n = tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)
            for k0 in range(0, H, BLOCK_K):  # hp = h_{t-1} W_hh^T, each h tile serving the three gates
                kk = k0 + tl.arange(0, BLOCK_K)
                h = prev_tile(out_ptr, h0_ptr, off_prev, bs_prev, rows, kk, H, row_mask[:, None] & (kk < H)[None, :])
                h_r = mma(h, w_tile(w_hh_ptr, 0 * H + cols, col_mask, kk, H), h_r, PRECISION, UPCAST)
                h_z = mma(h, w_tile(w_hh_ptr, 1 * H + cols, col_mask, kk, H), h_z, PRECISION, UPCAST)
                h_n = mma(h, w_tile(w_hh_ptr, 2 * H + cols, col_mask, kk, H), h_n, PRECISION, UPCAST)
            if HAS_BIAS:
                h_r += tl.load(b_hh_ptr + 0 * H + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
                h_z += tl.load(b_hh_ptr + 1 * H + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
                h_n += tl.load(b_hh_ptr + 2 * H + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
            x_r = tl.load(xp_ptr + row_offsets(off, rows, 3 * H, 0 * H + cols), mask=mask, other=0.0).to(tl.float32)
            x_z = tl.load(xp_ptr + row_offsets(off, rows, 3 * H, 1 * H + cols), mask=mask, other=0.0).to(tl.float32)
            x_n = tl.load(xp_ptr + row_offsets(off, rows, 3 * H, 2 * H + cols), mask=mask, other=0.0).to(tl.float32)
            r = sigmoid(x_r + h_r)
            z = sigmoid(x_z + h_z)
            n = tanh(x_n + r * h_n)  # r gates the recurrent term with its bias
            h_prev = prev_tile(out_ptr, h0_ptr, off_prev, bs_prev, rows, cols, H, mask).to(tl.float32)
            h = narrow(n + z * (h_prev - n), out_ptr, UPCAST)
            tl.store(cache_ptr + row_offsets(off, rows, 4 * H, 0 * H + cols), r, mask=mask)
            tl.store(cache_ptr + row_offsets(off, rows, 4 * H, 1 * H + cols), z, mask=mask)
            tl.store(cache_ptr + row_offsets(off, rows, 4 * H, 2 * H + cols), n, mask=mask)
            tl.store(cache_ptr + row_offsets(off, rows, 4 * H, 3 * H + cols), h_n, mask=mask)
            tl.store(out_ptr + row_offsets(off, rows, H, cols), h, mask=mask)
            tl.store(h_n_ptr + row_offsets(0, rows, H, cols), h, mask=mask)
        if SYNC:  # step t+1 reads every column of h_t
            grid_barrier(sync_ptr, k - k0 + 1)


@triton.jit(do_not_specialize=NOT_SPECIALIZED)
def gru_backward(w_hh_ptr, h0_ptr, out_ptr, cache_ptr, d_out_ptr, d_state_ptr, dxp_ptr, dhp_n_ptr,
                 sizes_ptr, offsets_ptr, sync_ptr,
                 T, k0, k1, H,
                 REVERSE: tl.constexpr, SYNC: tl.constexpr, DO_GATES: tl.constexpr, DO_PRODUCT: tl.constexpr,
                 PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                 BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """GRU BPTT over steps k0..k1-1 (latest first); d_state (B, H) float32 as in rnn_backward.

    gates phase:
        dh = d_state + d_out_t;  dn = dh * (1 - z);  dz = dh * (h_{t-1} - n);  da_n = dn * (1 - n^2)
        da_r = da_n * h_n * r(1-r);  da_z = dz * z(1-z)
        dxp_t = [da_r, da_z, da_n];  dhp_t = [da_r, da_z, da_n * r] (its n third goes to dhp_n)
        d_state = dh * z    (the direct path h_t = ... + z * h_{t-1})
    product phase: d_state[:bs_t] += dhp_t W_hh   (needs every column of dhp_t)
    """
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    col_mask = cols < H
    for k in range(k0, k1):
        off, bs, off_prev, bs_prev = step_at(k, T, sizes_ptr, offsets_ptr, REVERSE, True)
        active = tl.program_id(0) * BLOCK_B < bs
        row_mask = rows < bs
        mask = row_mask[:, None] & col_mask[None, :]
        if DO_GATES and active:
            dh = tl.load(d_state_ptr + row_offsets(0, rows, H, cols), mask=mask, other=0.0)
            dh += tl.load(d_out_ptr + row_offsets(off, rows, H, cols), mask=mask, other=0.0).to(tl.float32)
            r = tl.load(cache_ptr + row_offsets(off, rows, 4 * H, 0 * H + cols), mask=mask, other=0.0)
            z = tl.load(cache_ptr + row_offsets(off, rows, 4 * H, 1 * H + cols), mask=mask, other=0.0)
            n = tl.load(cache_ptr + row_offsets(off, rows, 4 * H, 2 * H + cols), mask=mask, other=0.0)
            h_n = tl.load(cache_ptr + row_offsets(off, rows, 4 * H, 3 * H + cols), mask=mask, other=0.0)
            h_prev = prev_tile(out_ptr, h0_ptr, off_prev, bs_prev, rows, cols, H, mask).to(tl.float32)
            da_n = dh * (1.0 - z) * (1.0 - n * n)
            tl.store(dxp_ptr + row_offsets(off, rows, 3 * H, 0 * H + cols), narrow(da_n * h_n * r * (1.0 - r), dxp_ptr, UPCAST),
                     mask=mask)
            tl.store(dxp_ptr + row_offsets(off, rows, 3 * H, 1 * H + cols),
                     narrow(dh * (h_prev - n) * z * (1.0 - z), dxp_ptr, UPCAST), mask=mask)
            tl.store(dxp_ptr + row_offsets(off, rows, 3 * H, 2 * H + cols), narrow(da_n, dxp_ptr, UPCAST), mask=mask)
            tl.store(dhp_n_ptr + row_offsets(off, rows, H, cols), narrow(da_n * r, dhp_n_ptr, UPCAST), mask=mask)
            tl.store(d_state_ptr + row_offsets(0, rows, H, cols), dh * z, mask=mask)
        if SYNC:  # the product reads every column of dhp_t
            grid_barrier(sync_ptr, k - k0 + 1)
        if DO_PRODUCT and active:
            dh_prev = tl.load(d_state_ptr + row_offsets(0, rows, H, cols), mask=mask, other=0.0)  # dh * z, this tile
            dh_prev = rows_product(dh_prev, dxp_ptr, 3 * H, 0, w_hh_ptr, H, 0, off, rows, row_mask, cols, col_mask,
                                   2 * H, PRECISION, UPCAST, BLOCK_K)  # + [da_r, da_z] W_hh[:2H]
            dh_prev = rows_product(dh_prev, dhp_n_ptr, H, 0, w_hh_ptr, H, 2 * H, off, rows, row_mask, cols, col_mask,
                                   H, PRECISION, UPCAST, BLOCK_K)  # + (da_n * r) W_hh[2H:]
            tl.store(d_state_ptr + row_offsets(0, rows, H, cols), dh_prev, mask=mask)
