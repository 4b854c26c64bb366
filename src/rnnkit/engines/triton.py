"""Triton engine: the reference engine's algorithm on the GPU, one fused kernel for what each step waits for.

Same signature, layout and BPTT as rnnkit.engines.reference (read it for the derivation); the
kernels live in triton_kernels.py. What stays in torch: the products that do not wait for the
previous step, each a single large product (the input projection of all steps, the weight
gradients summed over steps, dx). Each step's recurrent product runs inside the kernel, fused
with the gate arithmetic and the state update.

Two strategies, chosen per call by `choose_strategy`:

    persistent   one launch for the whole sequence. Each program owns a tile of batch rows x hidden
                 units for all steps and waits at a grid-wide barrier between steps; the grid is at
                 most one program per SM. For small batches, where a step is too little work to
                 repay a launch. The LSTM forward keeps its W_hh slice in registers when it fits.
    stepwise     one launch per phase of each step (two to three per step), for large batches. On
                 CUDA the launches of a whole call are captured once per shape as a CUDA graph and
                 replayed, which removes the launch overhead.

Packed batches: the kernels read batch_sizes and step offsets from the device and skip row tiles
whose sequences have finished, so padding costs nothing.

Precision: float32, bfloat16 and float16 inputs; products accumulate in float32; gate arithmetic,
the LSTM cell state and every activation saved for the backward are float32. float32 products
use 3xTF32 (float32 accuracy on tensor cores, F32_PRECISION) unless `TF32 = True` (this module's
flag; off by default) asks for plain TF32.

Without a GPU the kernels run on CPU tensors under Triton's interpreter (TRITON_INTERPRET=1 set
before this engine first imports its kernels); the tests do that. The persistent strategy then runs
with a grid of one program, because the interpreter runs programs one after another and a barrier
with several programs would wait forever.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from .reference import NONLINEARITY, backward_by_mode, input_projection

DTYPES = (torch.float32, torch.bfloat16, torch.float16)

TF32 = False  # float32 products in TF32 (faster, about 1e-3 relative error): opt in
# float32 products when TF32 is off. "tf32x3" splits each operand into a TF32 part and a TF32
# remainder and sums three tensor-core products: float32 accuracy (measured on an H200 in
# docs/PERFORMANCE.md: 6e-7 to 1.1e-6 against float64, cuDNN 5.6e-7 to 1.8e-6), where "ieee"
# falls back to scalar FMA loops, measured 2-5x slower.
F32_PRECISION = "tf32x3"
STRATEGY = "auto"  # "auto", "persistent" or "stepwise": tests and benchmarks force one
CUDA_GRAPHS = True  # stepwise on CUDA: replay captured launches instead of launching each step


# ---------------------------------------------------------------- can it run here


@lru_cache(maxsize=1)
def _import_error() -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError as e:
        return f"triton is not installed ({e}); install it with: pip install triton"
    return None


def kernels():
    """The kernel module, imported on first use (decorating the kernels reads TRITON_INTERPRET then)."""
    from . import triton_kernels
    return triton_kernels


def why_not(x: Tensor, dtypes: tuple[torch.dtype, ...] = DTYPES) -> str | None:
    """Why this engine (or a family's Triton kernels, which take `dtypes`) cannot run on input x, or None."""
    if (err := _import_error()) is not None:
        return err
    if x.dtype not in dtypes:
        names = [str(d).removeprefix("torch.") for d in dtypes]
        return f"it supports {' and '.join(filter(None, [', '.join(names[:-1]), names[-1]]))}, got {x.dtype}"
    interpreted = kernels().INTERPRETED
    if x.device.type == "cuda" and interpreted:
        return "its kernels were loaded for Triton's interpreter (TRITON_INTERPRET=1), which takes CPU tensors"
    if x.device.type == "cuda" or (x.device.type == "cpu" and interpreted):
        return None
    return f"it needs a CUDA tensor (or TRITON_INTERPRET=1 for CPU tensors), got a tensor on {x.device}"


# ---------------------------------------------------------------- strategy and tiles

BLOCK_B = 16  # rows per program: tl.dot needs at least 16
BLOCK_K = 32  # reduction width of one tl.dot under the interpreter: small test sizes still loop over K
# Tiles and thresholds below were chosen from benchmarks/gpu.py's measurements on an H200
# (docs/PERFORMANCE.md): its tune part times each alternative against the others in one process.
STEPWISE_BLOCK_K = 64  # 64 and 128 beat 32 by 10-25%
PERSISTENT_BLOCK_K: int | None = None  # None: persistent_block_k's choice
PERSISTENT_MAX_BATCH = 256  # persistent beat stepwise at every B <= 256 whose grid fits (16-bit)
F32_PERSISTENT_MIN_BATCH = 65  # float32: stepwise was faster at B <= 64 in most shapes, persistent at 256
RESIDENT_MAX_BYTES = 64 * 1024  # LSTM forward: a program keeps its W_hh slice in registers up to this size
STEPWISE_BLOCK_H = 32


@dataclass(frozen=True)
class Plan:
    persistent: bool
    block_b: int
    block_h: int
    block_k: int
    w_resident: bool  # LSTM forward only
    num_warps: int


def num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 1  # the interpreter runs one program at a time
    return torch.cuda.get_device_properties(device).multi_processor_count


def pow2(n: int, least: int = 16) -> int:
    return max(least, 1 << max(0, n - 1).bit_length())


def persistent_block_h(batch: int, hidden: int, sms: int) -> int | None:
    """The narrowest column tile (16 to 128) whose grid fits on the GPU at once, or None if none does."""
    for block_h in (16, 32, 64, 128):
        if math.ceil(batch / BLOCK_B) * math.ceil(hidden / block_h) <= sms:
            return block_h
    return None


def stepwise_block_b(batch: int, hidden: int, sms: int) -> int:
    """Rows per stepwise program: the tallest tile (16 to 64) that still gives every SM a program.

    Every row tile reads the whole W_hh each step, so taller tiles cut that traffic; but a step's
    grid must still fill the GPU. Measured at one shape only (H200, B=256, H=1024, bfloat16 forward:
    64 rows 3.31 ms, 16 rows 3.90 ms); since then stepwise runs there only where no persistent grid fits.
    """
    if sms == 1:  # the interpreter
        return BLOCK_B
    cols = math.ceil(hidden / STEPWISE_BLOCK_H)
    for block_b in (64, 32):
        if math.ceil(batch / block_b) * cols >= sms:
            return block_b
    return BLOCK_B


def persistent_block_k(block_h: int, element_size: int) -> int:
    """Reduction tile of the persistent kernels: wide (fewer dependent loads per step), within 16 KB of W per
    step of the K loop (wider tiles ran out of shared memory), at most 128 (16-bit) or 64 (float32)."""
    if PERSISTENT_BLOCK_K is not None:
        return PERSISTENT_BLOCK_K
    return min(128 if element_size == 2 else 64, 16384 // (block_h * element_size))


def choose_strategy(batch: int, hidden: int, device: torch.device, dtype: torch.dtype) -> str:
    """"persistent" for batches up to PERSISTENT_MAX_BATCH whose grid fits one program per SM, else "stepwise";
    float32 batches of up to 64 rows go stepwise too (measured faster).

    Small batches leave a step too little work to repay its launches, and keeping W_hh on chip
    matters most there; large batches fill the GPU from one step's launch. Under the interpreter
    "auto" takes "stepwise" (a persistent grid there must be a single program).
    """
    if STRATEGY != "auto":
        return STRATEGY
    if device.type != "cuda":
        return "stepwise"
    fits = persistent_block_h(batch, hidden, num_sms(device)) is not None
    small_f32 = dtype == torch.float32 and batch < F32_PERSISTENT_MIN_BATCH
    return "persistent" if batch <= PERSISTENT_MAX_BATCH and fits and not small_f32 else "stepwise"


def make_plan(batch: int, hidden: int, width: int, x: Tensor, keep_w: bool = False) -> Plan:
    """Tiles for one call. width: the reduction length of the forward's recurrent product (P);
    keep_w: the kernel can keep its W_hh slice in registers (the LSTM forward)."""
    strategy, cuda = choose_strategy(batch, hidden, x.device, x.dtype), x.device.type == "cuda"
    if strategy == "stepwise":
        return Plan(False, stepwise_block_b(batch, hidden, num_sms(x.device)), STEPWISE_BLOCK_H,
                    STEPWISE_BLOCK_K if cuda else BLOCK_K, False, 4)
    if not cuda:  # interpreter: one program covers every row and column
        block_b, block_h = pow2(batch), pow2(hidden)
    else:
        block_b, block_h = BLOCK_B, persistent_block_h(batch, hidden, num_sms(x.device))
        if block_h is None:
            raise RuntimeError(f"engine 'triton': a persistent grid for batch {batch} and hidden size {hidden} "
                               f"does not fit on this GPU's {num_sms(x.device)} SMs; use the stepwise strategy")
    # a program's W_hh slice in registers; 16-bit only: float32's 3xTF32 products triple the registers and spill
    resident = keep_w and x.element_size() == 2 and 4 * block_h * pow2(width) * 2 <= RESIDENT_MAX_BYTES
    block_k = pow2(width) if resident else persistent_block_k(block_h, x.element_size()) if cuda else BLOCK_K
    return Plan(True, block_b, block_h, block_k, resident, 8 if resident else 4)


def precision(x: Tensor) -> str:
    return "tf32" if TF32 and x.dtype == torch.float32 else F32_PRECISION


# ---------------------------------------------------------------- packed layout on the device


@lru_cache(maxsize=64)
def _layout(batch_sizes: tuple[int, ...], device: str) -> tuple[Tensor, Tensor]:
    sizes = torch.tensor(batch_sizes, dtype=torch.int32)
    offsets = torch.zeros_like(sizes)
    torch.cumsum(sizes[:-1], 0, out=offsets[1:])
    return sizes.to(device), offsets.to(device)


def layout(batch_sizes, device: torch.device) -> tuple[Tensor, Tensor]:
    """batch_sizes and the first packed row of each step, int32 on the device."""
    return _layout(tuple(batch_sizes), str(device))


@lru_cache(maxsize=64)
def _prev_index(batch_sizes: tuple[int, ...], reverse: bool, device: str) -> Tensor:
    num_steps, batch = len(batch_sizes), batch_sizes[0]
    offsets = [0]
    for b in batch_sizes[:-1]:
        offsets.append(offsets[-1] + b)
    index = []
    for t in range(num_steps):
        tp = t + 1 if reverse else t - 1
        bs_prev = batch_sizes[tp] if 0 <= tp < num_steps else 0
        index += [batch + offsets[tp] + b if b < bs_prev else b for b in range(batch_sizes[t])]
    return torch.tensor(index, dtype=torch.long, device=device)


def previous_states(h0: Tensor, out: Tensor, batch_sizes, reverse: bool) -> Tensor:
    """The state each packed row's step started from: the prev step's row, or h0 where there is none. (N, P)"""
    return torch.cat([h0, out]).index_select(0, _prev_index(tuple(batch_sizes), reverse, str(out.device)))


# ---------------------------------------------------------------- launching


def empty(like: Tensor, *shape: int, dtype: torch.dtype | None = None) -> Tensor:
    """Every buffer the kernels write to comes from here (tests poison it with NaN: an unwritten element fails)."""
    return like.new_empty(shape, dtype=dtype)


def steps_in_order(batch_sizes, reverse: bool, backward: bool):
    """(k, batch size of the step visited at loop index k), the order the kernels' step_at uses."""
    num_steps = len(batch_sizes)
    for k in range(num_steps):
        t = num_steps - 1 - k if reverse != backward else k
        yield k, batch_sizes[t]


def run(kernel, plan: Plan, args: tuple, dims: tuple[int, ...], flags: dict, phases: list[dict], batch_sizes,
        reverse: bool, backward: bool, sync_like: Tensor) -> None:
    """Launch `kernel` over all steps. phases: the flag sets of a step's launches, in order (stepwise).

    args: tensor arguments; dims: T and the sizes after k0, k1; flags: constexprs common to all launches.
    """
    num_steps, rest = dims[0], dims[1:]
    common = dict(flags, PRECISION=precision(sync_like), UPCAST=kernels().INTERPRETED and sync_like.dtype != torch.float32,
                  BLOCK_B=plan.block_b, BLOCK_H=plan.block_h, BLOCK_K=plan.block_k, num_warps=plan.num_warps)
    cols = math.ceil(rest[0] / plan.block_h)  # hidden size: the column tiles
    if plan.persistent:
        sync = torch.zeros(1, dtype=torch.int32, device=sync_like.device)  # the barrier's arrival counter
        every = {key: True for phase in phases for key in phase}
        grid = (math.ceil(batch_sizes[0] / plan.block_b), cols)
        kernel[grid](*args, sync, num_steps, 0, num_steps, *rest, SYNC=True, **every, **common)
        return
    sync = torch.zeros(1, dtype=torch.int32, device=sync_like.device)  # unused without SYNC
    for k, bs in steps_in_order(batch_sizes, reverse, backward):
        grid = (math.ceil(bs / plan.block_b), cols)  # only the row tiles still running
        for phase in phases:
            kernel[grid](*args, sync, num_steps, k, k + 1, *rest, SYNC=False, **phase, **common)


# Stepwise calls on CUDA replay a captured graph: per shape, static copies of the kernels' tensors
# and the graph of all launches. A call copies its inputs in, replays, and copies the outputs out.
GRAPH_CACHE_SIZE = 8
_graphs: OrderedDict = OrderedDict()
graph_error: str | None = None  # why capture failed, if it did (the stepwise launches then run uncaptured)


def warmed_copies(body, tensors: dict[str, Tensor], inputs: tuple[str, ...]) -> dict[str, Tensor]:
    """Copies of the tensors, with body run once on them outside any capture (Triton compiles then)."""
    static = {n: t.clone() for n, t in tensors.items()}
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        body(static)
    torch.cuda.current_stream().wait_stream(side)
    for name in inputs:
        static[name].copy_(tensors[name])
    return static


def record(body, static: dict[str, Tensor]) -> torch.cuda.CUDAGraph:
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body(static)
    return graph


def launch(body, tensors: dict[str, Tensor], inputs: tuple[str, ...], outputs: tuple[str, ...], key: tuple,
           plan: Plan) -> None:
    """body(tensors) launches every kernel of one call. inputs are read, outputs written (a name may be both)."""
    global graph_error
    first = next(iter(tensors.values()))
    if plan.persistent or not CUDA_GRAPHS or graph_error is not None or first.device.type != "cuda":
        body(tensors)
        return
    key = (key, TF32, tuple((n, t.shape, t.dtype, t.device) for n, t in tensors.items()))
    entry = _graphs.get(key)
    if entry is None:
        static = warmed_copies(body, tensors, inputs)  # a failing kernel fails here, not as a capture error
        try:
            entry = static, record(body, static), body  # body holds the layout tensors the graph reads
        except Exception as e:  # noqa: BLE001  (the launches themselves work without a graph: say so, once)
            graph_error = f"{type(e).__name__}: {e}"
            warnings.warn(f"rnnkit triton engine: CUDA graph capture failed ({graph_error}); "
                          "launching every step instead (slower)", RuntimeWarning, stacklevel=2)
            body(tensors)
            return
        _graphs[key] = entry
        while len(_graphs) > GRAPH_CACHE_SIZE:
            _graphs.popitem(last=False)
    _graphs.move_to_end(key)
    static, graph, _ = entry
    for name in inputs:
        static[name].copy_(tensors[name])
    graph.replay()
    for name in outputs:
        tensors[name].copy_(static[name])


def c(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach().contiguous()


# ---------------------------------------------------------------- products over all steps


def bias_sum(d: Tensor) -> Tensor:
    return d.sum(0, dtype=torch.float32).to(d.dtype)


def input_grads(x: Tensor, w_ih: Tensor, dxp: Tensor, has_bias: bool, need_dx: bool):
    """dx = dXP W_ih, dW_ih = dXP^T X, db_ih = sum_t dxp_t (None where not needed)."""
    dx = dxp @ w_ih if need_dx else None  # (N, I)
    return dx, dxp.t() @ x, bias_sum(dxp) if has_bias else None


# ---------------------------------------------------------------- RNN


def rnn_forward(x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, nonlinearity):
    """Returns out (N, H) and h_n (B, H)."""
    hidden, batch = w_hh.shape[0], h0.shape[0]
    xp = c(input_projection(x, w_ih, b_ih))  # (N, H)
    out, h_n = empty(x, x.shape[0], hidden), empty(x, batch, hidden)
    plan = make_plan(batch, hidden, hidden, x)
    sizes, offsets = layout(batch_sizes, x.device)
    t = dict(xp=xp, w_hh=c(w_hh), b_hh=c(b_hh) if b_hh is not None else xp, h0=c(h0), out=out, h_n=h_n)
    flags = dict(REVERSE=reverse, RELU=nonlinearity == "relu", HAS_BIAS=b_hh is not None)

    def body(t):
        run(kernels().rnn_forward, plan, (t["xp"], t["w_hh"], t["b_hh"], t["h0"], t["out"], t["h_n"], sizes, offsets),
            (len(batch_sizes), hidden), flags, [{}], batch_sizes, reverse, False, x)

    launch(body, t, ("xp", "w_hh", "b_hh", "h0"), ("out", "h_n"), ("rnn_forward", batch_sizes, plan, *flags.items()),
           plan)
    return out, h_n


def rnn_backward(x, h0, w_ih, w_hh, has_bias, batch_sizes, reverse, nonlinearity, out, saved, d_out, d_h_n,
                 need_dx):  # saved: () for RNN
    hidden = w_hh.shape[0]
    dpre = empty(x, out.shape[0], hidden)  # (N, H) = dxp = dhp
    d_state = d_h_n.detach().to(torch.float32, copy=True)  # (B, H): d_h_n in, dh_0 out
    plan = make_plan(h0.shape[0], hidden, hidden, x)
    sizes, offsets = layout(batch_sizes, x.device)
    t = dict(w_hh=c(w_hh), out=c(out), d_out=c(d_out), d_state=d_state, dpre=dpre)
    flags = dict(REVERSE=reverse, RELU=nonlinearity == "relu")

    def body(t):
        run(kernels().rnn_backward, plan, (t["w_hh"], t["out"], t["d_out"], t["d_state"], t["dpre"], sizes,
                                           offsets), (len(batch_sizes), hidden), flags,
            [dict(DO_GATES=True, DO_PRODUCT=False), dict(DO_GATES=False, DO_PRODUCT=True)],
            batch_sizes, reverse, True, x)

    launch(body, t, ("w_hh", "out", "d_out", "d_state"), ("d_state", "dpre"),
           ("rnn_backward", batch_sizes, plan, *flags.items()), plan)
    dx, dw_ih, db_ih = input_grads(x, w_ih, dpre, has_bias, need_dx)
    dw_hh = dpre.t() @ previous_states(h0, out, batch_sizes, reverse)  # sum_t dhp_t^T h_{t-1}  (H, H)
    db_hh = bias_sum(dpre) if has_bias else None
    return dx, d_state.to(h0.dtype), None, dw_ih, dw_hh, db_ih, db_hh, None


# ---------------------------------------------------------------- LSTM


def lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse):
    """Returns out (N, P), h_n (B, P), c_n (B, H), and for the backward cs (N, H) and gates (N, 4H),
    both float32, and m (N, H) = o * tanh(c), the projection's input (an empty tensor without a projection)."""
    hidden, proj, batch, n = c0.shape[1], h0.shape[1], h0.shape[0], x.shape[0]
    xp = c(input_projection(x, w_ih, b_ih))  # (N, 4H)
    out, h_n, c_n = empty(x, n, proj), empty(x, batch, proj), empty(x, batch, hidden)
    cs, gates = empty(x, n, hidden, dtype=torch.float32), empty(x, n, 4 * hidden, dtype=torch.float32)
    m = empty(x, n, hidden) if w_hr is not None else x.new_empty(0)
    plan = make_plan(batch, hidden, proj, x, keep_w=True)
    sizes, offsets = layout(batch_sizes, x.device)
    has_proj = w_hr is not None
    # unused pointer arguments get a real tensor (xp): no kernel should see the null pointer of an empty one
    t = dict(xp=xp, w_hh=c(w_hh), b_hh=c(b_hh) if b_hh is not None else xp, w_hr=c(w_hr) if has_proj else xp,
             h0=c(h0), c0=c(c0), out=out, cs=cs, gates=gates, m=m if has_proj else xp, h_n=h_n, c_n=c_n)
    flags = dict(REVERSE=reverse, HAS_BIAS=b_hh is not None, HAS_PROJ=has_proj, W_RESIDENT=plan.w_resident)
    phases = [dict(DO_GATES=True, DO_PROJ=False)] + ([dict(DO_GATES=False, DO_PROJ=True)] if has_proj else [])

    def body(t):
        run(kernels().lstm_forward, plan,
            tuple(t[k] for k in ("xp", "w_hh", "b_hh", "w_hr", "h0", "c0", "out", "cs", "gates", "m", "h_n", "c_n"))
            + (sizes, offsets), (len(batch_sizes), hidden, proj), flags, phases, batch_sizes, reverse, False, x)

    launch(body, t, ("xp", "w_hh", "b_hh", "w_hr", "h0", "c0"), ("out", "cs", "gates", "h_n", "c_n") + ("m",) * has_proj,
           ("lstm_forward", batch_sizes, plan, *flags.items()), plan)
    return out, h_n, c_n, cs, gates, m


def lstm_backward(x, h0, c0, w_ih, w_hh, has_bias, w_hr, batch_sizes, reverse, out, saved, d_out, d_h_n,
                  d_c_n, need_dx):
    cs, gates, m = saved
    hidden, proj, n = c0.shape[1], h0.shape[1], x.shape[0]
    has_proj = w_hr is not None
    dgates = empty(x, n, 4 * hidden)  # (N, 4H) = dxp = dhp
    dh_total = empty(x, n, proj) if has_proj else x.new_empty(0)  # (N, P) dh_t, for dW_hr
    d_state = d_h_n.detach().to(torch.float32, copy=True)  # (B, P): d_h_n in, dh_0 out
    dc_state = d_c_n.detach().to(torch.float32, copy=True)  # (B, H): d_c_n in, dc_0 out
    plan = make_plan(h0.shape[0], hidden, proj, x)
    sizes, offsets = layout(batch_sizes, x.device)
    t = dict(w_hh=c(w_hh), w_hr=c(w_hr) if has_proj else dgates, c0=c(c0), cs=cs, gates=gates, d_out=c(d_out),
             d_state=d_state, dc_state=dc_state, dgates=dgates, dh_total=dh_total if has_proj else dgates)
    flags = dict(REVERSE=reverse, HAS_PROJ=has_proj)
    phases = ([dict(DO_TOTAL=True, DO_GATES=False, DO_PRODUCT=False)] if has_proj else []) + [
        dict(DO_TOTAL=False, DO_GATES=True, DO_PRODUCT=False), dict(DO_TOTAL=False, DO_GATES=False, DO_PRODUCT=True)]

    def body(t):
        run(kernels().lstm_backward, plan,
            tuple(t[k] for k in ("w_hh", "w_hr", "c0", "cs", "gates", "d_out", "d_state", "dc_state", "dgates",
                                 "dh_total")) + (sizes, offsets),
            (len(batch_sizes), hidden, proj), flags, phases, batch_sizes, reverse, True, x)

    launch(body, t, ("w_hh", "w_hr", "c0", "cs", "gates", "d_out", "d_state", "dc_state"),
           ("d_state", "dc_state", "dgates") + ("dh_total",) * has_proj, ("lstm_backward", batch_sizes, plan, *flags.items()), plan)
    dx, dw_ih, db_ih = input_grads(x, w_ih, dgates, has_bias, need_dx)
    dw_hh = dgates.t() @ previous_states(h0, out, batch_sizes, reverse)  # sum_t dhp_t^T h_{t-1}  (4H, P)
    db_hh = bias_sum(dgates) if has_bias else None
    dw_hr = dh_total.t() @ m if has_proj else None  # sum_t dh_t^T m_t  (P, H)
    return dx, d_state.to(h0.dtype), dc_state.to(c0.dtype), dw_ih, dw_hh, db_ih, db_hh, dw_hr


# ---------------------------------------------------------------- GRU


def gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse):
    """Returns out (N, H), h_n (B, H), and for the backward cache (N, 4H) = [r, z, n, W_hn h + b_hn] in float32."""
    hidden, batch, n = h0.shape[1], h0.shape[0], x.shape[0]
    xp = c(input_projection(x, w_ih, b_ih))  # (N, 3H)
    out, h_n, cache = empty(x, n, hidden), empty(x, batch, hidden), empty(x, n, 4 * hidden, dtype=torch.float32)
    plan = make_plan(batch, hidden, hidden, x)
    sizes, offsets = layout(batch_sizes, x.device)
    t = dict(xp=xp, w_hh=c(w_hh), b_hh=c(b_hh) if b_hh is not None else xp, h0=c(h0), out=out, cache=cache, h_n=h_n)
    flags = dict(REVERSE=reverse, HAS_BIAS=b_hh is not None)

    def body(t):
        run(kernels().gru_forward, plan,
            tuple(t[k] for k in ("xp", "w_hh", "b_hh", "h0", "out", "cache", "h_n")) + (sizes, offsets),
            (len(batch_sizes), hidden), flags, [{}], batch_sizes, reverse, False, x)

    launch(body, t, ("xp", "w_hh", "b_hh", "h0"), ("out", "cache", "h_n"), ("gru_forward", batch_sizes, plan,
                                                                            *flags.items()), plan)
    return out, h_n, cache


def gru_backward(x, h0, w_ih, w_hh, has_bias, batch_sizes, reverse, out, saved, d_out, d_h_n, need_dx):
    (cache,) = saved
    hidden, n = h0.shape[1], x.shape[0]
    dxp, dhp_n = empty(x, n, 3 * hidden), empty(x, n, hidden)  # dhp = [dxp_r, dxp_z, dhp_n]
    d_state = d_h_n.detach().to(torch.float32, copy=True)  # (B, H): d_h_n in, dh_0 out
    plan = make_plan(h0.shape[0], hidden, hidden, x)
    sizes, offsets = layout(batch_sizes, x.device)
    t = dict(w_hh=c(w_hh), h0=c(h0), out=c(out), cache=cache, d_out=c(d_out), d_state=d_state, dxp=dxp,
             dhp_n=dhp_n)
    flags = dict(REVERSE=reverse)

    def body(t):
        run(kernels().gru_backward, plan,
            tuple(t[k] for k in ("w_hh", "h0", "out", "cache", "d_out", "d_state", "dxp", "dhp_n"))
            + (sizes, offsets), (len(batch_sizes), hidden), flags,
            [dict(DO_GATES=True, DO_PRODUCT=False), dict(DO_GATES=False, DO_PRODUCT=True)],
            batch_sizes, reverse, True, x)

    launch(body, t, ("w_hh", "h0", "out", "cache", "d_out", "d_state"), ("d_state", "dxp", "dhp_n"),
           ("gru_backward", batch_sizes, plan, *flags.items()), plan)
    dx, dw_ih, db_ih = input_grads(x, w_ih, dxp, has_bias, need_dx)
    h_prev = previous_states(h0, out, batch_sizes, reverse)
    dw_hh = torch.cat([dxp[:, :2 * hidden].t() @ h_prev, dhp_n.t() @ h_prev])  # (3H, H)
    db_hh = torch.cat([bias_sum(dxp[:, :2 * hidden]), bias_sum(dhp_n)]) if has_bias else None
    return dx, d_state.to(h0.dtype), None, dw_ih, dw_hh, db_ih, db_hh, None


# ---------------------------------------------------------------- the engine signature


def forward(mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse):
    """One layer, one direction, no autograd: out, h_n, c_n (None unless LSTM), saved (see saved_shapes)."""
    batch_sizes = tuple(int(b) for b in batch_sizes)
    if mode == "LSTM":
        out, h_n, c_n, cs, gates, m = lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse)
        return out, h_n, c_n, (cs, gates, m)
    if mode == "GRU":
        out, h_n, cache = gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse)
        return out, h_n, None, (cache,)
    out, h_n = rnn_forward(x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, NONLINEARITY[mode])
    return out, h_n, None, ()


def backward(mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, out, saved, d_out, d_h_n, d_c_n,
             need_dx: bool):
    """BPTT for `forward`: dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh, dW_hr (None where absent or not needed)."""
    return backward_by_mode((rnn_backward, lstm_backward, gru_backward), mode, x, tuple(int(b) for b in batch_sizes),
                            h0, c0, w_ih, w_hh, b_ih, w_hr, reverse, out, saved, d_out, d_h_n, d_c_n, need_dx)


def saved_shapes(mode: str, n: int, hidden: int, dtype: torch.dtype, has_proj: bool, batch: int = 0):
    """What `forward` saves: float32 activations whatever the input dtype; the LSTM also keeps m = o * tanh(c)
    (N, H), the projection's input (an empty tensor without a projection)."""
    f32 = torch.float32
    return {"LSTM": [((n, hidden), f32), ((n, 4 * hidden), f32), ((n, hidden) if has_proj else (0,), dtype)],
            "GRU": [((n, 4 * hidden), f32)]}.get(mode, [])


def run_layer(*args, **kwargs):
    """rnnkit.engines.ops.run_layer on this engine (its registered operator)."""
    from .ops import run_layer
    return run_layer("triton", *args, **kwargs)
