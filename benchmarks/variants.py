"""Benchmark: the cells torch.nn lacks, on CPU, one thread: what layer normalisation costs, what fusing gains.

Rows (training step = forward, then backward of random upstream gradients on the output):

    ln-lstm, ln-gru   the layer-normalised cell (rnnkit.LSTM(layer_norm=True)) on an engine, against
                      (a) the plain cell of the same size on the same engine:  cost = ln / plain
                          (the issue's bound: <= 1.3)
                      (b) the same LN cell as the alternative a user has today, a Python loop of torch
                          ops over time with autograd:  gain = unfused / ln
    all-options       layer_norm + zoneout + recurrent_dropout + weight_drop on one LSTM in training
                      against the plain LSTM: what composing every option costs

Contenders hold the same weights and run in turns in this process, median of the rounds. Before
timing, the fused LN cell's output and gradients are checked against the unfused loop (in float64,
rnnkit.testing's tolerances). Results go to stdout and benchmarks/results/variants.json.

Usage:
    python benchmarks/variants.py [--quick] [--engine cpu] [--rounds 7]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from common import format_machine, machine_info, time_alternating, write_json_atomic

import rnnkit
from rnnkit.testing import assert_close

RESULTS = Path(__file__).resolve().parent / "results" / "variants.json"
SHAPES = [(100, 16, 256), (100, 64, 256), (200, 8, 128)]  # (T, B, H), input size = H
QUICK_SHAPES = [(20, 4, 32)]


def unfused(layer, x):
    """The layer-normalised LSTM or GRU as a Python loop of torch ops: what a user writes without rnnkit."""
    p = dict(layer.named_parameters())
    ln = lambda v, k: F.layer_norm(v, (v.shape[-1],), p[f"ln_{k}_weight_l0"], p[f"ln_{k}_bias_l0"])  # noqa: E731
    xs = ln(x @ p["weight_ih_l0"].t(), "ih") + p["bias_ih_l0"]  # (T, B, G*H), all steps at once
    B, H = x.shape[1], layer.hidden_size
    h = x.new_zeros(B, H)
    c = x.new_zeros(B, H)
    outs = []
    for t in range(x.shape[0]):
        hp = ln(h @ p["weight_hh_l0"].t(), "hh") + p["bias_hh_l0"]
        if layer.mode == "LSTM":
            i, f, g, o = (xs[t] + hp).chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(ln(c, "cell"))
        else:
            x_r, x_z, x_n = xs[t].chunk(3, 1)
            h_r, h_z, h_n = hp.chunk(3, 1)
            r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
            h = (1 - z) * torch.tanh(x_n + r * h_n) + z * h
        outs.append(h)
    return torch.stack(outs)


def check_against_unfused(layer, x, g) -> None:
    """The fused cell equals the unfused loop, output and every gradient, in float64 (layer norm amplifies
    float32's rounding differences between two orders of summation beyond float32's tolerance at T = 100)."""
    import copy

    layer = copy.deepcopy(layer).double()
    xr, g = x.double().requires_grad_(), g.double()
    assert_close(layer(xr)[0], unfused(layer, xr))
    got = torch.autograd.grad(layer(xr)[0], [xr, *layer.parameters()], g)
    want = torch.autograd.grad(unfused(layer, xr), [xr, *layer.parameters()], g)
    for a, b in zip(got, want, strict=True):
        assert_close(a, b, kind="grad")


def train_runner(forward, params, x, g):
    def run():
        for p in params:
            p.grad = None
        forward(x).backward(g)
    return run


def row(kind: str, shape, engine: str, rounds: int) -> dict:
    T, B, H = shape
    cls = rnnkit.LSTM if kind != "ln-gru" else rnnkit.GRU
    torch.manual_seed(0)
    opts = dict(layer_norm=True) if kind != "all-options" else dict(
        layer_norm=True, zoneout=0.1, recurrent_dropout=0.1, weight_drop=0.1)
    fancy, plain = cls(H, H, engine=engine, **opts), cls(H, H, engine=engine)
    plain.load_state_dict(fancy.state_dict(), strict=False)
    x, g = torch.randn(T, B, H), torch.randn(T, B, H)
    runners = {
        "plain": train_runner(lambda x: plain(x)[0], list(plain.parameters()), x, g),
        "fused": train_runner(lambda x: fancy(x)[0], list(fancy.parameters()), x, g),
    }
    if kind != "all-options":
        fancy.eval()  # nothing random: the check below compares exact functions
        with torch.no_grad():
            for name, p in fancy.named_parameters():
                if name.startswith("ln_"):
                    p.add_(0.1 * torch.randn_like(p))
        check_against_unfused(fancy, x, g)
        runners["unfused"] = train_runner(lambda x: unfused(fancy, x), list(fancy.parameters()), x, g)
    ms = time_alternating(runners, warmup=2, rounds=rounds)
    result = {"kind": kind, "T": T, "B": B, "H": H, "engine": engine, "ms": ms,
              "cost_vs_plain": ms["fused"] / ms["plain"]}
    if "unfused" in ms:
        result["gain_vs_unfused"] = ms["unfused"] / ms["fused"]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one tiny shape, to check the script runs")
    parser.add_argument("--engine", default="cpu", help="rnnkit engine for both the plain and the fused cell")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    info = machine_info(1)
    print(format_machine(info))
    rows = []
    print(f"{'cell':12s} {'T':>5s} {'B':>4s} {'H':>4s} {'plain ms':>9s} {'fused ms':>9s} {'unfused ms':>10s} "
          f"{'cost vs plain':>13s} {'gain vs unfused':>15s}")
    for kind in ("ln-lstm", "ln-gru", "all-options"):
        for shape in QUICK_SHAPES if args.quick else SHAPES:
            r = row(kind, shape, args.engine, 3 if args.quick else args.rounds)
            rows.append(r)
            ms = r["ms"]
            print(f"{kind:12s} {r['T']:5d} {r['B']:4d} {r['H']:4d} {ms['plain']:9.2f} {ms['fused']:9.2f} "
                  f"{ms.get('unfused', float('nan')):10.2f} {r['cost_vs_plain']:13.2f} "
                  f"{r.get('gain_vs_unfused', float('nan')):15.2f}", flush=True)
    write_json_atomic(RESULTS, {"machine": info, "engine": args.engine, "rows": rows})
    worst = max(r["cost_vs_plain"] for r in rows if r["kind"] != "all-options")
    print(f"worst layer-norm cost vs the plain cell: {worst:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
