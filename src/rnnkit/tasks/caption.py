"""One-to-many: caption emoji images with their English names (rnnkit train caption).

The data are OpenMoji renderings and the emoji package's names, split by emoji
(rnnkit.data.emoji). A Captioner (rnnkit.tasks.models.captioner) is trained with teacher forcing:
it reads <bos> w_1 ... w_n and predicts w_1 ... w_n <eos>, cross-entropy summed over words.
Evaluation decodes greedily (--beam 1) or by beam search (--beam K) and scores the captions
against the references:

    bleu       corpus BLEU-4 by sacrebleu (0-100, case-sensitive) over the caption's words, the tokens
               the model writes (rnnkit.tasks.metrics.bleu: sacrebleu's own tokenizer is off)
    exact      fraction of captions equal to the reference
    nn_bleu, nn_exact   the nearest-neighbour baseline: each image gets the caption of the training
               image closest in pixel space (Euclidean distance of the RGB values; ties go to the
               earlier training image), the score to beat
    loss       teacher-forced cross-entropy per word (nats)

>>> round(bleu(["a b c d e"], ["a b c d f"]), 2)     # 100 * (4/5 * 3/4 * 2/3 * 1/2) ** (1/4) = 100 * 0.2 ** 0.25
66.87
>>> exact_match(["red cat", "dog"], ["red cat", "a dog"])
0.5
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..data import DataError, Vocab, epoch_order, num_batches
from ..data.emoji import emoji_captions, emoji_split, read_image
from ..train.config import RunConfig
from ..train.interface import TaskBase
from . import decoding as decode
from .common import BOS, EOS, EVAL_BATCH, SPECIALS
from .metrics import bleu
from .models.captioner import Captioner


# ---------------------------------------------------------------- exact match and the baseline


def exact_match(hypotheses: list[str], references: list[str]) -> float:
    """Fraction of hypotheses identical to their reference."""
    return sum(h == r for h, r in zip(hypotheses, references, strict=True)) / len(references)


def nearest_captions(train_images: torch.Tensor, train_captions: list[str], images: torch.Tensor) -> list[str]:
    """The caption of the training image nearest to each image by pixel L2 distance (first on ties).

    >>> train = torch.tensor([[[[0]]], [[[200]]]], dtype=torch.uint8)   # two 1x1 grey images
    >>> nearest_captions(train, ["black", "light"], torch.tensor([[[[150]]], [[[90]]]], dtype=torch.uint8))
    ['light', 'black']
    """
    # In float64 every product and sum of uint8 values here is an integer below 2^53, so the
    # expansion |a|^2 - 2 a.b + |b|^2 is exact and ties are real ties, as fast as one matmul.
    database = train_images.flatten(1).double()  # (N, D)
    database_sq = database.square().sum(1)  # (N,)
    out = []
    for chunk in images.flatten(1).double().split(EVAL_BATCH):
        distances = database_sq - 2 * chunk @ database.T  # (b, N): squared distance less |chunk|^2
        out += [train_captions[i] for i in distances.argmin(1).tolist()]  # argmin: the first of equals
    return out


# ---------------------------------------------------------------- captions as token ids


def build_vocab(captions: list[str]) -> Vocab:
    """Every word of the training captions, after the four specials."""
    return Vocab.build((w for c in captions for w in c.split()), specials=SPECIALS)


def encode_captions(captions: list[str], vocab: Vocab) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forcing pairs, 0-padded: inputs <bos> w_1..w_n and targets w_1..w_n <eos>, each (N, T).

    >>> v = build_vocab(["red cat", "cat"])
    >>> encode_captions(["cat", "red cat"], v)
    (tensor([[2, 4, 0],
            [2, 5, 4]]), tensor([[4, 3, 0],
            [5, 4, 3]]))
    """
    ids = [vocab.encode(c.split()) for c in captions]
    T = max(len(i) for i in ids) + 1
    inputs, targets = torch.zeros(len(ids), T, dtype=torch.long), torch.zeros(len(ids), T, dtype=torch.long)
    for row, seq in enumerate(ids):
        inputs[row, :len(seq) + 1] = torch.tensor([vocab.stoi[BOS]] + seq)
        targets[row, :len(seq) + 1] = torch.tensor(seq + [vocab.stoi[EOS]])
    return inputs, targets


def decode_captions(ids: torch.Tensor, vocab: Vocab) -> list[str]:
    """Decoded ids (B, L) -> captions, each cut at its first <eos>."""
    eos, out = vocab.stoi[EOS], []
    for row in ids.tolist():
        row = row[:row.index(eos)] if eos in row else row
        out.append(" ".join(vocab.decode(row)))
    return out


# ---------------------------------------------------------------- the task


def load_pairs() -> tuple[np.ndarray, list[str]]:
    """(images (N, 3, 64, 64) uint8, captions) of the emoji data set; the tests replace this."""
    images, captions, _ = emoji_captions()
    return images, captions


class CaptionTask(TaskBase):
    """The trainer's task interface (rnnkit.train.trainer) for image captioning, and its predictor."""

    metric, higher_is_better, has_valid = "bleu", True, True

    def __init__(self, config: RunConfig, vocab: Vocab, max_len: int, splits: dict | None = None):
        if config.task.beam < 1:
            raise ValueError(f"--beam must be at least 1, got {config.task.beam}")
        self.config, self.vocab, self.max_len = config, vocab, max_len
        self.splits = splits or {}  # split -> (images (N, 3, H, W) uint8, captions); none for inference
        self.baseline: dict[str, list[str]] = {}  # split -> nearest-neighbour captions, computed once
        if "train" in self.splits:
            self.train_inputs, self.train_targets = encode_captions(self.splits["train"][1], vocab)  # (N, T) each

    @classmethod
    def from_data(cls, config: RunConfig) -> CaptionTask:
        images, captions = load_pairs()
        images = torch.as_tensor(images)
        splits = {name: (images[idx], [captions[i] for i in idx]) for name, idx in emoji_split(len(captions)).items()}
        train_captions = splits["train"][1]
        if config.train.batch_size > len(train_captions):
            raise DataError(f"batch size {config.train.batch_size} is larger than the {len(train_captions)} training "
                            f"images; pass --batch-size {len(train_captions)} or less")
        max_len = max(len(c.split()) for c in train_captions) + 1  # words and <eos>
        return cls(config, build_vocab(train_captions), max_len, splits)

    @classmethod
    def for_inference(cls, config: RunConfig, task_state: dict) -> CaptionTask:
        return cls(config, Vocab.from_dict(task_state["vocab"]), task_state["max_len"])

    def state_dict(self) -> dict:
        return {"vocab": self.vocab.to_dict(), "max_len": self.max_len}

    def build_model(self) -> Captioner:
        return Captioner(self.config.model, len(self.vocab))

    # ------------------------------------------------------------ training

    def num_batches(self) -> int:
        return num_batches(len(self.train_inputs), self.config.train.batch_size)

    def batches(self, epoch: int, start: int):
        """(images (B, 3, H, W) uint8, inputs (B, T), targets (B, T)), shuffled by (seed, epoch)."""
        train = self.config.train
        order = epoch_order(len(self.train_inputs), True, train.seed, epoch)
        images = self.splits["train"][0]
        for b in range(start, self.num_batches()):
            idx = order[b * train.batch_size:(b + 1) * train.batch_size]
            T = int((self.train_targets[idx] != 0).sum(1).max())  # the batch's longest caption
            yield images[idx], self.train_inputs[idx, :T], self.train_targets[idx, :T]

    def export_inputs(self, batch: tuple) -> tuple:
        """model(images, gold word inputs), teacher-forced: the inputs `rnnkit export` traces."""
        images, inputs, _ = batch
        return images, inputs

    def loss(self, model, batch, carry):
        images, inputs, targets = batch
        logits = model(images, inputs)  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=0, reduction="sum")
        return loss, int((targets != 0).sum()), None

    # ------------------------------------------------------------ decoding and evaluation

    @torch.no_grad()
    def caption(self, model, images: torch.Tensor) -> list[str]:
        """Captions of images (B, 3, H, W) uint8: greedy (--beam 1) or beam search."""
        model.eval()
        device = next(model.parameters()).device
        captions = []
        for chunk in images.split(EVAL_BATCH):
            state = model.start(chunk.to(device))
            start = torch.full((len(chunk),), self.vocab.stoi[BOS], dtype=torch.long, device=device)
            eos, beam = self.vocab.stoi[EOS], self.config.task.beam
            if beam == 1:
                ids = decode.greedy(model.step, state, start, self.max_len, eos=eos)
            else:
                ids, _ = decode.beam_search(model.step, state, start, beam, self.max_len, eos=eos,
                                            reorder=model.reorder)
            captions += decode_captions(ids.cpu(), self.vocab)
        return captions

    @torch.no_grad()
    def teacher_forced_loss(self, model, images: torch.Tensor, captions: list[str]) -> float:
        """Cross-entropy per word (and <eos>) with the reference words fed in."""
        device = next(model.parameters()).device
        inputs, targets = encode_captions(captions, self.vocab)
        total, count = 0.0, 0
        for i in range(0, len(captions), EVAL_BATCH):
            batch = tuple(t[i:i + EVAL_BATCH].to(device) for t in (images, inputs, targets))
            loss, n, _ = self.loss(model, batch, None)
            total, count = total + float(loss), count + n
        return total / count

    def evaluate(self, model, split: str) -> dict[str, float]:
        images, references = self.splits[split]
        model.eval()
        hypotheses = self.caption(model, images)
        if split not in self.baseline:
            self.baseline[split] = nearest_captions(self.splits["train"][0], self.splits["train"][1], images)
        nearest = self.baseline[split]
        return {"bleu": bleu(hypotheses, references), "exact": exact_match(hypotheses, references),
                "nn_bleu": bleu(nearest, references), "nn_exact": exact_match(nearest, references),
                "loss": self.teacher_forced_loss(model, images, references)}

    def predict(self, model, inputs: list[str]) -> list[str]:
        """Image files (PNG) -> captions."""
        images = torch.as_tensor(np.stack([read_image(path) for path in inputs]))  # (B, 3, H, W) uint8
        return self.caption(model, images)


def caption(config: RunConfig) -> CaptionTask:
    """The emoji captioning task (TASKS["caption"])."""
    return CaptionTask.from_data(config)
