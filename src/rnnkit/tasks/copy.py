"""Copy memory (Arjovsky, Shah & Bengio 2016): recall 10 symbols after a long blank delay.

Aligned many-to-many: a LanguageModel-shaped network (embedding, recurrent layers, a score
over the symbols at every step) reads the whole sequence; the loss is the cross-entropy at
every step, as in the paper, so a memoryless model scores copy_memory_baseline(delay).
The accuracy counts only the recalled symbols.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data import DataError, SequenceDataset, batches, copy_memory, copy_memory_baseline, num_batches, split_generators
from ..train.config import RunConfig
from ..train.interface import TaskBase
from .common import EVAL_BATCH
from .models.language import LanguageModel

SYMBOLS, RECALL = 8, 10  # the paper's alphabet size and number of symbols to recall


class CopyTask(TaskBase):
    metric, higher_is_better, has_valid = "loss", False, True

    def __init__(self, config: RunConfig):
        self.config = config
        gens = split_generators(config.train.seed)
        size = {"train": config.task.examples, "valid": 1000, "test": 1000}
        self.splits = {}
        for split, n in size.items():
            x, y = copy_memory(n, config.task.delay, gens[split], symbols=SYMBOLS, length=RECALL)
            self.splits[split] = SequenceDataset.from_tensor(x, y)  # label = the (T,) target sequence
        if config.train.batch_size > config.task.examples:
            raise DataError(f"batch size {config.train.batch_size} is larger than the {config.task.examples} "
                            f"training examples; pass --batch-size {config.task.examples} or less")
        self.baseline = copy_memory_baseline(config.task.delay, SYMBOLS, RECALL)

    def build_model(self) -> LanguageModel:
        return LanguageModel(self.config.model, SYMBOLS + 2)

    def num_batches(self) -> int:
        return num_batches(self.splits["train"], self.config.train.batch_size)

    def batches(self, epoch: int, start: int):
        train = self.config.train
        return batches(self.splits["train"], train.batch_size, shuffle=True, seed=train.seed, epoch=epoch, start=start)

    def export_inputs(self, batch: tuple) -> tuple:
        """model(x) -> (logits, state): the inputs `rnnkit export` traces the model with."""
        x, _, _ = batch
        return (x,)

    def loss(self, model, batch, carry):
        x, _, y = batch
        logits, _ = model(x)  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum"), y.numel(), None

    @torch.no_grad()
    def evaluate(self, model, split: str) -> dict[str, float]:
        device = next(model.parameters()).device
        total, correct, count = 0.0, 0, 0
        data = self.splits[split]
        for x, _, y in batches(data, min(EVAL_BATCH, len(data)), shuffle=False, what=f"{split} split"):
            logits, _ = model(x.to(device))
            y = y.to(device)
            total += float(F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum"))
            correct += int((logits[:, -RECALL:].argmax(-1) == y[:, -RECALL:]).sum())
            count += y.shape[0]
        return {"loss": total / (count * y.shape[1]), "recall_accuracy": correct / (count * RECALL),
                "baseline_loss": self.baseline}

    def state_dict(self) -> dict:
        return {}
