"""What the benchmark scripts share: identical models, the timed work, the check before timing, timing, reporting.

The scripts run from this directory (python benchmarks/NAME.py puts it first on sys.path), so they
import this module as `common`. It is not part of the rnnkit package and not a test.
"""

from __future__ import annotations

import datetime
import gc
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.nn.utils.rnn import PackedSequence

import rnnkit
from rnnkit.testing import assert_close

SEED = 0


# ---------------------------------------------------------------- models and inputs


def build_modules(cell: str, hidden: int, engines: tuple[str, ...]) -> dict[str, torch.nn.Module]:
    """{"torch": torch.nn module, engine: rnnkit module, ...}, all with the same weights.

    cell names a layer ("LSTM") or a cell ("LSTMCell"); input size = hidden size; RNN is tanh.
    """
    torch.manual_seed(SEED)
    kwargs = {"nonlinearity": "tanh"} if cell.startswith("RNN") else {}
    modules = {"torch": getattr(torch.nn, cell)(hidden, hidden, **kwargs)}
    for engine in engines:
        candidate = getattr(rnnkit, cell)(hidden, hidden, **kwargs, engine=engine)
        # strict=True: a renamed or missing parameter must fail loudly, not time a half-loaded model.
        candidate.load_state_dict(modules["torch"].state_dict(), strict=True)
        modules[engine] = candidate
    return modules


def build_pair(cell: str, hidden: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(torch.nn module, rnnkit module on the reference engine) with the same weights."""
    modules = build_modules(cell, hidden, ("reference",))
    return modules["torch"], modules["reference"]


def make_inputs(steps: int, batch: int, hidden: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Input x (T, B, H) and upstream gradient g for the output (T, B, H)."""
    gen = torch.Generator().manual_seed(SEED + 1)
    x = torch.randn(steps, batch, hidden, generator=gen)
    # A random gradient, not out.sum(): an all-ones gradient is a special case a kernel could exploit.
    g = torch.randn(steps, batch, hidden, generator=gen)
    return x, g


# ---------------------------------------------------------------- the work being timed


def data_of(t):
    """The tensor behind a tensor or a PackedSequence."""
    return t.data if isinstance(t, PackedSequence) else t


def fresh_leaf(x):
    """(input to pass, leaf tensor whose .grad is dx): x detached and requiring grad, packed or not."""
    leaf = data_of(x).detach().requires_grad_(True)
    return (x._replace(data=leaf) if isinstance(x, PackedSequence) else leaf), leaf


def forward_step(module: torch.nn.Module, x):
    with torch.no_grad():
        return module(x)


def train_step(module: torch.nn.Module, x, g: torch.Tensor):
    """Forward and backward; returns (outputs, gradients) so the sanity check can reuse it.

    x is a tensor or a PackedSequence; g has the shape of the output's data.
    """
    module.zero_grad(set_to_none=True)
    # The input needs a gradient: in a stacked network every layer but the first must produce dx,
    # so this times the full backward rather than the cheaper weights-only one.
    x, leaf = fresh_leaf(x)
    out, state = module(x)
    data_of(out).backward(g)
    return (out, state), (leaf.grad, *(p.grad for p in module.parameters()))


def make_runner(mode: str, module: torch.nn.Module, x, g: torch.Tensor):
    if mode == "forward":
        return lambda: forward_step(module, x)
    return lambda: train_step(module, x, g)


# ---------------------------------------------------------------- correctness before speed


def flatten_outputs(result) -> list[torch.Tensor]:
    out, state = result
    return [data_of(out), *(state if isinstance(state, tuple) else (state,))]


def check_result(mode: str, actual, expected, label: str) -> None:
    """Raise unless a make_runner result matches torch.nn's: outputs, and in train mode every gradient."""
    if mode == "forward":
        actual, expected = (actual, ()), (expected, ())
    (out_a, grads_a), (out_e, grads_e) = actual, expected
    for a, e in zip(flatten_outputs(out_a), flatten_outputs(out_e), strict=True):
        assert_close(a, e, "output", f"{label} {mode} output")
    for i, (a, e) in enumerate(zip(grads_a, grads_e, strict=True)):
        assert_close(a, e, "grad", f"{label} gradient #{i}")


def sanity_check(reference: torch.nn.Module, candidate: torch.nn.Module, x: torch.Tensor, g: torch.Tensor,
                 label: str) -> None:
    """Raise unless both contenders agree on outputs and gradients: a wrong engine must not get a timing."""
    check_result("forward", forward_step(candidate, x), forward_step(reference, x), label)
    expected = train_step(reference, x, g)
    check_result("train", train_step(candidate, x, g), expected, label)


# ---------------------------------------------------------------- timing


def time_once(run) -> float:
    """Milliseconds for one call."""
    start = time.perf_counter()
    run()
    return (time.perf_counter() - start) * 1e3


def warm_up(runners: dict[str, callable], rounds: int) -> dict[str, float]:
    """Run every contender `rounds` times (first calls pay for allocator growth and lazy init).

    Returns each contender's ms in the last round, a cost estimate for planning the timed rounds.
    """
    last = {name: float("nan") for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            last[name] = time_once(run)
    return last


def time_rounds(runners: dict[str, callable], rounds: dict[str, int], rotate: bool = False) -> dict[str, list[float]]:
    """ms samples per contender, running them in turn each round so machine noise is shared.

    A contender with fewer rounds than the others drops out after its last. rotate=True starts each
    round with the next contender, so none always runs right after the same neighbour (whose
    cache footprint it would inherit).
    """
    names = list(runners)
    samples = {name: [] for name in names}
    gc.collect()
    gc.disable()  # a collection landing inside one contender's call would bias that sample
    try:
        for i in range(max(rounds.values(), default=0)):
            k = i % len(names) if rotate else 0
            for name in names[k:] + names[:k]:
                if i < rounds[name]:
                    samples[name].append(time_once(runners[name]))
    finally:
        gc.enable()
    return samples


def time_alternating(runners: dict[str, callable], warmup: int, rounds: int) -> dict[str, float]:
    """Median ms per contender after `warmup` untimed rounds, all contenders timed `rounds` times in turn."""
    warm_up(runners, warmup)
    samples = time_rounds(runners, dict.fromkeys(runners, rounds))
    return {name: statistics.median(s) for name, s in samples.items()}


# ---------------------------------------------------------------- reporting


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux: platform's answer is vaguer but better than nothing
    return platform.processor() or platform.machine()


def numba_version() -> str | None:
    try:
        import numba
    except ImportError:
        return None  # the reference engine runs without it; the JSON says so rather than failing
    return numba.__version__


def machine_info(threads) -> dict:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "numba": numba_version(),
        "rnnkit": rnnkit.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads": threads,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def format_machine(info: dict) -> str:
    return (f"CPU: {info['cpu']}, {info['cores']} cores | torch {info['torch']} | numba {info['numba']} | "
            f"rnnkit {info['rnnkit']} | python {info['python']} | threads {info['threads']} | {info['date']}")


def write_json_atomic(path: Path, payload: dict) -> None:
    """Write via a temporary file in the same directory and rename, so no reader sees a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a results file is meant to be read
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
