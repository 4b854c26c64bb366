"""Benchmark: the sLSTM (rnnkit.nn.slstm.SLSTM) on CPU against an unfused torch loop of the same equations.

Rows: one training step (forward, then backward of a random upstream gradient on the output; the
input requires grad, so dx is formed too) of a one-layer sLSTM, input size = H, zero initial states:

    rnnkit     SLSTM(engine=--engine, default "auto": the Numba engine on CPU), hand-derived BPTT
    unfused    what a user writes without rnnkit: W_ih x + b for all steps, then a Python loop over
               time of plain torch ops (the per-head recurrent product as one einsum), autograd
               differentiating it

gain = unfused ms / rnnkit ms (> 1: rnnkit faster). Contenders hold the same weights and run in
turns in this process (median of the rounds), --threads intra-op threads (default 1). Before timing,
the output and every gradient (input, weight_ih, weight_hh, bias_ih) are checked to agree within
rnnkit.testing's float32 tolerances. Results go to stdout and benchmarks/results/slstm.json.

Published GPU numbers, for context (not comparable with these CPU rows): FlashRNN (Pöppel, Beck &
Hochreiter 2024, arXiv:2412.07752, github.com/NX-AI/flashrnn) reports in its abstract speed-ups of
up to 50x over a vanilla PyTorch implementation for its fused kernels (LSTM, GRU, Elman, sLSTM), and
its README says the fused CUDA kernel (R cached in registers and SRAM) runs 2x to 5x faster than its
alternating (matmul, then pointwise) CUDA kernel, with the fused Triton backend limited to head
dimensions <= 64. Per-shape sLSTM timings from the paper (its figures) were not in the text searched
when this was written, so none are quoted here.

Usage:
    python benchmarks/slstm.py [--quick] [--engine auto] [--rounds 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from common import format_machine, machine_info, time_alternating, write_json_atomic

from rnnkit.nn.slstm import SLSTM
from rnnkit.testing import assert_close

RESULTS = Path(__file__).resolve().parent / "results" / "slstm.json"
SHAPES = [(100, 16, 256, 4), (1000, 8, 64, 1), (100, 64, 512, 8)]  # (T, B, H, heads)
QUICK_SHAPES = [(20, 4, 32, 2)]


def unfused(layer: SLSTM, x: torch.Tensor) -> torch.Tensor:
    """The sLSTM as a Python loop of torch ops over time (x (T, B, I) -> out (T, B, H)), from zero states."""
    w_ih, r, b = layer.weight_ih_l0, layer.weight_hh_l0, layer.bias_ih_l0
    T, B, H, K = x.shape[0], x.shape[1], layer.hidden_size, layer.num_heads
    dh = H // K
    blocks = r.view(4, K, dh, dh)  # R[q, k, u, v]
    xp = F.linear(x, w_ih, b)  # (T, B, 4H), all steps at once
    h, c, n, m = (x.new_zeros(B, H) for _ in range(4))
    outs = []
    for t in range(T):
        hr = torch.einsum("bkv,qkuv->bqku", h.view(B, K, dh), blocks).reshape(B, 4 * H)
        a_i, a_f, a_z, a_o = (xp[t] + hr).chunk(4, dim=1)
        lfm = F.logsigmoid(a_f) + m
        m = torch.maximum(lfm, a_i)
        i, f = torch.exp(a_i - m), torch.exp(lfm - m)
        c = f * c + i * torch.tanh(a_z)
        n = f * n + i
        h = torch.sigmoid(a_o) * c / n
        outs.append(h)
    return torch.stack(outs)


def train_runner(forward, params, x, g):
    def run():
        for p in params:
            p.grad = None
        leaf = x.detach().requires_grad_()
        forward(leaf).backward(g)
    return run


def row(shape, engine: str, rounds: int) -> dict:
    T, B, H, K = shape
    torch.manual_seed(0)
    layer = SLSTM(H, H, num_heads=K, engine=engine)
    x, g = torch.randn(T, B, H), torch.randn(T, B, H)
    params = list(layer.parameters())
    xr = x.clone().requires_grad_()
    fused_out, unfused_out = layer(xr)[0], unfused(layer, xr)
    assert_close(fused_out, unfused_out, "output", f"{shape} output")
    for a, b in zip(torch.autograd.grad(fused_out, [xr, *params], g),
                    torch.autograd.grad(unfused_out, [xr, *params], g), strict=True):
        assert_close(a, b, "grad", f"{shape} gradient")
    runners = {"rnnkit": train_runner(lambda v: layer(v)[0], params, x, g),
               "unfused": train_runner(lambda v: unfused(layer, v), params, x, g)}
    ms = time_alternating(runners, warmup=2, rounds=rounds)
    return {"T": T, "B": B, "H": H, "heads": K, "engine": engine, "ms": ms, "gain": ms["unfused"] / ms["rnnkit"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one tiny shape, to check the script runs")
    parser.add_argument("--engine", default="auto", help="rnnkit engine of the SLSTM layer")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    info = machine_info(args.threads)
    print(format_machine(info))
    print(f"{'T':>5s} {'B':>4s} {'H':>4s} {'heads':>5s} {'rnnkit ms':>10s} {'unfused ms':>10s} {'gain':>6s}")
    rows = []
    for shape in QUICK_SHAPES if args.quick else SHAPES:
        r = row(shape, args.engine, 3 if args.quick else args.rounds)
        rows.append(r)
        print(f"{r['T']:5d} {r['B']:4d} {r['H']:4d} {r['heads']:5d} {r['ms']['rnnkit']:10.2f} "
              f"{r['ms']['unfused']:10.2f} {r['gain']:6.2f}", flush=True)
    write_json_atomic(RESULTS, {"machine": info, "engine": args.engine, "quick": args.quick, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
