"""CPU engine: the reference engine's algorithm with the time loops compiled by Numba.

Same signature, layout and saved tensors as rnnkit.engines.reference (read that module
for the BPTT derivation); the loops live in cpu_kernels.py. What stays in torch: the
products that do not depend on the previous step, which are single large matrix products
(the input projection of all steps, the weight gradients summed over steps, dx).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from .reference import NONLINEARITY, backward_by_mode
from .reference import saved_shapes as reference_saved_shapes


# bfloat16 (what torch.autocast gives on CPU): the products over all steps (the input projection, dx)
# run in bfloat16 (oneDNN's bfloat16 kernels, where the CPU has them); the time loop runs the float32
# kernels on the bfloat16 values, and the state carried between steps keeps float32.
DTYPES = (torch.float32, torch.float64, torch.bfloat16)


@lru_cache(maxsize=1)
def _import_error() -> str | None:
    try:
        from . import cpu_kernels  # noqa: F401  (numba compiles lazily; this only imports)
    except ImportError as e:
        return f"numba is not importable ({e}); install it with: pip install numba"
    return None


def why_not(x: Tensor) -> str | None:
    """Why this engine cannot run on input x, or None if it can."""
    if (err := _import_error()) is not None:
        return err
    if x.device.type != "cpu":
        return f"it runs on CPU tensors, got a tensor on {x.device}"
    if x.dtype not in DTYPES:
        return f"it supports float32, float64 and bfloat16, got {x.dtype}"
    from .blas import gemm_address
    if gemm_address(torch.float64 if x.dtype == torch.float64 else torch.float32) is None:
        return "this torch build exports no BLAS sgemm_/dgemm_ for the compiled loops to call"
    return None


@lru_cache(maxsize=64)
def plan(batch_sizes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """batch_sizes and the first packed row of each step, as the kernels take them."""
    sizes = np.asarray(batch_sizes, dtype=np.int64)
    offsets = np.zeros_like(sizes)
    np.cumsum(sizes[:-1], out=offsets[1:])
    return sizes, offsets


def arr(t: Tensor) -> np.ndarray:
    """A numpy view of a CPU tensor (contiguous first: the kernels index rows directly)."""
    return t.detach().contiguous().numpy()


def gemm_fn(dtype: torch.dtype) -> int:
    address = _gemm_addresses.get(dtype)
    if address is None:
        from .blas import gemm_address
        address = _gemm_addresses[dtype] = gemm_address(dtype)
    return address


_gemm_addresses: dict[torch.dtype, int] = {}  # every layer call asks: a dict beats an import statement per call


def kernels():
    from . import cpu_kernels
    return cpu_kernels


# ---------------------------------------------------------------- products over all steps


@lru_cache(maxsize=1)
def _onednn_linear():
    """torch's oneDNN fp32 matrix product, or None. On some AVX-512 CPUs that MKL does not tune for it runs
    about twice as fast as torch.mm (an AMD Zen 5: 176-230 against 94-107 GFLOP/s on one thread); on a Zen 4
    the two run alike (about 90 GFLOP/s): hence the timing per machine (tune.faster_product)."""
    op = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None
    try:
        op(torch.ones(2, 3), torch.ones(4, 3), None, "none", [], "")
    except Exception:  # absent or unusable in this build: the plain product serves
        return None
    return op


# oneDNN pays about 10 us per call (measured: 13 us for a 1x128 by 128x128 product); below this many
# multiply-adds torch's own product is faster. Larger products are timed per machine (tune.faster_product);
# this stays the choice where nothing may be timed, and the one-call entry's bound (small_shape).
ONEDNN_MIN_MACS = 1 << 22


def plain_linear(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """x w^T + b in torch's own product (MKL), which reads transposed operands in place."""
    return torch.addmm(b, x, w.t()) if b is not None else x @ w.t()


def linear(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """x w^T + b for (N, K) x and (M, K) w, in the library this machine runs fastest for it. (N, M)"""
    if w.dtype == torch.bfloat16:  # the bfloat16 path's products over all steps: bfloat16 operands, float32 result
        return torch.nn.functional.linear(x.to(w.dtype), w, b).float()
    n, k = x.shape
    macs = n * k * w.shape[0]
    timing = tune()
    op = _onednn_linear() if x.dtype == torch.float32 and macs >= timing.PRODUCT_MIN_MACS else None
    if op is None:
        return plain_linear(x, w, b)
    # oneDNN reads contiguous operands only: a transposed view is copied first, which the timing includes
    layout = "c" if x.is_contiguous() and w.is_contiguous() else "t"
    return timing.faster_product(
        timing.product_key(f"linear{layout}", n, k, w.shape[0], b is not None),
        {"mm": lambda: plain_linear(x, w, b), "onednn": lambda: op(x.contiguous(), w.contiguous(), b, "none", [], "")},
        "onednn" if macs >= ONEDNN_MIN_MACS else "mm")


def tune():
    """rnnkit.engines.tune, imported on first use (it imports the engines)."""
    global _tune
    if _tune is None:
        from . import tune as tune_
        _tune = tune_
    return _tune


_tune = None


# Rows of the stacked steps per oneDNN product when summing over steps: oneDNN wants contiguous transposed
# operands, and copying all steps at once would add a second copy of dgates to the peak.
SUM_CHUNK_ELEMENTS = 1 << 20


def sum_over_steps(a: Tensor, b: Tensor) -> Tensor:
    """a^T b for (N, M) a and (N, K) b: the sum over all steps (rows) of a_t^T b_t, in the library this machine
    runs fastest for it. (M, K)"""
    n, m = a.shape
    macs = n * m * b.shape[1]
    timing = tune()
    if a.dtype != torch.float32 or macs < timing.PRODUCT_MIN_MACS or _onednn_linear() is None:
        return a.t() @ b if n > 0 else a.new_zeros(m, b.shape[1])
    return timing.faster_product(timing.product_key("sum", n, m, b.shape[1]),
                                 {"mm": lambda: a.t() @ b, "onednn": lambda: sum_in_chunks(a, b)},
                                 "onednn" if macs >= ONEDNN_MIN_MACS else "mm")


def sum_in_chunks(a: Tensor, b: Tensor) -> Tensor:
    """sum_over_steps in oneDNN, in row chunks (a chunk's transposed operands are copied: see above)."""
    op = _onednn_linear()
    rows = max(1, SUM_CHUNK_ELEMENTS // max(a.shape[1], b.shape[1], 1))
    total = None
    for start in range(0, a.shape[0], rows):
        part = op(a[start:start + rows].t().contiguous(), b[start:start + rows].t().contiguous(), None, "none", [], "")
        total = part if total is None else total.add_(part)
    return total


def input_grads(x, w_ih, dxp: Tensor, has_bias: bool, need_dx: bool):
    """dx = dXP W_ih, dW_ih = sum_t dxp_t^T x_t, db_ih = sum_t dxp_t (None where not needed)."""
    dx = linear(dxp, w_ih.t()) if need_dx else None  # (N, I)
    return dx, sum_over_steps(dxp, x), dxp.sum(0) if has_bias else None


def recurrent_grads(dhp: Tensor, h_prev: Tensor, has_bias: bool):
    """dW_hh = sum_t dhp_t^T h_{t-1}, db_hh = sum_t dhp_t."""
    return sum_over_steps(dhp, h_prev), dhp.sum(0) if has_bias else None


def weight_grads(x, w_ih, dxp: Tensor, dhp: Tensor, h_prev: Tensor, has_bias: bool, need_dx: bool):
    """rnnkit.engines.reference.shared_weight_grads, with the products routed through `linear`."""
    dx, dw_ih, db_ih = input_grads(x, w_ih, dxp, has_bias, need_dx)
    dw_hh, db_hh = recurrent_grads(dhp, h_prev, has_bias)
    return dx, dw_ih, dw_hh, db_ih, db_hh


# ---------------------------------------------------------------- the compiled loops


def empty(like: Tensor, *shape: int) -> Tensor:
    """Every buffer the kernels write to comes from here (tests poison it with NaN: an unwritten element fails)."""
    return torch.empty(shape, dtype=like.dtype)  # CPU tensors only; faster than like.new_empty


# The forward's tiles read W_hh as packed panels of W_hh^T (cpu_kernels.product_from_state): a copy
# per layer call, repaid by what the tiles save over sgemm_ per step (measured on a Zen 4, one thread,
# LSTM forward kernel: after 16-21 steps at B=1 for H=64..512, e.g. 39 us to pack a 512x128 W against
# 2 us saved per step; after 6-7 steps at B=2..4). Calls with fewer such steps keep BLAS and skip the copy.
MIN_PACKED_STEPS = 20


def packed_for_steps(w: Tensor, batch_sizes) -> np.ndarray:
    """small_product.pack(w) when enough steps run their product in tiles to repay the copy; else (0, 0, 0)."""
    if len(batch_sizes) >= MIN_PACKED_STEPS:  # (short calls, a decoder's step among them, skip the count)
        from .cpu_kernels import TILE_MAX_MACS
        from .small_product import pack
        sizes, _ = plan(tuple(batch_sizes))
        if np.count_nonzero(sizes * (w.shape[0] * w.shape[1]) <= TILE_MAX_MACS) >= MIN_PACKED_STEPS:
            return pack(arr(w))
    return np.zeros((0, 0, 0), dtype=np_dtype(w))


def np_dtype(t: Tensor):
    return np.float32 if t.dtype == torch.float32 else np.float64


def bias_or_zeros(b: Tensor | None, size: int, like: Tensor) -> np.ndarray:
    return arr(b) if b is not None else np.zeros(size, dtype=np_dtype(like))


# A step's recurrent product at least this large goes to oneDNN from a Python loop over steps instead
# of to BLAS inside the compiled loop: oneDNN runs it about twice as fast here, which repays the
# ~30 us of Python per step only for large steps (B=64, H=512 LSTM: 67M multiply-adds a step).
STEPWISE_MIN_MACS = 1 << 24


def stepwise(x: Tensor, batch: int, w_hh: Tensor) -> bool:
    return (x.dtype == torch.float32 and _onednn_linear() is not None
            and batch * w_hh.shape[0] * w_hh.shape[1] >= STEPWISE_MIN_MACS)


def forward_steps(call, hp: Tensor, h: Tensor, w_hh: Tensor, batch_sizes, reverse: bool) -> None:
    """Run a forward kernel over all steps: call(hp, k0, k1, own_product)."""
    num_steps = len(batch_sizes)
    if not stepwise(h, batch_sizes[0], w_hh):
        call(arr(hp), 0, num_steps, True)
        return
    for k in range(num_steps):
        bs = batch_sizes[num_steps - 1 - k if reverse else k]
        call(arr(linear(h[:bs], w_hh)), k, k + 1, False)  # hp = h W_hh^T for the running rows


def backward_steps(call, dh: Tensor, step_product, w_hh: Tensor, batch_sizes, reverse: bool,
                   accumulate: bool) -> None:
    """Run a backward kernel over all steps: call(k0, k1, own_product). Stepwise, the product that
    flows to the previous step, step_product(rows, W_hh^T), is formed here and written (for GRU added) to dh."""
    num_steps = len(batch_sizes)
    if not stepwise(dh, batch_sizes[0], w_hh):
        call(0, num_steps, True)
        return
    _, offsets = plan(batch_sizes)
    w_hh_t = w_hh.detach().t().contiguous()  # (P, G*H)
    for k in range(num_steps):
        call(k, k + 1, False)
        t = k if reverse else num_steps - 1 - k  # backward visits the steps in the opposite order
        bs, off = batch_sizes[t], int(offsets[t])
        product = step_product(slice(off, off + bs), w_hh_t)  # (bs, P)
        if accumulate:
            dh[:bs] += product
        else:
            dh[:bs] = product


# Each family: a forward function (also the whole of a no-grad call) and an autograd.Function
# that keeps what its backward needs, the same tensors as the reference engine keeps.


def rnn_forward(x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, nonlinearity):
    """Returns out (N, H) and h_n (B, H)."""
    sizes, offsets = plan(batch_sizes)
    xp = linear(x, w_ih, b_ih)  # (N, H)
    out, hp = empty(x, *xp.shape), empty(x, *h0.shape)
    h = h0.detach().clone(memory_format=torch.contiguous_format)
    fixed = (gemm_fn(x.dtype), nonlinearity == "relu", arr(xp), arr(w_hh), packed_for_steps(w_hh, batch_sizes),
             bias_or_zeros(b_hh, w_hh.shape[0], x),
             arr(h), sizes, offsets, reverse, arr(out))
    forward_steps(lambda hp_, *k: kernels().rnn_forward(*fixed, hp_, *k), hp, h, w_hh, batch_sizes, reverse)
    return out, h


def rnn_backward(x, h0, w_ih, w_hh, has_bias, batch_sizes, reverse, nonlinearity, out, saved, d_out, d_h_n,
                 need_dx):  # saved: () for RNN
    sizes, offsets = plan(batch_sizes)
    dpre, hprev, dh = empty(x, *out.shape), empty(x, *out.shape), d_h_n.clone(memory_format=torch.contiguous_format)
    fixed = (gemm_fn(x.dtype), nonlinearity == "relu", arr(w_hh), arr(h0), arr(out), arr(d_out), arr(dh), sizes,
             offsets, reverse, arr(dpre), arr(hprev))
    backward_steps(lambda *k: kernels().rnn_backward(*fixed, *k), dh, lambda rows, w_t: linear(dpre[rows], w_t),
                   w_hh, batch_sizes, reverse, False)
    dx, dw_ih, dw_hh, db_ih, db_hh = weight_grads(x, w_ih, dpre, dpre, hprev, has_bias, need_dx)
    return dx, dh, None, dw_ih, dw_hh, db_ih, db_hh, None


def lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse, keep=True):
    """Returns out (N, P), h_n (B, P), c_n (B, H), and for the backward cs (N, H) and gates (N, 4H) (with
    keep=False, when no backward is to come, only a step's worth of them: 5 N H floats fewer to write)."""
    sizes, offsets = plan(batch_sizes)
    hidden = c0.shape[1]
    xp = linear(x, w_ih, b_ih)  # (N, 4H)
    n = x.shape[0]
    rows = n if keep else h0.shape[0]
    out, cs, gates = empty(x, n, h0.shape[1]), empty(x, rows, hidden), empty(x, rows, 4 * hidden)
    h, c = (s.detach().clone(memory_format=torch.contiguous_format) for s in (h0, c0))
    hp, m = empty(x, h0.shape[0], 4 * hidden), empty(x, h0.shape[0], hidden)
    w_hr_ = arr(w_hr) if w_hr is not None else np.zeros((0, hidden), dtype=np_dtype(x))
    w_hr_packed = packed_for_steps(w_hr, batch_sizes) if w_hr is not None else np.zeros((0, 0, 0), np_dtype(x))
    fixed = (gemm_fn(x.dtype), arr(xp), arr(w_hh), packed_for_steps(w_hh, batch_sizes),
             bias_or_zeros(b_hh, 4 * hidden, x), w_hr_, w_hr_packed, arr(h), arr(c), sizes, offsets, reverse, arr(out),
             arr(cs), arr(gates))
    m_ = arr(m)
    forward_steps(lambda hp_, *k: kernels().lstm_forward(*fixed, hp_, m_, keep, *k), hp, h, w_hh, batch_sizes,
                  reverse)
    return out, h, c, cs, gates


def lstm_backward(x, h0, c0, w_ih, w_hh, has_bias, w_hr, batch_sizes, reverse, out, saved, d_out, d_h_n, d_c_n,
                  need_dx):
    cs, gates = saved
    sizes, offsets = plan(batch_sizes)
    hidden = c0.shape[1]
    dgates, hprev, dh_total = empty(x, *gates.shape), empty(x, *out.shape), empty(x, *out.shape)
    m_all = empty(x, out.shape[0], hidden) if w_hr is not None else empty(x, 0, hidden)
    dm = empty(x, h0.shape[0], hidden)
    dh, dc = (d.clone(memory_format=torch.contiguous_format) for d in (d_h_n, d_c_n))
    w_hr_ = arr(w_hr) if w_hr is not None else np.zeros((0, hidden), dtype=np_dtype(x))
    fixed = (gemm_fn(x.dtype), arr(w_hh), w_hr_, arr(h0), arr(c0), arr(out), arr(cs), arr(gates), arr(d_out),
             arr(dh), arr(dc), sizes, offsets, reverse, arr(dgates), arr(hprev), arr(dh_total), arr(m_all), arr(dm))
    backward_steps(lambda *k: kernels().lstm_backward(*fixed, *k), dh,
                   lambda rows, w_t: linear(dgates[rows], w_t), w_hh, batch_sizes, reverse, False)
    dx, dw_ih, dw_hh, db_ih, db_hh = weight_grads(x, w_ih, dgates, dgates, hprev, has_bias, need_dx)
    dw_hr = sum_over_steps(dh_total, m_all) if w_hr is not None else None  # sum_t dh_t^T m_t  (P, H)
    return dx, dh, dc, dw_ih, dw_hh, db_ih, db_hh, dw_hr


def gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, keep=True):
    """Returns out (N, H), h_n (B, H), and for the backward cache (N, 4H) = [r, z, n, W_hn h + b_hn] (one
    step's worth with keep=False, when no backward is to come)."""
    sizes, offsets = plan(batch_sizes)
    hidden = h0.shape[1]
    xp = linear(x, w_ih, b_ih)  # (N, 3H)
    out, cache = empty(x, x.shape[0], hidden), empty(x, x.shape[0] if keep else h0.shape[0], 4 * hidden)
    h, hp = h0.detach().clone(memory_format=torch.contiguous_format), empty(x, h0.shape[0], 3 * hidden)
    fixed = (gemm_fn(x.dtype), arr(xp), arr(w_hh), packed_for_steps(w_hh, batch_sizes),
             bias_or_zeros(b_hh, 3 * hidden, x), arr(h), sizes, offsets, reverse, arr(out), arr(cache))
    forward_steps(lambda hp_, *k: kernels().gru_forward(*fixed, hp_, keep, *k), hp, h, w_hh, batch_sizes, reverse)
    return out, h, cache


def gru_backward(x, h0, w_ih, w_hh, has_bias, batch_sizes, reverse, out, saved, d_out, d_h_n, need_dx):
    (cache,) = saved
    sizes, offsets = plan(batch_sizes)
    hidden = h0.shape[1]
    dxp, dhp_n = empty(x, out.shape[0], 3 * hidden), empty(x, out.shape[0], hidden)
    hprev, dh = empty(x, *out.shape), d_h_n.clone(memory_format=torch.contiguous_format)
    fixed = (gemm_fn(x.dtype), arr(w_hh), arr(h0), arr(out), arr(cache), arr(d_out), arr(dh), sizes, offsets,
             reverse, arr(dxp), arr(dhp_n), arr(hprev))

    def step_product(rows, w_t):  # dhp W_hh with dhp = [dxp_r, dxp_z, dhp_n]
        return linear(dxp[rows, :2 * hidden], w_t[:, :2 * hidden]) + linear(dhp_n[rows], w_t[:, 2 * hidden:])

    backward_steps(lambda *k: kernels().gru_backward(*fixed, *k), dh, step_product, w_hh, batch_sizes, reverse,
                   True)
    dx, dw_ih, db_ih = input_grads(x, w_ih, dxp, has_bias, need_dx)
    dw_rz, db_rz = recurrent_grads(dxp[:, :2 * hidden], hprev, has_bias)
    dw_n, db_n = recurrent_grads(dhp_n, hprev, has_bias)
    dw_hh = torch.cat([dw_rz, dw_n])
    db_hh = torch.cat([db_rz, db_n]) if has_bias else None
    return dx, dh, None, dw_ih, dw_hh, db_ih, db_hh, None


# ---------------------------------------------------------------- the engine interface (rnnkit.engines.reference's)

def widened(*tensors: Tensor | None) -> list[Tensor | None]:
    """bfloat16 tensors as float32 (the kernels' dtype); others as they are."""
    return [t.float() if t is not None and t.dtype == torch.bfloat16 else t for t in tensors]


def narrowed(tensors, like) -> list[Tensor | None]:
    """Each result in the dtype of its counterpart in `like` (bfloat16 back from float32)."""
    return [t if t is None or k is None else t.to(k.dtype) for t, k in zip(tensors, like, strict=True)]


def forward(mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, keep=True):
    """One layer, one direction, no autograd: out, h_n, c_n (None unless LSTM), saved (as the reference engine's;
    with keep=False, for `infer`, the saved tensors are not kept and saved is ())."""
    if x.dtype == torch.bfloat16:  # W_ih and b_ih stay bfloat16: `linear` forms xp with bfloat16 products
        out, h, c, saved = forward(mode, *widened(x), batch_sizes, *widened(h0, c0), w_ih,
                                   *widened(w_hh), b_ih, *widened(b_hh, w_hr), reverse, keep)
        return *narrowed((out, h, c), (x, h0, c0)), saved  # saved stays float32 for the backward
    if mode == "LSTM":
        out, h, c, cs, gates = lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse, keep)
        return out, h, c, (cs, gates) if keep else ()
    if mode == "GRU":
        out, h, cache = gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, keep)
        return out, h, None, (cache,) if keep else ()
    out, h = rnn_forward(x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, NONLINEARITY[mode])
    return out, h, None, ()


def infer(mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse):
    """`forward` where no backward is to come (no_grad, nothing requiring a gradient): out, h_n, c_n, without
    writing what the backward would read (an LSTM's gates and cell states: 5 N H floats, whose first touch
    alone costs more than their arithmetic at long T). Short calls go to one compiled call (cpu_kernels.short_call)."""
    if small_call(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr):
        return infer_small(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse, w_hr)
    out, h, c, _ = forward(mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, keep=False)
    return out, h, c


def small_call(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr) -> bool:
    """Whether cpu_kernels.short_call serves this no-grad call: padded (every step runs all rows), both biases or
    neither, float32 throughout, and small_shape."""
    batch = h0.shape[0]
    return (batch_sizes.count(batch) == len(batch_sizes) and all_float32(x, h0, c0)
            and small_layer(len(batch_sizes), batch, x.shape[1], w_ih, w_hh, b_ih, b_hh, w_hr))


def small_layer(steps: int, batch: int, inputs: int, w_ih, w_hh, b_ih, b_hh, w_hr) -> bool:
    """small_call's conditions on one layer's weights: both biases or neither, float32, small_shape."""
    return ((b_ih is None) == (b_hh is None) and small_shape(steps, batch, inputs, *w_hh.shape)
            and all_float32(w_ih, w_hh, b_ih, b_hh, w_hr))


def small_shape(steps: int, batch: int, inputs: int, gates: int, width: int) -> bool:
    """Where cpu_kernels.short_call serves a no-grad call: where `forward` would take its route (torch's plain
    product for the input projection, not oneDNN; BLAS inside the loop, not stepwise; W_hh (gates, width) unpacked,
    too few steps to repay packing; an LSTM's W_hr, no larger, with it), and any call of one sequence that is not
    stepwise: one row's products are dot products there, which read W once a step as the packed tiles do, without
    the packing (Zen 4, T=100, H=64..512, every cell: 1.07-1.45x faster than `forward`'s route; at B=2 they lose)."""
    if batch == 1:
        return steps > 0 and gates * width < STEPWISE_MIN_MACS
    return (0 < steps < MIN_PACKED_STEPS and batch > 0 and steps * batch * inputs * gates < ONEDNN_MIN_MACS
            and batch * gates * width < STEPWISE_MIN_MACS)


def all_float32(*tensors: Tensor | None) -> bool:
    return all(t is None or t.dtype is torch.float32 for t in tensors)


def infer_small(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse, w_hr=None):
    """`infer` for a call small_call admitted: out, h_n, c_n (None unless LSTM) from one compiled call.

    x may be (N, I) rows or (T, B, I), h0 and c0 (B, .) or (1, B, .): out and the states come back in the same
    leading shapes (the quick lane then needs no views)."""
    batch, out_size = h0.shape[-2], h0.shape[-1]
    hidden = c0.shape[-1] if c0 is not None else out_size  # an LSTM's projection makes them differ
    out, h_n = empty(x, *x.shape[:-1], out_size), empty(x, *h0.shape)
    c_n = empty(x, *c0.shape) if c0 is not None else None
    bias = b_ih is not None
    rows = x.numel() // x.shape[-1]
    # contiguous copies (where needed) must outlive the call: the compiled code reads their addresses
    x, w_ih, w_hh, h0 = x.contiguous(), w_ih.contiguous(), w_hh.contiguous(), h0.contiguous()
    b_ih, b_hh, c0, w_hr = (None if t is None else t.contiguous() for t in (b_ih, b_hh, c0, w_hr))
    k = kernels()
    k.short_call_entry()(k.SHORT_MODES[mode], gemm_fn(torch.float32), x.data_ptr(), w_ih.data_ptr(),
                         b_ih.data_ptr() if bias else None, w_hh.data_ptr(), b_hh.data_ptr() if bias else None,
                         None if w_hr is None else w_hr.data_ptr(), h0.data_ptr(),
                         None if c0 is None else c0.data_ptr(), h_n.data_ptr(),
                         None if c_n is None else c_n.data_ptr(), out.data_ptr(), rows // batch, batch, x.shape[-1],
                         hidden, out_size, bias, reverse)
    return out, h_n, c_n


def infer_layer(mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse):
    """`run_layer` for a padded float32 call already known to be plain eager, no-grad and without autocast (a
    layer's quick lane, RecurrentLayer.quick_run): what ops.run_layer would do for it (the engine's `infer`),
    without its checks. batch_sizes is ignored: every step runs all h0.shape[0] rows."""
    steps = (h0.shape[0],) * (x.shape[0] // h0.shape[0])
    return infer(mode, x, steps, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse)


def backward(mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, out, saved, d_out, d_h_n, d_c_n,
             need_dx: bool):
    """BPTT for `forward`: dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh, dW_hr (None where absent or not needed)."""
    if x.dtype == torch.bfloat16:
        inputs = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
        grads = backward(mode, *widened(x), batch_sizes, *widened(h0, c0), w_ih, *widened(w_hh, b_ih, b_hh, w_hr),
                         reverse, *widened(out), saved, *widened(d_out, d_h_n, d_c_n), need_dx)
        return narrowed(grads, inputs)
    return backward_by_mode((rnn_backward, lstm_backward, gru_backward), mode, x, batch_sizes, h0, c0, w_ih, w_hh,
                            b_ih, w_hr, reverse, out, saved, d_out, d_h_n, d_c_n, need_dx)


def saved_shapes(mode: str, n: int, hidden: int, dtype: torch.dtype, has_proj: bool, batch: int = 0):
    """What `forward` saves: the reference engine's tensors, in float32 for bfloat16 input."""
    return reference_saved_shapes(mode, n, hidden, torch.float32 if dtype == torch.bfloat16 else dtype, has_proj,
                                  batch)


def run_layer(*args, **kwargs):
    """rnnkit.engines.ops.run_layer on this engine (its registered operator)."""
    from .ops import run_layer
    return run_layer("cpu", *args, **kwargs)
