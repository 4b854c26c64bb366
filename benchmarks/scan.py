"""Benchmark: minGRU / minLSTM (a scan over time) against rnnkit's GRU of the same size, training step.

Rows (training step = forward, then backward of a random upstream gradient on the output, dx included):

    mingru    rnnkit.nn.minimal.MinGRU(I, H, engine)   against rnnkit.GRU(I, H, engine): ratio = GRU / minGRU
    minlstm   rnnkit.nn.minimal.MinLSTM(I, H, engine)  against the same GRU

The real shape is T = 4096, B = 8, H = I = 256 (the paper's point: the GRU waits for the previous
state at every step, minGRU's gates do not, so its recurrence is a scan). Contenders run in turns in
this process, median of the rounds. Before timing, each minimal layer's output and gradients on the
chosen engine are checked against its reference engine (the log-space scan; rnnkit.testing's
tolerances). On CUDA every call is followed by a synchronize, so the time is the GPU's.
Results go to stdout and benchmarks/results/scan.json.

Usage:
    python benchmarks/scan.py [--quick] [--engine auto] [--device cpu|cuda] [--rounds 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from common import format_machine, machine_info, time_alternating, write_json_atomic

import rnnkit
from rnnkit.nn.minimal import MinGRU, MinLSTM
from rnnkit.testing import assert_close

RESULTS = Path(__file__).resolve().parent / "results" / "scan.json"
SHAPE = (4096, 8, 256)  # (T, B, H), input size = H
QUICK_SHAPE = (64, 2, 16)
LAYERS = {"mingru": MinGRU, "minlstm": MinLSTM}


def train_runner(module, x, g, device):
    params = list(module.parameters())

    def run():
        for p in params:
            p.grad = None
        xr = x.detach().requires_grad_()  # dx too: a layer in a stack must produce it
        module(xr)[0].backward(g)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return run


def check_against_reference(layer, x, g) -> None:
    """The engine under test against the reference engine's scan, same weights: output and every gradient."""
    reference = type(layer)(layer.input_size, layer.hidden_size, engine="reference").to(x.device)
    reference.load_state_dict(layer.state_dict())
    results = []
    for m in (layer, reference):
        xr = x.detach().requires_grad_()
        out = m(xr)[0]
        results.append((out, *torch.autograd.grad(out, [xr, *m.parameters()], g)))
    for a, b in zip(*results, strict=True):
        assert_close(a, b, kind="output" if a is results[0][0] else "grad", what=type(layer).__name__)


def row(kind: str, shape, engine: str, device: torch.device, rounds: int) -> dict:
    T, B, H = shape
    torch.manual_seed(0)
    minimal = LAYERS[kind](H, H, engine=engine, device=device)
    gru = rnnkit.GRU(H, H, engine=engine, device=device)
    gen = torch.Generator().manual_seed(1)
    x, g = torch.randn(T, B, H, generator=gen).to(device), torch.randn(T, B, H, generator=gen).to(device)
    check_against_reference(minimal, x, g)
    runners = {"gru": train_runner(gru, x, g, device), kind: train_runner(minimal, x, g, device)}
    ms = time_alternating(runners, warmup=2, rounds=rounds)
    return {"kind": kind, "T": T, "B": B, "H": H, "I": H, "engine": engine, "device": str(device), "ms": ms,
            "speedup_vs_gru": ms["gru"] / ms[kind]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one tiny shape, to check the script runs")
    parser.add_argument("--engine", default="auto", help="rnnkit engine for both layers")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    info = machine_info(args.threads)
    print(format_machine(info))
    shape = QUICK_SHAPE if args.quick else SHAPE
    rows = []
    print(f"{'cell':8s} {'T':>5s} {'B':>3s} {'H':>4s} {'GRU ms':>9s} {'cell ms':>9s} {'GRU / cell':>10s}")
    for kind in LAYERS:
        r = row(kind, shape, args.engine, device, 3 if args.quick else args.rounds)
        rows.append(r)
        print(f"{kind:8s} {r['T']:5d} {r['B']:3d} {r['H']:4d} {r['ms']['gru']:9.2f} {r['ms'][kind]:9.2f} "
              f"{r['speedup_vs_gru']:10.2f}", flush=True)
    write_json_atomic(RESULTS, {"machine": info, "engine": args.engine, "device": str(device), "quick": args.quick,
                                "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
