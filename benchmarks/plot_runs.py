"""Plot one metric of several run folders against optimizer steps, in one PNG (docs/RESULTS.md's comparisons).

Usage:
    python benchmarks/plot_runs.py --metric loss --split train --out docs/measurements/ln-lstm-lm.png \\
        runs/lm-lstm runs/lm-ln-lstm [--labels "LSTM" "LN-LSTM"]

Reads each run's metrics.csv (rnnkit.train.runlog's format: step, epoch, split, metric, value) and prints
the last value of each curve. Needs matplotlib (the [train] extra).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from rnnkit.train.plots import pyplot, save_figure


def curve(folder: Path, metric: str, split: str) -> list[tuple[int, float]]:
    with open(folder / "metrics.csv", newline="") as f:
        return [(int(r["step"]), float(r["value"])) for r in csv.DictReader(f)
                if r["metric"] == metric and r["split"] == split]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders")
    parser.add_argument("--metric", default="loss")
    parser.add_argument("--split", default="train", help="train, valid or test")
    parser.add_argument("--labels", nargs="*", help="one legend label per run (default: the folder names)")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args()
    labels = args.labels or [r.name for r in args.runs]
    if len(labels) != len(args.runs):
        parser.error(f"--labels: expected {len(args.runs)} labels (one per run), got {len(labels)}")
    plt = pyplot()
    if plt is None:
        print("matplotlib is not installed: pip install -e '.[train]'", file=sys.stderr)
        return 2
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for folder, label in zip(args.runs, labels, strict=True):
        points = curve(folder, args.metric, args.split)
        if not points:
            print(f"{folder}: no {args.split} {args.metric} rows in metrics.csv", file=sys.stderr)
            return 2
        xs, ys = zip(*points)
        ax.plot(xs, ys, label=label)
        print(f"{label}: {args.split} {args.metric} {ys[-1]:.4g} at step {xs[-1]}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"{args.split} {args.metric}")
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, str(args.out))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
