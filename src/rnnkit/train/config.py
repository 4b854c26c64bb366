"""Run configuration: three dataclasses, one comment (its --help text) per field.

The command line is generated from these fields (rnnkit.cli), and a run folder stores them
resolved as config.json, so a run can be resumed, evaluated or reproduced from its folder alone.
Each field also says which values it allows; `check(config)` is the one place that enforces
them (types, ranges, choices, and what this machine can run), before anything is created.

>>> cfg = RunConfig(task=TaskConfig(task="adding"), model=ModelConfig(cell="gru"))
>>> RunConfig.from_dict(cfg.to_dict()) == cfg
True
>>> check_fields(RunConfig(train=TrainConfig(seed=-1)))
Traceback (most recent call last):
...
rnnkit.train.config.ConfigError: --seed must be in 0..9223372036854775807, got -1
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

MAX_SEED = 2**63 - 1  # torch.manual_seed takes seeds below 2^63 (numpy's SeedSequence any non-negative one)


class ConfigError(ValueError):
    """An option outside its allowed values: the message names the option, the value and what is allowed."""


class Allowed(NamedTuple):
    ok: Callable[[Any], bool]
    text: str  # what is allowed, as the error message says it


def at_least(low, zero: str = "") -> Allowed:
    """low or more; `zero` says what 0 means where 0 is allowed (for example "0: no limit")."""
    return Allowed(lambda v: v >= low, f"at least {low}" + (f" ({zero})" if zero else ""))


def between(low, high) -> Allowed:
    return Allowed(lambda v: low <= v <= high, f"in {low}..{high}")


FRACTION = Allowed(lambda v: 0 <= v < 1, "in [0, 1)")


def option(default, help: str, allowed: Allowed | None = None, **kw):
    """A dataclass field whose help text the command line shows, with the values it allows."""
    return field(default=default, metadata={"help": help, "allowed": allowed, **kw})


@dataclass
class TaskConfig:
    task: str = option("lm", "task name (see rnnkit train --help)")
    corpus: str = option("stdlib", "lm: stdlib, fortunes, or a path to a text file")
    level: str = option("char", "lm: tokens are characters (char) or words (word)", choices=("char", "word"))
    max_chars: int = option(0, "lm: use at most this many characters of the corpus (0: all)", at_least(0, "0: all"))
    dataset: str = option("GunPoint", "ucr: GunPoint, ItalyPowerDemand, BasicMotions, JapaneseVowels, ...")
    data: str = option("", "classify: a CSV or JSONL file with text and label columns")
    text_field: str = option("text", "classify: name of the text column")
    label_field: str = option("label", "classify: name of the label column")
    length: int = option(200, "adding: sequence length T; copy: number of symbols to remember is 10", at_least(2))
    delay: int = option(100, "copy: blank steps between the symbols and the recall cue", at_least(1))
    examples: int = option(10000, "adding, copy: training examples generated (valid and test get 1000 each)",
                           at_least(1))
    patch: int = option(1, "ucr, fashion-mnist: read this many time steps as one input vector", at_least(1))
    valid_fraction: float = option(0.1, "sentiment, ucr, fashion-mnist, classify, tag: fraction of the training split held out for validation (0: none)",
                                   FRACTION)
    beam: int = option(1, "seq2seq, caption: beam width when decoding for evaluation and inference (1: greedy)",
                       at_least(1))
    max_len: int = option(0, "g2p, translate: longest output decoded, in tokens; translate also keeps only verse pairs "
                          "of at most this many words on each side (0: 2 x source length + 10, every pair)",
                          at_least(0, "0: 2 x source length + 10"))
    vocab_size: int = option(0, "translate: words kept per language, most frequent first (0: every word seen twice in training)",
                             at_least(0, "0: no limit"))
    teacher_forcing: str = option("1", "g2p, translate: probability P of feeding the decoder the gold previous token, "
                                  "or START:END for a linear decay over the training steps (scheduled sampling)")


@dataclass
class ModelConfig:
    cell: str = option("lstm", "recurrent cell (mingru, minlstm: parallel scan over time; slstm: xLSTM's)",
                       choices=("lstm", "gru", "rnn", "rnn-relu", "mingru", "minlstm", "slstm"))
    layer_norm: bool = option(False, "lstm, gru: layer normalisation inside the cell (Ba et al. 2016)")
    peephole: bool = option(False, "lstm: peephole connections from the cell state to the gates")
    zoneout: float = option(0.0, "lstm, gru: in training each unit of h (and c) keeps its value with this "
                            "probability", FRACTION)
    recurrent_dropout: float = option(0.0, "lstm, gru: dropout on the recurrent input, one mask per sequence",
                                      FRACTION)
    weight_drop: float = option(0.0, "lstm, gru, rnn: DropConnect on the recurrent weights, one mask per batch",
                                FRACTION)
    heads: int = option(1, "slstm: heads of the block-diagonal recurrent weights (must divide --hidden)",
                        at_least(1))
    layers: int = option(1, "stacked recurrent layers", at_least(1))
    hidden: int = option(128, "hidden units per layer and direction", at_least(1))
    bidirectional: bool = option(False, "read the input in both directions (on by default for tag, g2p, translate)")
    dropout: float = option(0.0, "dropout between layers and before the output layer", FRACTION)
    embed: int = option(64, "embedding width for token inputs", at_least(1))
    tie_weights: bool = option(False, "lm: share the embedding and output matrices (needs --embed == --hidden)")
    pooling: str = option("last", "many-to-one: summarise the outputs by the last step, mean or max",
                          choices=("last", "mean", "max"))
    attention: str = option("none", "g2p, translate, caption: the decoder attends over the encoder's outputs or image "
                            "regions (g2p and translate default to additive)",
                            choices=("none", "additive", "multiplicative"))
    engine: str = option("auto", "rnnkit engine: auto, reference, cpu, triton")
    crf: bool = option(False, "tag: a linear-chain CRF output layer (Viterbi decoding) instead of per-token softmax")
    char_embed: int = option(0, "tag: width of each word's character features, for unseen words (0: none)",
                             at_least(0, "0: none"))


@dataclass
class TrainConfig:
    epochs: int = option(10, "passes over the training data", at_least(1))
    batch_size: int = option(32, "sequences per optimizer step (all processes together)", at_least(1))
    lr: float = option(1e-3, "learning rate", at_least(0))
    optimizer: str = option("adam", "torch.optim optimizer", choices=("adam", "adamw", "sgd", "rmsprop"))
    weight_decay: float = option(0.0, "weight decay", at_least(0))
    schedule: str = option("none", "learning-rate schedule", choices=("none", "cosine", "step", "plateau"))
    clip: float = option(1.0, "clip the global gradient norm to this value (0: off)", at_least(0, "0: off"))
    clip_value: float = option(0.0, "clip each gradient element to [-v, v] (0: off)", at_least(0, "0: off"))
    bptt: int = option(0, "lm: truncated BPTT, steps between updates k1 (0: 64)", at_least(0, "0: 64"))
    bptt_back: int = option(0, "lm: truncated BPTT, steps backpropagated k2 >= k1 (0: k1)", at_least(0, "0: k1"))
    patience: int = option(0, "stop after this many evaluations without improvement (0: never)",
                           at_least(0, "0: never"))
    max_steps: int = option(0, "stop after this many optimizer steps (0: no limit)", at_least(0, "0: no limit"))
    max_minutes: float = option(0.0, "stop training after this many minutes (0: no limit)",
                                at_least(0, "0: no limit"))
    eval_every: int = option(0, "evaluate every this many steps as well as after each epoch (0: epochs only)",
                             at_least(0, "0: epochs only"))
    checkpoint_every: int = option(200, "write the checkpoint every this many steps (and at each evaluation)",
                                   at_least(1))
    max_bad_steps: int = option(10, "stop when this many steps in a row have a non-finite loss or gradient",
                                at_least(1))
    seed: int = option(0, "random seed: data order, initialisation, dropout", between(0, MAX_SEED))
    amp: str = option("off", "mixed precision on CUDA", choices=("off", "bf16", "fp16"))
    device: str = option("cpu", "torch device: cpu, cuda, cuda:1, ...")
    threads: int = option(0, "torch CPU threads (0: torch's default)", at_least(0, "0: torch's default"))


@dataclass
class RunConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        return cls(**{name: kind(**d.get(name, {})) for name, kind in SECTIONS.items()})


SECTIONS = {"task": TaskConfig, "model": ModelConfig, "train": TrainConfig}


# ---------------------------------------------------------------- checks


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_value(f: dataclasses.Field, value) -> None:
    """The value's type, then its choices or range; a ConfigError naming the option otherwise."""
    kind = type(f.default)
    if kind is bool:
        ok, what = isinstance(value, bool), "true or false"
    elif kind is int:
        ok, what = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        what = "a finite number"
    else:
        ok, what = isinstance(value, str), "a string"
    if not ok:
        raise ConfigError(f"{flag(f.name)} must be {what}, got {value!r}")
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{flag(f.name)}: unknown {f.name.replace('_', ' ')} {value!r}: "
                          f"expected one of {', '.join(choices)}")
    allowed = f.metadata.get("allowed")
    if allowed is not None and not allowed.ok(value):
        raise ConfigError(f"{flag(f.name)} must be {allowed.text}, got {value!r}")


def check_fields(config: RunConfig) -> None:
    """Every field of every section has its type and an allowed value (a config.json is checked so)."""
    for name, kind in SECTIONS.items():
        section = getattr(config, name)
        if not isinstance(section, kind):
            raise ConfigError(f"the {name} section must hold {kind.__name__} fields, got {section!r}")
        for f in dataclasses.fields(kind):
            check_value(f, getattr(section, f.name))


def check_machine(config: RunConfig) -> None:
    """What this machine and launch must offer: the device, mixed precision, the engine, the processes."""
    import torch  # here, so that reading a config needs no torch

    from .. import engines

    train, engine = config.train, config.model.engine
    try:
        device = torch.device(train.device)
    except RuntimeError:
        raise ConfigError(f"--device {train.device!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {train.device} needs CUDA, which is not available on this machine; "
                              "use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(f"--device {train.device}: this machine has {count} CUDA device(s), "
                              f"cuda:0 to cuda:{count - 1}")
    elif device.type != "cpu":
        raise ConfigError(f"--device {train.device}: rnnkit trains on cpu or cuda, got {device.type}")
    if train.amp != "off" and device.type != "cuda":
        raise ConfigError(f"--amp {train.amp} needs a CUDA device, got --device {train.device}")
    try:
        engines.check_name(engine)
    except ValueError as e:
        raise ConfigError(f"--engine: {e}") from None
    if engine != "auto":
        try:
            engines.select(engine, torch.empty(1, 1, device=device))
        except RuntimeError as e:
            raise ConfigError(f"--engine {engine} cannot run with --device {train.device}: {e}") from None
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if train.batch_size % world:
        raise ConfigError(f"--batch-size {train.batch_size} must be divisible by the {world} processes")


# the options beyond torch.nn, and the cells that take them
CELL_OPTIONS = {"layer_norm": ("lstm", "gru"), "peephole": ("lstm",), "zoneout": ("lstm", "gru"),
                "recurrent_dropout": ("lstm", "gru"), "weight_drop": ("lstm", "gru", "rnn", "rnn-relu")}
STOCK_CELLS = ("lstm", "gru", "rnn", "rnn-relu")
STEP_DECODER_TASKS = ("g2p", "translate", "caption")  # their decoders run torch.nn's step cells


def check_model(config: RunConfig) -> None:
    """The cell options that go together: each option on a cell that has it, heads dividing the width."""
    model, task = config.model, config.task.task
    for name, cells in CELL_OPTIONS.items():
        if getattr(model, name) and model.cell not in cells:
            raise ConfigError(f"{flag(name)} is an option of --cell {', '.join(cells)}, got --cell {model.cell}")
    if model.cell == "slstm" and model.hidden % model.heads:
        raise ConfigError(f"--heads {model.heads} must divide --hidden {model.hidden}")
    if model.heads != 1 and model.cell != "slstm":
        raise ConfigError(f"--heads is an option of --cell slstm, got --cell {model.cell}")
    extras = [flag(n) for n in CELL_OPTIONS if getattr(model, n)]
    if task in STEP_DECODER_TASKS and (model.cell not in STOCK_CELLS or extras):
        raise ConfigError(f"task {task} decodes one step at a time with torch.nn's cells: it takes --cell "
                          f"{', '.join(STOCK_CELLS)} without {' '.join(extras) or 'cell options'}, got --cell "
                          f"{model.cell}" + (f" with {' '.join(extras)}" if extras else ""))


def check(config: RunConfig) -> None:
    """All of it: every option in its range, and runnable on this machine. Raises ConfigError."""
    check_fields(config)
    check_model(config)
    check_machine(config)
