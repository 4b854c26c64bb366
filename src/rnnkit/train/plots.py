"""PNG plots of a run's learning curves. matplotlib is an extra, imported only here."""

from __future__ import annotations

import os
from collections import defaultdict

from .files import atomic_write


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or None if matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str) -> None:
    """Write a figure through a temporary file, so a killed run never leaves half a PNG."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))


def learning_curves(rows: list[dict], folder: str) -> list[str]:
    """One PNG per metric with a line per split, from metrics.csv rows. Returns the paths written."""
    plt = pyplot()
    if plt is None or not rows:
        return []
    series = defaultdict(lambda: defaultdict(list))  # metric -> split -> [(step, value)]
    for r in rows:
        series[r["metric"]][r["split"]].append((int(r["step"]), float(r["value"])))
    paths = []
    for metric, splits in sorted(series.items()):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for split, points in sorted(splits.items()):
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="." if len(xs) < 50 else None, label=split)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(metric)
        if metric in ("loss", "mse", "perplexity") and all(v > 0 for s in splits.values() for _, v in s):
            ax.set_yscale("log")
        ax.legend()
        ax.grid(alpha=0.3)
        path = os.path.join(folder, f"{metric}.png")
        save_figure(fig, path)
        plt.close(fig)
        paths.append(path)
    return paths
