"""Gradient flow through time: how much of the loss's gradient reaches each earlier step.

Trains a tanh RNN, an LSTM and a GRU on the same adding problem and measures ||dL/dh_t||
at every step t, straight from the hand-derived BPTT of the reference engine
(rnnkit.engines.reference.record_step_grads). The loss sits at the last step, so the distance
from the loss is T - 1 - t. Plotted on a log scale, the tanh RNN's gradient falls off
geometrically with distance (the vanishing gradient: the marked values it must add are
50-200 steps back), while the LSTM's cell state and the GRU's update gate carry it across.
"""

from __future__ import annotations

import json
import os

import torch
import torch.nn.functional as F

from .. import engines
from ..engines.reference import record_step_grads
from ..train.config import ModelConfig, RunConfig, TaskConfig, TrainConfig
from ..train.plots import pyplot, save_figure
from ..train.files import atomic_write_text
from ..train.trainer import Trainer
from .classify import adding

CELLS = ("rnn", "lstm", "gru")


def step_grad_norms(model, x: torch.Tensor, lengths: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """||dL/dh_t|| of the bottom layer for every step of one batch (mean over the batch). (T,)"""
    model.zero_grad(set_to_none=True)
    with engines.use("reference"), record_step_grads() as log:
        F.mse_loss(model(x, lengths)[:, 0], y).backward()
    model.zero_grad(set_to_none=True)
    return log[-1]["norms"].detach()  # the backward visits the top layer first


def measure(model, task, batches: int = 4) -> torch.Tensor:
    """Mean of step_grad_norms over the first few validation batches. (T,)"""
    was_training = model.training
    model.train()  # as the gradient is seen in training
    data = task.splits["valid"]
    total = 0
    for i in range(batches):
        idx = torch.arange(i * 64, (i + 1) * 64) % len(data)
        x = torch.stack([data.sequences[j] for j in idx.tolist()])
        total = total + step_grad_norms(model, x, data.lengths[idx], data.labels[idx])
    model.train(was_training)
    return total / batches


def run(length: int = 100, steps: int = 300, hidden: int = 64, batch_size: int = 64, seed: int = 0,
        cells=CELLS, lr: float = 3e-3, progress: bool = True, print_fn=print) -> dict:
    """Train each cell `steps` steps on the adding problem; return per-cell norms at init and after."""
    results = {}
    for cell in cells:
        config = RunConfig(task=TaskConfig(task="adding", length=length, examples=steps * batch_size),
                           model=ModelConfig(cell=cell, hidden=hidden),
                           train=TrainConfig(epochs=1, batch_size=batch_size, lr=lr, seed=seed, max_steps=steps))
        task = adding(config)
        trainer = Trainer(task, config, folder=None, progress=progress, print_fn=lambda *a: None)
        at_init = measure(trainer.model, task)
        test = trainer.fit()
        results[cell] = {"init": at_init.tolist(), "trained": measure(trainer.model, task).tolist(),
                         "test_mse": test["mse"]}
        r = results[cell]
        print_fn(f"{cell:5s} test mse {test['mse']:.4f}   ||dL/dh|| at distance {length - 1} / at 0: "
                 f"init {r['init'][0] / r['init'][-1]:.2e}, trained {r['trained'][0] / r['trained'][-1]:.2e}")
    return results


def plot(results: dict, path: str) -> str | None:
    """Gradient norm against distance from the loss, log scale; solid after training, dashed at init."""
    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (cell, r) in enumerate(results.items()):
        n = len(r["trained"])
        distance = list(range(n - 1, -1, -1))  # step t is n - 1 - t steps before the loss
        color = f"C{i}"
        ax.plot(distance, r["trained"], color=color, label=f"{cell} trained (test mse {r['test_mse']:.3f})")
        ax.plot(distance, r["init"], color=color, linestyle="--", alpha=0.6, label=f"{cell} at init")
    ax.set_yscale("log")
    ax.set_xlabel("distance from the loss (time steps)")
    ax.set_ylabel("mean ||dL/dh_t||")
    ax.set_title("Gradient flow through time, adding problem")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    save_figure(fig, path)
    plt.close(fig)
    return path


def save(results: dict, folder: str) -> list[str]:
    """gradflow.json and gradflow.png in folder; returns the paths written."""
    os.makedirs(folder, exist_ok=True)
    json_path = os.path.join(folder, "gradflow.json")
    atomic_write_text(json_path, json.dumps(results) + "\n")
    png = plot(results, os.path.join(folder, "gradflow.png"))
    return [json_path] + ([png] if png else [])
