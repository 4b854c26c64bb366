"""Each task's own options: one dataclass per task, one field (its --help text and allowed values) per option.

A run's config holds its task's name and an instance of the class the registry names for it
(rnnkit.train.config.TaskConfig); `rnnkit train TASK --help` lists exactly these fields, and
config.json stores them as the task section. This module is read before torch loads (the command
line parses options first), so it imports nothing but the config helpers: the task modules, which
import torch, cannot hold these classes.

An option several tasks take is one function below (valid_fraction, examples, patch, beam,
max_len, teacher_forcing), so its name, type and allowed values are the same everywhere; a task
may give it its own help text.

>>> Adding(length=8)
Adding(length=8, examples=10000)
"""

from __future__ import annotations

from dataclasses import dataclass

from ..train.config import FRACTION, at_least, option

# ---------------------------------------------------------------- options several tasks take


def valid_fraction():
    return option(0.1, "fraction of the training split held out for validation (0: none)", FRACTION)


def examples():
    return option(10000, "training examples generated (valid and test get 1000 each)", at_least(1))


def patch():
    return option(1, "read this many time steps as one input vector", at_least(1))


def beam():
    return option(1, "beam width when decoding for evaluation and inference (1: greedy)", at_least(1))


def max_len(help: str = "longest output decoded, in tokens (0: 2 x source length + 10)"):
    return option(0, help, at_least(0, "0: 2 x source length + 10"))


def teacher_forcing():
    return option("1", "probability P of feeding the decoder the gold previous token, or START:END for a linear "
                  "decay over the training steps (scheduled sampling)")


# ---------------------------------------------------------------- one class per task (registry.TASKS names it)


@dataclass
class LM:
    corpus: str = option("stdlib", "stdlib, fortunes, or a path to a text file")
    level: str = option("char", "tokens are characters (char) or words (word)", choices=("char", "word"))
    max_chars: int = option(0, "use at most this many characters of the corpus (0: all)", at_least(0, "0: all"))


@dataclass
class Sentiment:
    valid_fraction: float = valid_fraction()


@dataclass
class UCR:
    dataset: str = option("GunPoint", "GunPoint, ItalyPowerDemand, BasicMotions, JapaneseVowels, ...")
    patch: int = patch()
    valid_fraction: float = valid_fraction()


@dataclass
class FashionMNIST:
    patch: int = patch()
    valid_fraction: float = valid_fraction()


@dataclass
class Classify:
    data: str = option("", "a CSV or JSONL file with text and label columns")
    text_field: str = option("text", "name of the text column")
    label_field: str = option("label", "name of the label column")
    valid_fraction: float = valid_fraction()


@dataclass
class Adding:
    length: int = option(200, "sequence length T", at_least(2))
    examples: int = examples()


@dataclass
class Copy:
    delay: int = option(100, "blank steps between the 10 symbols and the recall cue", at_least(1))
    examples: int = examples()


@dataclass
class G2P:
    beam: int = beam()
    max_len: int = max_len()
    teacher_forcing: str = teacher_forcing()


@dataclass
class Translate:
    beam: int = beam()
    max_len: int = max_len("longest output decoded, in tokens; also keeps only verse pairs of at most this many "
                           "words on each side (0: 2 x source length + 10, every pair)")
    teacher_forcing: str = teacher_forcing()
    vocab_size: int = option(0, "words kept per language, most frequent first (0: every word seen twice in training)",
                             at_least(0, "0: no limit"))


@dataclass
class Tag:
    valid_fraction: float = valid_fraction()


@dataclass
class Caption:
    beam: int = beam()
