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
import sys
import time
from pathlib import Path

import torch
from common import (
    build_pair,
    format_machine,
    machine_info,
    make_inputs,
    make_runner,
    sanity_check,
    time_alternating,
    write_json_atomic,
)

CELLS = ("LSTM", "GRU", "RNN")
SHAPES = ((100, 16, 256), (100, 64, 512))  # (T, B, H)
MODES = ("forward", "train")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "reference.json"

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


# ---------------------------------------------------------------- one row


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


def format_table(rows: list[dict]) -> str:
    header = f"{'cell':<5} {'T':>4} {'B':>3} {'H':>4} {'mode':<8} {'torch.nn ms':>12} {'rnnkit ms':>10} {'ratio':>6}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['cell']:<5} {r['T']:>4} {r['B']:>3} {r['H']:>4} {r['mode']:<8} "
                     f"{r['torch_ms']:>12.2f} {r['rnnkit_ms']:>10.2f} {r['ratio']:>6.2f}")
    return "\n".join(lines)


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
