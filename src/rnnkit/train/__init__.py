"""Training by BPTT: the trainer, truncated BPTT, checkpoints, run folders, diagnostics."""

from .config import ModelConfig, RunConfig, TaskConfig, TrainConfig
from .trainer import Trainer, TrainingError

__all__ = ["RunConfig", "TaskConfig", "ModelConfig", "TrainConfig", "Trainer", "TrainingError"]
