"""Training by BPTT: the trainer, truncated BPTT, checkpoints, run folders, diagnostics.

The names below are imported on first use, so that `rnnkit.train.config` (read by the command
line before anything else) does not load torch.
"""

import importlib

_NAMES = {"RunConfig": "config", "TaskConfig": "config", "ModelConfig": "config", "TrainConfig": "config",
          "Trainer": "trainer", "TrainingError": "trainer"}

__all__ = list(_NAMES)


def __getattr__(name):
    if name in _NAMES:
        return getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
