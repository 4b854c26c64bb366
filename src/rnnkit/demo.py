"""`rnnkit demo`: a character-level LSTM learns Python from the standard library, then gradient flow.

Part 1 trains a one-layer LSTM language model with truncated BPTT on this interpreter's own
standard-library source (always present, nothing to download) and prints samples before and
after. Part 2 trains a tanh RNN, an LSTM and a GRU on the adding problem and plots the gradient
norm reaching each earlier step, where the vanilla RNN's vanishing gradient shows. About two
minutes on two CPU cores.
"""

from __future__ import annotations

import os
import time

from .tasks import gradflow
from .tasks.lm import LanguageModelTask, generate
from .train.config import ModelConfig, RunConfig, TaskConfig, TrainConfig
from .train.trainer import Trainer

PROMPT = "def "

# (language model config, gradflow arguments): the full demo and the seconds-long one the tests run
SETTINGS = {
    False: (RunConfig(task=TaskConfig(task="lm", corpus="stdlib", max_chars=2_000_000),
                      model=ModelConfig(cell="lstm", hidden=256, embed=64),
                      train=TrainConfig(epochs=10, batch_size=64, lr=3e-3, bptt=64, max_minutes=1.25,
                                        checkpoint_every=500)),
            dict(length=60, steps=150, hidden=48)),
    True: (RunConfig(task=TaskConfig(task="lm", corpus="stdlib", max_chars=30_000),
                     model=ModelConfig(cell="lstm", hidden=32, embed=16),
                     train=TrainConfig(epochs=1, batch_size=16, lr=3e-3, bptt=32, max_steps=20)),
           dict(length=20, steps=10, hidden=8)),
}


def sample(trainer: Trainer, task: LanguageModelTask, length: int) -> str:
    text = generate(trainer.model, task.vocab, task.level, PROMPT, length, temperature=0.8, seed=1)
    return "    " + (PROMPT + text).replace("\n", "\n    ")


def main(out: str, quick: bool = False) -> None:
    config, flow = SETTINGS[quick]
    started = time.perf_counter()
    print("Part 1: a character-level LSTM language model on the Python standard library's source\n")
    task = LanguageModelTask(config)
    print(f"corpus: {sum(len(s) for s in task.streams.values()):,} characters, vocabulary {len(task.vocab)}; "
          f"truncated BPTT over {task.k1} steps, batch {config.train.batch_size}")
    trainer = Trainer(task, config, os.path.join(out, "lm"), unique=True)  # a second demo writes lm-2
    lm_folder = trainer.folder
    length = 60 if quick else 300
    print(f"\nsample before training:\n{sample(trainer, task, length)}\n")
    results = trainer.fit()
    print(f"\nsample after {trainer.step} steps (test: {results['bpc']:.2f} bits per character):\n"
          f"{sample(trainer, task, length)}\n")

    print("Part 2: gradient flow through time, tanh RNN vs LSTM vs GRU, adding problem\n")
    flow_results = gradflow.run(**flow)
    paths = gradflow.save(flow_results, os.path.join(out, "gradflow"))

    print(f"\nplots and data ({time.perf_counter() - started:.0f} s in all):")
    plots = os.path.join(lm_folder, "plots")
    for name in sorted(os.listdir(plots)) if os.path.isdir(plots) else []:
        print(f"  {os.path.join(plots, name)}")
    for p in paths:
        print(f"  {p}")
    print(f"\nmore: rnnkit generate {lm_folder} --prompt 'class ' ; rnnkit train --help ; rnnkit datasets")
