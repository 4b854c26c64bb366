"""Every engine as a registered PyTorch operator, so that the whole PyTorch stack can see it.

Each engine `E` (reference, cpu, triton) is two operators from `torch.library.custom_op`:

    torch.ops.rnnkit.E_forward(mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse)
        -> out, h_n, c_n, saved0, saved1, saved2
    torch.ops.rnnkit.E_backward(mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse,
                                out, saved0, saved1, saved2, d_out, d_h_n, d_c_n, need_dx)
        -> dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr

with a fake (meta) kernel each, which gives output shapes from input shapes alone, and one autograd
formula registered on the forward. That is what lets torch.compile(fullgraph=True) and torch.export
keep an rnnkit layer in one graph, jit.trace record it, and the ONNX exporter translate it
(rnnkit.export.onnx). Tensors that are absent (c0 for RNN and GRU, a gradient not needed) are
empty tensors at the operator boundary, because an operator returns a fixed number of tensors.

batch_sizes is None for a padded batch (every one of the T = N / B steps runs all B rows), or
the int64 CPU tensor of a PackedSequence. A None keeps T symbolic for torch.export.

Derivatives the hand-derived BPTT cannot give are handed to autograd, never computed wrong:

- double backward (`create_graph=True`, gradgradcheck, Hessian-vector products): the backward,
  called with grad mode on, runs the forward again as plain torch ops
  (`reference.autograd_forward`) and differentiates that, so every order of derivative is exact;
- torch.func transforms (grad, vmap, jacrev, vjp, jvp) and forward-mode AD (dual tensors): `run_layer` sees
  them active and runs the plain-ops loop in the first place; torch differentiates and batches plain ops itself;
- a batch of upstream gradients (`torch.autograd.grad(..., is_grads_batched=True)`, which gradcheck uses
  by default, or torch.func.vmap over a backward of a graph built outside it): the hand-derived BPTT
  reads raw memory, which batched tensors do not have, so the backward differentiates the plain-ops
  forward as for double backward, and the batching happens in torch's own ops.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import Tensor

from . import aten, cpu, onnx, reference, triton

ENGINE_MODULES = {"reference": reference, "cpu": cpu, "aten": aten, "triton": triton}
SAVED = 3  # saved tensors at the operator boundary (the Triton LSTM keeps three; the rest pad with empties)
GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}


def steps(batch_sizes: Tensor | None, x: Tensor, h0: Tensor) -> tuple[int, ...]:
    """The python tuple of rows per step that the engines loop over."""
    if batch_sizes is not None:
        return tuple(batch_sizes.tolist())
    batch = h0.shape[0]
    return (batch,) * (x.shape[0] // batch) if batch else (0,)


def autocast_on(device_type: str) -> bool:
    """torch.is_autocast_enabled(device_type), and False for a device type autocast does not know (meta tensors,
    for shape inference), where torch raises."""
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:
        return False


def no_autocast(x: Tensor):
    """The engines compute in the dtypes they are given: the caller (rnnkit.nn) applied autocast's policy."""
    device = x.device.type
    return torch.autocast(device, enabled=False) if autocast_on(device) else contextlib.nullcontext()


def absent(t: Tensor | None, like: Tensor) -> Tensor:
    return like.new_empty(0) if t is None else t


def empty_outputs(engine, mode: str, x: Tensor, h0: Tensor, c0: Tensor | None, w_hh: Tensor, w_hr: Tensor | None,
                  fake: bool = False):
    """The forward operator's outputs for x's shapes, filled with zeros: its fake kernel, and its result for N = 0.

    A saved size the engine alone knows (None in saved_shapes: oneDNN's workspace) is a dynamic size in
    the fake kernel and 0 for N = 0."""
    n, hidden = x.shape[0], w_hh.shape[0] // GATES[mode]

    def size(s):
        return s if s is not None else (torch.library.get_ctx().new_dynamic_size() if fake else 0)

    saved = [x.new_zeros(tuple(size(s) for s in shape), dtype=dtype)
             for shape, dtype in engine.saved_shapes(mode, n, hidden, x.dtype, w_hr is not None, h0.shape[0])]
    saved += [x.new_empty(0) for _ in range(SAVED - len(saved))]
    return x.new_zeros(n, h0.shape[1]), torch.zeros_like(h0), absent(c0, x).new_zeros(absent(c0, x).shape), *saved


def zero_grads(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, need_dx: bool):
    """The backward operator's outputs for these inputs' shapes, zeros: its fake kernel, and its result for N = 0."""
    like = [x if need_dx else None, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr]
    return tuple(x.new_empty(0) if t is None else torch.zeros_like(t) for t in like)


def run_forward(engine, mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse):
    """The forward operator's body: out, h_n, c_n, saved0, saved1, saved2 (empties where absent)."""
    if x.shape[0] == 0:  # an empty batch: nothing to run (MKL would complain about the empty products)
        return empty_outputs(engine, mode, x, h0, c0, w_hh, w_hr)
    with no_autocast(x):
        out, h_n, c_n, saved = engine.forward(mode, x, steps(batch_sizes, x, h0), h0, c0, w_ih, w_hh, b_ih, b_hh,
                                              w_hr, reverse)
    saved = tuple(saved) + tuple(x.new_empty(0) for _ in range(SAVED - len(saved)))
    return out, h_n, absent(c_n, x), *saved


def run_inference(engine, mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse):
    """out, h_n, c_n (absent: an empty tensor) where no gradient will be asked for: the engine's `infer` (which
    may skip keeping what a backward would read) or its forward."""
    infer = getattr(engine, "infer", None)
    if infer is None or x.shape[0] == 0:
        return run_forward(engine, mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse)[:3]
    with no_autocast(x):
        out, h_n, c_n = infer(mode, x, steps(batch_sizes, x, h0), h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse)
    return out, h_n, absent(c_n, x)


def run_backward(engine, mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, out, saved0, saved1,
                 saved2, d_out, d_h_n, d_c_n, need_dx):
    """The backward operator's body: dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr (empties where absent)."""
    if x.shape[0] == 0:
        return zero_grads(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, need_dx)
    saved = (saved0, saved1, saved2)[:len(engine.saved_shapes(mode, 0, 0, x.dtype, w_hr is not None))]
    with no_autocast(x):
        grads = engine.backward(mode, x, steps(batch_sizes, x, h0), h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                                reverse, out, saved, d_out, d_h_n, d_c_n, need_dx)
    return tuple(absent(g, x) for g in grads)


def setup_context(ctx, inputs, output):
    mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse = inputs
    out, _, _, *saved = output
    ctx.mode, ctx.reverse, ctx.batch_sizes = mode, reverse, batch_sizes  # an int64 CPU tensor or None
    ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, out, *saved)
    # The saved tensors are outputs only so that the backward operator can take them: no gradient flows
    # into them, and none is made up. Without these two lines autograd fills a zero gradient the size of
    # each (an LSTM's gates: 5 N H floats) on every backward, and for h_n, c_n when only out has one.
    ctx.mark_non_differentiable(*saved)
    ctx.set_materialize_grads(False)


def grad_formula(backward):
    """The autograd formula of a forward whose backward operator (or body) is `backward`."""

    def formula(ctx, d_out, d_h_n, d_c_n, *_):
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, out, *saved = ctx.saved_tensors
        d_out = torch.zeros_like(out) if d_out is None else d_out
        d_h_n = torch.zeros_like(h0) if d_h_n is None else d_h_n
        d_c_n = torch.zeros_like(c0) if d_c_n is None and c0 is not None else d_c_n
        batch_sizes = ctx.batch_sizes
        inputs = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
        if needs_autograd(d_out, d_h_n, d_c_n):
            grads = differentiable_grads(ctx, inputs, steps(batch_sizes, x, h0), d_out, d_h_n,
                                         d_c_n if c0 is not None else None)
        else:
            grads = backward(ctx.mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, ctx.reverse, out, *saved,
                             d_out, d_h_n, d_c_n if c0 is not None else None, ctx.needs_input_grad[1])
            needed = [ctx.needs_input_grad[i] for i in (1, 3, 4, 5, 6, 7, 8, 9)]  # x, h0, ... in the operator's order
            grads = [g if need else None for g, need in zip(grads, needed, strict=True)]
        dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr = grads
        return None, dx, None, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr, None

    return formula


def plain_ops_only() -> bool:
    """Whether only plain torch ops can serve the call: a torch.func transform is active, or a forward-mode AD
    level (torch.autograd.forward_ad.dual_level), whose dual tensors need a jvp rule the engines do not have."""
    return torch._C._are_functorch_transforms_active() or torch.autograd.forward_ad._current_level >= 0


def needs_autograd(*grads: Tensor | None) -> bool:
    """Whether a backward must differentiate plain ops rather than run the hand-derived BPTT: with create_graph
    (the gradient itself must be differentiable), under a torch.func transform, or when an upstream gradient is
    a batch (is_grads_batched's legacy batched tensors: the BPTT kernels see raw memory, not the batch)."""
    return (torch.is_grad_enabled() or torch._C._are_functorch_transforms_active()
            or any(g is not None and torch._C._functorch.is_legacy_batchedtensor(g) for g in grads))


def define(name: str):
    """Register engine `name`'s forward and backward operators; returns the forward operator."""
    engine = ENGINE_MODULES[name]

    @torch.library.custom_op(f"rnnkit::{name}_forward", mutates_args=())
    def forward(mode: str, x: Tensor, batch_sizes: Optional[Tensor], h0: Tensor, c0: Optional[Tensor],
                w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor], w_hr: Optional[Tensor],
                reverse: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        return run_forward(engine, mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse)

    forward.register_fake(lambda mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse:
                          empty_outputs(engine, mode, x, h0, c0, w_hh, w_hr, fake=True))

    @torch.library.custom_op(f"rnnkit::{name}_backward", mutates_args=())
    def backward(mode: str, x: Tensor, batch_sizes: Optional[Tensor], h0: Tensor, c0: Optional[Tensor],
                 w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor], w_hr: Optional[Tensor],
                 reverse: bool, out: Tensor, saved0: Tensor, saved1: Tensor, saved2: Tensor, d_out: Tensor,
                 d_h_n: Tensor, d_c_n: Optional[Tensor], need_dx: bool) -> tuple[Tensor, Tensor, Tensor, Tensor,
                                                                                Tensor, Tensor, Tensor, Tensor]:
        return run_backward(engine, mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, out, saved0,
                            saved1, saved2, d_out, d_h_n, d_c_n, need_dx)

    @backward.register_fake
    def _(mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, out, saved0, saved1, saved2, d_out,
          d_h_n, d_c_n, need_dx):
        return zero_grads(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, need_dx)

    forward.register_autograd(grad_formula(backward), setup_context=setup_context)
    return forward


def eager_function(name: str) -> type[torch.autograd.Function]:
    """Engine `name`'s operator as a plain autograd.Function: the same bodies, saved tensors and formula, without
    the operator's Python dispatch (about 40 us a call). For eager calls only (`eager`); traced code sees the
    operator."""
    engine = ENGINE_MODULES[name]

    def backward_body(*args):
        return run_backward(engine, *args)

    class Layer(torch.autograd.Function):
        # forward(ctx, ...) rather than a separate setup_context: with one, Function.apply binds the arguments
        # through inspect.signature on every call (measured ~40 us, as much as the dispatch this class saves)
        @staticmethod
        def forward(ctx, *inputs):
            output = run_forward(engine, *inputs)
            setup_context(ctx, inputs, output)
            return output

        backward = staticmethod(grad_formula(backward_body))

    Layer.__name__ = Layer.__qualname__ = f"{name.capitalize()}Layer"
    return Layer


def eager(tensors: tuple) -> bool:
    """True when nothing could want to see the operator: no compile, export, trace or ONNX export, no torch function
    or dispatch mode (FakeTensorMode, FlopCounterMode, a user's mode), plain CPU or CUDA tensors only."""
    if (torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing()
            or torch._C._len_torch_dispatch_stack() or torch.overrides.has_torch_function(tensors)):
        return False
    return all(type(t) in PLAIN for t in tensors) and tensors[0].device.type in ("cpu", "cuda")


PLAIN = (Tensor, torch.nn.Parameter)


def nothing_watching() -> bool:
    """eager() for a tensor already known to be a plain CPU Tensor: no compile, export or trace, no dispatch or torch
    function mode (a layer's quick lane asks on every call)."""
    return not (torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch._C._is_tracing()
                or torch._C._len_torch_dispatch_stack() or torch._C._is_torch_function_mode_enabled())


def _onnx_flags():
    """The two flags behind torch.onnx.is_in_onnx_export (which imports both on every call, about 1 us), or None
    where this torch keeps them elsewhere."""
    try:
        from torch.onnx._internal.exporter import _flags
        from torch.onnx._internal.torchscript_exporter._globals import GLOBALS
    except ImportError:
        return None
    return _flags, GLOBALS


_ONNX_FLAGS = _onnx_flags()


def in_onnx_export() -> bool:
    """torch.onnx.is_in_onnx_export(), read without its imports: every eager layer call asks."""
    if _ONNX_FLAGS is None:
        return torch.onnx.is_in_onnx_export()
    flags, globals_ = _ONNX_FLAGS
    return bool(globals_.in_onnx_export or flags._is_onnx_exporting)


def differentiable_grads(ctx, inputs: tuple, batch_sizes: tuple[int, ...], d_out, d_h_n, d_c_n) -> list:
    """The gradient as a differentiable function of the inputs and of the upstream gradients.

    Runs the forward again in plain torch ops and lets autograd differentiate it with create_graph,
    which is what a second (or higher) derivative needs. Only backward with create_graph=True pays for it.
    """
    wanted = [i for i, t in enumerate(inputs) if t is not None and t.requires_grad]
    with torch.enable_grad():
        out, h_n, c_n = reference.autograd_forward(ctx.mode, inputs[0], batch_sizes, *inputs[1:], ctx.reverse)
        outputs, upstream = (out, h_n) + ((c_n,) if c_n is not None else ()), (d_out, d_h_n, d_c_n)
        found = torch.autograd.grad(outputs, [inputs[i] for i in wanted], upstream[:len(outputs)], create_graph=True,
                                    allow_unused=True)
    grads = [None] * len(inputs)
    for i, g in zip(wanted, found, strict=True):
        grads[i] = torch.zeros_like(inputs[i]) if g is None else g
    return grads


def forward_flops(mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, out_shape=None) -> int:
    """Floating-point operations of a forward operator, from shapes, as torch counts a matrix product (2 per
    multiply-add): the input projection and each step's recurrent product (and an LSTM's projection)."""
    (n, inputs), (gates, width) = x, w_hh
    return 2 * n * gates * (inputs + width) + projection_flops(n, w_hr)


def backward_flops(mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, out, saved0, saved1, saved2,
                   d_out, d_h_n, d_c_n, need_dx, out_shape=None) -> int:
    """The backward operator's products: dx (if asked), dW_ih, dW_hh and each step's gradient into h_{t-1}."""
    (n, inputs), (gates, width) = x, w_hh
    return 2 * n * gates * (inputs * (2 if need_dx else 1) + 2 * width) + 2 * projection_flops(n, w_hr)


def projection_flops(n: int, w_hr) -> int:
    return 2 * n * w_hr[0] * w_hr[1] if w_hr is not None and len(w_hr) == 2 else 0


def register_flop_formulas() -> None:
    """torch.utils.flop_counter.FlopCounterMode sees each operator whole (its inner products run below the mode),
    so it counts what these formulas say: the same total torch.nn's layers report through their matrix products."""
    from torch.utils.flop_counter import register_flop_formula

    register_flop_formula([getattr(torch.ops.rnnkit, f"{name}_forward") for name in ENGINE_MODULES])(forward_flops)
    register_flop_formula([getattr(torch.ops.rnnkit, f"{name}_backward") for name in ENGINE_MODULES])(backward_flops)


OPS = {name: define(name) for name in ENGINE_MODULES}
EAGER = {name: eager_function(name) for name in ENGINE_MODULES}
register_flop_formulas()
onnx.install()  # torch.onnx.export translates these operators once it loads its registry


def run_layer(engine: str, mode: str, x: Tensor, batch_sizes, h0: Tensor, c0: Tensor | None, w_ih: Tensor,
              w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None, w_hr: Tensor | None, reverse: bool):
    """One layer, one direction on engine `engine`, through its operator. Returns out, h_n, c_n (None unless LSTM).

    batch_sizes: None (padded: every step runs all rows), the int64 tensor of a PackedSequence, or a
    tuple of python ints (turned into that tensor).
    """
    if isinstance(batch_sizes, (tuple, list)):
        padded = h0.shape[0] > 0 and all(b == h0.shape[0] for b in batch_sizes)  # no set(): sizes may be symbolic
        batch_sizes = None if padded else torch.tensor(batch_sizes, dtype=torch.int64)
    if plain_ops_only():  # grad, vmap, jacrev, forward-mode AD: plain ops, which torch differentiates itself
        return reference.autograd_forward(mode, x, steps(batch_sizes, x, h0), h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                                          reverse)
    args = (mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse)
    tensors = tuple(t for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr) if t is not None)
    if not eager(tensors) or in_onnx_export():
        if w_hr is not None and batch_sizes is None and in_onnx_export():  # no ONNX LSTM has a projection
            return reference.scan_forward(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse)
        out, h_n, c_n, *_ = OPS[engine](*args)
    elif torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        out, h_n, c_n, *_ = EAGER[engine].apply(*args)
    else:  # nothing to differentiate: the body alone, or the engine's inference entry where it has one
        out, h_n, c_n = run_inference(ENGINE_MODULES[engine], *args)
    return out, h_n, c_n if c0 is not None else None

