"""Benchmark: rnnkit's cells called in a Python loop, against torch.nn's cells, one thread.

Parts:

    grid        LSTMCell, GRUCell, RNNCell (tanh) at B in {1, 16, 128}, H in {32, 128, 512}
                (input size = H), float32 and float64; a loop of --steps cell calls carrying the
                state, in two modes:
                    forward  under torch.no_grad()
                    train    forward, then backward of random upstream gradients on every step's
                             states (the input and the initial states require grad)
                microseconds per step for each, and the ratio torch_us / rnnkit_us (>= 1: rnnkit
                as fast or faster)
    timeseries  PyTorch's time-series example (examples/time_sequence_prediction): two stacked
                LSTMCell 1->51->51 and a Linear 51->1, float64, LBFGS(lr=0.8) over 97 sine waves of
                999 steps, then 1000 steps of free-running prediction on 3 more. --lbfgs-steps
                optimizer steps (the example takes 15). The two models start from the same weights;
                every loss the optimizer sees and the predictions must equal torch.nn's
                (rnnkit.testing tolerances, float64) and the largest relative difference is reported.

Contenders hold identical weights and run in turns in this process (each round starts with the other
contender), one intra-op thread. Before a grid row is timed, rnnkit's outputs and every gradient
(input, initial states, every parameter) are checked against torch.nn's. Each grid number is the
median of its rounds. Results go to stdout and to benchmarks/results/cells.json (git-ignored).

Usage:
    python benchmarks/cells.py [--parts grid,timeseries] [--quick] [--steps 10] [--lbfgs-steps 3]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import machine_info, time_rounds, warm_up, write_json_atomic

import rnnkit
from rnnkit.testing import assert_close

RESULTS = Path(__file__).resolve().parent / "results" / "cells.json"
FAMILIES = ("LSTMCell", "GRUCell", "RNNCell")
BATCHES, HIDDENS = (1, 16, 128), (32, 128, 512)
DTYPES = {"float32": torch.float32, "float64": torch.float64}


# ---------------------------------------------------------------- grid


def build(family: str, hidden: int, dtype: torch.dtype) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    ref = getattr(torch.nn, family)(hidden, hidden, dtype=dtype)
    kit = getattr(rnnkit, family)(hidden, hidden, dtype=dtype)
    kit.load_state_dict(ref.state_dict(), strict=True)
    return ref, kit


def loop_runner(module, mode: str, xs: torch.Tensor, hx, upstream):
    """A callable running `steps` cell calls from hx; train mode also runs the backward.

    Returns (outputs of every step, gradients of input, initial states and parameters)."""
    lstm = isinstance(hx, tuple)

    def forward(x, state):
        outs = []
        for x_t in x:
            state = module(x_t, state)
            outs.extend(state if lstm else (state,))
        return outs

    if mode == "forward":
        def run():
            with torch.no_grad():
                return forward(xs, hx), ()
        return run

    def run():
        x = xs.detach().requires_grad_()
        state = tuple(s.detach().requires_grad_() for s in hx) if lstm else hx.detach().requires_grad_()
        outs = forward(x, state)
        leaves = [x, *(state if lstm else (state,)), *module.parameters()]
        return outs, torch.autograd.grad(outs, leaves, upstream)
    return run


def grid_row(family: str, batch: int, hidden: int, dtype_name: str, mode: str, steps: int, budget_s: float) -> dict:
    dtype = DTYPES[dtype_name]
    ref, kit = build(family, hidden, dtype)
    gen = torch.Generator().manual_seed(1)
    xs = torch.randn(steps, batch, hidden, generator=gen, dtype=dtype)
    h = torch.randn(batch, hidden, generator=gen, dtype=dtype)
    hx = (h, torch.randn(batch, hidden, generator=gen, dtype=dtype)) if family == "LSTMCell" else h
    per_step = 2 if family == "LSTMCell" else 1
    upstream = [torch.randn(batch, hidden, generator=gen, dtype=dtype) for _ in range(steps * per_step)]
    runners = {"torch": loop_runner(ref, mode, xs, hx, upstream), "rnnkit": loop_runner(kit, mode, xs, hx, upstream)}
    (outs_k, grads_k), (outs_t, grads_t) = runners["rnnkit"](), runners["torch"]()
    label = f"{family} B={batch} H={hidden} {dtype_name} {mode}"
    for a, b in zip(outs_k, outs_t, strict=True):
        assert_close(a, b, "output", label)
    for a, b in zip(grads_k, grads_t, strict=True):
        assert_close(a, b, "grad", label)
    cost = warm_up(runners, 3)
    rounds = max(5, min(200, int(budget_s * 1e3 / max(sum(cost.values()), 1e-3))))
    samples = time_rounds(runners, dict.fromkeys(runners, rounds), rotate=True)
    us = {name: statistics.median(s) * 1e3 / steps for name, s in samples.items()}
    return {"family": family, "batch": batch, "hidden": hidden, "dtype": dtype_name, "mode": mode, "steps": steps,
            "rounds": rounds, "torch_us": us["torch"], "rnnkit_us": us["rnnkit"], "ratio": us["torch"] / us["rnnkit"]}


def run_grid(args) -> list[dict]:
    rows = []
    batches, hiddens = ((1, 128), (32, 512)) if args.quick else (BATCHES, HIDDENS)
    print(f"{'cell':9} {'B':>4} {'H':>4} {'dtype':8} {'mode':8} {'torch us':>10} {'rnnkit us':>10} {'ratio':>6}")
    for family in FAMILIES:
        for dtype_name in DTYPES:
            for mode in ("forward", "train"):
                for batch in batches:
                    for hidden in hiddens:
                        row = grid_row(family, batch, hidden, dtype_name, mode, args.steps, args.budget)
                        rows.append(row)
                        print(f"{family:9} {batch:4} {hidden:4} {dtype_name:8} {mode:8} {row['torch_us']:10.1f} "
                              f"{row['rnnkit_us']:10.1f} {row['ratio']:6.2f}", flush=True)
    ratios = [r["ratio"] for r in rows]
    print(f"grid: {len(rows)} rows, ratio torch_us / rnnkit_us: min {min(ratios):.2f}, "
          f"geometric mean {math.exp(statistics.fmean(map(math.log, ratios))):.2f}, max {max(ratios):.2f}")
    return rows


# ---------------------------------------------------------------- PyTorch's time-series example


class Sequence(torch.nn.Module):
    """The model of PyTorch's examples/time_sequence_prediction/train.py, with the cell class as a parameter."""

    def __init__(self, cell):
        super().__init__()
        self.lstm1 = cell(1, 51)
        self.lstm2 = cell(51, 51)
        self.linear = torch.nn.Linear(51, 1)

    def forward(self, input, future=0):
        outputs = []
        h_t = torch.zeros(input.size(0), 51, dtype=torch.double)
        c_t = torch.zeros(input.size(0), 51, dtype=torch.double)
        h_t2 = torch.zeros(input.size(0), 51, dtype=torch.double)
        c_t2 = torch.zeros(input.size(0), 51, dtype=torch.double)
        for input_t in input.split(1, dim=1):
            h_t, c_t = self.lstm1(input_t, (h_t, c_t))
            h_t2, c_t2 = self.lstm2(h_t, (h_t2, c_t2))
            output = self.linear(h_t2)
            outputs += [output]
        for _ in range(future):  # predicting the future
            h_t, c_t = self.lstm1(output, (h_t, c_t))
            h_t2, c_t2 = self.lstm2(h_t, (h_t2, c_t2))
            output = self.linear(h_t2)
            outputs += [output]
        return torch.cat(outputs, dim=1)


def sine_data(seed: int = 2) -> torch.Tensor:
    """generate_sine_wave.py of the example: 100 sine waves of 1000 steps with random phase."""
    rng = np.random.RandomState(seed)
    T, L, N = 20, 1000, 100  # noqa: N806 - the example's names
    x = np.empty((N, L), np.int64)
    x[:] = np.array(range(L)) + rng.randint(-4 * T, 4 * T, N).reshape(N, 1)
    return torch.from_numpy(np.sin(x / 1.0 / T).astype("float64"))


def run_timeseries(args) -> dict:
    data = sine_data()
    input, target = data[3:, :-1], data[3:, 1:]
    test_input, test_target = data[:3, :-1], data[:3, 1:]
    torch.manual_seed(0)
    models = {"torch": Sequence(torch.nn.LSTMCell).double()}
    models["rnnkit"] = Sequence(rnnkit.LSTMCell).double()
    models["rnnkit"].load_state_dict(models["torch"].state_dict(), strict=True)
    criterion = torch.nn.MSELoss()
    optimizers = {name: torch.optim.LBFGS(m.parameters(), lr=0.8) for name, m in models.items()}
    losses = {name: [] for name in models}
    seconds = dict.fromkeys(models, 0.0)
    closure_s = {name: [] for name in models}  # each forward + backward: medians shrug off a busy neighbour

    def step(name):
        model, optimizer = models[name], optimizers[name]

        def closure():
            start = time.perf_counter()
            optimizer.zero_grad()
            loss = criterion(model(input), target)
            loss.backward()
            closure_s[name].append(time.perf_counter() - start)
            losses[name].append(loss.detach())
            return loss
        start = time.perf_counter()
        optimizer.step(closure)
        seconds[name] += time.perf_counter() - start

    names = list(models)
    for i in range(args.lbfgs_steps):
        for name in names[i % 2:] + names[:i % 2]:  # alternate who goes first
            step(name)
        print(f"LBFGS step {i + 1}: loss torch {losses['torch'][-1].item():.12g}, "
              f"rnnkit {losses['rnnkit'][-1].item():.12g}", flush=True)
    predictions, predict_seconds = {}, {}
    for name in names:
        start = time.perf_counter()
        with torch.no_grad():
            predictions[name] = models[name](test_input, future=1000)
        predict_seconds[name] = time.perf_counter() - start
    assert len(losses["torch"]) == len(losses["rnnkit"]), "the two optimizers evaluated different numbers of losses"
    rel = max(abs(a.item() - b.item()) / abs(b.item()) for a, b in zip(losses["rnnkit"], losses["torch"], strict=True))
    for a, b in zip(losses["rnnkit"], losses["torch"], strict=True):
        assert_close(a, b, "output", "time-series loss")
    # The first 999 outputs read the test input; the last 1000 feed back their own output, which
    # amplifies rounding differences step by step, so that part is reported, not held to a tolerance.
    assert_close(predictions["rnnkit"][:, :999], predictions["torch"][:, :999], "output", "time-series test outputs")
    free = predictions["torch"][:, 999:]
    free_rel = ((predictions["rnnkit"][:, 999:] - free).abs().max() / free.abs().max()).item()
    test_loss = {name: criterion(p[:, :-1000], test_target).item() for name, p in predictions.items()}
    total = {name: seconds[name] + predict_seconds[name] for name in names}
    median = {name: statistics.median(closure_s[name]) for name in names}
    result = {"lbfgs_steps": args.lbfgs_steps, "closures": len(losses["torch"]),
              "train_s": seconds, "predict_s": predict_seconds, "total_s": total,
              "ratio": total["torch"] / total["rnnkit"], "train_ratio": seconds["torch"] / seconds["rnnkit"],
              "closure_median_s": median, "closure_ratio": median["torch"] / median["rnnkit"],
              "max_loss_rel_diff": rel, "free_running_rel_diff": free_rel, "final_loss": {n: losses[n][-1].item() for n in names},
              "test_loss": test_loss}
    print(f"time-series example, {args.lbfgs_steps} LBFGS steps ({result['closures']} closures each) + "
          f"1000 predicted steps: torch {total['torch']:.2f} s, rnnkit {total['rnnkit']:.2f} s, "
          f"ratio torch/rnnkit {result['ratio']:.2f} (training alone {result['train_ratio']:.2f}; median "
          f"forward+backward {median['torch']:.3f} s against {median['rnnkit']:.3f} s, ratio "
          f"{result['closure_ratio']:.2f}); "
          f"largest relative loss difference {rel:.2g}; free-running prediction differs by {free_rel:.2g} "
          f"(relative)")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="grid,timeseries")
    parser.add_argument("--quick", action="store_true", help="grid at B in {1, 128}, H in {32, 512}")
    parser.add_argument("--steps", type=int, default=10, help="cell calls per timed loop")
    parser.add_argument("--budget", type=float, default=0.6, help="seconds of timing per grid row and contender")
    parser.add_argument("--lbfgs-steps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    info = machine_info(1)
    print(f"CPU: {info['cpu']} | torch {info['torch']} | {info['date']}")
    # a shared machine shows in the load average: other processes' work slows both contenders alike
    payload = {"machine": info, "args": {k: str(v) for k, v in vars(args).items()}, "load_before": os.getloadavg()}
    parts = args.parts.split(",")
    if "grid" in parts:
        payload["grid"] = run_grid(args)
    if "timeseries" in parts:
        payload["timeseries"] = run_timeseries(args)
    payload["load_after"] = os.getloadavg()
    write_json_atomic(args.out, payload)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
