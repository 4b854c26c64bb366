"""Benchmark: rnnkit's CPU engine (Numba) against torch.nn and the reference engine on CPU.

Parts (all float32, one layer, unidirectional, input size = hidden size, RNN is tanh):

    ceiling    products of two 2048x2048 matrices with torch.mm (MKL) and oneDNN: the machine's large-GEMM
               rate per thread count (the better of the two libraries)
    layers     LSTM, GRU, RNN at (T, B, H) = (100, 1, 128), (100, 16, 256), (100, 64, 512),
               (50, 128, 1024), (1000, 8, 64); modes
                   forward   inference under torch.no_grad()
                   train     forward + backward of a random upstream gradient on the output (dx included)
               contenders torch.nn, engine="reference", and rnnkit's default engine="auto" (the rows and the
               JSON call it "cpu": the CPU engine, or torch's fused LSTM where auto's timing chose it; the
               `path` column says which)
    streaming  one cell call per step, and one layer call per step (T=1: a decoder's loop), B=1, H=128, state
               carried, under no_grad; and the layer per step with grad mode on, then one backward through
               every step (a decoder trained with teacher forcing): microseconds per step
    packed     T=100, B=16, H=256, lengths spread evenly over [T/2, T], pack_padded_sequence(enforce_sorted=False),
               against the same batch padded to full length (torch.nn and the cpu engine)
    memory     peak RSS increase of one training step at (T=1000, B=8, H=512), torch.nn and the cpu engine,
               each in a fresh subprocess
    coldstart  a fresh `python -c` that imports rnnkit and runs one LSTM forward+backward on the cpu engine,
               twice against one new Numba cache directory (first compiles, second loads the cache)

Contenders hold identical weights (torch's state_dict loaded into rnnkit with strict=True) and run in
this process in turns, each round starting with the next contender, so drift on a shared machine hits
all alike. Before a configuration is timed, each rnnkit contender's outputs (and, in train mode, all
gradients) are checked against torch.nn with rnnkit.testing.assert_close. Each number is the median of
its timed rounds; how many rounds a row gets is set by a time budget (slow rows get fewer), and the
reference engine gets fewer still. Thread counts alternate inside each configuration, so the 1- and
2-thread numbers of a row are taken close together.

On a shared machine: before each configuration the script waits (up to --wait seconds) until other
processes leave it the cores it needs, and skips the configuration if they do not (oversubscribed
OpenMP makes calls 10-1000x slower, which measures nothing). Every row records how many cores other
processes used while it was timed ("other"); the load average at start and end goes to the JSON.
To benchmark a fixed commit while the working tree is being edited, put a checkout of it first:
    git worktree add --detach /tmp/snap HEAD && PYTHONPATH=/tmp/snap/src python benchmarks/cpu.py
(the JSON records which rnnkit ran, its commit, and whether the engine sources changed mid-run).

Usage:
    python benchmarks/cpu.py [--quick] [--threads 1,2] [--skip-reference] [--parts ...] [--wait S] [--out PATH]

This is a script, not a test; results go to stdout and to a JSON file.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import (
    BUSY_CORES,
    Column,
    build_modules,
    check_result,
    cpu_meter,
    engine_source_digest,
    format_machine,
    format_other,
    git_state,
    load_average,
    machine_info,
    make_inputs,
    make_runner,
    markdown_table,
    packed_lengths,
    time_rounds,
    train_step,
    wait_for_cores,
    warm_up,
    write_json_atomic,
)
from torch.nn.utils.rnn import pack_padded_sequence

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "cpu.json"

CELLS = ("LSTM", "GRU", "RNN")
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
MODES = ("forward", "train")
SHAPES = ((100, 1, 128), (100, 16, 256), (100, 64, 512), (50, 128, 1024), (1000, 8, 64))  # (T, B, H)
QUICK_SHAPES = ((100, 1, 128), (100, 16, 256), (1000, 8, 64))
STREAM_HIDDEN = 128
PACKED_SHAPE = (100, 16, 256)
MEMORY_SHAPE = (1000, 8, 512)
COLD_SHAPE = (10, 4, 32)  # tiny: the cold start is about import and compile, not arithmetic
CEILING_N = 2048
PARTS = ("ceiling", "layers", "streaming", "packed", "memory", "coldstart")
SUBPROCESS_TIMEOUT_S = 600


@dataclasses.dataclass(frozen=True)
class Plan:
    """How much timing each part gets; FULL aims at ~10 minutes on 2 cores, QUICK at ~1 minute."""
    shapes: tuple
    warmup: int  # untimed rounds after the checked first call, for rows cheaper than cheap_ms
    cheap_ms: float  # a row whose checked calls took longer than this is warm enough after them
    budget_s: float  # timed seconds per row and mode for torch.nn + cpu engine (the two compared)
    min_rounds: int
    max_rounds: int
    ref_budget_s: float  # the reference engine's own budget: it is slow and only a baseline here
    ref_min_rounds: int
    max_row_s: float  # cap on one row's timed seconds, whatever the minimum rounds: a starved machine can
    #                   make a call 100x slower (see the "other" column) and must not stall the whole run
    stream_steps: int  # cell calls per timed round
    memory_cells: tuple
    ceiling_repeats: int
    wait_s: float = 120.0  # longest wait per configuration for the cores it needs to be free (--wait)


FULL = Plan(shapes=SHAPES, warmup=3, cheap_ms=500.0, budget_s=2.5, min_rounds=5, max_rounds=100,
            ref_budget_s=1.0, ref_min_rounds=2, max_row_s=60.0, stream_steps=200,
            memory_cells=("LSTM", "GRU"), ceiling_repeats=10)
QUICK = Plan(shapes=QUICK_SHAPES, warmup=1, cheap_ms=200.0, budget_s=0.3, min_rounds=3, max_rounds=5,
             ref_budget_s=0.1, ref_min_rounds=1, max_row_s=10.0, stream_steps=50,
             memory_cells=("LSTM",), ceiling_repeats=3)


# ---------------------------------------------------------------- setup


def parse_threads(text: str) -> tuple[int, ...]:
    try:
        threads = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated thread counts, got {text!r}") from None
    if not threads or min(threads) < 1:
        raise argparse.ArgumentTypeError(f"thread counts must be >= 1, got {text!r}")
    return threads


def parse_parts(text: str) -> tuple[str, ...]:
    parts = tuple(text.split(","))
    if unknown := set(parts) - set(PARTS):
        raise argparse.ArgumentTypeError(f"unknown parts {sorted(unknown)}; choose from {','.join(PARTS)}")
    return parts


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: fewer shapes and rounds (about a minute)")
    p.add_argument("--threads", type=parse_threads, default=(1, 2), help="torch.set_num_threads values (default 1,2)")
    p.add_argument("--skip-reference", action="store_true", help="leave out the (slow) reference engine")
    p.add_argument("--parts", type=parse_parts, default=PARTS, help=f"subset of {','.join(PARTS)} (default all)")
    p.add_argument("--wait", type=float, default=FULL.wait_s,
                   help="seconds to wait per configuration for other processes to free the cores it needs; "
                        f"a configuration still without them is skipped, not timed (default {FULL.wait_s:g})")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    # Internal: one peak-memory measurement, run by this script in a fresh subprocess (see measure_memory).
    p.add_argument("--measure-memory", metavar="CELL,CONTENDER", help=argparse.SUPPRESS)
    return p.parse_args(argv)


@contextlib.contextmanager
def num_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


RNNKIT_ENGINE = "auto"  # what the "cpu" contender is built with: the default a user gets


def rnnkit_modules(cell: str, hidden: int, engines: tuple[str, ...]) -> dict:
    """build_modules, with the "cpu" contender built as engine=RNNKIT_ENGINE and still called "cpu"."""
    built = build_modules(cell, hidden, tuple(RNNKIT_ENGINE if e == "cpu" else e for e in engines))
    if "cpu" in engines and RNNKIT_ENGINE != "cpu":
        built["cpu"] = built.pop(RNNKIT_ENGINE)
    return built


def auto_path(cell: str, mode: str, steps: int, batch: int, hidden: int) -> str:
    """What rnnkit's auto ran for a padded row: "cpu", "aten", "torch stack" or "torch cells" (chosen by timing, see
    engines/tune.py)."""
    from rnnkit.engines import tune
    if RNNKIT_ENGINE != "auto":
        return "cpu"
    mode_name = "RNN_TANH" if cell == "RNN" else cell
    stack = tune.table().get("stack|" + tune.shape_class(mode_name, mode == "train", steps, batch, hidden, hidden)
                             + "|L1|D1")
    if stack is not None and stack["engine"] != "cpu":
        return {"aten": "torch stack", "cells": "torch cells"}[stack["engine"]]
    return tune.chosen(cell, mode == "train", steps, batch, hidden, hidden)


def engines_to_time(skip_reference: bool) -> tuple[str, ...]:
    return ("cpu",) if skip_reference else ("reference", "cpu")


def flops(cell: str, rows: int, hidden: int, mode: str) -> float:
    """Multiply-adds x 2 of the matrix products: 2*N*G*H*(I+H) forward with N = T*B rows, I = H;
    backward does twice that (dx/dh and the weight gradients), so train = 3x forward."""
    forward = 2 * rows * GATES[cell] * hidden * (hidden + hidden)
    return forward * (3 if mode == "train" else 1)


# ---------------------------------------------------------------- planning and timing a configuration


def checked_first_calls(runners: dict, mode: str, checks: dict[str, str], label: str) -> dict:
    """Run each contender once, timed, and check it against its torch.nn counterpart before any timing counts.

    checks maps a contender to the torch.nn contender it must match. The calls double as the first warm-up.
    """
    results, ms = {}, {}
    for name, run in runners.items():
        start = time.perf_counter()
        results[name] = run()
        ms[name] = (time.perf_counter() - start) * 1e3
    for name, against in checks.items():
        check_result(mode, results[name], results[against], f"{label} [{name} vs {against}]")
    return ms


def plan_rounds(cost_ms: dict[str, float], plan: Plan, slow: tuple[str, ...] = ("reference",)) -> dict[str, int]:
    """Timed rounds per contender from their estimated cost: a fixed time budget, clamped.

    The compared contenders share one count (a round runs each of them once); a slow baseline gets its
    own, smaller budget and never more rounds than the others.
    """
    def clamp(budget_s: float, lowest: int, highest: int, ms: float) -> int:
        ms = max(ms, 1e-3)
        n = min(highest, max(lowest, round(budget_s * 1e3 / ms)))
        return max(1, min(n, math.floor(plan.max_row_s * 1e3 / ms)))

    main = [n for n in cost_ms if n not in slow]
    rounds = clamp(plan.budget_s, plan.min_rounds, plan.max_rounds, sum(cost_ms[n] for n in main))
    out = dict.fromkeys(main, rounds)
    for name, ms in cost_ms.items():
        if name in slow:
            out[name] = clamp(plan.ref_budget_s, plan.ref_min_rounds, rounds, ms)
    return out


def skipped_row(gate: dict, **fields) -> dict:
    print(f"  skipped {fields}: other processes used {gate['other_before']:.2f} cores", file=sys.stderr, flush=True)
    return {**fields, "skipped": f"other processes used {gate['other_before']:.2f} cores", **gate}


def time_configuration(runners: dict, first_ms: dict, plan: Plan) -> tuple[dict, dict, dict]:
    """(median ms, rounds, cpu usage) per contender. Cheap rows get extra warm-up rounds, which also
    re-estimate the cost."""
    cost = first_ms
    if sum(first_ms.values()) < plan.cheap_ms:
        cost = warm_up(runners, plan.warmup)
    rounds = plan_rounds(cost, plan)
    usage = {}
    with cpu_meter(usage):
        samples = time_rounds(runners, rounds, rotate=True)
    usage["load1"] = round(os.getloadavg()[0], 2)
    usage["spread"] = {n: relative_iqr(s) for n, s in samples.items()}
    return {n: statistics.median(s) for n, s in samples.items()}, rounds, usage


def relative_iqr(samples: list[float]) -> float:
    """Interquartile range / median: how far one timing can be trusted (0 with fewer than 2 samples)."""
    if len(samples) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return (q3 - q1) / statistics.median(samples)


# ---------------------------------------------------------------- part: GEMM ceiling


def onednn_product():
    """torch's oneDNN fp32 product a @ b^T, or None where this torch build lacks it.

    Why a second library: on this AVX-512 AMD CPU, MKL's sgemm (behind torch.mm) runs at about half the
    speed of oneDNN (see docs/PERFORMANCE.md), and torch.nn.LSTM and the cpu engine both use oneDNN for
    large products, so torch.mm alone is no ceiling: rates would come out at up to 2x "the ceiling".
    """
    op = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None
    try:
        op(torch.ones(2, 3), torch.ones(4, 3), None, "none", [], "")
    except (RuntimeError, TypeError, NotImplementedError):  # absent (op is None) or unusable in this build
        return None
    return lambda a, b: op(a, b, None, "none", [], "")


def ceiling_products() -> dict:
    """The large-product implementations whose best rate is taken as the machine's ceiling."""
    products = {"torch.mm": lambda a, b: torch.mm(a, b)}
    if (onednn := onednn_product()) is not None:
        products["oneDNN"] = onednn  # a @ b^T: the same FLOPs, and b is random anyway
    return products


def measure_ceiling(threads: int, repeats: int, max_wait_s: float) -> list[dict]:
    """GFLOP/s of large square float32 products, per library: the rate the per-step products cannot beat."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(CEILING_N, CEILING_N, generator=gen) for _ in range(2))
    gflop = 2 * CEILING_N**3 / 1e9
    results = []
    for library, product in ceiling_products().items():
        gate, usage = wait_for_cores(threads, max_wait_s), {}  # measured anyway: a low ceiling shows in the JSON
        with num_threads(threads):
            run = lambda: product(a, b)  # noqa: B023 (called only inside this iteration)
            warm_up({"mm": run}, 2)
            with cpu_meter(usage):
                samples = time_rounds({"mm": run}, {"mm": repeats})["mm"]
        results.append({"library": library, "threads": threads, "n": CEILING_N,
                        "median_gflops": gflop / (statistics.median(samples) / 1e3),
                        "best_gflops": gflop / (min(samples) / 1e3), "repeats": repeats, **usage, **gate})
    return results


def ceiling_by_threads(measurements: list[dict]) -> dict[int, float]:
    """The ceiling used for the fractions: the best median over libraries and over the start and end of the
    run (other load only lowers a rate, so the best is the closest to what the machine can do)."""
    best = {}
    for m in measurements:
        best[m["threads"]] = max(best.get(m["threads"], 0.0), m["median_gflops"])
    return best


# ---------------------------------------------------------------- part: layers


def bench_layer_config(cell: str, shape: tuple, threads_list: tuple, engines: tuple, plan: Plan) -> list[dict]:
    steps, batch, hidden = shape
    modules = rnnkit_modules(cell, hidden, engines)
    x, g = make_inputs(steps, batch, hidden)
    rows = []
    for mode in MODES:
        for threads in threads_list:
            label = f"{cell} T={steps} B={batch} H={hidden} threads={threads}"
            gate = wait_for_cores(threads, plan.wait_s)
            if gate["starved"]:
                rows.append(skipped_row(gate, cell=cell, T=steps, B=batch, H=hidden, mode=mode, threads=threads))
                continue
            runners = {name: make_runner(mode, m, x, g) for name, m in modules.items()}
            with num_threads(threads):
                first = checked_first_calls(runners, mode, dict.fromkeys(engines, "torch"), label)
                ms, rounds, usage = time_configuration(runners, first, plan)
                path = auto_path(cell, mode, steps, batch, hidden)
            n = flops(cell, steps * batch, hidden, mode)
            rows.append({"cell": cell, "T": steps, "B": batch, "H": hidden, "mode": mode, "threads": threads,
                         "path": path,
                         "torch_ms": ms["torch"], "cpu_ms": ms["cpu"], "reference_ms": ms.get("reference"),
                         "ratio": ms["torch"] / ms["cpu"], "gflop": n / 1e9,
                         "gflops": {name: n / 1e6 / t for name, t in ms.items()}, "rounds": rounds, **usage, **gate})
            print(f"  layers {label} {mode}: torch {ms['torch']:.2f} ms, cpu {ms['cpu']:.2f} ms, "
                  f"other cores {other(usage).strip()}",
                  file=sys.stderr, flush=True)
    return rows


def bench_layers(plan: Plan, threads_list: tuple, engines: tuple) -> list[dict]:
    rows = []
    for shape in plan.shapes:
        for cell in CELLS:
            rows.extend(bench_layer_config(cell, shape, threads_list, engines, plan))
    return rows


# ---------------------------------------------------------------- part: streaming single steps


def stream_runner(cell_module: torch.nn.Module, xs: torch.Tensor, state0):
    """One cell call per step with the state carried, as a server answering one token at a time would."""
    def run():
        with torch.no_grad():
            state = state0
            for x in xs:
                state = cell_module(x, state)
        return state
    return run


def layer_step_runner(layer: torch.nn.Module, xs: torch.Tensor, state0):
    """The layer called on one step at a time (T=1), state carried: the decoder loop of a seq2seq model."""
    def run():
        with torch.no_grad():
            state = state0
            for x in xs:
                _, state = layer(x.unsqueeze(0), state)
        return state
    return run


def layer_step_train_runner(layer: torch.nn.Module, xs: torch.Tensor, state0):
    """The layer called on one step at a time with grad mode on, then one backward through every step: a decoder
    trained with teacher forcing (PyTorch's seq2seq tutorial calls its GRU this way)."""
    def run():
        layer.zero_grad(set_to_none=True)
        state, outs = state0, []
        for x in xs:
            out, state = layer(x.unsqueeze(0), state)
            outs.append(out)
        torch.stack(outs).sum().backward()
        return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
    return run


def initial_state(cell: str, hidden: int, layer: bool = False):
    h = torch.zeros(1, 1, hidden) if layer else torch.zeros(1, hidden)
    return (h, h.clone()) if cell == "LSTM" else h


def check_stream(results: dict, label: str) -> None:
    """The final states after all steps must match torch.nn's, so no engine drifts over a long stream."""
    expected = results["torch"]
    expected = expected if isinstance(expected, tuple) else (expected,)
    for name, state in results.items():
        state = state if isinstance(state, tuple) else (state,)
        for a, e in zip(state, expected, strict=True):
            check_result("forward", (a, ()), (e, ()), f"{label} [{name} vs torch]")


def bench_streaming(plan: Plan, threads_list: tuple, engines: tuple) -> list[dict]:
    rows = []
    gen = torch.Generator().manual_seed(2)
    xs = torch.randn(plan.stream_steps, 1, STREAM_HIDDEN, generator=gen)
    names = [(c, f"{c}Cell") for c in CELLS] + [(c, f"{c} (T=1)") for c in CELLS]
    names += [(c, f"{c} (T=1, train)") for c in CELLS]
    for cell, name in names:
        if "(T=1" in name:  # the layer itself, one step per call
            modules = rnnkit_modules(cell, STREAM_HIDDEN, engines)
            runner = layer_step_train_runner if name.endswith("train)") else layer_step_runner
            runners = {k: runner(m, xs, initial_state(cell, STREAM_HIDDEN, layer=True)) for k, m in modules.items()}
        else:
            modules = rnnkit_modules(name, STREAM_HIDDEN, engines)
            runners = {k: stream_runner(m, xs, initial_state(cell, STREAM_HIDDEN)) for k, m in modules.items()}
        for threads in threads_list:
            label = f"{name} B=1 H={STREAM_HIDDEN} threads={threads}"
            gate = wait_for_cores(threads, plan.wait_s)
            if gate["starved"]:
                rows.append(skipped_row(gate, cell=name, B=1, H=STREAM_HIDDEN, threads=threads))
                continue
            with num_threads(threads):
                check_stream({name: run() for name, run in runners.items()}, label)
                ms, rounds, usage = time_configuration(runners, warm_up(runners, 1), plan)
            us = {name: t * 1e3 / plan.stream_steps for name, t in ms.items()}
            rows.append({"cell": name, "B": 1, "H": STREAM_HIDDEN, "threads": threads,
                         "steps_per_round": plan.stream_steps, "torch_us": us["torch"], "cpu_us": us["cpu"],
                         "reference_us": us.get("reference"), "ratio": us["torch"] / us["cpu"], "rounds": rounds,
                         **usage, **gate})
            print(f"  streaming {label}: torch {us['torch']:.1f} us, cpu {us['cpu']:.1f} us", file=sys.stderr, flush=True)
    return rows


# ---------------------------------------------------------------- part: packed batch


def bench_packed_config(cell: str, plan: Plan, threads_list: tuple) -> list[dict]:
    steps, batch, hidden = PACKED_SHAPE
    modules = rnnkit_modules(cell, hidden, ("cpu",))
    x, g = make_inputs(steps, batch, hidden)
    lengths = packed_lengths(steps, batch)
    # Packed once outside the timing: a training loop packs in its data pipeline, not per layer call.
    xp = pack_padded_sequence(x, lengths, enforce_sorted=False)
    gp = pack_padded_sequence(g, lengths, enforce_sorted=False).data
    inputs = {"padded": (x, g), "packed": (xp, gp)}
    rows = []
    for mode in MODES:
        runners = {f"{who}_{form}": make_runner(mode, modules[who], *inputs[form])
                   for form in ("padded", "packed") for who in ("torch", "cpu")}
        checks = {"cpu_padded": "torch_padded", "cpu_packed": "torch_packed"}
        for threads in threads_list:
            label = f"{cell} packed T={steps} B={batch} H={hidden} threads={threads}"
            gate = wait_for_cores(threads, plan.wait_s)
            if gate["starved"]:
                rows.append(skipped_row(gate, cell=cell, T=steps, B=batch, H=hidden, mode=mode, threads=threads))
                continue
            with num_threads(threads):
                first = checked_first_calls(runners, mode, checks, label)
                ms, rounds, usage = time_configuration(runners, first, plan)
            rows.append({"cell": cell, "T": steps, "B": batch, "H": hidden, "mode": mode, "threads": threads,
                         "lengths": lengths.tolist(), **{f"{n}_ms": t for n, t in ms.items()},
                         "cpu_packed_over_padded": ms["cpu_packed"] / ms["cpu_padded"],
                         "torch_packed_over_padded": ms["torch_packed"] / ms["torch_padded"],
                         "packed_ratio": ms["torch_packed"] / ms["cpu_packed"], "rounds": rounds, **usage, **gate})
            print(f"  packed {label} {mode}: cpu packed/padded {rows[-1]['cpu_packed_over_padded']:.2f}",
                  file=sys.stderr, flush=True)
    return rows


def bench_packed(plan: Plan, threads_list: tuple) -> list[dict]:
    return [row for cell in CELLS for row in bench_packed_config(cell, plan, threads_list)]


# ---------------------------------------------------------------- part: peak memory (subprocesses)
#
# Method: each measurement runs in a fresh subprocess of this script (--measure-memory), so nothing
# another contender allocated, and nothing an allocator kept cached from an earlier row, counts. The
# child builds the model and inputs and runs one small training step (Numba compiles, torch initialises
# lazily: one-off costs, not the step's). Then it resets the kernel's peak-RSS mark by writing "5" to
# /proc/self/clear_refs, reads VmRSS (the baseline), runs one training step at the measured shape and
# reads VmHWM (the peak since the reset). Peak - baseline is the step's peak extra resident memory:
# activations saved for backward, workspaces, outputs and gradients, whatever allocator they came from,
# which tracemalloc (Python allocations only) would miss. Where clear_refs cannot be written the
# child falls back to VmHWM after - VmHWM before, a lower bound, and says so. The step is measured
# twice: the second comes out lower by whatever the allocators kept from the first (it is then in the
# baseline), so the first is the number to compare.


def proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE).group(1))


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_increase_mib(run) -> tuple[float, str]:
    """(peak RSS increase of run() in MiB, method)."""
    gc.collect()
    exact = reset_peak_rss()
    before = proc_status_kib("VmRSS" if exact else "VmHWM")
    result = run()
    peak = proc_status_kib("VmHWM")
    del result
    return (peak - before) / 1024, "clear_refs+VmHWM-VmRSS" if exact else "VmHWM delta (lower bound)"


def memory_child(spec: str) -> int:
    """Runs in the subprocess: print one JSON line with the peak RSS increase of a training step."""
    cell, contender = spec.split(",")
    torch.set_num_threads(1)
    steps, batch, hidden = MEMORY_SHAPE
    module = rnnkit_modules(cell, hidden, ("cpu",))[contender]
    x, g = make_inputs(steps, batch, hidden)
    train_step(module, x[:2], g[:2])  # one-off costs out of the way (see the method above)
    measured = []
    for _ in range(2):
        module.zero_grad(set_to_none=True)  # the previous step's gradients are not part of the baseline
        measured.append(peak_increase_mib(lambda: train_step(module, x, g)))
    print(json.dumps({"first_mib": measured[0][0], "second_mib": measured[1][0], "method": measured[0][1]}))
    return 0


def measure_memory(cell: str, contender: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--measure-memory", f"{cell},{contender}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child {cell},{contender} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def activation_mib() -> float:
    """float32 MiB of one (T, B, H) tensor at the memory shape, the unit the results are best read in."""
    steps, batch, hidden = MEMORY_SHAPE
    return steps * batch * hidden * 4 / 2**20


def bench_memory(plan: Plan) -> list[dict]:
    rows = []
    for cell in plan.memory_cells:
        got = {c: measure_memory(cell, c) for c in ("torch", "cpu")}  # bytes, not ms: no need to wait for cores
        steps, batch, hidden = MEMORY_SHAPE
        rows.append({"cell": cell, "T": steps, "B": batch, "H": hidden, "mode": "train", "threads": 1,
                     "torch": got["torch"], "cpu": got["cpu"], "tbh_tensor_mib": activation_mib(),
                     "cpu_over_torch": got["cpu"]["first_mib"] / got["torch"]["first_mib"]})
        print(f"  memory {cell}: torch {got['torch']['first_mib']:.0f} MiB, cpu {got['cpu']['first_mib']:.0f} MiB",
              file=sys.stderr, flush=True)
    return rows


# ---------------------------------------------------------------- part: first call in a new process

COLD_CODE = """
import json, time
t0 = time.perf_counter()
import torch, rnnkit
t1 = time.perf_counter()
T, B, H = {shape}
module = {build}
x = torch.randn(T, B, H, requires_grad=True)
out, _ = module(x)
out.backward(torch.randn_like(out))
t2 = time.perf_counter()
print(json.dumps({{"import_s": t1 - t0, "first_call_s": t2 - t1}}))
"""


def cold_start(contender: str, cache_dir: str) -> dict:
    """Wall time of a fresh interpreter that imports rnnkit and runs one LSTM forward+backward."""
    build = "rnnkit.LSTM(H, H, engine='cpu')" if contender == "cpu" else "torch.nn.LSTM(H, H)"
    code = COLD_CODE.format(shape=COLD_SHAPE, build=build)
    env = {**os.environ, "NUMBA_CACHE_DIR": cache_dir}
    usage = {}
    start = time.perf_counter()
    with cpu_meter(usage):  # own_cores stays ~0 here: the child's CPU time is not this process's
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                              timeout=SUBPROCESS_TIMEOUT_S, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"cold-start child ({contender}) failed:\n{proc.stderr}")
    # other_cores counts the child too (it is not this process), so ~1 is a quiet machine here
    return {"contender": contender, "wall_s": wall, "cores_busy": usage["other_cores"],
            **json.loads(proc.stdout.strip().splitlines()[-1])}


def bench_coldstart() -> list[dict]:
    # A new, empty NUMBA_CACHE_DIR makes the first run a true cold compile whatever state the package's
    # own cache is in (an edit to the kernels invalidates it); the second run then finds a warm cache.
    # torch.nn's first call in a fresh process is the yardstick for what is unavoidable (import torch).
    with tempfile.TemporaryDirectory(prefix="rnnkit-numba-cache-") as cache_dir:
        runs = [{"run": "cpu, empty cache", **cold_start("cpu", cache_dir)},
                {"run": "cpu, warm cache", **cold_start("cpu", cache_dir)},
                {"run": "torch.nn", **cold_start("torch", cache_dir)}]
    for r in runs:
        print(f"  coldstart {r['run']}: {r['wall_s']:.2f} s", file=sys.stderr, flush=True)
    return runs


# ---------------------------------------------------------------- before timing


def warm_numba() -> None:
    """Compile (or load) every kernel the layer rows use before any timing, so no row pays for it."""
    for cell in CELLS:
        m = build_modules(cell, 8, ("cpu",))["cpu"]
        x, g = make_inputs(3, 2, 8)
        train_step(m, x, g)


# ---------------------------------------------------------------- reporting


def fraction(gflops: float, ceiling: dict, threads: int) -> float | None:
    """The share of the GEMM ceiling at this thread count reached, or None without a ceiling."""
    c = ceiling.get(threads)
    return gflops / c if c else None


def skip_reason(r: dict) -> str | None:
    """Why a row was not measured, shown in place of its measured columns."""
    return f"skipped: {r['skipped']} (waited {r['waited_s']:.0f} s)" if r.get("skipped") else None


def spread(r: dict, name: str) -> str:
    return f"{100 * r['spread'][name]:.0f}%"


def other(r: dict) -> str:
    return format_other(r.get("other_cores"))


def format_ceiling(start: list[dict], end: list[dict]) -> str:
    ends = {(e["library"], e["threads"]): e for e in end}

    def at_end(key):
        return lambda s: ends.get((s["library"], s["threads"]), {}).get(key)

    return markdown_table(start, [
        Column("library", "library", align="<"), Column("threads", "threads"),
        Column("start GF/s", "median_gflops", ".1f"), Column("(best)", "best_gflops", ".1f"),
        Column("end GF/s", at_end("median_gflops"), ".1f"), Column("(best)", at_end("best_gflops"), ".1f")])


def format_layers(rows: list[dict], ceiling: dict) -> str:
    def frac(name):
        return lambda r: fraction(r["gflops"][name], ceiling, r["threads"])

    return markdown_table(rows, [
        Column("cell", "cell", align="<"), Column("T", "T"), Column("B", "B"), Column("H", "H"),
        Column("mode", "mode", align="<"), Column("thr", "threads"),
        Column("torch ms", "torch_ms", ".2f"), Column("ref ms", "reference_ms", ".2f"),
        Column("cpu ms", "cpu_ms", ".2f"), Column("t/cpu", "ratio", ".2f"),
        Column("cpu GF/s", lambda r: r["gflops"]["cpu"], ".1f"), Column("frac", frac("cpu"), ".2f"),
        Column("torch GF/s", lambda r: r["gflops"]["torch"], ".1f"), Column("frac", frac("torch"), ".2f"),
        Column("rounds", lambda r: f"{r['rounds']['cpu']}/{r['rounds'].get('reference', '-')}"),
        Column("other", other), Column("iqr t/c", lambda r: spread(r, "torch") + "/" + spread(r, "cpu")),
        Column("path", "path")], keys=6, unmeasured=skip_reason)


def format_streaming(rows: list[dict]) -> str:
    return markdown_table(rows, [
        Column("cell", "cell", align="<"), Column("B", "B"), Column("H", "H"), Column("thr", "threads"),
        Column("torch us", "torch_us", ".1f"), Column("ref us", "reference_us", ".1f"),
        Column("cpu us", "cpu_us", ".1f"), Column("t/cpu", "ratio", ".2f"),
        Column("rounds", lambda r: r["rounds"]["cpu"]), Column("other", other)], keys=4, unmeasured=skip_reason)


def format_packed(rows: list[dict]) -> str:
    return markdown_table(rows, [
        Column("cell", "cell", align="<"), Column("mode", "mode", align="<"), Column("thr", "threads"),
        Column("torch pad", "torch_padded_ms", ".2f"), Column("torch pack", "torch_packed_ms", ".2f"),
        Column("cpu pad", "cpu_padded_ms", ".2f"), Column("cpu pack", "cpu_packed_ms", ".2f"),
        Column("cpu pack/pad", "cpu_packed_over_padded", ".2f"),
        Column("torch pack/pad", "torch_packed_over_padded", ".2f"), Column("t/cpu pack", "packed_ratio", ".2f"),
        Column("rounds", lambda r: r["rounds"]["cpu_packed"]), Column("other", other)], keys=3, unmeasured=skip_reason)


def format_memory(rows: list[dict]) -> str:
    def mib(who, which):
        return lambda r: r[who][which]

    table = markdown_table(rows, [
        Column("cell", "cell", align="<"), Column("T", "T"), Column("B", "B"), Column("H", "H"),
        Column("torch MiB", mib("torch", "first_mib"), ".1f"), Column("(2nd)", mib("torch", "second_mib"), ".1f"),
        Column("cpu MiB", mib("cpu", "first_mib"), ".1f"), Column("(2nd)", mib("cpu", "second_mib"), ".1f"),
        Column("cpu/torch", "cpu_over_torch", ".2f"), Column("(T,B,H) MiB", "tbh_tensor_mib", ".1f")])
    return table + (f"\nmethod: {rows[0]['cpu']['method']}" if rows else "")


def format_coldstart(runs: list[dict]) -> str:
    return markdown_table(runs, [
        Column("run", "run", align="<"), Column("wall s", "wall_s", ".2f"), Column("import s", "import_s", ".2f"),
        Column("first call s", "first_call_s", ".2f"), Column("busy cores", "cores_busy", ".2f")])


def print_report(results: dict, ceiling: dict) -> None:
    sections = [
        (("GEMM ceiling: 2048x2048 float32 products, median (best) GFLOP/s; the fractions below are of the best "
         "median per thread count"), "ceiling_start",
         lambda: format_ceiling(results["ceiling_start"], results.get("ceiling_end", []))),
        (("Layers: median ms; t/cpu = torch.nn ms / cpu ms (>1: cpu engine faster); GF/s achieved, frac = of "
         "the GEMM ceiling at that thread count;\nrounds = timed rounds torch&cpu/reference; other = cores "
         "busy with other processes meanwhile (! > 0.3: the row competed for the CPUs); iqr t/c = interquartile "
         "range / median of the torch.nn and cpu samples"),
         "layers", lambda: format_layers(results["layers"], ceiling)),
        ("Streaming single-step inference (B=1, H=128, no_grad): median microseconds per cell call, or per layer call at T=1",
         "streaming", lambda: format_streaming(results["streaming"])),
        (("Packed batch (T=100, B=16, H=256, lengths over [50, 100]) vs the same batch padded to T: median ms; "
         "pack/pad <= 1: packing pays"), "packed", lambda: format_packed(results["packed"])),
        ("Peak RSS increase of one training step, 1 thread, fresh subprocess each", "memory",
         lambda: format_memory(results["memory"])),
        ((f"First LSTM forward+backward in a fresh process (T,B,H={COLD_SHAPE}), new NUMBA_CACHE_DIR; busy cores "
         "= all processes' average, the child's included (~1: nothing else ran)"),
         "coldstart", lambda: format_coldstart(results["coldstart"])),
    ]
    for title, key, render in sections:
        if results.get(key):
            print(f"\n{title}\n{render()}")


def summarize_contention(payload: dict) -> str:
    """How many rows were skipped or ran beside other work: the first thing to check before trusting a table."""
    rows = [r for part in ("layers", "streaming", "packed") for r in payload.get(part, [])]
    skipped = sum(bool(r.get("skipped")) for r in rows)
    busy = sum((r.get("other_cores") or 0.0) > BUSY_CORES for r in rows if not r.get("skipped"))
    return (f"rows: {len(rows)} timed or skipped, {skipped} skipped (cores busy), {busy} timed beside other work "
            f"(other > {BUSY_CORES} cores)")


def worst_ratio(payload: dict) -> str:
    """The slowest row for rnnkit against torch.nn (ratio = torch.nn ms / rnnkit ms; below 1: rnnkit slower)."""
    found = []
    for r in payload.get("layers", []):
        if not r.get("skipped"):
            found.append((r["ratio"], f"layers {r['cell']} T={r['T']} B={r['B']} H={r['H']} {r['mode']} "
                                      f"threads={r['threads']} path={r.get('path', '-')}"))
    for r in payload.get("packed", []):
        if not r.get("skipped"):
            for form in ("padded", "packed"):
                found.append((r[f"torch_{form}_ms"] / r[f"cpu_{form}_ms"],
                              f"packed-part {r['cell']} {form} {r['mode']} threads={r['threads']}"))
    for r in payload.get("streaming", []):
        if not r.get("skipped"):
            found.append((r["ratio"], f"streaming {r['cell']} threads={r['threads']}"))
    if not found:
        return "worst ratio: no timed rows"
    ratio, where = min(found)
    below = sum(f[0] < 1.0 for f in found)
    return f"worst ratio torch.nn/rnnkit: {ratio:.2f} ({where}); {below} of {len(found)} rows below 1.0"


# ---------------------------------------------------------------- main


def run_parts(args, plan: Plan, payload: dict, save) -> None:
    """Run the selected parts in order, saving the JSON after each so a crash keeps what was measured."""
    engines = engines_to_time(args.skip_reference)
    parts = args.parts
    if "ceiling" in parts:
        payload["ceiling_start"] = [m for t in args.threads for m in measure_ceiling(t, plan.ceiling_repeats, plan.wait_s)]
        save()
    warm_numba()
    steps = {"layers": lambda: bench_layers(plan, args.threads, engines),
             "streaming": lambda: bench_streaming(plan, args.threads, engines),
             "packed": lambda: bench_packed(plan, args.threads),
             "memory": lambda: bench_memory(plan),
             "coldstart": bench_coldstart}
    for name, step in steps.items():
        if name in parts:
            payload[name] = step()
            save()
    if "ceiling" in parts:
        payload["ceiling_end"] = [m for t in args.threads for m in measure_ceiling(t, plan.ceiling_repeats, plan.wait_s)]


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.measure_memory:
        return memory_child(args.measure_memory)
    plan = dataclasses.replace(QUICK if args.quick else FULL, wait_s=args.wait)
    info = machine_info(list(args.threads))
    digest = engine_source_digest()
    payload = {"machine": info, "plan": dataclasses.asdict(plan), "quick": args.quick, "parts": list(args.parts),
               "dtype": "float32", "device": "cpu", "git": git_state(), "engine_source_start": digest,
               "load_average_start": load_average(), "complete": False}
    print(format_machine(info))
    print(f"load average at start {payload['load_average_start']} | git {payload['git']} | "
          f"engine sources {digest}", flush=True)

    start = time.perf_counter()
    run_parts(args, plan, payload, lambda: write_json_atomic(args.out, payload))
    payload.update(elapsed_s=time.perf_counter() - start, load_average_end=load_average(),
                   engine_source_end=engine_source_digest(), complete=True)
    payload["engine_source_changed"] = payload["engine_source_end"] != digest
    ceiling = ceiling_by_threads(payload.get("ceiling_start", []) + payload.get("ceiling_end", []))
    payload["ceiling_gflops"] = {str(k): v for k, v in ceiling.items()}
    write_json_atomic(args.out, payload)

    print_report(payload, ceiling)
    print(f"\ntotal {payload['elapsed_s']:.0f} s | load average at end {payload['load_average_end']}")
    print(summarize_contention(payload))
    if payload["engine_source_changed"]:
        print("WARNING: rnnkit's engine sources changed during the run; rows may mix two versions of the engine")
    print(f"wrote {args.out}")
    print(worst_ratio(payload))  # last, so that checking a new machine is reading one line
    return 0


if __name__ == "__main__":
    sys.exit(main())
