"""Benchmark: per-frame latency of layer.stream().step against torch.nn's layer called on one frame.

Rows: LSTM, LSTM with proj_size=128, GRU, RNN (tanh); hidden 256, input 256, 2 layers, float32,
inference (torch.no_grad()), B = 1 (the issue's target) and B = 8. For each row, a loop of --frames
frames carrying the state, three contenders:

    torch        torch.nn layer called with a (1, B, I) sequence and the carried hx
    rnnkit       rnnkit layer called the same way (the whole-sequence path, for reference)
    stream       rnnkit's stream.step((B, I))

Before timing, every frame's output and the final states of rnnkit and the stream are checked
against torch.nn's (rnnkit.testing tolerances). Contenders run in turns, one intra-op thread; each
number is the median over rounds of microseconds per frame. Reported: stream_us / torch_us (the
issue's target: <= 0.5) and its inverse, torch_us / stream_us. JSON: benchmarks/results/stream.json.

Usage:
    python benchmarks/stream.py [--frames 50] [--budget 2.0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch
from common import machine_info, time_rounds, warm_up, write_json_atomic

import rnnkit
from rnnkit.testing import assert_close

RESULTS = Path(__file__).resolve().parent / "results" / "stream.json"
ROWS = [("LSTM", {}), ("LSTM", {"proj_size": 128}), ("GRU", {}), ("RNN", {})]
HIDDEN, LAYERS = 256, 2


def states(state):
    return list(state) if isinstance(state, tuple) else [state]


def runners(name: str, kwargs: dict, batch: int, frames: int):
    torch.manual_seed(0)
    ref = getattr(torch.nn, name)(HIDDEN, HIDDEN, LAYERS, **kwargs).eval()
    kit = getattr(rnnkit, name)(HIDDEN, HIDDEN, LAYERS, **kwargs).eval()
    kit.load_state_dict(ref.state_dict(), strict=True)
    xs = torch.randn(frames, batch, HIDDEN, generator=torch.Generator().manual_seed(1))

    def layer_loop(module):
        def run():
            with torch.no_grad():
                hx, outs = None, []
                for x_t in xs:
                    out, hx = module(x_t.unsqueeze(0), hx)  # a sequence of one frame
                    outs.append(out[0])
                return outs, hx
        return run

    def stream_loop():
        with torch.no_grad():
            stream = kit.stream(batch_size=batch)
            return [stream.step(x_t) for x_t in xs], stream.state

    return {"torch": layer_loop(ref), "rnnkit": layer_loop(kit), "stream": stream_loop}


def row(name: str, kwargs: dict, batch: int, frames: int, budget_s: float) -> dict:
    runs = runners(name, kwargs, batch, frames)
    label = f"{name}{kwargs or ''} B={batch}"
    expected_outs, expected_state = runs["torch"]()
    for contender in ("rnnkit", "stream"):
        outs, state = runs[contender]()
        for a, b in zip(outs, expected_outs, strict=True):
            assert_close(a, b, "output", f"{label} {contender} frame output")
        for a, b in zip(states(state), states(expected_state), strict=True):
            assert_close(a, b, "output", f"{label} {contender} final state")
    cost = warm_up(runs, 3)
    rounds = max(5, min(100, int(budget_s * 1e3 / max(sum(cost.values()), 1e-3))))
    samples = time_rounds(runs, dict.fromkeys(runs, rounds), rotate=True)
    us = {k: statistics.median(s) * 1e3 / frames for k, s in samples.items()}
    return {"layer": name, **kwargs, "hidden": HIDDEN, "num_layers": LAYERS, "batch": batch, "frames": frames,
            "rounds": rounds, **{f"{k}_us": v for k, v in us.items()},
            "stream_over_torch": us["stream"] / us["torch"], "torch_over_stream": us["torch"] / us["stream"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--budget", type=float, default=2.0, help="seconds of timing per row")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    info = machine_info(1)
    print(f"CPU: {info['cpu']} | torch {info['torch']} | {info['date']} | load {os.getloadavg()[0]:.2f}")
    print(f"{'layer':16} {'B':>3} {'torch us':>9} {'rnnkit us':>10} {'stream us':>10} {'stream/torch':>13} "
          f"{'torch/stream':>13}")
    rows = []
    for batch in (1, 8):
        for name, kwargs in ROWS:
            r = row(name, kwargs, batch, args.frames, args.budget)
            rows.append(r)
            label = name + (f" proj={kwargs['proj_size']}" if kwargs else "")
            print(f"{label:16} {batch:3} {r['torch_us']:9.1f} {r['rnnkit_us']:10.1f} {r['stream_us']:10.1f} "
                  f"{r['stream_over_torch']:13.2f} {r['torch_over_stream']:13.2f}", flush=True)
    write_json_atomic(args.out, {"machine": info, "load_after": os.getloadavg(), "rows": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
