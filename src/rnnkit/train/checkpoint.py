"""Checkpoints: written atomically, read without running code, holding everything a resumed run needs.

A checkpoint is one torch.save'd dict: model, optimizer, scheduler and grad-scaler states, the
RNG states (torch CPU and CUDA, numpy, Python), the trainer's progress (step, epoch, position in
the epoch, best metric, the carried hidden state of a stateful task) and the task's own state
(a vocabulary, class names). It holds only tensors and plain values (dicts, lists, tuples,
strings, numbers, None), so it is read with `torch.load(weights_only=True)`: a checkpoint
received from someone else cannot run code when it is opened, and one that would need more
than that is refused. It is written to a temporary file in the same folder, flushed to disk,
then renamed over the old one (rnnkit.train.files), so a run killed at any moment, or a full
disk, leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import os
import random
import re

import numpy as np
import torch

from .files import atomic_write


# Checkpoints written before RNG states were stored as tensors hold numpy's state as an array of
# uint32. Rebuilding a uint32 numpy array runs no code, so these are allowed, and nothing else.
LEGACY_NUMPY = [(np._core if hasattr(np, "_core") else np.core).multiarray._reconstruct, np.ndarray, np.dtype,
                type(np.dtype(np.uint32))]


class CheckpointError(Exception):
    """A checkpoint that is missing, truncated, unsafe, or written by a different model or task."""


def atomic_save(obj, path: str) -> None:
    """torch.save obj to path through a temporary file and a rename; the old file survives any failure."""
    try:
        atomic_write(path, lambda f: torch.save(obj, f))
    except (OSError, RuntimeError) as e:  # torch reports a full disk as RuntimeError ("file write failed")
        reason = " ".join(str(e).split())[:200]
        message = (f"could not write {path} ({reason}); the previous file is intact; free disk space and "
                   "continue with rnnkit train --resume")
        raise (OSError(message) if isinstance(e, OSError) else CheckpointError(message)) from None


def load(path: str, task: str | None = None) -> dict:
    """Load a checkpoint dict, turning a missing, damaged or unsafe file into a CheckpointError.

    With `task`, a checkpoint that says it was written by another task is refused as well."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}: train the run first (rnnkit train ...)")
    try:
        with torch.serialization.safe_globals(LEGACY_NUMPY):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a truncated zip or pickle
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if unsafe:  # weights_only refused to call something: the file asks for code to run
            raise CheckpointError(f"{path} needs {unsafe.group(1)} to load, more than tensors and plain values; "
                                  "rnnkit does not run code from a checkpoint: use one that rnnkit wrote") from None
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({type(e).__name__}); "
                              "resume from an intact copy or train again") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"{path} is not an rnnkit checkpoint (no model state in it)")
    written_by = ckpt_task(ckpt)
    if task is not None and written_by is not None and written_by != task:
        raise CheckpointError(f"{path} was written by a {written_by!r} run, but the run's config.json says "
                              f"{task!r}; put the run's own checkpoint back")
    return ckpt


def ckpt_task(ckpt: dict) -> str | None:
    """The task name a checkpoint records (best.pt and checkpoint.pt both do), or None."""
    if isinstance(ckpt.get("task_name"), str):
        return ckpt["task_name"]
    config = ckpt.get("config")
    try:
        return config["task"]["task"]
    except (TypeError, KeyError):
        return None


def task_state(ckpt: dict, path: str, keys) -> dict:
    """The task's own state in a checkpoint, with the keys a predictor needs, or a CheckpointError."""
    state = ckpt.get("task")
    missing = [k for k in keys if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path} lacks the task state {', '.join(missing)} that this command needs; "
                              "use the checkpoint of a run of this task")
    return state


def rng_state() -> dict:
    """Every RNG state as tensors and plain values (numpy's key array becomes an int64 tensor)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "python": [version, list(internal), gauss_next]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    if isinstance(n, tuple):  # a checkpoint from before the tensor form: numpy's own tuple
        np.random.set_state(n)
    else:
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_model_matches(model: torch.nn.Module, state: dict, path: str) -> None:
    """Raise CheckpointError naming the first parameter whose name or shape differs."""
    own = model.state_dict()
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no model weights (expected a dict of tensors); use a checkpoint rnnkit wrote")
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    if missing or extra:
        raise CheckpointError(f"checkpoint {path} holds another model: "
                              f"missing {missing[:3]}, unexpected {extra[:3]}; use the run's own config")
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(f"checkpoint {path} holds another model: {k} is {tuple(state[k].shape)} there "
                                  f"and {tuple(v.shape)} here; use the run's own config")


def all_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())
