"""The cell families torch.nn does not have, as registered PyTorch operators, one per family and engine.

A family lives in its own folder, rnnkit/engines/<family>/, the layout of flash-linear-attention's
fla/ops/<op>/: `reference.py` (a readable loop over time and the hand-derived BPTT, the ground
truth), `cpu.py` (Numba), `triton.py` (GPU), and an `__init__.py` that declares the family:

    ENGINES          {"reference": module, "cpu": module, "triton": module}
    out_features(config, states, params) -> int       features of the output rows
    autograd_forward(config, xp, batch_sizes, states, params, masks, reverse) -> (out, states_n)
                     the same recurrence as plain torch ops, for autograd to differentiate (double
                     backward, torch.func), like reference.autograd_forward for the stock cells

and each engine module:

    forward(config, xp, batch_sizes, states, params, masks, reverse) -> (out, states_n, saved)
    backward(config, xp, batch_sizes, states, params, masks, reverse, out, saved, d_out, d_states_n)
        -> (dxp, d_states0, d_params)
    saved_shapes(config, n, states, params, dtype) -> [(shape, dtype), ...]   what forward saves
    why_not(x) -> str | None

The operator runs the recurrence only. Everything that acts on one row at a time (the input
projection xp = W_ih x + b_ih for all steps, layer normalisation of it, DropConnect on W_hh,
drawing the dropout and zoneout masks) happens before, in rnnkit.nn, as ordinary autograd ops:
they are single large ops over all steps, and the random draws stay outside the operators, which
are pure functions (what torch.compile and torch.export need).

    torch.ops.rnnkit.<family>_<engine>_forward(config, xp, batch_sizes, states, params, masks, reverse)
        -> [out, *states_n, *saved]
    torch.ops.rnnkit.<family>_<engine>_backward(config, xp, batch_sizes, states, params, masks, reverse,
                                                out, saved, d_out, d_states_n)
        -> [dxp, *d_states0, *d_params]

config: a string of comma-separated words that the family defines (options that change the
math, such as "ln,peephole"). xp (N, G*H) packed time-major rows, as for the stock engines;
batch_sizes None for a padded batch; states (B, .) each; params the recurrent weights (an absent
one is an empty tensor, so positions never move); masks are constants (no gradient).
"""

from __future__ import annotations

import importlib
from typing import Optional

import torch
from torch import Tensor

from . import cpu
from .ops import needs_autograd, no_autocast, plain_ops_only, steps

FAMILY_NAMES = ("lstm_plus", "gru_plus", "minimal", "slstm")


_FAMILIES: dict[str, object] = {}


def family(name: str):
    """The package of family `name` (imported on first use).

    Kept in a dict once imported: torch.compile traces a dict lookup, but not importlib.import_module
    (a graph break); rnnkit.engines imports every family when it is imported (register_all)."""
    if name in _FAMILIES:
        return _FAMILIES[name]
    if name not in FAMILY_NAMES:
        raise ValueError(f"unknown cell family {name!r}: expected one of {', '.join(map(repr, FAMILY_NAMES))}")
    _FAMILIES[name] = importlib.import_module(f"{__package__}.{name}")
    return _FAMILIES[name]


def fake_outputs(fam, engine, config, xp: Tensor, states: list[Tensor], params: list[Tensor]) -> list[Tensor]:
    """The forward operator's outputs for these shapes, zeros: its fake kernel and its result for N = 0."""
    n = xp.shape[0]
    out = xp.new_zeros(n, fam.out_features(config, states, params))
    saved = [xp.new_zeros(shape, dtype=dtype) for shape, dtype in engine.saved_shapes(config, n, states, params,
                                                                                       xp.dtype)]
    return [out, *(torch.zeros_like(s) for s in states), *saved]


def zero_grads(xp, states, params) -> list[Tensor]:
    return [torch.zeros_like(xp), *(torch.zeros_like(s) for s in states), *(torch.zeros_like(p) for p in params)]


def define(family_name: str, engine_name: str):
    """Register the forward and backward operators of one family on one engine; returns the forward."""
    fam = family(family_name)
    engine = fam.ENGINES[engine_name]
    prefix = f"rnnkit::{family_name}_{engine_name}"

    @torch.library.custom_op(f"{prefix}_forward", mutates_args=())
    def forward(config: str, xp: Tensor, batch_sizes: Optional[Tensor], states: list[Tensor], params: list[Tensor],
                masks: list[Tensor], reverse: bool) -> list[Tensor]:
        if xp.shape[0] == 0:
            return fake_outputs(fam, engine, config, xp, states, params)
        with no_autocast(xp):
            out, states_n, saved = engine.forward(config, xp, steps(batch_sizes, xp, states[0]), states, params,
                                                  masks, reverse)
        return [out, *states_n, *saved]

    forward.register_fake(lambda config, xp, batch_sizes, states, params, masks, reverse:
                          fake_outputs(fam, engine, config, xp, states, params))

    @torch.library.custom_op(f"{prefix}_backward", mutates_args=())
    def backward(config: str, xp: Tensor, batch_sizes: Optional[Tensor], states: list[Tensor], params: list[Tensor],
                 masks: list[Tensor], reverse: bool, out: Tensor, saved: list[Tensor], d_out: Tensor,
                 d_states_n: list[Tensor]) -> list[Tensor]:
        if xp.shape[0] == 0:
            return zero_grads(xp, states, params)
        with no_autocast(xp):
            dxp, d_states0, d_params = engine.backward(config, xp, steps(batch_sizes, xp, states[0]), states, params,
                                                       masks, reverse, out, saved, d_out, d_states_n)
        return [dxp, *d_states0, *d_params]

    backward.register_fake(lambda config, xp, batch_sizes, states, params, masks, reverse, out, saved, d_out,
                           d_states_n: zero_grads(xp, states, params))

    def setup_context(ctx, inputs, output):
        config, xp, batch_sizes, states, params, masks, reverse = inputs
        ns = len(states)
        ctx.config, ctx.batch_sizes, ctx.reverse, ctx.counts = config, batch_sizes, reverse, (ns, len(params),
                                                                                             len(masks))
        ctx.save_for_backward(xp, *states, *params, *masks, *output)
        ctx.mark_non_differentiable(*output[1 + ns:])  # the saved tensors: no gradient flows into them
        ctx.set_materialize_grads(False)

    def grad_formula(ctx, grads):
        ns, np_, nm = ctx.counts
        xp, *rest = ctx.saved_tensors
        states, params, masks = rest[:ns], rest[ns:ns + np_], rest[ns + np_:ns + np_ + nm]
        out, *after = rest[ns + np_ + nm:]
        states_n, saved = after[:ns], after[ns:]
        d_out = torch.zeros_like(out) if grads[0] is None else grads[0]
        d_states_n = [torch.zeros_like(s) if g is None else g for g, s in zip(grads[1:1 + ns], states_n, strict=True)]
        if needs_autograd(d_out, *d_states_n):  # differentiate the plain-ops recurrence instead
            found = differentiable_grads(fam, ctx, xp, states, params, masks, d_out, d_states_n)
        else:
            found = backward(ctx.config, xp, ctx.batch_sizes, states, params, masks, ctx.reverse, out, saved, d_out,
                             d_states_n)
        dxp, d_states0, d_params = found[0], found[1:1 + ns], found[1 + ns:]
        return None, dxp, None, list(d_states0), list(d_params), [None] * nm, None  # masks: a list, as given

    forward.register_autograd(grad_formula, setup_context=setup_context)
    return forward


def differentiable_grads(fam, ctx, xp, states, params, masks, d_out, d_states_n) -> list[Tensor]:
    """[dxp, *d_states0, *d_params] as a differentiable function of everything (for create_graph=True)."""
    inputs = [xp, *states, *params]
    with torch.enable_grad():
        out, states_n = fam.autograd_forward(ctx.config, xp, steps(ctx.batch_sizes, xp, states[0]), list(states),
                                             list(params), list(masks), ctx.reverse)
        wanted = [i for i, t in enumerate(inputs) if t.requires_grad]
        found = torch.autograd.grad([out, *states_n], [inputs[i] for i in wanted], [d_out, *d_states_n],
                                    create_graph=True, allow_unused=True)
    grads = [torch.zeros_like(t) for t in inputs]
    for i, g in zip(wanted, found, strict=True):
        if g is not None:
            grads[i] = g
    return grads


_OPS: dict[tuple[str, str], object] = {}


def operator(family_name: str, engine_name: str):
    """The forward operator of a family on an engine, registered on first use."""
    key = (family_name, engine_name)
    if key not in _OPS:
        _OPS[key] = define(family_name, engine_name)
    return _OPS[key]


def register_all() -> None:
    """Import every family and register its operators on every engine. rnnkit.engines calls this when it is
    imported: importing or registering first inside a torch.compile trace would break the graph, and a saved
    torch.export program that calls these operators needs them to exist when it loads."""
    for name in FAMILY_NAMES:
        for engine_name in family(name).ENGINES:
            operator(name, engine_name)


def resolve(family_name: str, name: str, device_type: str, dtype: torch.dtype) -> str:
    """The engine that runs family `family_name` for a tensor of this device and dtype: "auto" picks triton
    on CUDA, else cpu, else reference; a named engine runs or raises saying why not. "aten" (torch's fused
    LSTM) has no kernel for these cells and hands them to cpu, as it does every call it cannot run."""
    engines = family(family_name).ENGINES
    x = torch.empty(0, device=device_type, dtype=dtype)
    if name == "aten":
        name = "cpu"
    if name == "auto":
        order = ("triton", "cpu", "reference") if device_type == "cuda" else ("cpu", "reference")
        name = next(e for e in order if e in engines and engines[e].why_not(x) is None)
    reason = engines[name].why_not(x) if name in engines else f"the {family_name} cells have no {name} kernels"
    if reason is not None:
        raise RuntimeError(f"engine {name!r} cannot run {family_name} cells here: {reason}")
    return name


# A constant of a torch.compile trace (its inputs are guarded), as engines.resolve is
resolve._dynamo_marked_constant = True


class _Projection(torch.autograd.Function):
    """x W^T + b through the CPU engine's products (oneDNN where it is faster than torch's own, as for the stock
    cells' input projection), with its gradient formed the same way."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor | None):
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        return cpu.linear(x, w, b)

    @staticmethod
    def backward(ctx, d: Tensor):
        x, w = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        if needs_autograd(d):  # create_graph, torch.func or a batch of gradients: torch's own ops
            dx, dw, db = d @ w, d.t() @ x, d.sum(0) if ctx.has_bias else None
        else:
            dx, dw, db = cpu.input_grads(x, w, d, ctx.has_bias, need_x)
        return dx if need_x else None, dw if need_w else None, db if need_b else None


def input_projection(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """xp = x W^T + b for all steps at once (N, G*H): what the layers give the operators. On CPU in float32 the
    products go where the stock engines send theirs; elsewhere, and whenever torch traces or transforms
    (compile, export, torch.func), it is F.linear."""
    from .tune import tracing

    if x.device.type != "cpu" or x.dtype != torch.float32 or tracing() or cpu.why_not(x) is not None:
        return torch.nn.functional.linear(x, w, b)
    return _Projection.apply(x, w, b)


def run(family_name: str, engine_name: str, config: str, xp: Tensor, batch_sizes, states: list[Tensor],
        params: list[Tensor], masks: list[Tensor], reverse: bool) -> tuple[Tensor, list[Tensor]]:
    """One layer, one direction of a family on an engine: (out (N, .), states_n).

    batch_sizes: None (padded), the int64 tensor of a PackedSequence, or a tuple of python ints."""
    if isinstance(batch_sizes, (tuple, list)):
        batch = states[0].shape[0]
        padded = batch > 0 and all(b == batch for b in batch_sizes)
        batch_sizes = None if padded else torch.tensor(batch_sizes, dtype=torch.int64)
    if plain_ops_only():  # torch.func or forward-mode AD: plain ops, which torch transforms itself
        return family(family_name).autograd_forward(config, xp, steps(batch_sizes, xp, states[0]), states, params,
                                                    masks, reverse)
    result = operator(family_name, engine_name)(config, xp, batch_sizes, states, params, masks, reverse)
    return result[0], result[1:1 + len(states)]
