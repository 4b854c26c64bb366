"""Benchmark: the cells beyond torch.nn (layer norm, regularisers, peepholes, minGRU/minLSTM, sLSTM) on one GPU.

The GPU half of benchmarks/variants.py, scan.py and slstm.py (which time the CPU engine). Parts, in
one process, in this order:

    check    every family's Triton kernels against the reference engine, on the GPU, at small shapes
             (2 layers, bidirectional, packed unsorted where the layer takes it): output, final states
             and every gradient (input, each parameter) for random upstream gradients, as relative
             errors (rnnkit.testing.relative_error). Eval mode (nothing random) against the reference
             engine in float64, bound 1e-3 in float32 (Triton's products are 3xTF32) and 1e-2 in
             bfloat16, or 1.5x the error of the reference engine run in the same dtype where that
             exceeds the bound (rounding the problem itself amplifies); train mode with zoneout, recurrent dropout and DropConnect against the reference
             engine in float32 under the same random seed (the masks are drawn before the engine runs,
             so both see the same ones), bound 1e-3.
    ln       training step (forward, backward of a random upstream gradient, dx included) of the
             layer-normalised LSTM and GRU on the Triton engine against: the plain cell on the same
             engine (cost = ln / plain, the issue's bound <= 1.3), the unfused Python loop of torch ops a
             user writes today (gain = unfused / ln), and torch.nn's plain cell on cuDNN; plus every
             option at once (layer_norm + zoneout + recurrent_dropout + weight_drop, training).
    scan     minGRU and minLSTM (a scan over time) against rnnkit's GRU on the Triton engine and
             torch.nn's GRU on cuDNN, training step at T=4096, B=8, H=256 (the issue's bound: the GRU
             takes >= 50x the minGRU's time on a GPU).
    slstm    the sLSTM on the Triton engine against the same equations as a loop of torch ops
             (benchmarks/slstm.py's), at FlashRNN's benchmark shape (T=1024, B=16, H=768 in 12 heads of
             64; its kernel_speed_benchmark.py) and two smaller ones. FlashRNN publishes those timings
             only as plots (bfloat16, H100): no number is quoted; rnnkit's sLSTM kernels take float32.

Timing: one sample is one call between two torch.cuda.synchronize(), contenders in turns, median of
the rounds after two warm-up rounds (common.time_alternating). float32 means TF32 off everywhere.
Rows that raise are reported and skipped. Results: stdout, and JSON (--out) after every row.

Usage (repository root, no install needed):
    python benchmarks/gpu_variants.py [--parts check,ln,scan,slstm] [--quick] [--rounds 10] [--out FILE]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing rnnkit

import torch  # noqa: E402
from common import machine_info, time_alternating, write_json_atomic  # noqa: E402
from scan import SHAPE as SCAN_SHAPE  # noqa: E402
from slstm import train_runner as step_runner  # noqa: E402
from slstm import unfused as slstm_unfused  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402
from variants import unfused as ln_unfused  # noqa: E402

import rnnkit  # noqa: E402
from rnnkit.nn.minimal import MinGRU, MinLSTM  # noqa: E402
from rnnkit.nn.slstm import SLSTM  # noqa: E402
from rnnkit.testing import relative_error  # noqa: E402

DEVICE = torch.device("cuda")
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "gpu_variants.json"
BOUND = {torch.float32: 1e-3, torch.bfloat16: 1e-2}
SAME_DTYPE_FACTOR = 1.5  # where plain torch ops in the same dtype exceed BOUND, the kernels may be this much worse
LN_SHAPES = [(100, 16, 256), (100, 64, 512), (100, 256, 256)]  # (T, B, H), input size = H
SLSTM_SHAPES = [(1024, 16, 768, 12), (100, 16, 256, 4), (100, 64, 512, 8)]  # (T, B, H, heads)
ALL_OPTIONS = dict(layer_norm=True, zoneout=0.1, recurrent_dropout=0.1, weight_drop=0.1)

# (label, constructor, keyword arguments, training-mode randomness?, dtypes the Triton kernels take)
CHECKS = [
    ("LSTM layer_norm", rnnkit.LSTM, dict(layer_norm=True), False, (torch.float32, torch.bfloat16)),
    ("GRU layer_norm", rnnkit.GRU, dict(layer_norm=True), False, (torch.float32, torch.bfloat16)),
    ("LSTM peephole", rnnkit.LSTM, dict(peephole=True), False, (torch.float32, torch.bfloat16)),
    ("LSTM all options (train)", rnnkit.LSTM, dict(ALL_OPTIONS, peephole=True), True, (torch.float32,)),
    ("GRU all options (train)", rnnkit.GRU, ALL_OPTIONS, True, (torch.float32,)),
    ("MinGRU", MinGRU, {}, False, (torch.float32, torch.bfloat16)),
    ("MinLSTM", MinLSTM, {}, False, (torch.float32, torch.bfloat16)),
    ("SLSTM 4 heads", SLSTM, dict(num_heads=4), False, (torch.float32,)),
]


def failure(e: BaseException) -> str:
    traceback.print_exc(file=sys.stderr)
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------- part: check


def results(module, x, seed: int | None) -> list[torch.Tensor]:
    """[output, every final state, dx, d(every parameter)] for fixed random upstream gradients."""
    leaf = x.data.detach().requires_grad_()
    inp = x._replace(data=leaf)
    if seed is not None:
        torch.manual_seed(seed)  # the same masks for both engines
    out, state = module(inp)
    outs = [out.data, *(state if isinstance(state, tuple) else (state,))]
    gen = torch.Generator().manual_seed(7)
    ups = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.device, o.dtype) for o in outs]
    return [o.detach() for o in outs] + list(torch.autograd.grad(outs, [leaf, *module.parameters()], ups))


def check_one(label: str, cls, kwargs: dict, train: bool, dtype) -> dict:
    T, B, I, H = 9, 5, 24, 48  # odd sizes, 2 layers, bidirectional, packed unsorted
    torch.manual_seed(0)
    kit = cls(I, H, num_layers=2, bidirectional=True, engine="triton", **kwargs).to(DEVICE, dtype)
    ref_dtype = torch.float32 if train else torch.float64
    ref = cls(I, H, num_layers=2, bidirectional=True, engine="reference", **kwargs).to(DEVICE, ref_dtype)
    with torch.no_grad():  # layer-norm gains off 1, biases and peepholes off 0, so that every gradient matters
        for name, p in kit.named_parameters():  # (not torch.nn's weights: larger ones make the recurrence chaotic,
            if name.startswith(("ln_", "peephole")):  # and its error in bfloat16 a measure of that chaos)
                p.add_(0.1 * torch.randn_like(p))
    ref.load_state_dict(kit.state_dict())
    kit.train(train)
    ref.train(train)
    x = torch.randn(T, B, I, generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([9, 4, 7, 1, 9])
    packed = [pack_padded_sequence(x.to(DEVICE, d), lengths, enforce_sorted=False) for d in (dtype, ref_dtype)]
    seed = 123 if train else None
    truth = results(ref, packed[1], seed)
    errors = [relative_error(a, b) for a, b in zip(results(kit, packed[0], seed), truth, strict=True)]
    row = {"case": label, "dtype": str(dtype).removeprefix("torch."), "train": train,
           "against": f"reference {str(ref_dtype).removeprefix('torch.')}", "errors": errors,
           "max_rel_err": max(errors), "bound": BOUND[dtype]}
    if dtype != ref_dtype:  # what plain torch ops reach in this dtype: the same equations, the reference engine
        same = cls(I, H, num_layers=2, bidirectional=True, engine="reference", **kwargs).to(DEVICE, dtype)
        same.load_state_dict(kit.state_dict())
        same.train(train)
        row["reference_same_dtype_err"] = max(relative_error(a, b) for a, b in zip(
            results(same, packed[0], seed), truth, strict=True))
        if row["reference_same_dtype_err"] > row["bound"]:  # the problem amplifies rounding beyond the bound:
            row["bound"] = SAME_DTYPE_FACTOR * row["reference_same_dtype_err"]  # bound the kernels relative to it
    return {**row, "ok": row["max_rel_err"] <= row["bound"]}


def part_check(quick: bool, save) -> list[dict]:
    rows = []
    for label, cls, kwargs, train, dtypes in CHECKS[:2] if quick else CHECKS:
        for dtype in dtypes:
            try:
                row = check_one(label, cls, kwargs, train, dtype)
            except Exception as e:  # noqa: BLE001
                row = {"case": label, "dtype": str(dtype).removeprefix("torch."), "error": failure(e), "ok": False}
            rows.append(row)
            err = (f"{row['max_rel_err']:.2e} (bound {row['bound']:.2g}, against {row['against']}"
                   + (f"; the reference engine in {row['dtype']}: {row['reference_same_dtype_err']:.2e}"
                      if "reference_same_dtype_err" in row else "") + ")") if "errors" in row else row["error"]
            print(f"  {'ok  ' if row['ok'] else 'FAIL'} {label:26s} {row['dtype']:9s} {err}", flush=True)
            save(rows)
    return rows


# ---------------------------------------------------------------- timed parts


def train_runner(forward, params, x, g):
    """One training step (benchmarks/slstm.py's: zero the gradients, forward, backward of g, dx too), then wait
    for the GPU."""
    step = step_runner(forward, params, x, g)

    def run():
        step()
        sync()
    return run


def ln_row(kind: str, shape, dtype, rounds: int) -> dict:
    T, B, H = shape
    cls, torch_cls = (rnnkit.GRU, torch.nn.GRU) if kind == "ln-gru" else (rnnkit.LSTM, torch.nn.LSTM)
    torch.manual_seed(0)
    opts = ALL_OPTIONS if kind == "all-options" else dict(layer_norm=True)
    fancy = cls(H, H, engine="triton", **opts).to(DEVICE, dtype)
    plain = cls(H, H, engine="triton").to(DEVICE, dtype)
    cudnn = torch_cls(H, H).to(DEVICE, dtype)
    plain.load_state_dict(fancy.state_dict(), strict=False)
    cudnn.load_state_dict(plain.state_dict())
    gen = torch.Generator().manual_seed(1)
    x, g = (torch.randn(T, B, H, generator=gen).to(DEVICE, dtype) for _ in range(2))
    runners = {"plain": train_runner(lambda v: plain(v)[0], list(plain.parameters()), x, g),
               "fused": train_runner(lambda v: fancy(v)[0], list(fancy.parameters()), x, g),
               "cudnn": train_runner(lambda v: cudnn(v)[0], list(cudnn.parameters()), x, g)}
    if kind != "all-options":
        fancy.eval()  # nothing random; the unfused loop is the same function
        runners["unfused"] = train_runner(lambda v: ln_unfused(fancy, v), list(fancy.parameters()), x, g)
        wide = copy.deepcopy(fancy).float()  # the unfused loop in float32: its own bfloat16 error is not ours
        truth = ln_unfused(wide, x.float())
        err = relative_error(fancy(x)[0], truth)
        # what the same loop reaches in this dtype: a bfloat16 LN-LSTM at T=100 is chaotic (on an H200 the
        # reference engine in bfloat16 was 1.5-1.8 off float64, relative to the output's size), so the fused
        # kernel is bound relative to it there
        own = relative_error(ln_unfused(fancy, x), truth) if dtype != torch.float32 else 0.0
        if not err <= max(10 * BOUND[dtype], SAME_DTYPE_FACTOR * own):
            raise AssertionError(f"fused and unfused (float32) outputs differ: relative error {err:.3g} (the "
                                 f"unfused loop in {dtype}: {own:.3g})")
    ms = time_alternating(runners, warmup=2, rounds=rounds)
    row = {"kind": kind, "T": T, "B": B, "H": H, "dtype": str(dtype).removeprefix("torch."), "ms": ms,
           "cost_vs_plain": ms["fused"] / ms["plain"], "cost_vs_cudnn": ms["fused"] / ms["cudnn"]}
    if "unfused" in ms:
        row["gain_vs_unfused"] = ms["unfused"] / ms["fused"]
    return row


def scan_row(kind: str, shape, rounds: int) -> dict:
    T, B, H = shape
    torch.manual_seed(0)
    minimal = {"mingru": MinGRU, "minlstm": MinLSTM}[kind](H, H, engine="triton").to(DEVICE)
    gru = rnnkit.GRU(H, H, engine="triton").to(DEVICE)
    cudnn = torch.nn.GRU(H, H).to(DEVICE)
    gen = torch.Generator().manual_seed(1)
    x, g = (torch.randn(T, B, H, generator=gen).to(DEVICE) for _ in range(2))
    runners = {"gru": train_runner(lambda v: gru(v)[0], list(gru.parameters()), x, g),
               "cudnn_gru": train_runner(lambda v: cudnn(v)[0], list(cudnn.parameters()), x, g),
               kind: train_runner(lambda v: minimal(v)[0], list(minimal.parameters()), x, g)}
    ms = time_alternating(runners, warmup=2, rounds=rounds)
    return {"kind": kind, "T": T, "B": B, "H": H, "dtype": "float32", "ms": ms,
            "speedup_vs_gru": ms["gru"] / ms[kind], "speedup_vs_cudnn_gru": ms["cudnn_gru"] / ms[kind]}


def slstm_row(shape, rounds: int) -> dict:
    T, B, H, K = shape
    torch.manual_seed(0)
    layer = SLSTM(H, H, num_heads=K, engine="triton").to(DEVICE)
    gen = torch.Generator().manual_seed(1)
    x, g = (torch.randn(T, B, H, generator=gen).to(DEVICE) for _ in range(2))
    err = relative_error(layer(x)[0], slstm_unfused(layer, x))
    if not err <= BOUND[torch.float32]:
        raise AssertionError(f"fused and unfused outputs differ: relative error {err:.3g}")
    params = list(layer.parameters())
    runners = {"rnnkit": train_runner(lambda v: layer(v)[0], params, x, g),
               "unfused": train_runner(lambda v: slstm_unfused(layer, v), params, x, g)}
    ms = time_alternating(runners, warmup=2, rounds=rounds)
    return {"T": T, "B": B, "H": H, "heads": K, "dtype": "float32", "ms": ms, "gain": ms["unfused"] / ms["rnnkit"]}


def fmt(row: dict) -> str:
    if "failed" in row:
        return f"  FAILED {row['what']}: {row['failed']}"
    ms = "  ".join(f"{k} {v:8.2f}" for k, v in row["ms"].items())
    ratios = "  ".join(f"{k} {row[k]:.2f}" for k in ("cost_vs_plain", "cost_vs_cudnn", "gain_vs_unfused",
                                                      "speedup_vs_gru", "speedup_vs_cudnn_gru", "gain") if k in row)
    return f"  {row['what']:40s} ms: {ms} | {ratios}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default="check,ln,scan,slstm")
    p.add_argument("--quick", action="store_true", help="smoke run: two checks, one small shape per part")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--device", default="cuda", help="cpu: a smoke run of the script under TRITON_INTERPRET=1")
    args = p.parse_args(argv)
    global DEVICE
    DEVICE = torch.device(args.device)
    parts = args.parts.split(",")
    if unknown := set(parts) - {"check", "ln", "scan", "slstm"}:
        p.error(f"--parts takes check, ln, scan and slstm, got {', '.join(sorted(unknown))}")
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        print("benchmarks/gpu_variants.py needs a CUDA GPU (or --device cpu under TRITON_INTERPRET=1)",
              file=sys.stderr)
        return 2
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    import triton
    info = machine_info(torch.get_num_threads())
    info.update(gpu=torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "none (interpreter)",
                cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(), triton=triton.__version__)
    payload = {"machine": info, "quick": args.quick, "tf32": False, "check": [], "timed": []}
    start = time.perf_counter()

    def save():
        payload["elapsed_s"] = time.perf_counter() - start
        write_json_atomic(args.out, payload)

    print(f"GPU: {info['gpu']} | torch {torch.__version__} | triton {triton.__version__}", flush=True)
    if "check" in parts:
        print("\ncheck: Triton engine against the reference engine on the GPU (relative error)", flush=True)
        payload["check"] = part_check(args.quick, lambda rows: (payload.update(check=rows), save()))
    rounds = 3 if args.quick else args.rounds
    tiny = args.quick and DEVICE.type == "cpu"  # the interpreter runs a kernel ~1000x slower than a GPU
    jobs = []
    if "ln" in parts:
        for dtype in (torch.float32, torch.bfloat16):
            for kind in ("ln-lstm", "ln-gru", "all-options"):
                for shape in [(6, 2, 16)] if tiny else LN_SHAPES[:1] if args.quick else LN_SHAPES:
                    jobs.append((f"{kind} {dtype} T{shape[0]} B{shape[1]} H{shape[2]}",
                                 lambda k=kind, s=shape, d=dtype: ln_row(k, s, d, rounds)))
    if "scan" in parts:
        shape = (12, 2, 8) if tiny else (256, 8, 64) if args.quick else SCAN_SHAPE
        for kind in ("mingru", "minlstm"):
            jobs.append((f"{kind} T{shape[0]} B{shape[1]} H{shape[2]}", lambda k=kind, s=shape: scan_row(k, s, rounds)))
    if "slstm" in parts:
        for shape in [(6, 2, 16, 2)] if tiny else SLSTM_SHAPES[1:2] if args.quick else SLSTM_SHAPES:
            jobs.append((f"slstm T{shape[0]} B{shape[1]} H{shape[2]} heads {shape[3]}",
                         lambda s=shape: slstm_row(s, rounds)))
    if jobs:
        print("\ntraining step, median ms and ratios", flush=True)
    for what, job in jobs:
        try:
            row = {"what": what, **job()}
        except Exception as e:  # noqa: BLE001  (report the row, go on with the next)
            row = {"what": what, "failed": failure(e)}
        payload["timed"].append(row)
        print(fmt(row), flush=True)
        save()
        torch.cuda.empty_cache()
    payload["complete"] = True
    save()
    failed = [r for r in payload["check"] if not r["ok"]]
    print(f"\ncheck: {len(payload['check']) - len(failed)} of {len(payload['check'])} passed; "
          f"{sum('failed' in r for r in payload['timed'])} timed rows failed; "
          f"total {payload['elapsed_s']:.0f} s; wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
