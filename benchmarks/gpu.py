"""Benchmark: rnnkit's Triton engine against torch.nn (cuDNN) and the reference engine on one GPU.

Three parts, in one process, in this order:

    check    correctness before any timing. LSTM and GRU at (T, B, H) = (100, 16, 256) padded and
             (100, 64, 512) packed, RNN (tanh, relu) and LSTM with proj_size at (50, 8, 128) packed, each
             with both strategies forced (persistent, stepwise), in float32 (TF32 off) and bfloat16.
             Ground truth: torch.nn in float64 on the GPU, same weights and inputs; random upstream
             gradients on every output. Each output and every gradient's error relative to its size
             (rnnkit.testing.relative_error) must stay below 1e-3 (float32) and 1e-2 (bfloat16); cuDNN's
             own error in the same dtype is recorded beside it. The reference engine in float64 is checked
             against torch.nn in float64 (the first link of the equivalence chain) at the same shapes.
    layers   LSTM and GRU, T=100, B in {1, 16, 64, 256}, H in {256, 512, 1024} (input size = H), bfloat16
             and float32 (TF32 off); modes "forward" (inference under no_grad) and "train" (forward and
             backward of a random upstream gradient, the input requiring a gradient). Contenders:
             torch.nn (cuDNN), engine="triton" with its automatic strategy ("auto"), and the other
             strategy forced ("alt", for calibrating choose_strategy's thresholds; "n/a" where it cannot run).
    packed   LSTM and GRU, T=100, B=64, H=512, bfloat16, lengths spread evenly over [T/2, T]: the packed
             batch against the same batch padded to full length, torch.nn and the Triton engine.

Timing: contenders take turns within each round; a sample is one call between two
torch.cuda.synchronize(), so launch overhead counts for both; each row reports the median. Before a
row is timed the Triton engine's outputs (and gradients, in train mode) are compared with torch.nn's in
the same dtype (bounds below); a row that fails is reported and not timed. The first call of each
contender (Triton compiles kernels and captures CUDA graphs then) is timed separately as first_ms.
No row starts after --budget seconds; skipped rows are listed, never estimated. On an H200 the check
took 27 s and the 100 timed rows 89 s (2026-11-28, docs/PERFORMANCE.md).

A fourth part, tune (not in the default), times alternative tiles and strategies of the Triton engine
against each other at a few shapes: the data behind the thresholds in rnnkit/engines/triton.py.

Usage (repository root; no install needed):
    python benchmarks/gpu.py [--budget 360] [--quick] [--parts check,layers,packed,tune]
                             [--persistent-from CHECK_JSON] [--no-persistent] [--out benchmarks/results/gpu.json]

This is a script, not a test; results go to stdout and to a JSON file.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing rnnkit

import torch  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402

import rnnkit  # noqa: E402
from common import Column, machine_info, markdown_table, packed_lengths, write_json_atomic  # noqa: E402
from rnnkit.engines import triton as tri  # noqa: E402
from rnnkit.testing import relative_error  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "gpu.json"
DEVICE = torch.device("cuda")
DTYPES = {"bf16": torch.bfloat16, "f32": torch.float32}
ACCURACY = {torch.float32: 1e-3, torch.bfloat16: 1e-2}  # against float64: the bounds
# before timing, against torch.nn in the same dtype: both sides carry their own rounding error
SANITY = {torch.float32: 2e-3, torch.bfloat16: 3e-2}
CUDNN_FACTOR = 1.5  # where cuDNN's own error exceeds ACCURACY, the Triton engine may be at most this times worse
STEPS, BATCHES, HIDDENS, CELLS = 100, (1, 16, 64, 256), (256, 512, 1024), ("LSTM", "GRU")
PACKED_SHAPE = (100, 64, 512)


# ---------------------------------------------------------------- models, inputs, runs


def build(cell: str, inp: int, hidden: int, dtype, engine: str | None, proj: int = 0, nonlinearity: str = "tanh",
          seed: int = 0) -> torch.nn.Module:
    """torch.nn (engine=None) or rnnkit module with the weights torch.nn draws from `seed`."""
    kw = {"proj_size": proj} if proj else {}
    kw.update({"nonlinearity": nonlinearity} if cell == "RNN" else {})
    torch.manual_seed(seed)
    ref = getattr(torch.nn, cell)(inp, hidden, **kw)
    if engine is None:
        return ref.to(DEVICE, dtype)
    kit = getattr(rnnkit, cell)(inp, hidden, **kw, engine=engine)
    kit.load_state_dict(ref.state_dict(), strict=True)  # a renamed parameter must fail, not time half a model
    return kit.to(DEVICE, dtype)


def make_input(steps: int, batch: int, inp: int, dtype, packed: bool, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(steps, batch, inp, generator=gen).to(DEVICE, dtype)
    return pack_padded_sequence(x, packed_lengths(steps, batch), enforce_sorted=False) if packed else x


def data(t):
    return t.data if isinstance(t, torch.nn.utils.rnn.PackedSequence) else t


def outputs_and_grads(module: torch.nn.Module, x, seed: int = 2) -> list[torch.Tensor]:
    """[out, h_n, (c_n), dx, d(every parameter)] for random upstream gradients on every output."""
    leaf = data(x).detach().requires_grad_()
    x = x._replace(data=leaf) if isinstance(x, torch.nn.utils.rnn.PackedSequence) else leaf
    out, state = module(x)
    outs = [data(out), *(state if isinstance(state, tuple) else (state,))]
    gen = torch.Generator().manual_seed(seed)
    ups = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(DEVICE, o.dtype) for o in outs]
    grads = torch.autograd.grad(outs, [leaf, *module.parameters()], ups)
    return [o.detach() for o in outs] + list(grads)


def forward_run(module, x):
    def run():
        with torch.no_grad():
            return module(x)
    return run


def train_run(module, x):
    gen = torch.Generator().manual_seed(4)
    shape = module(x)[0]
    g = torch.randn(data(shape).shape, generator=gen).to(DEVICE, data(shape).dtype)

    def run():
        module.zero_grad(set_to_none=True)
        leaf = data(x).detach().requires_grad_()
        inp = x._replace(data=leaf) if isinstance(x, torch.nn.utils.rnn.PackedSequence) else leaf
        out, _ = module(inp)
        data(out).backward(g)
        return leaf.grad
    return run


@contextlib.contextmanager
def strategy(name: str):
    old, tri.STRATEGY = tri.STRATEGY, name
    try:
        yield
    finally:
        tri.STRATEGY = old


def under(name: str, run):
    def wrapped():
        with strategy(name):
            return run()
    return wrapped


# ---------------------------------------------------------------- part: correctness


def failure(e: BaseException) -> str:
    """One line for a row that raised: the exception and where (the full traceback goes to stderr)."""
    traceback.print_exc(file=sys.stderr)
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]


def check_case(label: str, cell: str, steps: int, batch: int, hidden: int, packed: bool, proj=0,
               nonlinearity="tanh", strategies=("persistent", "stepwise")) -> list[dict]:
    """Every strategy and dtype of one case against torch.nn in float64."""
    rows = []
    x64 = make_input(steps, batch, hidden, torch.float64, packed)
    truth = outputs_and_grads(build(cell, hidden, hidden, torch.float64, None, proj, nonlinearity), x64)
    ref64 = outputs_and_grads(build(cell, hidden, hidden, torch.float64, "reference", proj, nonlinearity), x64)
    chain = max(relative_error(a, b) for a, b in zip(ref64, truth, strict=True))
    rows.append({"case": label, "who": "reference f64 vs torch f64", "max_rel_err": chain, "bound": 1e-10,
                 "ok": chain <= 1e-10})
    for dtype in (torch.float32, torch.bfloat16):
        x = make_input(steps, batch, hidden, dtype, packed)
        cudnn = outputs_and_grads(build(cell, hidden, hidden, dtype, None, proj, nonlinearity), x)
        cudnn_err = max(relative_error(a, b) for a, b in zip(cudnn, truth, strict=True))
        for name in strategies:
            print(f"  ...  {label:34s} triton {name} {dtype}", flush=True)  # the last line shows where a hang is
            try:
                with strategy(name):
                    got = outputs_and_grads(build(cell, hidden, hidden, dtype, "triton", proj, nonlinearity), x)
                    torch.cuda.synchronize()
            except Exception as e:  # noqa: BLE001  (a grid that does not fit, a compile error: report, go on)
                rows.append({"case": label, "who": f"triton {name} {dtype}", "error": failure(e), "ok": False})
                continue
            errs = [relative_error(a, b) for a, b in zip(got, truth, strict=True)]
            bound = ACCURACY[dtype]
            if cudnn_err > bound:  # the problem amplifies rounding (a ReLU RNN over 50 steps in bfloat16): the
                bound = CUDNN_FACTOR * cudnn_err  # bound is then relative to what cuDNN itself achieves
            rows.append({"case": label, "who": f"triton {name} {dtype}", "max_rel_err": max(errs),
                         "errors": errs, "cudnn_rel_err": cudnn_err, "bound": bound, "ok": max(errs) <= bound})
    for r in rows:
        err = f"{r['max_rel_err']:.2e}" if "max_rel_err" in r else r.get("error")
        extra = f" (cuDNN {r['cudnn_rel_err']:.2e}; bound {r['bound']:.1e})" if "cudnn_rel_err" in r else ""
        print(f"  {'ok  ' if r['ok'] else 'FAIL'} {label:34s} {r['who']:34s} {err}{extra}", flush=True)
    return rows


def part_check(quick: bool, strategies: tuple[str, ...], save) -> list[dict]:
    cases = [("LSTM T100 B16 H256 padded", "LSTM", 100, 16, 256, False, 0, "tanh"),
             ("GRU T100 B16 H256 padded", "GRU", 100, 16, 256, False, 0, "tanh"),
             ("LSTM T100 B64 H512 packed", "LSTM", 100, 64, 512, True, 0, "tanh"),
             ("GRU T100 B64 H512 packed", "GRU", 100, 64, 512, True, 0, "tanh"),
             ("RNN_TANH T50 B8 H128 packed", "RNN", 50, 8, 128, True, 0, "tanh"),
             ("RNN_RELU T50 B8 H128 packed", "RNN", 50, 8, 128, True, 0, "relu"),
             ("LSTM proj64 T50 B8 H128 packed", "LSTM", 50, 8, 128, True, 64, "tanh")]
    rows = []
    for case in cases[:2] if quick else cases:
        try:
            rows += check_case(*case, strategies=strategies)
        except Exception as e:  # noqa: BLE001  (the float64 ground truth itself failed)
            rows.append({"case": case[0], "who": "case", "error": failure(e), "ok": False})
            print(f"  FAIL {case[0]:34s} {rows[-1]['error']}", flush=True)
        save(rows)
    return rows


# ---------------------------------------------------------------- part: determinism

REPEATS = 10  # runs of the same call whose results must be bit-identical


def identical_runs(make_results, repeats: int = REPEATS) -> tuple[bool, int]:
    """(every run bit-identical to the first, how many results each run has): NaN counts as differing."""
    first = make_results()
    same = True
    for _ in range(repeats - 1):
        again = make_results()
        same &= all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    return same, len(first)


def determinism_case(label: str, cell: str, steps: int, batch: int, hidden: int, packed: bool, proj: int,
                     dtype, strategies: tuple[str, ...]) -> list[dict]:
    """REPEATS runs of outputs and every gradient, per strategy: plain, then under
    torch.use_deterministic_algorithms(True) (which must neither raise nor change a bit); cuDNN beside it."""
    x = make_input(steps, batch, hidden, dtype, packed)
    name = str(dtype).removeprefix("torch.")
    rows = []
    for who in (*strategies, "cudnn"):
        module = build(cell, hidden, hidden, dtype, None if who == "cudnn" else "triton", proj)
        run = lambda: outputs_and_grads(module, x)  # noqa: E731
        run = run if who == "cudnn" else under(who, run)
        row = {"case": label, "dtype": name, "who": who if who == "cudnn" else f"triton {who}"}
        try:
            row["identical"], row["results"] = identical_runs(run)
        except Exception as e:  # noqa: BLE001
            row["identical"], row["error"] = False, failure(e)
        try:
            baseline = run()
            torch.use_deterministic_algorithms(True)
            row["deterministic_mode_identical"], _ = identical_runs(run)
            row["deterministic_mode_equals_default"] = all(
                torch.equal(a, b) for a, b in zip(baseline, run(), strict=True))
        except Exception as e:  # noqa: BLE001  (an op without a deterministic implementation raises)
            row["deterministic_mode_error"] = failure(e)
        finally:
            torch.use_deterministic_algorithms(False)
        rows.append(row)
        det = row.get("deterministic_mode_error") or (
            f"identical {row['deterministic_mode_identical']}, equals default "
            f"{row['deterministic_mode_equals_default']}")
        print(f"  {label:30s} {name:9s} {row['who']:18s} {REPEATS} runs identical: "
              f"{row.get('error') or row['identical']} | use_deterministic_algorithms: {det}", flush=True)
    return rows


def part_determinism(quick: bool, strategies: tuple[str, ...], save) -> list[dict]:
    """Bit-identical outputs and gradients across REPEATS runs, each strategy, float32 and bfloat16.

    torch.use_deterministic_algorithms(True) needs CUBLAS_WORKSPACE_CONFIG=:4096:8 (or :16:8) in the
    environment before CUDA starts, or cuBLAS raises: main() sets it when this part is asked for."""
    cases = [("LSTM T100 B16 H256 padded", "LSTM", 100, 16, 256, False, 0),
             ("GRU T100 B64 H512 packed", "GRU", 100, 64, 512, True, 0),
             ("RNN_TANH T50 B8 H128 packed", "RNN", 50, 8, 128, True, 0),
             ("LSTM proj64 T50 B8 H128 packed", "LSTM", 50, 8, 128, True, 64)]
    rows = []
    for case in cases[:1] if quick else cases:
        for dtype in (torch.float32, torch.bfloat16):
            rows += determinism_case(*case, dtype, strategies)
            save(rows)
    return rows


# ---------------------------------------------------------------- timing


def sample_ms(run) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3


def time_runners(runners: dict, row_budget_s: float) -> tuple[dict, dict, int]:
    """(median ms, first-call ms, rounds): first calls, two warm-up rounds, then turns within each round."""
    first = {name: sample_ms(run) for name, run in runners.items()}
    cost = {}
    for _ in range(2):
        cost = {name: sample_ms(run) for name, run in runners.items()}
    rounds = int(min(30, max(3, row_budget_s * 1e3 / max(sum(cost.values()), 1e-3))))
    samples = {name: [] for name in runners}
    for i in range(rounds):
        names = list(runners)
        k = i % len(names)  # rotate who goes first
        for name in names[k:] + names[:k]:
            samples[name].append(sample_ms(runners[name]))
    return {n: statistics.median(s) for n, s in samples.items()}, first, rounds


def sane(mode: str, kit_run, torch_run, dtype) -> str | None:
    """None if the Triton engine agrees with torch.nn in this dtype, else what differs."""
    if mode == "forward":
        (a_out, a_state), (b_out, b_state) = kit_run(), torch_run()
        pairs = [(data(a_out), data(b_out))] + list(zip(
            a_state if isinstance(a_state, tuple) else (a_state,), b_state if isinstance(b_state, tuple) else (b_state,)))
    else:
        pairs = [(kit_run(), torch_run())]  # dx: every step's gradient passes through it
    for k, (a, b) in enumerate(pairs):
        err = relative_error(a, b)
        if not (torch.isfinite(a).all() and err <= SANITY[dtype]):
            return f"result {k}: relative error {err:.3g} against torch.nn (bound {SANITY[dtype]:g})"
    return None


def time_layer(cell: str, batch: int, hidden: int, dtype, mode: str, row_budget_s: float) -> dict:
    ref, kit = build(cell, hidden, hidden, dtype, None), build(cell, hidden, hidden, dtype, "triton")
    x = make_input(STEPS, batch, hidden, dtype, False)
    make = forward_run if mode == "forward" else train_run
    auto = tri.choose_strategy(batch, hidden, DEVICE, dtype)
    alt = "stepwise" if auto == "persistent" else "persistent"
    if tri.PERSISTENT_MAX_BATCH == 0:  # --no-persistent
        alt = None
    runners = {"torch": make(ref, x), "auto": under(auto, make(kit, x))}
    row = {"cell": cell, "T": STEPS, "B": batch, "H": hidden, "dtype": str(dtype).removeprefix("torch."),
           "mode": mode, "auto_strategy": auto, "alt_strategy": alt}
    if (why := sane(mode, runners["auto"], runners["torch"], dtype)) is not None:
        return {**row, "failed": why}
    try:
        if alt is None:
            raise RuntimeError("the persistent strategy is off (--no-persistent)")
        alt_run = under(alt, make(kit, x))
        if (why := sane(mode, alt_run, runners["torch"], dtype)) is None:
            runners["alt"] = alt_run
        else:
            row["alt_failed"] = why
    except Exception as e:  # noqa: BLE001  (the persistent grid does not fit: no alternative to time)
        row["alt_failed"] = failure(e)
    ms, first, rounds = time_runners(runners, row_budget_s)
    row.update({f"{n}_ms": v for n, v in ms.items()}, **{f"{n}_first_ms": v for n, v in first.items()},
               rounds=rounds, ratio=ms["torch"] / ms["auto"])
    if "alt" in ms:
        row["alt_ratio"] = ms["torch"] / ms["alt"]
    return row


def time_packed(cell: str, mode: str, row_budget_s: float) -> dict:
    steps, batch, hidden = PACKED_SHAPE
    dtype = torch.bfloat16
    ref, kit = build(cell, hidden, hidden, dtype, None), build(cell, hidden, hidden, dtype, "triton")
    make = forward_run if mode == "forward" else train_run
    padded, packed = (make_input(steps, batch, hidden, dtype, p) for p in (False, True))
    runners = {"torch_padded": make(ref, padded), "triton_padded": make(kit, padded),
               "torch_packed": make(ref, packed), "triton_packed": make(kit, packed)}
    row = {"cell": cell, "T": steps, "B": batch, "H": hidden, "dtype": "bfloat16", "mode": mode,
           "strategy": tri.choose_strategy(batch, hidden, DEVICE, dtype), "lengths": packed_lengths(steps, batch).tolist()}
    for form in ("padded", "packed"):
        if (why := sane(mode, runners[f"triton_{form}"], runners[f"torch_{form}"], dtype)) is not None:
            return {**row, "failed": f"{form}: {why}"}
    ms, first, rounds = time_runners(runners, row_budget_s)
    return {**row, **{f"{n}_ms": v for n, v in ms.items()}, "rounds": rounds,
            "triton_packed_over_padded": ms["triton_packed"] / ms["triton_padded"],
            "torch_packed_over_padded": ms["torch_packed"] / ms["torch_padded"]}


# ---------------------------------------------------------------- part: tile tuning

TUNE_SHAPES = (("bf16", 1, 1024), ("bf16", 16, 512), ("bf16", 64, 1024), ("bf16", 256, 512), ("bf16", 256, 1024),
               ("f32", 16, 512), ("f32", 64, 1024))  # (dtype, B, H)
# (name, strategy, module settings of rnnkit.engines.triton while it runs)
TUNE_ROW_S = 0.5  # seconds of timed rounds per tuned shape (3 to 30 rounds)
TUNE_VARIANTS = (("pers K32", "persistent", {"PERSISTENT_BLOCK_K": 32}),
                 ("pers K64", "persistent", {"PERSISTENT_BLOCK_K": 64}),
                 ("pers K128", "persistent", {"PERSISTENT_BLOCK_K": 128}),
                 ("pers K128 nores", "persistent", {"PERSISTENT_BLOCK_K": 128, "RESIDENT_MAX_BYTES": 0}),
                 ("step K32", "stepwise", {"STEPWISE_BLOCK_K": 32}),
                 ("step K64", "stepwise", {"STEPWISE_BLOCK_K": 64}),
                 ("step K128", "stepwise", {"STEPWISE_BLOCK_K": 128}))


@contextlib.contextmanager
def settings(values: dict):
    old = {name: getattr(tri, name) for name in values}
    for name, value in values.items():
        setattr(tri, name, value)
    try:
        yield
    finally:
        for name, value in old.items():
            setattr(tri, name, value)


def tune_shape(cell: str, batch: int, hidden: int, dtype, mode: str) -> dict:
    """Triton engine variants (tiles, strategies) and torch.nn, timed in turns by time_runners."""
    ref, kit = build(cell, hidden, hidden, dtype, None), build(cell, hidden, hidden, dtype, "triton")
    x = make_input(STEPS, batch, hidden, dtype, False)
    make = forward_run if mode == "forward" else train_run
    torch_run = make(ref, x)
    runners, failed = {"torch": torch_run}, {}
    for name, strat, values in TUNE_VARIANTS:
        if strat == "persistent" and tri.PERSISTENT_MAX_BATCH == 0:
            continue

        def run(strat=strat, values=values, inner=make(kit, x)):
            with strategy(strat), settings(values):
                return inner()
        try:
            why = sane(mode, run, torch_run, dtype)
        except Exception as e:  # noqa: BLE001
            why = failure(e)
        if why is None:
            runners[name] = run
        else:
            failed[name] = why
    ms, first, rounds = time_runners(runners, TUNE_ROW_S)
    best = min((n for n in ms if n != "torch"), key=ms.get, default=None)
    return {"cell": cell, "B": batch, "H": hidden, "dtype": str(dtype).removeprefix("torch."), "mode": mode,
            "ms": ms, "failed": failed, "best": best, "first_ms": first, "rounds": rounds}


def part_tune(save) -> list[dict]:
    rows = []
    tri.GRAPH_CACHE_SIZE = 64  # every variant's graphs stay captured while the variants take turns
    for d, batch, hidden in TUNE_SHAPES:
        for cell in CELLS:
            for mode in ("forward", "train"):
                try:
                    row = tune_shape(cell, batch, hidden, DTYPES[d], mode)
                except Exception as e:  # noqa: BLE001
                    row = {"cell": cell, "B": batch, "H": hidden, "mode": mode, "error": failure(e)}
                rows.append(row)
                save(rows)
                tri._graphs.clear()
                if "ms" in row:
                    ms = row["ms"]
                    cols = " ".join(f"{n.replace('step ', '')}={v:.2f}" for n, v in ms.items())
                    print(f"  {cell:4s} {d:4s} B={batch:3d} H={hidden:4d} {mode:7s} best {row['best']:16s} {cols}"
                          + (f" failed: {row['failed']}" if row["failed"] else ""), flush=True)
                else:
                    print(f"  {cell:4s} B={batch:3d} H={hidden:4d} {mode:7s} ERROR {row['error']}", flush=True)
    return rows


# ---------------------------------------------------------------- report


def not_measured(r: dict) -> str | None:
    """Why a row has no timings, shown in place of them."""
    if "failed" in r:
        return "FAILED: " + r["failed"]
    return "skipped: " + r["skipped"] if "skipped" in r else None


def format_layers(rows: list[dict]) -> str:
    return markdown_table(rows, [
        Column("cell", "cell", align="<"), Column("dtype", "dtype", align="<"), Column("B", "B"), Column("H", "H"),
        Column("mode", "mode", align="<"), Column("torch ms", "torch_ms", ".2f"),
        Column("triton ms", "auto_ms", ".2f"), Column("t/tri", "ratio", ".2f"),
        Column("strategy", "auto_strategy", align="<"),
        Column("alt ms", lambda r: r.get("alt_ms", "n/a"), ".2f"),  # n/a: the other strategy could not run
        Column("t/alt", lambda r: r.get("alt_ratio", ""), ".2f"), Column("rounds", "rounds")],
        keys=5, unmeasured=not_measured)


def format_packed(rows: list[dict]) -> str:
    def packed_not_measured(r):  # a packed failure already says which form failed
        return r["failed"] if "failed" in r else not_measured(r)

    return markdown_table(rows, [
        Column("cell", "cell", align="<"), Column("mode", "mode", align="<"),
        Column("torch pad", "torch_padded_ms", ".2f"), Column("torch pk", "torch_packed_ms", ".2f"),
        Column("tri pad", "triton_padded_ms", ".2f"), Column("tri pk", "triton_packed_ms", ".2f"),
        Column("tri pk/pad", "triton_packed_over_padded", ".2f"),
        Column("torch pk/pad", "torch_packed_over_padded", ".2f")], keys=2, unmeasured=packed_not_measured)


def targets(rows: list[dict], packed: list[dict]) -> list[str]:
    """The issue's targets, each with the measured rows it covers (bfloat16 and float32 alike)."""
    timed = [r for r in rows if "ratio" in r]
    out = []

    def worst(sel, what, bound):
        if not sel:
            out.append(f"{what}: no measured rows")
            return
        r = min(sel, key=lambda r: r["ratio"])
        ok = all(s["ratio"] >= bound for s in sel)
        out.append(f"{what} >= {bound}x: {'met' if ok else 'MISSED'} (worst {r['ratio']:.2f}x at {r['cell']} "
                   f"{r['dtype']} B={r['B']} H={r['H']}; {len(sel)} rows)")

    worst([r for r in timed if r["mode"] == "train" and r["B"] <= 64], "training, B<=64", 1.5)
    worst([r for r in timed if r["mode"] == "train" and r["B"] == 256], "training, B=256", 1.0)
    worst([r for r in timed if r["mode"] == "forward" and r["B"] <= 16], "inference, B<=16", 2.0)
    pk = [r for r in packed if "triton_packed_over_padded" in r]
    if pk:
        ok = all(r["triton_packed_over_padded"] <= 1.1 for r in pk)
        out.append(f"packed within 1.1x of padded: {'met' if ok else 'MISSED'} (worst "
                   f"{max(r['triton_packed_over_padded'] for r in pk):.2f}x)")
    return out


# ---------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=float, default=360.0, help="seconds after which remaining rows are skipped")
    p.add_argument("--quick", action="store_true", help="smoke run: two checks, B in {1, 64}, H=256, bfloat16")
    p.add_argument("--parts", default="check,layers,packed",
                   help="comma-separated parts to run, of check, layers, packed, determinism, tune "
                        "(default: the first three)")
    p.add_argument("--no-persistent", action="store_true",
                   help="stepwise strategy only (for a GPU where the persistent kernel's barrier fails)")
    p.add_argument("--persistent-from", type=Path, metavar="CHECK_JSON",
                   help="turn the persistent strategy off unless this earlier check run completed and every "
                        "persistent failure in it is shared by the stepwise strategy")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    args = p.parse_args(argv)
    args.parts = tuple(args.parts.split(","))
    if unknown := set(args.parts) - {"check", "layers", "packed", "tune", "determinism"}:
        p.error(f"--parts takes check, layers, packed, tune and determinism, got {', '.join(sorted(unknown))}")
    if args.persistent_from is not None and (why := persistent_broken(args.persistent_from)):
        print(f"persistent strategy off: {why}", flush=True)
        args.no_persistent = True
    return args


def persistent_broken(path: Path) -> str | None:
    """Why an earlier check run (JSON) speaks against the persistent strategy, or None."""
    import json
    try:
        rows = json.loads(path.read_text())["check"]
    except (OSError, ValueError, KeyError) as e:
        return f"no complete check in {path} ({e})"
    if len(rows) == 0 or rows[-1]["case"] != "LSTM proj64 T50 B8 H128 packed":
        return f"the check in {path} stopped early (a hang?)"
    ok = {(r["case"], r["who"]): r["ok"] for r in rows}
    bad = [f"{case}: {who}" for (case, who), good in ok.items()
           if "persistent" in who and not good and ok.get((case, who.replace("persistent", "stepwise")), False)]
    return f"failed where stepwise passed: {'; '.join(bad)}" if bad else None


def main(argv=None) -> int:
    args = parse_args(argv)
    if "determinism" in args.parts:  # before cuBLAS starts: its deterministic mode needs a fixed workspace
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if not torch.cuda.is_available():
        print("benchmarks/gpu.py needs a CUDA GPU", file=sys.stderr)
        return 2
    if (why := rnnkit.engines.why_not("triton", torch.zeros(1, device=DEVICE))) is not None:
        print(f"the Triton engine cannot run here: {why}", file=sys.stderr)
        return 2
    import triton
    # float32 means IEEE float32 for every contender: cuDNN and torch.matmul would otherwise take TF32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    tri.TF32 = False
    if args.no_persistent:
        tri.PERSISTENT_MAX_BATCH = 0  # choose_strategy then always answers "stepwise"
    props = torch.cuda.get_device_properties(DEVICE)
    info = machine_info(torch.get_num_threads())
    info.update(gpu=props.name, sms=props.multi_processor_count, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(), triton=triton.__version__)
    payload = {"machine": info, "quick": args.quick, "tf32": False, "complete": False, "parts": list(args.parts),
               "heuristic": {"PERSISTENT_MAX_BATCH": tri.PERSISTENT_MAX_BATCH,
                             "RESIDENT_MAX_BYTES": tri.RESIDENT_MAX_BYTES, "CUDA_GRAPHS": tri.CUDA_GRAPHS},
               "check": [], "layers": [], "packed": [], "determinism": []}
    print(f"GPU: {props.name}, {props.multi_processor_count} SMs | torch {torch.__version__} | CUDA {torch.version.cuda} "
          f"| cuDNN {info['cudnn']} | triton {triton.__version__} | {info['date']}", flush=True)
    start = time.perf_counter()

    def save(check_rows=None, key="check"):
        if check_rows is not None:
            payload[key] = check_rows
        payload["elapsed_s"] = time.perf_counter() - start
        write_json_atomic(args.out, payload)

    if "check" in args.parts:
        print("\ncorrectness (relative error against torch.nn in float64; bound 1e-3 float32, 1e-2 bfloat16)")
        strategies = ("stepwise",) if args.no_persistent else ("persistent", "stepwise")
        save(part_check(args.quick, strategies, save))

    if "determinism" in args.parts:
        print(f"\ndeterminism ({REPEATS} runs of outputs and every gradient, bit for bit)", flush=True)
        strategies = ("stepwise",) if args.no_persistent else ("persistent", "stepwise")
        save(part_determinism(args.quick, strategies, lambda rows: save(rows, "determinism")), "determinism")

    if "tune" in args.parts:
        print("\nvariants (strategy, reduction tile K, W_hh resident or not; median ms)", flush=True)
        save(part_tune(lambda rows: save(rows, "tune")), "tune")

    batches, hiddens, dtypes = ((1, 64), (256,), ("bf16",)) if args.quick else (BATCHES, HIDDENS, ("bf16", "f32"))
    # the order is the order of importance, in case the budget runs out: bfloat16 layers, packed, float32 layers
    jobs = [("layers", (d, c, h, b, m)) for d in dtypes[:1] for c in CELLS for h in hiddens for b in batches
            for m in ("forward", "train")] if "layers" in args.parts else []
    jobs += [("packed", (c, m)) for c in CELLS for m in ("forward", "train")] if "packed" in args.parts else []
    jobs += [("layers", (d, c, h, b, m)) for d in dtypes[1:] for c in CELLS for h in hiddens for b in batches
             for m in ("forward", "train")] if "layers" in args.parts else []
    left = args.budget - (time.perf_counter() - start)
    row_budget = max(0.3, 0.6 * left / max(1, len(jobs))) / 2  # half of each row's share for timed rounds
    print(f"\ntiming: {len(jobs)} rows, about {row_budget:.1f} s of timed rounds each", flush=True)
    for part, job in jobs:
        if part == "layers":
            d, cell, hidden, batch, mode = job
            row_id = {"cell": cell, "dtype": str(DTYPES[d]).removeprefix("torch."), "B": batch, "H": hidden,
                      "mode": mode}
        else:
            cell, mode = job
            row_id = {"cell": cell, "mode": mode}
        if time.perf_counter() - start > args.budget:
            row = {**row_id, "skipped": "time budget"}
        else:
            try:
                row = (time_layer(cell, batch, hidden, DTYPES[d], mode, row_budget) if part == "layers"
                       else time_packed(cell, mode, row_budget))
            except Exception as e:  # noqa: BLE001  (report the row, go on with the next)
                row = {**row_id, "failed": failure(e)}
        payload[part].append(row)
        # the new row as the last line of its table so far, so that the progress lines stay aligned
        if part == "layers":
            print(format_layers(payload["layers"]).splitlines()[-1], flush=True)
        else:
            print("packed " + format_packed(payload["packed"]).splitlines()[-1], flush=True)
        save()
        tri._graphs.clear()  # the captured graphs' static buffers of this row
        torch.cuda.empty_cache()

    payload["graph_error"] = tri.graph_error  # set if CUDA graph capture failed (stepwise then launched per step)
    payload["complete"] = True
    payload["targets"] = targets(payload["layers"], payload["packed"])
    save()
    print("\nt/tri = torch.nn ms / Triton-engine ms (above 1: rnnkit is faster); alt = the other strategy forced")
    print(format_layers(payload["layers"]))
    print()
    print(format_packed(payload["packed"]))
    print("\ntargets (ratios to cuDNN):")
    print("\n".join("  " + t for t in payload["targets"]))
    if tri.graph_error is not None:
        print(f"\nWARNING: CUDA graph capture failed ({tri.graph_error}); stepwise rows launched every step")
    if payload["determinism"]:
        varied = [f"{r['case']} {r['dtype']} {r['who']}" for r in payload["determinism"]
                  if r["who"] != "cudnn" and not (r["identical"] and r.get("deterministic_mode_identical"))]
        cudnn = [r for r in payload["determinism"] if r["who"] == "cudnn"]
        print(f"\ndeterminism: the Triton engine bit-identical in {len(payload['determinism']) - len(cudnn) - len(varied)}"
              f" of {len(payload['determinism']) - len(cudnn)} cases" + (f"; NOT in {'; '.join(varied)}" if varied else "")
              + f"; cuDNN identical in {sum(r['identical'] for r in cudnn)} of {len(cudnn)}")
    failed = [r for r in payload["check"] if not r["ok"]]
    print(f"\ncorrectness: {len(payload['check']) - len(failed)} of {len(payload['check'])} checks passed")
    print(f"total {payload['elapsed_s']:.0f} s; wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
