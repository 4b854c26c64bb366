"""What engine="auto" runs on CPU, chosen per machine by timing: the CPU engine or torch's own fused kernel.

Why: which of the two is faster depends on the CPU (MKL and oneDNN run at very different speeds on
AMD and Intel), on the thread count and on the shape. A rule fitted on one machine is wrong on
another, and a drop-in that makes the user's model slower is worse than none. So the first call of
a *shape class* on a machine times the candidates on a short slice of that very call and keeps the
faster, and the choice is written to disk, like Triton's autotuner, so later processes skip the timing.

- Candidates: "cpu" (rnnkit's Numba engine) and, where it can run the call, "aten" (oneDNN's fused
  LSTM, what torch.nn.LSTM runs: float32 LSTM, padded, no proj_size). Everything else goes to "cpu"
  without timing: there is nothing to choose between.
- Shape class: cell mode, training or inference, T rounded up to a power of two, B, input size,
  hidden size, thread count. Calibration times forward (and backward, for training) on the first
  CAL_STEPS / 4 and CAL_STEPS steps of the call's own input and weights, in turns, best of a few rounds,
  and extrapolates each candidate to the call's T (a cost per call plus a cost per step); a call that
  short timing predicts under CAL_FULL_S for both is then timed whole, a few rounds, instead.
- Cache: one JSON file per machine key (CPU model, torch, numba and rnnkit versions) in
  $RNNKIT_CACHE_DIR, else $XDG_CACHE_HOME/rnnkit, else ~/.cache/rnnkit; written to a temporary
  file and renamed, so a reader sees the old file or the new one. An unreadable or corrupt file
  counts as empty; an unwritable folder keeps choices in this process only. Two processes
  calibrating at once each use their own measurement, and the last rename wins.
- Never timed: under torch.compile or export tracing, torch.func transforms, jit.trace and ONNX export
  (those run "cpu", one fixed operator); with RNNKIT_TUNE=0 (then "cpu" always, the old behaviour); in a
  torch.distributed job of more than one process (ranks must agree; "cpu" always).

- Products over all steps: inside the CPU engine, each large product (input projection, dx, weight gradients)
  runs in torch.mm (MKL) or oneDNN, whichever this machine ran faster for its size class (`faster_product`),
  cached in the same file.
- Whole stack against torch's: a padded float32 call without projection (any mode) is also timed as a whole
  stack, rnnkit's engine against torch's own implementation, as whole-stack kernels (torch.lstm, torch.gru,
  torch.rnn_*: "aten") and, for one direction, as its cell functions a step at a time (torch.lstm_cell, ...:
  "cells"), on its first steps without dropout (`torch_way`); where torch's is faster (short calls, where
  rnnkit's Python per call outweighs the work: a decoder calling the layer one step at a time) the layer runs it.
- Whole stack: once every layer of a call was timed and oneDNN won each, the layer runs all its layers
  and directions in one torch.lstm call, exactly as torch.nn.LSTM does (aten.run_stack): no operator
  dispatch per layer between the caller and the kernel, whose overhead alone made "auto" slower than
  torch.nn on small, overhead-bound calls (0.78x at T=100, B=1, H=128). Such a call gives torch.nn's
  numbers to the last digit.

Both candidates give the reference engine's numbers within rnnkit.testing's tolerances, so a
choice changes speed, never results beyond float rounding.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

from .ops import in_onnx_export, plain_ops_only

FORMAT = 1
CAL_STEPS = 16  # calibration times the first CAL_STEPS // 4 and CAL_STEPS steps of the call (fewer if T is)
CAL_BUDGET_S = 0.05  # timed seconds to aim for, in rounds of every candidate at both lengths ...
CAL_ROUNDS_MAX = 10  # ... but at most this many rounds, and at least one, after one untimed round
CAL_FULL_S = 0.03  # a call whose two candidates together are predicted under this is timed whole instead
PRODUCTS = ("mm", "onednn")  # the libraries a product over all steps may run in (faster_product)
MARGIN = 0.97  # "cpu" must be at least 3% faster to be taken: a tie runs torch's own kernel, torch.nn's speed

_lock = threading.RLock()
_table: dict[str, dict] | None = None  # this process's view: the file's entries plus its own


# ---------------------------------------------------------------- the cache file


def cache_dir() -> Path:
    if d := os.environ.get("RNNKIT_CACHE_DIR"):
        return Path(d)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rnnkit"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line and not line.startswith("flags"))
        return " ".join(fields.get(k, "").strip() for k in ("vendor_id", "model name", "cpu family", "model"))
    except OSError:
        return platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def machine_key() -> dict:
    import rnnkit
    try:
        import numba
        numba_version = numba.__version__
    except ImportError:
        numba_version = None
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__, "numba": numba_version,
            "rnnkit": rnnkit.__version__, "engines": engine_source_digest()}


# The files whose code the timings measure: a changed kernel (an edited checkout, an upgrade without a version
# bump) times again instead of trusting choices made for other code
# (nn/layers.py holds the whole-stack timing's runners: RecurrentLayer.stack_runner)
TIMED_SOURCES = ("cpu.py", "cpu_kernels.py", "small_product.py", "blas.py", "aten.py", "ops.py", "tune.py",
                 "../nn/layers.py")


def engine_source_digest() -> str:
    digest = hashlib.sha256()
    for name in TIMED_SOURCES:
        try:
            digest.update((Path(__file__).parent / name).read_bytes())
        except OSError:  # a frozen or zipped install: the versions alone key the cache
            digest.update(name.encode())
    return digest.hexdigest()[:16]


def cache_path() -> Path:
    digest = hashlib.sha256(json.dumps(machine_key(), sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"cpu-choices-{digest}.json"


def read_file(path: Path) -> dict[str, dict]:
    """The entries of a cache file, or {} if it is missing, unreadable, corrupt or for another machine."""
    try:
        with open(path) as f:
            payload = json.load(f)
        if payload.get("format") != FORMAT or payload.get("machine") != machine_key():
            return {}
        entries = payload["entries"]
        return {k: v for k, v in entries.items() if isinstance(v, dict) and (
            v.get("product") in PRODUCTS if k.startswith("product|")
            else v.get("engine") in (STACK_WAYS if k.startswith("stack|") else ("cpu", "aten")))}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def write_file(path: Path, entries: dict[str, dict]) -> bool:
    """Merge entries into the file atomically (temporary file + rename). False if the folder is not writable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        merged = {**read_file(path), **entries}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"format": FORMAT, "machine": machine_key(), "entries": merged}, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError:
        return False
    return True


_generation = 0  # counts the changes of this process's view: a choice memoized beside it is valid while it stands


def generation() -> int:
    return _generation


def table() -> dict[str, dict]:
    global _table, _generation
    with _lock:
        if _table is None:
            _table = read_file(cache_path())
            _generation += 1
        return _table


def record(key: str, entry: dict) -> None:
    """A new timing into this process's view and the file (the caller holds _lock)."""
    global _generation
    table()[key] = entry
    write_file(cache_path(), {key: entry})
    _generation += 1


def forget() -> None:
    """Drop this process's view (the next choice reads the file again); for tests and after a machine change."""
    global _table, _generation
    with _lock:
        _table = None
        _generation += 1
    machine_key.cache_clear()


# ---------------------------------------------------------------- choosing


def enabled() -> bool:
    """Whether auto may choose by timing here: not with RNNKIT_TUNE=0, and not in a distributed job of more than
    one process, whose ranks must run the same arithmetic (each rank timing for itself could choose differently,
    near a tie, and a resumed job differently again: a killed DDP run then resumed to other weights)."""
    if os.environ.get("RNNKIT_TUNE", "1") == "0":
        return False
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)


def tracing() -> bool:
    """True where timing must not run and the operator must stay fixed: compile/export, torch.func, forward-mode AD,
    trace, ONNX."""
    return (torch.compiler.is_compiling() or plain_ops_only() or torch.jit.is_tracing() or in_onnx_export())


def modes_active() -> bool:
    """A torch dispatch or function mode is active (FlopCounterMode, FakeTensorMode, a user's mode): choices already
    timed still apply, but nothing is timed now: the mode would see, and count, every timed run, and the timings
    would measure the mode."""
    return torch._C._len_torch_dispatch_stack() > 0 or torch._C._is_torch_function_mode_enabled()


def shape_class(mode: str, train: bool, steps: int, batch: int, inp: int, hidden: int) -> str:
    return _class_key(mode, train, 1 << max(0, (steps - 1).bit_length()), batch, inp, hidden,
                      torch.get_num_threads())


@lru_cache(maxsize=4096)  # every layer call asks, often with the same shapes: a decoder's step
def _class_key(mode: str, train: bool, t: int, batch: int, inp: int, hidden: int, threads: int) -> str:
    return f"{mode}|{'train' if train else 'infer'}|T{t}|B{batch}|I{inp}|H{hidden}|thr{threads}"


def stack_key(mode: str, train: bool, steps: int, batch: int, inp: int, hidden: int, layers: int,
              directions: int) -> str:
    """The cache key of a whole-stack timing (torch_way)."""
    return _stack_key(shape_class(mode, train, steps, batch, inp, hidden), layers, directions)


@lru_cache(maxsize=4096)
def _stack_key(layer_class: str, layers: int, directions: int) -> str:
    return f"stack|{layer_class}|L{layers}|D{directions}"


def needs_grad(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def run_layer(mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse):
    """engine="auto" on CPU: ops.run_layer on the engine chosen for this call's shape class."""
    from . import aten, cpu
    args = (mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse)
    chosen_ = choose(*args) if not tracing() and enabled() else "cpu"
    return (aten if chosen_ == "aten" else cpu).run_layer(*args)


def infer_layer(mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse):
    """run_layer for a call cpu.infer_layer takes (a layer's quick lane, never tracing): the same choice, the CPU
    engine without ops' checks."""
    from . import aten, cpu
    args = (mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse)
    chosen_ = choose(*args) if enabled() else "cpu"
    return (aten.run_layer if chosen_ == "aten" else cpu.infer_layer)(*args)


def choose(mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse) -> str:
    from . import aten, cpu
    if mode != "LSTM" or x.dtype != torch.float32 or w_hr is not None or x.shape[0] == 0:
        return "cpu"
    if batch_sizes is not None:  # packed: oneDNN's layer can take it only if every sequence runs every step
        sizes = tuple(batch_sizes.tolist()) if isinstance(batch_sizes, Tensor) else tuple(batch_sizes)
        if sizes[0] != sizes[-1]:
            return "cpu"
    batch = h0.shape[0]
    steps = x.shape[0] // batch
    train = needs_grad(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    key = shape_class(mode, train, steps, batch, x.shape[1], c0.shape[1])
    entry = _table.get(key) if _table is not None else None
    if entry is not None:  # the common case, kept cheap: a cell call runs this on every step
        return entry["engine"]
    if cpu.why_not(x) is not None or aten.why_not_call(mode, x, None, w_hr) is not None or modes_active():
        return "cpu"
    with _lock:
        entry = table().get(key)
        if entry is None:
            entry = calibrate(train, x, batch, steps, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse)
            record(key, entry)
    return entry["engine"]


def calibrate(train: bool, x, batch: int, steps: int, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse) -> dict:
    """Time "cpu" and "aten" on this call's first steps and predict each at `steps` steps: {"engine": faster, ...}.

    Each candidate is timed on the first s1 and s2 steps (s1 < s2 <= CAL_STEPS) and its time at T steps
    is extrapolated along the line through the two: a fixed cost per call (oneDNN builds its primitive
    on every call) and a cost per step, which short slices alone would weigh wrongly."""
    from . import aten, cpu
    engines = {"cpu": cpu, "aten": aten}
    lengths = sorted({min(steps, CAL_STEPS // 4), min(steps, CAL_STEPS)})
    with torch.no_grad():
        def runner(engine, n):
            args = ("LSTM", x.detach()[:n * batch], (batch,) * n, *(t.detach() for t in (h0, c0, w_ih, w_hh)),
                    *(None if b is None else b.detach() for b in (b_ih, b_hh)), None, reverse)
            # upstream gradients of ones: drawing random ones would move the caller's random stream, so a
            # seeded run would depend on whether this shape class was timed before
            d_out, d_h, d_c = x.new_ones(n * batch, h0.shape[1]), torch.ones_like(h0), torch.ones_like(c0)

            def run():
                if not train:  # what each runs without a gradient
                    if engine is aten:
                        aten._run_forward(*args[1:9], reverse, train=False)
                    else:
                        cpu.infer(*args)
                    return
                out, _, _, saved = engine.forward(*args)
                engine.backward(*args, out, saved, d_out, d_h, d_c, True)
            return run

        runs = {(name, n): runner(engine, n) for name, engine in engines.items() for n in lengths}
        rounds = budgeted_rounds(warm_up(runs), CAL_ROUNDS_MAX)  # the last untimed round's cost sizes the timed ones
        best = best_ms(runs, rounds)
        predicted = extrapolated(best, lengths, steps_total(x, batch))
        if steps > lengths[-1] and sum(predicted.values()) <= CAL_FULL_S * 1e3:
            # short enough to time as it is: a line through short slices misses costs that change with N (the
            # products over all steps switch library at ONEDNN_MIN_MACS; at T=100, B=1, H=128 the line
            # predicted the CPU engine 3% slower than oneDNN where it ran 25% slower)
            predicted = time_whole_calls({name: runner(engine, steps) for name, engine in engines.items()})
    return {**verdict(predicted, best), "rounds": rounds}


def best_ms(runs: dict, rounds: int) -> dict:
    """Each runner's best time in ms over `rounds` rounds, the runners taking turns within a round."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(rounds):
        for key, run in runs.items():
            start = time.perf_counter()
            run()
            best[key] = min(best[key], (time.perf_counter() - start) * 1e3)
    return best


WARM_ROUNDS = (3, 6)  # untimed rounds before timing: at least, and at most (see warm_up)


def warm_up(runs: dict) -> dict:
    """Untimed rounds; returns the last one's ms per runner (to size the timed rounds).

    The first calls compile (Numba), fill caches and build oneDNN primitives, and a cold process runs the
    next few slower still: a T=1, B=1, H=128 LSTM stack took 402 ms, then 333, 128 and 115 us on the CPU
    engine (aten: 1.5 ms, 272, 128, 233, 121 us), and one untimed round had let a timing read 2.5x the
    warm times and cache the slower choice. So at least WARM_ROUNDS[0] rounds, then more while a round is
    3% faster than the one before, up to WARM_ROUNDS[1], within CAL_BUDGET_S."""
    last, spent = None, 0.0
    for k in range(WARM_ROUNDS[1]):
        now = best_ms(runs, 1)
        spent += sum(now.values()) / 1e3
        settled = last is not None and sum(now.values()) >= 0.97 * sum(last.values())
        last = now
        if k + 1 >= WARM_ROUNDS[0] and (settled or spent > CAL_BUDGET_S):
            break
    return last


def budgeted_rounds(round_ms: dict, most: int) -> int:
    """Rounds that fit CAL_BUDGET_S, given one round's times: at least one, at most `most`."""
    return max(1, min(most, round(CAL_BUDGET_S * 1e3 / max(sum(round_ms.values()), 1e-3))))


def verdict(predicted: dict, best: dict) -> dict:
    """The cache entry for a timing: "cpu" only where clearly faster than torch's fastest way (a tie runs torch's
    own kernel)."""
    torch_best = min((k for k in predicted if k != "cpu"), key=predicted.get)
    engine = "cpu" if predicted["cpu"] < MARGIN * predicted[torch_best] else torch_best
    return {"engine": engine, "predicted_ms": {k: round(v, 3) for k, v in predicted.items()},
            "timed_ms": {f"{k[0]}@{k[1]}": round(v, 4) for k, v in best.items()}}


def extrapolated(best: dict, lengths: list[int], steps: int) -> dict[str, float]:
    """Each candidate's ms at `steps` steps from its best ms at the two timed lengths: the line through them (a
    cost per call plus a cost per step)."""
    s1, s2 = lengths[0], lengths[-1]
    predicted = {}
    for name in {k[0] for k in best}:
        c1, c2 = best[(name, s1)], best[(name, s2)]
        per_step = (c2 - c1) / (s2 - s1) if s2 > s1 else c2 / s2
        predicted[name] = max(c2 + per_step * (steps - s2), 1e-6)
    return predicted


def time_whole_calls(runs: dict) -> dict[str, float]:
    """Best ms of each whole-call runner over a few alternating rounds, after the untimed ones (warm_up)."""
    warm_up(runs)
    return best_ms(runs, CAL_ROUNDS_MAX // 2)


def whole_stack_is_aten(mode: str, train: bool, steps: int, batch: int, inputs: list[int], hidden: int) -> bool:
    """True when every layer of a call (layer input sizes `inputs`) was timed on this machine and torch's
    fused LSTM won: the layer then runs the whole stack as torch.nn does (aten.run_stack), one call for all
    layers. A class not timed yet is False: the per-layer path runs and times it."""
    if _table is None or not enabled() or tracing():
        return False
    return every_layer_chose("aten", mode, train, steps, batch, inputs, hidden)


def every_layer_chose(engine: str, mode: str, train: bool, steps: int, batch: int, inputs, hidden: int) -> bool:
    """Whether every layer's shape class (layer input sizes `inputs`) was timed here and `engine` won."""
    table_ = table()
    entries = [table_.get(shape_class(mode, train, steps, batch, inp, hidden)) for inp in set(inputs)]
    return all(e is not None and e["engine"] == engine for e in entries)


def torch_way(mode: str, train: bool, steps: int, batch: int, inputs: list[int], hidden: int, directions: int,
              runners) -> str | None:
    """Whether torch's own implementation of the whole stack beats rnnkit's per-layer engine for this call's shape
    class, and which: "aten" (torch.lstm, torch.gru, torch.rnn_tanh: whole-stack kernels, what torch.nn runs) or
    "cells" (torch's cell functions a step at a time, one-direction stacks only); None: rnnkit's engine. torch's
    wins where a call is so short that rnnkit's Python per call outweighs the work (a decoder calling the layer one
    step at a time: T=1, B=1, H=16 ran 37 us in torch.nn against 110 in rnnkit), and its cells win there with a
    gradient (a T=1, B=1, H=128 LSTM trained one step at a time: 188 us a step against torch.lstm's 316). Timed
    once per class and machine, cached like the LSTM's choice. runners(strategy, n) gives a function that runs the
    first n steps of the call with strategy "cpu", "aten" or "cells" (forward, and backward when training)."""
    if not enabled() or tracing():
        return None
    key = stack_key(mode, train, steps, batch, inputs[0], hidden, len(inputs), directions)
    entry = _table.get(key) if _table is not None else None
    if entry is None:
        if modes_active():
            return None
        with _lock:
            entry = table().get(key)
            if entry is None:
                entry = time_stacks(runners, steps, STACK_WAYS if directions == 1 else STACK_WAYS[:2])
                record(key, entry)
    if entry["engine"] == "cells" and directions != 1:  # (not timed so: a hand-edited file) torch's stack serves
        return "aten"
    return None if entry["engine"] == "cpu" else entry["engine"]


STACK_WAYS = ("cpu", "aten", "cells")  # whole-stack strategies; "cells" runs one direction only


def time_stacks(runners, steps: int, ways=STACK_WAYS[:2]) -> dict:
    """Each strategy on the call's first steps (all of a short call), extrapolated like `calibrate`, and like it
    timed whole where that is cheap: the strategies predicted within twice the fastest, when together they are
    predicted under CAL_FULL_S (the line through 4 and 16 steps had predicted rnnkit's engine 12% faster than
    torch's stack for an LSTM trained at T=100, B=1, H=128, where it ran 7% slower)."""
    lengths = sorted({min(steps, CAL_STEPS // 4), min(steps, CAL_STEPS)})
    runs = {(name, n): runners(name, n) for name in ways for n in lengths}
    best = best_ms(runs, budgeted_rounds(warm_up(runs), CAL_ROUNDS_MAX // 2))
    predicted = extrapolated(best, lengths, steps)
    if steps > lengths[-1]:
        close = [name for name in ways if predicted[name] <= 2 * min(predicted.values())]
        if sum(predicted[name] for name in close) <= CAL_FULL_S * 1e3:
            predicted.update(time_whole_calls({name: runners(name, steps) for name in close}))
    return verdict(predicted, best)


# ---------------------------------------------------------------- products over all steps (the CPU engine's)
#
# The CPU engine forms its large products (the input projection of all steps, dx, the weight gradients summed
# over steps) in torch.mm (MKL) or in oneDNN's matrix product. Which is faster depends on the machine and on
# the operands: oneDNN wants contiguous operands with the summed index last, so a weight gradient (summed over
# rows) or dx (W_ih read transposed) pays transposing copies first, which MKL reads in place. Measured on an
# AMD Zen 4 (one thread): a weight gradient at T=100, B=1, H=128 ran 188 us through oneDNN and its copies
# against 157 in torch.mm, and 1.3-3.8x slower on two threads; dx at T=1000, B=8, H=64 ran 0.77x torch.mm's
# time through oneDNN. On a Zen 5 oneDNN ran twice as fast as torch.mm. So the first product of a size class
# on a machine times both on its own operands, and the cache keeps the faster.

PRODUCT_MIN_MACS = 1 << 20  # smaller products are not timed (~20 us: a timing could not repay itself); the default
PRODUCT_ROUNDS = (2, 5)  # timed rounds after one untimed one: at least, and at most (within CAL_BUDGET_S)


def product_key(kind: str, rows: int, *sizes: int) -> str:
    """A product timing's cache key: its kind, its rows rounded up to a power of two (rows = steps x batch vary
    from call to call), its other sizes and the thread count."""
    return _product_key(kind, 1 << max(0, (rows - 1).bit_length()), sizes, torch.get_num_threads())


@lru_cache(maxsize=4096)  # asked for every large product of every call
def _product_key(kind: str, rows: int, sizes: tuple, threads: int) -> str:
    return f"product|{kind}|N{rows}|" + "|".join(map(str, sizes)) + f"|thr{threads}"


def faster_product(key: str, candidates: dict[str, Callable[[], Tensor]], default: str) -> Tensor:
    """The product computed by the candidate ("mm" or "onednn") this machine runs fastest for `key`.

    Not timed yet: each candidate runs once untimed (oneDNN builds its primitive), then in turns, and the
    faster is cached; its own result is returned, so the timing costs a few products once per machine and
    class, and nothing is computed twice for the caller. Where nothing may be timed (RNNKIT_TUNE=0, tracing,
    an active torch mode) and nothing is cached, `default` runs. The candidates compute the same product,
    so the choice changes rounding only."""
    entry = _table.get(key) if _table is not None else table().get(key)
    if entry is not None and entry.get("product") in candidates:
        return candidates[entry["product"]]()
    if not enabled() or tracing() or modes_active():
        return candidates[default]()
    with _lock:
        results, first = {}, {}
        for name, run in candidates.items():
            start = time.perf_counter()
            results[name] = run()
            first[name] = (time.perf_counter() - start) * 1e3
        best = dict.fromkeys(candidates, float("inf"))
        rounds = max(PRODUCT_ROUNDS[0], budgeted_rounds(first, PRODUCT_ROUNDS[1]))
        for _ in range(rounds):
            for name, run in candidates.items():
                start = time.perf_counter()
                results[name] = run()
                best[name] = min(best[name], (time.perf_counter() - start) * 1e3)
        winner = min(best, key=best.get)
        record(key, {"product": winner, "timed_ms": {k: round(v, 4) for k, v in best.items()}})
    return results[winner]


def chosen(mode: str, train: bool, steps: int, batch: int, inp: int, hidden: int) -> str:
    """What "auto" runs for this shape class at the current thread count (for reports): "aten" or "cpu"."""
    entry = table().get(shape_class(mode, train, steps, batch, inp, hidden))
    return entry["engine"] if entry is not None else "cpu"


def steps_total(x: Tensor, batch: int) -> int:
    return x.shape[0] // batch
