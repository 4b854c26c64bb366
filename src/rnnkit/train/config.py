"""Run configuration: three dataclasses, one comment (its --help text) per field.

The command line is generated from these fields (rnnkit.cli), and a run folder stores them
resolved as config.json, so a run can be resumed, evaluated or reproduced from its folder alone.

>>> cfg = RunConfig(task=TaskConfig(task="adding"), model=ModelConfig(cell="gru"))
>>> RunConfig.from_dict(cfg.to_dict()) == cfg
True
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


def option(default, help: str, **kw):
    """A dataclass field whose help text the command line shows."""
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TaskConfig:
    task: str = option("lm", "task name (see rnnkit train --help)")
    corpus: str = option("stdlib", "lm: stdlib, fortunes, or a path to a text file")
    level: str = option("char", "lm: tokens are characters (char) or words (word)", choices=("char", "word"))
    max_chars: int = option(0, "lm: use at most this many characters of the corpus (0: all)")
    dataset: str = option("GunPoint", "ucr: GunPoint, ItalyPowerDemand, BasicMotions, JapaneseVowels, ...")
    data: str = option("", "classify: a CSV or JSONL file with text and label columns")
    text_field: str = option("text", "classify: name of the text column")
    label_field: str = option("label", "classify: name of the label column")
    length: int = option(200, "adding: sequence length T; copy: number of symbols to remember is 10")
    delay: int = option(100, "copy: blank steps between the symbols and the recall cue")
    examples: int = option(10000, "adding, copy: training examples generated (valid and test get 1000 each)")
    patch: int = option(1, "ucr, fashion-mnist: read this many time steps as one input vector")
    valid_fraction: float = option(0.1, "sentiment, ucr, fashion-mnist, classify, tag: fraction of the training split held out for validation (0: none)")
    beam: int = option(1, "seq2seq, caption: beam width when decoding for evaluation and inference (1: greedy)")
    max_len: int = option(0, "g2p, translate: longest output decoded, in tokens; translate also keeps only verse pairs "
                          "of at most this many words on each side (0: 2 x source length + 10, every pair)")
    vocab_size: int = option(0, "translate: words kept per language, most frequent first (0: every word seen twice in training)")
    teacher_forcing: str = option("1", "g2p, translate: probability P of feeding the decoder the gold previous token, "
                                  "or START:END for a linear decay over the training steps (scheduled sampling)")


@dataclass
class ModelConfig:
    cell: str = option("lstm", "recurrent cell", choices=("lstm", "gru", "rnn", "rnn-relu"))
    layers: int = option(1, "stacked recurrent layers")
    hidden: int = option(128, "hidden units per layer and direction")
    bidirectional: bool = option(False, "read the input in both directions (on by default for tag, g2p, translate)")
    dropout: float = option(0.0, "dropout between layers and before the output layer")
    embed: int = option(64, "embedding width for token inputs")
    tie_weights: bool = option(False, "lm: share the embedding and output matrices (needs --embed == --hidden)")
    pooling: str = option("last", "many-to-one: summarise the outputs by the last step, mean or max",
                          choices=("last", "mean", "max"))
    attention: str = option("none", "g2p, translate, caption: the decoder attends over the encoder's outputs or image "
                            "regions (g2p and translate default to additive)",
                            choices=("none", "additive", "multiplicative"))
    engine: str = option("auto", "rnnkit engine: auto, reference, cpu, triton")
    crf: bool = option(False, "tag: a linear-chain CRF output layer (Viterbi decoding) instead of per-token softmax")
    char_embed: int = option(0, "tag: width of each word's character features, for unseen words (0: none)")


@dataclass
class TrainConfig:
    epochs: int = option(10, "passes over the training data")
    batch_size: int = option(32, "sequences per optimizer step (all processes together)")
    lr: float = option(1e-3, "learning rate")
    optimizer: str = option("adam", "torch.optim optimizer", choices=("adam", "adamw", "sgd", "rmsprop"))
    weight_decay: float = option(0.0, "weight decay")
    schedule: str = option("none", "learning-rate schedule", choices=("none", "cosine", "step", "plateau"))
    clip: float = option(1.0, "clip the global gradient norm to this value (0: off)")
    clip_value: float = option(0.0, "clip each gradient element to [-v, v] (0: off)")
    bptt: int = option(0, "lm: truncated BPTT, steps between updates k1 (0: 64)")
    bptt_back: int = option(0, "lm: truncated BPTT, steps backpropagated k2 >= k1 (0: k1)")
    patience: int = option(0, "stop after this many evaluations without improvement (0: never)")
    max_steps: int = option(0, "stop after this many optimizer steps (0: no limit)")
    max_minutes: float = option(0.0, "stop training after this many minutes (0: no limit)")
    eval_every: int = option(0, "evaluate every this many steps as well as after each epoch (0: epochs only)")
    checkpoint_every: int = option(200, "write the checkpoint every this many steps (and at each evaluation)")
    max_bad_steps: int = option(10, "stop when this many steps in a row have a non-finite loss or gradient")
    seed: int = option(0, "random seed: data order, initialisation, dropout")
    amp: str = option("off", "mixed precision on CUDA", choices=("off", "bf16", "fp16"))
    device: str = option("cpu", "torch device: cpu, cuda, cuda:1, ...")
    threads: int = option(0, "torch CPU threads (0: torch's default)")


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
