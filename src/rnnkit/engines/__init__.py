"""Engines run one recurrent layer in one direction over a whole sequence, forward and BPTT.

All engines share the signature of `reference.run_layer`:

    reference  a readable loop over time with the hand-derived BPTT; runs anywhere; the ground truth
    cpu        the same algorithm with the time loops compiled by Numba (float32, float64 CPU tensors)
    aten       torch's own fused float32 LSTM on CPU (oneDNN, what torch.nn.LSTM runs); other calls go to cpu
    triton     the same algorithm as Triton GPU kernels, each step's recurrent product fused with its gate
               arithmetic (float32, bfloat16, float16 CUDA tensors; CPU tensors under TRITON_INTERPRET=1)

`select` is the one place that chooses between them. An engine asked for by name runs or
raises an error saying why it cannot; "auto" takes the fastest engine that applies to the
input (triton for CUDA tensors; for CPU tensors cpu, or aten where timing on this machine
found it faster for the call's shape class, see tune.py; else reference), and every engine
gives the reference engine's results within rnnkit.testing's tolerances.

The choice can be made per layer (`engine=` on rnnkit.LSTM and friends) and globally:

    with rnnkit.engines.use("reference"):   # layers built with engine="auto" run on "reference"
        model(x)
"""

from __future__ import annotations

import contextlib
import contextvars

import torch
from torch import Tensor

from . import aten, cpu, ops, reference, triton, tune, variant_ops  # noqa: F401  (ops registers the operators)

ENGINES = {"reference": reference, "cpu": cpu, "aten": aten, "triton": triton}
ENGINE_NAMES = ("auto", *ENGINES)

# what engine="auto" means right now; "auto" lets select decide per input. Eager code reads the
# context variable (thread- and task-local). torch.compile cannot trace ContextVar.get, so compiled
# code reads the module global that `use` also sets, which Dynamo guards on: a graph traced inside a
# `use` block is traced again outside it.
_auto_engine: contextvars.ContextVar[str] = contextvars.ContextVar("rnnkit_auto_engine", default="auto")
_auto_engine_for_compile = "auto"


def auto_choice() -> str:
    return _auto_engine_for_compile if torch.compiler.is_compiling() else _auto_engine.get()


def check_name(name: str) -> None:
    if name not in ENGINE_NAMES:
        raise ValueError(f"unknown engine {name!r}: expected one of {', '.join(map(repr, ENGINE_NAMES))}")


def why_not(name: str, x: Tensor) -> str | None:
    """Why engine `name` cannot run on input x, or None if it can."""
    module = ENGINES[name]
    return module.why_not(x) if hasattr(module, "why_not") else None


def select(name: str, x: Tensor):
    """The run_layer function of engine `name` for input x; "auto" picks the best engine that applies."""
    check_name(name)
    wanted = auto_choice() if name == "auto" else name
    if wanted == "auto" and x.device.type == "cpu" and not torch.compiler.is_compiling():
        chosen = _auto_on_cpu.get(x.dtype) or _auto_on_cpu.setdefault(x.dtype, resolve("auto", "cpu", x.dtype))
    else:
        chosen = resolve(wanted, x.device.type, x.dtype)
    if wanted == "auto" and chosen == "cpu":  # per call: the CPU engine or torch's fused kernel (tune.py)
        return tune.run_layer
    return ENGINES[chosen].run_layer


# "auto" for CPU tensors of a dtype: cpu, or reference without Numba; neither changes within a process, and
# every layer call asks (eager calls only: traced code calls resolve, a constant of the trace)
_auto_on_cpu: dict[torch.dtype, str] = {}


def resolve(name: str, device_type: str, dtype: torch.dtype) -> str:
    """The engine that runs a tensor of this device and dtype, or RuntimeError saying why `name` cannot."""
    x = torch.empty(0, device=device_type, dtype=dtype)
    if name == "auto":
        # triton only for CUDA tensors: under TRITON_INTERPRET=1 it could take CPU tensors, but slowly
        if device_type == "cuda" and why_not("triton", x) is None:
            name = "triton"
        else:
            name = "cpu" if why_not("cpu", x) is None else "reference"
    reason = why_not(name, x)
    if reason is not None:
        raise RuntimeError(f"engine {name!r} cannot run here: {reason}")
    return name


# For torch.compile, resolve's result is a constant of the trace (its inputs are guarded). This is what
# @torch.compiler.assume_constant_result does, which would import torch._dynamo (over a second) with rnnkit.
resolve._dynamo_marked_constant = True


@contextlib.contextmanager
def use(name: str):
    """Run layers built with engine="auto" on engine `name` inside the block (thread- and task-local)."""
    global _auto_engine_for_compile
    check_name(name)
    token, outer = _auto_engine.set(name), _auto_engine_for_compile
    _auto_engine_for_compile = name
    try:
        yield
    finally:
        _auto_engine.reset(token)
        _auto_engine_for_compile = outer


# The operators of the cell families torch.nn lacks too, so that a saved torch.export program that calls
# them loads after `import rnnkit.engines` (registering imports no Numba or Triton: about 50 ms)
variant_ops.register_all()
