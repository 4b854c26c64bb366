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
        .lock              held by the process that trains the run (rnnkit.train.files.lock_folder)

A folder belongs to one process: `RunFolder.create` (a new run) and `RunFolder.reopen` (a
resumed one) take its lock before anything is written, and a new run refuses a folder that
holds another run's files. Every file a reader could mistake for complete is written to a
temporary file and renamed; the CSVs and event files are append-only logs, which a resumed run
first cuts back to its checkpoint (`rewind`), so that they hold what an uninterrupted run's hold.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import time

from .files import RunFolderError, atomic_write, atomic_write_text, lock_folder, remove_leftovers, unlock

__all__ = ["RunFolder", "RunFolderError", "atomic_write_text", "default_name", "read_rows"]

RUN_FILES = ("config.json", "checkpoint.pt", "best.pt", "metrics.csv", "grad_norms.csv", "results.json")


def default_name(task: str, cell: str) -> str:
    """The folder name a run gets without --out; `RunFolder.create(unique=True)` makes it unique."""
    return f"{task}-{cell}-{time.strftime('%Y%m%d-%H%M%S')}"


def make_unique_folder(path: str) -> str:
    """Create path, or path-2, path-3, ... whichever does not exist yet (mkdir is atomic, so two
    runs started in the same second get different folders)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    for n in range(1, 10_000):
        candidate = path if n == 1 else f"{path}-{n}"
        try:
            os.mkdir(candidate)
            return candidate
        except FileExistsError:
            continue
    raise RunFolderError(f"could not find a free run folder name next to {path}; pass --out")


def run_files(path: str) -> list[str]:
    """The files of a run that `path` holds (empty for a new or empty folder)."""
    found = [name for name in RUN_FILES if os.path.exists(os.path.join(path, name))]
    return found + sorted(os.path.basename(p) for p in glob.glob(os.path.join(path, "events.out.tfevents.*")))


class RunFolder:
    """Writes one run's files, holding the folder's lock. Only the process of rank 0 makes one."""

    METRIC_FIELDS = ("step", "epoch", "split", "metric", "value")
    GRAD_FIELDS = ("step", "parameter", "norm")

    def __init__(self, path: str, lock: int):
        self.path, self.lock = path, lock
        self.metrics_path = os.path.join(path, "metrics.csv")
        self.grads_path = os.path.join(path, "grad_norms.csv")
        self.writer = None

    @classmethod
    def create(cls, path: str, unique: bool = False) -> "RunFolder":
        """A new run's folder: made (with a -2, -3 ... suffix if `unique` and it exists), locked,
        and refused if it already holds a run."""
        if unique:
            path = make_unique_folder(path)
        else:
            os.makedirs(path, exist_ok=True)
        lock = lock_folder(path)
        try:
            if run_files(path):
                raise RunFolderError(f"{path} already holds a run; continue it with --resume {path} "
                                     "or pick another --out")
            remove_leftovers(path)
        except BaseException:
            unlock(lock)
            raise
        return cls(path, lock)

    @classmethod
    def reopen(cls, path: str) -> "RunFolder":
        """A resumed run's folder: locked, and cleared of the temporary files of a killed write."""
        lock = lock_folder(path)
        remove_leftovers(path)
        return cls(path, lock)

    def rewind(self, step: int) -> None:
        """Cut the logs back to what the run had written when its checkpoint at `step` was taken;
        test results are written after the last checkpoint, so they go too."""
        keep = lambda r: int(r["step"]) <= step and r.get("split") != "test"
        rewrite_csv(self.metrics_path, self.METRIC_FIELDS, keep)
        rewrite_csv(self.grads_path, self.GRAD_FIELDS, keep)
        rewind_tensorboard(self.path, step)

    def start_tensorboard(self) -> None:
        self.writer = open_tensorboard(self.path)

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
        append_rows(self.grads_path, self.GRAD_FIELDS, [(step, k, f"{v:.6g}") for k, v in norms.items()])
        if self.writer is not None:
            for k, v in norms.items():
                self.writer.add_scalar(f"grad_norm/{k}", v, step)

    def flush(self) -> None:
        """Put buffered TensorBoard events on disk: called before each checkpoint, so that a run killed
        after it has every event up to the checkpoint's step (the CSVs are written row by row)."""
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        """Close the event file and release the folder."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        unlock(self.lock)
        self.lock = None


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


def complete(row: dict, fields) -> bool:
    """False for the cut last line of a log whose writer was killed mid-row."""
    return all(row.get(f) not in (None, "") for f in fields) and None not in row


def rewrite_csv(path: str, fields, keep) -> None:
    """Keep the complete rows for which keep(row) holds (atomically, with the user's umask)."""
    if not os.path.exists(path):
        return
    kept = [r for r in read_rows(path) if complete(r, fields) and keep(r)]

    def write(f):
        w = csv.DictWriter(f, fieldnames=list(fields))
        w.writeheader()
        w.writerows(kept)

    atomic_write(path, write, binary=False)


def open_tensorboard(path: str):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is an extra; the CSV holds the same numbers
        print("note: TensorBoard events not written (pip install tensorboard); metrics.csv has them")
        return None
    return SummaryWriter(path)


def rewind_tensorboard(path: str, step: int) -> None:
    """Drop from every event file the scalars logged after `step` and the test results.

    Each file is rewritten in place (atomically), so a resumed run's files together hold each
    (tag, step) once, as an uninterrupted run's single file does, for any reader: TensorBoard's
    purge_step would instead rely on the reader replaying the files in order."""
    files = sorted(glob.glob(os.path.join(path, "events.out.tfevents.*")))
    if not files:
        return
    try:
        from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
        from tensorboard.compat.proto import event_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter
    except ImportError:
        return  # without tensorboard no events were written after the first run either
    for name in files:
        records = list(RawEventFileLoader(name).Load())  # stops at a record cut by a kill
        kept = [r for r in records if keep_event(event_pb2.Event.FromString(r), step)]
        if len(kept) < len(records) or os.path.getsize(name) != sum(len(r) + 16 for r in records):
            atomic_write(name, lambda f: [RecordWriter(f).write(r) for r in kept])


def keep_event(event, step: int) -> bool:
    if not event.HasField("summary"):
        return True  # the file's version record
    return event.step <= step and not any(v.tag.startswith("test/") for v in event.summary.value)
