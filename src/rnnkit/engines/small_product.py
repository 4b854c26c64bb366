"""C[:m] = A[:m] B (or +=) for a few rows m, callable from Numba-compiled loops: a step's recurrent product.

Why not BLAS: for B = 1..16 rows and H = 64..512, MKL's sgemm_ spends much of its time on call
overhead and packing (measured on an AMD Zen 4, one thread, called from a compiled loop, G = 4H:
24-29 GF/s at 2 rows, 37-53 at 4, 55-70 at 8, where these tiles run 87-116 GF/s). Why not plain
Numba loops: Numba runs LLVM without the SLP vectorizer, so straight-line code with many scalar
accumulators stays scalar, and the loop vectorizer either vectorizes over k (one horizontal sum per
output, which dominates when k is short) or keeps the accumulators in memory. So the register tile
is written here directly in LLVM IR: `rows` rows by `nvec` vectors of columns, accumulated over k in
vector registers, one broadcast of A and one load of B per vector of columns per k. The IR names no
instruction set; only the vector width and tile shape follow the target (below).
"""

from __future__ import annotations

import llvmlite.binding as ll
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils, config
from numba.extending import intrinsic


def _targets_avx512() -> bool:
    """Whether Numba compiles for a CPU with AVX-512 (NUMBA_CPU_FEATURES, else this host)."""
    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else ll.get_host_cpu_features().flatten()
    return "+avx512f" in features


# The tile: MAX_ROWS x (MAX_NVEC vectors) accumulators must leave room in the vector registers for the
# B vectors and a broadcast: 4 x 4 of AVX-512's 32 registers, 4 x 2 of AVX2's 16. Measured on a Zen 4,
# one thread, float32, 4..16 rows by 64x256..128x512: 4 x 4 x 64 bytes runs 110-116 GF/s (the same
# compiled for skylake-avx512 or icelake-server); compiled for Haswell (AVX2), 4 x 4 x 64 bytes spills
# (33 GF/s) where 4 x 2 x 32 bytes runs 81-91 GF/s.
AVX512 = _targets_avx512()
VECTOR_BYTES = 64 if AVX512 else 32
MAX_ROWS = 4
MAX_NVEC = 4 if AVX512 else 2


def lanes(dtype) -> int:
    return VECTOR_BYTES * 8 // dtype.bitwidth


def _vector_ptr(builder, base, index, vt):
    return builder.bitcast(builder.gep(base, [index]), vt.as_pointer())


def _const(value):
    return ir.Constant(ir.IntType(64), value)


def _counted_loop(builder, start, stop, accs, body):
    """Emit `for kk in [start, stop): accs = body(kk, accs)` with the accumulators in SSA values (registers);
    returns their values after the loop."""
    pre = builder.block
    loop = builder.append_basic_block("tile.loop")
    done = builder.append_basic_block("tile.done")
    builder.cbranch(builder.icmp_signed("<", start, stop), loop, done)
    builder.position_at_end(loop)
    kk = builder.phi(start.type)
    phis = [builder.phi(a.type) for a in accs]
    new = body(kk, phis)
    k_next = builder.add(kk, _const(1))
    latch = builder.block
    builder.cbranch(builder.icmp_signed("<", k_next, stop), loop, done)
    kk.add_incoming(start, pre)
    kk.add_incoming(k_next, latch)
    builder.position_at_end(done)
    out = []
    for phi, before, after in zip(phis, accs, new, strict=True):
        phi.add_incoming(before, pre)
        phi.add_incoming(after, latch)
        total = builder.phi(before.type)
        total.add_incoming(before, pre)
        total.add_incoming(after, latch)
        out.append(total)
    return out


class _Tile:
    """What one tile's IR needs: operand pointers and leading dimensions, shape, vector type."""

    def __init__(self, builder, vt, a0, lda, b0, ldb, n_rows, n_vec):
        self.builder, self.vt, self.a0, self.lda, self.b0, self.ldb = builder, vt, a0, lda, b0, ldb
        self.n_rows, self.n_vec = n_rows, n_vec
        self.item = 4 if vt.element == ir.FloatType() else 8  # unaligned vector access: element alignment only
        name = f"llvm.fma.v{vt.count}f{8 * self.item}"
        self.fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt] * 3), name)

    def step(self, kk, accs):
        """accs (row-major rows x vectors) + a[:, kk] (outer) b[kk, :]: one broadcast per row, one load per vector."""
        bld, vt = self.builder, self.vt
        b_row = bld.mul(kk, self.ldb)
        bv = [bld.load(_vector_ptr(bld, self.b0, bld.add(b_row, _const(v * vt.count)), vt), align=self.item)
              for v in range(self.n_vec)]
        splat = ir.Constant(ir.VectorType(ir.IntType(32), vt.count), None)
        new = []
        for r in range(self.n_rows):
            x = bld.load(bld.gep(self.a0, [bld.add(bld.mul(_const(r), self.lda), kk)]))
            xs = bld.shuffle_vector(bld.insert_element(ir.Constant(vt, ir.Undefined), x, _const(0)),
                                    ir.Constant(vt, ir.Undefined), splat)
            new += [bld.call(self.fma, [xs, bv[v], accs[r * self.n_vec + v]]) for v in range(self.n_vec)]
        return new


# An FMA's result is ready ~4 cycles later and two issue per cycle (Zen 4, and Intel's AVX-512 cores), so
# fewer than 8 independent accumulators leave the FMA units idle: small tiles then run two halves of k
# side by side (measured 2x64 by 64x256, unpacked: 0.84 us -> 0.60 us). One-row products gain nothing:
# they are bound by reading B from L2 (~50 GF/s for a 256 KB W).
MIN_CHAINS = 8


def _emit_tile(builder, vt, a0, lda, b0, ldb, c0, ldc, k, accumulate, n_rows, n_vec):
    """Emit one rows x n_vec tile at the builder's position; ends positioned after it."""
    tile_ = _Tile(builder, vt, a0, lda, b0, ldb, n_rows, n_vec)
    c_ptrs = [_vector_ptr(builder, c0, builder.add(builder.mul(_const(r), ldc), _const(v * vt.count)), vt)
              for r in range(n_rows) for v in range(n_vec)]
    zero = ir.Constant(vt, None)
    # += starts the accumulators from c: a select, so no branch (c is read either way, and is in bounds)
    accs = [builder.select(accumulate, builder.load(p, align=tile_.item), zero) for p in c_ptrs]
    start = _const(0)
    if n_rows * n_vec < MIN_CHAINS:
        half = builder.ashr(k, _const(1))
        n = len(accs)
        both = _counted_loop(builder, start, half, accs + [zero] * n,
                             lambda kk, a: tile_.step(kk, a[:n]) + tile_.step(builder.add(kk, half), a[n:]))
        accs = [builder.fadd(x, y) for x, y in zip(both[:n], both[n:], strict=True)]
        start = builder.add(half, half)  # an odd k leaves its last index to the loop below
    accs = _counted_loop(builder, start, k, accs, tile_.step)
    for total, p in zip(accs, c_ptrs, strict=True):
        builder.store(total, p, align=tile_.item)


@intrinsic
def tile(typingctx, a, a_off, lda, b, b_off, ldb, c, c_off, ldc, k, rows, accumulate, nvec):
    """c[c_off + r*ldc + j] (=, or += when accumulate) sum_k a[a_off + r*lda + k] b[b_off + k*ldb + j] for
    r < rows (1..MAX_ROWS), j < nvec * lanes: arrays by element offset and leading dimension; the caller
    checks bounds. nvec must be a compile-time constant."""
    if not isinstance(nvec, types.IntegerLiteral):
        return None
    sig = types.void(a, a_off, lda, b, b_off, ldb, c, c_off, ldc, k, rows, accumulate, nvec)
    n_vec = nvec.literal_value

    def codegen(context, builder, signature, args):
        sa = signature.args
        dtype = sa[0].dtype
        vt = ir.VectorType(context.get_value_type(dtype), lanes(dtype))
        ints = [context.cast(builder, args[i], sa[i], types.int64) for i in range(len(args)) if i not in (0, 3, 6, 11)]
        a_off_, lda_, b_off_, ldb_, c_off_, ldc_, k_, rows_, _ = ints
        a0, b0, c0 = (builder.gep(context.make_array(sa[i])(context, builder, args[i]).data, [off])
                      for i, off in ((0, a_off_), (3, b_off_), (6, c_off_)))
        acc = context.cast(builder, args[11], sa[11], types.boolean)
        end = builder.append_basic_block("tile.end")
        switch = builder.switch(rows_, end)
        for n_rows in range(1, MAX_ROWS + 1):
            block = builder.append_basic_block(f"tile.rows{n_rows}")
            switch.add_case(_const(n_rows), block)
            builder.position_at_end(block)
            _emit_tile(builder, vt, a0, lda_, b0, ldb_, c0, ldc_, k_, acc, n_rows, n_vec)
            builder.branch(end)
        builder.position_at_end(end)
        return context.get_dummy_value()

    return sig, codegen


@njit(inline="always")
def product(a, b, c, m, accumulate):
    """c[:m] = a[:m] @ b, or += it: a (>= m, K), b (K, N), c (>= m, N), each with unit column stride
    (row strides are free: a may be a column slice)."""
    k, n = b.shape
    item = c.itemsize
    lda, ldb, ldc = a.strides[0] // item, b.strides[0] // item, c.strides[0] // item
    width = VECTOR_BYTES // item
    j = 0
    # columns outer: one panel of b (k x tile width) serves every block of rows while in cache
    while j + MAX_NVEC * width <= n:
        for r in range(0, m, MAX_ROWS):
            tile(a, r * lda, lda, b, j, ldb, c, r * ldc + j, ldc, k, min(MAX_ROWS, m - r), accumulate, MAX_NVEC)
        j += MAX_NVEC * width
    while j + width <= n:
        for r in range(0, m, MAX_ROWS):
            tile(a, r * lda, lda, b, j, ldb, c, r * ldc + j, ldc, k, min(MAX_ROWS, m - r), accumulate, 1)
        j += width
    for r in range(m):
        for col in range(j, n):
            total = c[r, col] if accumulate else c.dtype.type(0)
            for i in range(k):
                total += a[r, i] * b[i, col]
            c[r, col] = total


def panel_width(dtype) -> int:
    """Columns of one packed panel: one tile's width."""
    return MAX_NVEC * VECTOR_BYTES // np.dtype(dtype).itemsize


def pack(w: np.ndarray) -> np.ndarray:
    """W (G, P) as panels of W^T, (ceil(G / width), P, width), zero beyond G. Each tile then reads its
    columns of W^T as one contiguous stream, which one-row steps need (measured 1x128 by 128x512: 2.4 us
    packed, 4.3 us from a plain W^T, whose rows a tile reads 256 bytes of at a time)."""
    g, p = w.shape
    width = panel_width(w.dtype)
    panels = np.empty((-(-g // width), p, width), dtype=w.dtype)
    fill_panels(w, panels)
    return panels


@njit(cache=True, nogil=True)
def fill_panels(w, panels):
    """pack's copy, reading W's rows in order (numpy's transposing copy took 1.1 ms for a 1024x256 W, this 0.17)."""
    g, p = w.shape
    count, _, width = panels.shape
    for c in range(count):
        for j in range(width):
            row = c * width + j
            for k in range(p):
                panels[c, k, j] = w[row, k] if row < g else 0


@njit(inline="always")
def packed_product(a, panels, c, m, n):
    """c[:m, :n] = a[:m] W^T for panels = pack(W) of a W with n rows; a and c have unit column stride."""
    count, k, width = panels.shape
    lda, ldc = a.strides[0] // a.itemsize, c.strides[0] // c.itemsize
    full = n // width
    for p in range(full):
        for r in range(0, m, MAX_ROWS):
            tile(a, r * lda, lda, panels, p * k * width, width, c, r * ldc + p * width, ldc, k, min(MAX_ROWS, m - r),
                 False, MAX_NVEC)
    if full < count:
        partial_panel(a, panels, c, m, n, full)


@njit(cache=True, nogil=True)
def partial_panel(a, panels, c, m, n, p):
    """packed_product's last panel when it is only partly inside c: formed whole in scratch, copied in part."""
    _, k, width = panels.shape
    lda = a.strides[0] // a.itemsize
    scratch = np.empty((MAX_ROWS, width), dtype=c.dtype)
    for r in range(0, m, MAX_ROWS):
        rows = min(MAX_ROWS, m - r)
        tile(a, r * lda, lda, panels, p * k * width, width, scratch, 0, width, k, rows, False, MAX_NVEC)
        for i in range(rows):
            for j in range(n - p * width):
                c[r + i, p * width + j] = scratch[i, j]
