"""A run folder: the resolved config, metrics as CSV and TensorBoard events, checkpoints, plots.

    runs/adding-lstm-20261127-231500/
        config.json        the RunConfig, resolved (rnnkit eval/generate/resume read it)
        metrics.csv        step, epoch, split, metric, value: one row per number
        grad_norms.csv     step, parameter, norm: the gradient norm of every parameter tensor
        events.out.tfevents.*   the same numbers for TensorBoard (if tensorboard is installed)
        checkpoint.pt      the latest full training state (rnnkit.train.checkpoint)
        best.pt            the model weights with the best validation metric so far
        results.json       the final test metrics, written last
        plots/*.png        learning curves (if matplotlib is installed)

Every file that a reader could mistake for complete is written to a temporary file and
renamed (config.json, checkpoints, results.json, plots); the CSVs are append-only logs.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
import time


def atomic_write_text(path: str, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(os.path.abspath(path)))
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def default_name(task: str, cell: str) -> str:
    return f"{task}-{cell}-{time.strftime('%Y%m%d-%H%M%S')}"


class RunFolder:
    """Writes one run's files. Only the process of rank 0 makes one."""

    METRIC_FIELDS = ("step", "epoch", "split", "metric", "value")

    def __init__(self, path: str, resume_step: int | None = None, tensorboard: bool = True):
        self.path = path
        os.makedirs(path, exist_ok=True)
        self.metrics_path = os.path.join(path, "metrics.csv")
        self.grads_path = os.path.join(path, "grad_norms.csv")
        if resume_step is not None:  # rows written after the checkpoint will be written again
            truncate_csv(self.metrics_path, resume_step)
            truncate_csv(self.grads_path, resume_step)
        self.writer = open_tensorboard(path, resume_step) if tensorboard else None

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def write_json(self, name: str, obj) -> None:
        atomic_write_text(self.file(name), json.dumps(obj, indent=2) + "\n")

    def log(self, step: int, epoch: int, split: str, metrics: dict[str, float]) -> None:
        append_rows(self.metrics_path, self.METRIC_FIELDS,
                    [(step, epoch, split, k, f"{v:.6g}") for k, v in metrics.items()])
        if self.writer is not None:
            for k, v in metrics.items():
                self.writer.add_scalar(f"{split}/{k}", v, step)

    def log_grad_norms(self, step: int, norms: dict[str, float]) -> None:
        append_rows(self.grads_path, ("step", "parameter", "norm"), [(step, k, f"{v:.6g}") for k, v in norms.items()])
        if self.writer is not None:
            for k, v in norms.items():
                self.writer.add_scalar(f"grad_norm/{k}", v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def append_rows(path: str, header, rows) -> None:
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(header)
        w.writerows(rows)


def read_rows(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def truncate_csv(path: str, last_step: int) -> None:
    """Keep the rows logged at or before last_step (the checkpoint a run resumes from)."""
    rows = read_rows(path)
    if not rows:
        return
    kept = [r for r in rows if int(r["step"]) <= last_step]
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(os.path.abspath(path)))
    with os.fdopen(fd, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(kept)
    os.replace(tmp, path)


def open_tensorboard(path: str, resume_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is an extra; the CSV holds the same numbers
        print("note: TensorBoard events not written (pip install tensorboard); metrics.csv has them")
        return None
    return SummaryWriter(path, purge_step=resume_step)
