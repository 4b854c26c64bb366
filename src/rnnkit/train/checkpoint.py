"""Checkpoints: written atomically, holding everything a resumed run needs to continue bit for bit.

A checkpoint is one torch.save'd dict: model, optimizer, scheduler and grad-scaler states, the
RNG states (torch CPU and CUDA, numpy, Python), the trainer's progress (step, epoch, position in
the epoch, best metric, the carried hidden state of a stateful task) and the task's own state
(a vocabulary, class names). It is written to a temporary file in the same folder, flushed to
disk, then renamed over the old one, so a run killed at any moment leaves either the previous
checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import os
import random
import tempfile

import numpy as np
import torch


class CheckpointError(Exception):
    """A checkpoint that is missing, truncated, or written by a different model."""


def atomic_save(obj, path: str) -> None:
    """torch.save obj to path through a temporary file and a rename."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path: str) -> dict:
    """Load a checkpoint dict, turning a missing or damaged file into a CheckpointError."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}: train the run first (rnnkit train ...)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises several types for a truncated zip or pickle
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({type(e).__name__}); "
                              "resume from an intact copy or train again") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"{path} is not an rnnkit checkpoint (no model state in it)")
    return ckpt


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_model_matches(model: torch.nn.Module, state: dict, path: str) -> None:
    """Raise CheckpointError naming the first parameter whose name or shape differs."""
    own = model.state_dict()
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
