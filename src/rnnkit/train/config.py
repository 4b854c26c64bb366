"""Run configuration: the task section (TaskConfig: the task's name and its own options, a dataclass of
rnnkit.tasks.options that the registry names), the model and the train sections; one comment (its
--help text) per field.

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


# The task section of config.json before each task had its own section: every task's fields, whatever
# the task. Such a section still reads (TaskConfig.from_dict): the fields its task declares are kept.
FLAT_TASK_FIELDS = ("corpus", "level", "max_chars", "dataset", "data", "text_field", "label_field", "length",
                    "delay", "examples", "patch", "valid_fraction", "beam", "max_len", "vocab_size",
                    "teacher_forcing")


def task_options(name: str) -> type:
    """The options dataclass of task `name` (rnnkit.tasks.registry.TASKS; rnnkit.tasks.options)."""
    from ..tasks.registry import TASKS  # here: the registry imports this module

    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}: expected one of {', '.join(TASKS)}")
    return TASKS[name].options


def task_field(name: str) -> dataclasses.Field | None:
    """The field called `name` in any task's options (their types and allowed values agree), or None."""
    from ..tasks.registry import TASKS

    return next((f for entry in TASKS.values() for f in dataclasses.fields(entry.options) if f.name == name), None)


def tasks_with(name: str) -> list[str]:
    from ..tasks.registry import TASKS

    return [task for task, entry in TASKS.items() if name in {f.name for f in dataclasses.fields(entry.options)}]


@dataclass(init=False)
class TaskConfig:
    """The task's name and its own options: `options` is an instance of the dataclass the registry names
    for the task, and its fields read as attributes here too (`config.task.length`).

    >>> TaskConfig(task="adding", length=8)
    TaskConfig(task='adding', options=Adding(length=8, examples=10000))
    >>> TaskConfig(task="adding", length=8).length
    8
    >>> TaskConfig(task="lm", beam=2)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    rnnkit.train.config.ConfigError: --beam is an option of task g2p, translate, caption, not of lm (its options: ...)
    """

    task: str
    options: Any

    def __init__(self, task: str = "lm", options=None, **fields):
        kind = task_options(task)
        if options is None:
            for name, value in fields.items():
                self.refuse_foreign(task, kind, name, value)
            options = kind(**fields)
        elif fields or not isinstance(options, kind):
            raise TypeError(f"TaskConfig({task!r}) takes its {kind.__name__} options or their fields, not both")
        self.task, self.options = task, options

    @staticmethod
    def refuse_foreign(task: str, kind: type, name: str, value) -> None:
        """A ConfigError for an option `task` does not take (after checking its value, if another task takes it)."""
        own = [f.name for f in dataclasses.fields(kind)]
        if name in own:
            return
        takes = ", ".join(flag(n) for n in own) or "none"
        other = task_field(name)
        if other is None:
            raise ConfigError(f"{flag(name)} is not an option of any task (task {task} takes: {takes})")
        check_value(other, value)  # a bad value is named as such, whichever task the option belongs to
        raise ConfigError(f"{flag(name)} is an option of task {', '.join(tasks_with(name))}, not of {task} "
                          f"(its options: {takes})")

    def __getattr__(self, name: str):
        # only reached when normal lookup fails: the task's own options read as attributes
        options = self.__dict__.get("options")
        if options is not None and name in {f.name for f in dataclasses.fields(options)}:
            return getattr(options, name)
        raise AttributeError(f"task {self.__dict__.get('task')!r} has no option {name!r}")

    def to_dict(self) -> dict:
        """config.json's task section: the task's name and its own fields, at one level."""
        return {"task": self.task, **dataclasses.asdict(self.options)}

    @classmethod
    def from_dict(cls, d: dict) -> "TaskConfig":
        """A task section, this layout or the flat one written before (FLAT_TASK_FIELDS): the fields the task
        declares are kept, those of other tasks dropped; a field no task declares is refused."""
        d = dict(d)
        name = d.pop("task", "lm")
        if not isinstance(name, str):
            raise ConfigError(f"the task name must be a string, got {name!r}")
        kind = task_options(name)
        own = {f.name for f in dataclasses.fields(kind)}
        unknown = [k for k in d if k not in own and k not in FLAT_TASK_FIELDS and task_field(k) is None]
        if unknown:
            raise ConfigError(f"unknown option {unknown[0]!r} in the task section (task {name})")
        return cls(name, kind(**{k: v for k, v in d.items() if k in own}))


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
        return {"task": self.task.to_dict(), **{name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}}

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        return cls(task=TaskConfig.from_dict(d.get("task", {})),
                   **{name: kind(**d.get(name, {})) for name, kind in SECTIONS.items()})


# The sections every run has, whatever its task (the task section is TaskConfig: its fields depend on the task).
SECTIONS = {"model": ModelConfig, "train": TrainConfig}


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
    if not isinstance(config.task, TaskConfig):
        raise ConfigError(f"the task section must be a TaskConfig, got {config.task!r}")
    sections = {"task": (task_options(config.task.task), config.task.options),
                **{name: (kind, getattr(config, name)) for name, kind in SECTIONS.items()}}
    for name, (kind, section) in sections.items():
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
