"""What a task offers the trainer and the command line, and what a predictor offers `rnnkit TASK INPUT...`.

Every task in rnnkit.tasks derives from TaskBase and fills in the parts marked "required"; the
optional parts have the defaults below. A new task is one module in rnnkit/tasks/ (data ->
batches, a model from rnnkit.tasks.models, a metric), a dataclass of its options in
rnnkit.tasks.options, and one line in rnnkit.tasks.registry (docs/ARCHITECTURE.md, "Adding a task").

Batches are tuples of tensors with the batch on dim 0 (DDP gives each process a contiguous slice
of every batch), in an order fixed by (seed, epoch) alone, so a resumed run sees the same ones.
"""

from __future__ import annotations

from typing import Any, Iterator, Protocol, runtime_checkable

from torch import Tensor, nn

from .config import RunConfig


@runtime_checkable
class Task(Protocol):
    """The trainer's side (rnnkit.train.trainer.Trainer) and `rnnkit eval`'s."""

    metric: str  # required: the validation metric early stopping and best.pt watch ("loss", "accuracy", ...)
    higher_is_better: bool  # required: the direction of `metric`
    has_valid: bool  # optional (TaskBase: True): False when there is no validation split; the last weights are tested

    def build_model(self) -> nn.Module:
        """Required: a fresh model; the trainer seeds torch first, so every process builds the same one."""

    def num_batches(self) -> int:
        """Required: training batches per epoch (the same every epoch)."""

    def batches(self, epoch: int, start: int) -> Iterator[tuple]:
        """Required: the epoch's global batches from batch index `start` on."""

    def loss(self, model: nn.Module, batch: tuple, carry: Any) -> tuple[Tensor, int, Any]:
        """Required: (summed loss, count of scored items, carry). The trainer divides by the global count.
        carry is the detached state a stateful task hands to its next batch (else None)."""

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        """Required: metrics on "valid" or "test" (under torch.no_grad(), model in eval mode), `metric` among them."""

    def state_dict(self) -> dict:
        """Optional (TaskBase: {}): what inference needs besides the weights (vocabularies, class names),
        as tensors and plain values only: checkpoints are read with torch.load(weights_only=True)."""

    def save_plots(self, model: nn.Module, folder: str) -> list[str]:
        """Optional (TaskBase: none): task-specific plots written after training; returns their paths."""

    def export_inputs(self, batch: tuple) -> tuple:
        """Optional (TaskBase: refuses): the arguments model(*args) is called with for one of this task's
        batches, which `rnnkit export` traces the model with (its forward, teacher-forced for decoders)."""


@runtime_checkable
class Predictor(Protocol):
    """`rnnkit COMMAND INPUT... [--run RUN]`, where COMMAND is the task's name; rnnkit.tasks.registry.PREDICTORS
    lists the predictor classes with their one line of --help."""

    @classmethod
    def for_inference(cls, config: RunConfig, task_state: dict) -> "Predictor":
        """The task rebuilt without its data set, from what state_dict() returned at training time."""

    def build_model(self) -> nn.Module:
        """The model the run's weights load into."""

    def predict(self, model: nn.Module, inputs: list[str]) -> list[str]:
        """One output line per input."""


class TaskBase:
    """The optional parts of Task, with their defaults. Subclasses set metric and higher_is_better
    and define the required methods."""

    metric: str
    higher_is_better: bool
    has_valid: bool = True

    def state_dict(self) -> dict:
        return {}

    def save_plots(self, model: nn.Module, folder: str) -> list[str]:
        return []

    def export_inputs(self, batch: tuple) -> tuple:
        raise ValueError(f"{type(self).__name__} does not say how its model is called, so it cannot be exported")
