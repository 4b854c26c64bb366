"""Benchmark: rnnkit's reference engine against torch.nn on CPU.

Times LSTM, GRU and RNN (tanh), one layer, float32, input size = hidden size, at
(T=100, B=16, H=256) and (T=100, B=64, H=512), in two modes:

    forward   inference under torch.no_grad()
    train     forward + backward of a random upstream gradient on the output

Both contenders hold identical weights (torch's state_dict loaded into rnnkit with
strict=True) and run in this process, alternating A B A B ... so that drift on a shared
machine (thermal, other jobs) hits both alike. Each cell reports the median of its repeats.

Usage:
    python benchmarks/reference.py [--quick] [--threads N] [--out PATH]

This is a script, not a test; results go to stdout and to a JSON file.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import rnnkit
from rnnkit.testing import assert_close

CELLS = ("LSTM", "GRU", "RNN")
SHAPES = ((100, 16, 256), (100, 64, 512))  # (T, B, H)
MODES = ("forward", "train")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "reference.json"
SEED = 0

# (warm-up rounds, timed rounds) per contender; a round runs each contender once.
FULL = (3, 20)
QUICK = (1, 3)


# ---------------------------------------------------------------- setup


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=f"{QUICK[1]} timed rounds instead of {FULL[1]}")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    return p.parse_args(argv)


def build_pair(cell: str, hidden: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(torch.nn module, rnnkit module) with the same weights."""
    torch.manual_seed(SEED)
    kwargs = {"nonlinearity": "tanh"} if cell == "RNN" else {}
    reference = getattr(torch.nn, cell)(hidden, hidden, **kwargs)
    candidate = getattr(rnnkit, cell)(hidden, hidden, **kwargs, engine="reference")
    # strict=True: a renamed or missing parameter must fail loudly, not time a half-loaded model.
    candidate.load_state_dict(reference.state_dict(), strict=True)
    return reference, candidate


def make_inputs(steps: int, batch: int, hidden: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Input x (T, B, H) and upstream gradient g for the output (T, B, H)."""
    gen = torch.Generator().manual_seed(SEED + 1)
    x = torch.randn(steps, batch, hidden, generator=gen)
    # A random gradient, not out.sum(): an all-ones gradient is a special case a kernel could exploit.
    g = torch.randn(steps, batch, hidden, generator=gen)
    return x, g


# ---------------------------------------------------------------- the work being timed


def forward_step(module: torch.nn.Module, x: torch.Tensor):
    with torch.no_grad():
        return module(x)


def train_step(module: torch.nn.Module, x: torch.Tensor, g: torch.Tensor):
    """Forward and backward; returns (outputs, gradients) so the sanity check can reuse it."""
    module.zero_grad(set_to_none=True)
    # The input needs a gradient: in a stacked network every layer but the first must produce dx,
    # so this times the full backward rather than the cheaper weights-only one.
    x = x.detach().requires_grad_(True)
    out, state = module(x)
    out.backward(g)
    return (out, state), (x.grad, *(p.grad for p in module.parameters()))


def make_runner(mode: str, module: torch.nn.Module, x: torch.Tensor, g: torch.Tensor):
    if mode == "forward":
        return lambda: forward_step(module, x)
    return lambda: train_step(module, x, g)


# ---------------------------------------------------------------- correctness before speed


def flatten_outputs(result) -> list[torch.Tensor]:
    out, state = result
    return [out, *(state if isinstance(state, tuple) else (state,))]


def sanity_check(reference: torch.nn.Module, candidate: torch.nn.Module, x: torch.Tensor, g: torch.Tensor,
                 label: str) -> None:
    """Raise unless both contenders agree on outputs and gradients: a wrong engine must not get a timing."""
    outputs = zip(flatten_outputs(forward_step(candidate, x)), flatten_outputs(forward_step(reference, x)), strict=True)
    for a, e in outputs:
        assert_close(a, e, "output", f"{label} forward")
    (_, grads_e), (_, grads_a) = train_step(reference, x, g), train_step(candidate, x, g)
    for i, (a, e) in enumerate(zip(grads_a, grads_e, strict=True)):
        assert_close(a, e, "grad", f"{label} gradient #{i}")


# ---------------------------------------------------------------- timing


def time_once(run) -> float:
    """Milliseconds for one call."""
    start = time.perf_counter()
    run()
    return (time.perf_counter() - start) * 1e3


def time_alternating(runners: dict[str, callable], warmup: int, rounds: int) -> dict[str, float]:
    """Median ms per contender, running them in turn each round so machine noise is shared."""
    for _ in range(warmup):  # first calls pay for allocator growth and lazy init
        for run in runners.values():
            run()
    samples = {name: [] for name in runners}
    gc.collect()
    gc.disable()  # a collection landing inside one contender's call would bias that sample
    try:
        for _ in range(rounds):
            for name, run in runners.items():
                samples[name].append(time_once(run))
    finally:
        gc.enable()
    return {name: statistics.median(s) for name, s in samples.items()}


def benchmark_row(cell: str, steps: int, batch: int, hidden: int, warmup: int, rounds: int) -> list[dict]:
    reference, candidate = build_pair(cell, hidden)
    x, g = make_inputs(steps, batch, hidden)
    sanity_check(reference, candidate, x, g, f"{cell} T={steps} B={batch} H={hidden}")
    rows = []
    for mode in MODES:
        runners = {"torch": make_runner(mode, reference, x, g), "rnnkit": make_runner(mode, candidate, x, g)}
        ms = time_alternating(runners, warmup, rounds)
        rows.append({"cell": cell, "T": steps, "B": batch, "H": hidden, "mode": mode,
                     "torch_ms": ms["torch"], "rnnkit_ms": ms["rnnkit"], "ratio": ms["torch"] / ms["rnnkit"]})
    return rows


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


def machine_info(threads: int) -> dict:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "rnnkit": rnnkit.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads": threads,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def format_machine(info: dict) -> str:
    return (f"CPU: {info['cpu']}, {info['cores']} cores | torch {info['torch']} | rnnkit {info['rnnkit']} | "
            f"python {info['python']} | threads {info['threads']} | {info['date']}")


def format_table(rows: list[dict]) -> str:
    header = f"{'cell':<5} {'T':>4} {'B':>3} {'H':>4} {'mode':<8} {'torch.nn ms':>12} {'rnnkit ms':>10} {'ratio':>6}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['cell']:<5} {r['T']:>4} {r['B']:>3} {r['H']:>4} {r['mode']:<8} "
                     f"{r['torch_ms']:>12.2f} {r['rnnkit_ms']:>10.2f} {r['ratio']:>6.2f}")
    return "\n".join(lines)


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


# ---------------------------------------------------------------- main


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    warmup, rounds = QUICK if args.quick else FULL
    info = machine_info(torch.get_num_threads())
    print(format_machine(info))
    print(f"warm-up rounds {warmup}, timed rounds {rounds} (median); ratio = torch.nn ms / rnnkit ms, "
          f">1 means rnnkit is faster\n", flush=True)

    start = time.perf_counter()
    rows = []
    for steps, batch, hidden in SHAPES:
        for cell in CELLS:
            rows.extend(benchmark_row(cell, steps, batch, hidden, warmup, rounds))
            print(f"  done {cell} T={steps} B={batch} H={hidden}", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - start

    print(format_table(rows))
    print(f"\ntotal {elapsed:.0f} s")
    write_json_atomic(args.out, {"machine": info, "warmup": warmup, "rounds": rounds, "engine": "reference",
                                 "dtype": "float32", "device": "cpu", "elapsed_s": elapsed, "rows": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
