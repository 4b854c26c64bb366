"""What the benchmark scripts share: identical models, the timed work, the check before timing, timing,
the machine's load and the run's provenance, reporting (machine info, markdown tables, the JSON file).

The scripts run from this directory (python benchmarks/NAME.py puts it first on sys.path), so they
import this module as `common`. It is not part of the rnnkit package and not a test.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import gc
import hashlib
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.nn.utils.rnn import PackedSequence

import rnnkit
from rnnkit.testing import assert_close

SEED = 0


# ---------------------------------------------------------------- models and inputs


def build_modules(cell: str, hidden: int, engines: tuple[str, ...]) -> dict[str, torch.nn.Module]:
    """{"torch": torch.nn module, engine: rnnkit module, ...}, all with the same weights.

    cell names a layer ("LSTM") or a cell ("LSTMCell"); input size = hidden size; RNN is tanh.
    """
    torch.manual_seed(SEED)
    kwargs = {"nonlinearity": "tanh"} if cell.startswith("RNN") else {}
    modules = {"torch": getattr(torch.nn, cell)(hidden, hidden, **kwargs)}
    for engine in engines:
        candidate = getattr(rnnkit, cell)(hidden, hidden, **kwargs, engine=engine)
        # strict=True: a renamed or missing parameter must fail loudly, not time a half-loaded model.
        candidate.load_state_dict(modules["torch"].state_dict(), strict=True)
        modules[engine] = candidate
    return modules


def build_pair(cell: str, hidden: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(torch.nn module, rnnkit module on the reference engine) with the same weights."""
    modules = build_modules(cell, hidden, ("reference",))
    return modules["torch"], modules["reference"]


def make_inputs(steps: int, batch: int, hidden: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Input x (T, B, H) and upstream gradient g for the output (T, B, H)."""
    gen = torch.Generator().manual_seed(SEED + 1)
    x = torch.randn(steps, batch, hidden, generator=gen)
    # A random gradient, not out.sum(): an all-ones gradient is a special case a kernel could exploit.
    g = torch.randn(steps, batch, hidden, generator=gen)
    return x, g


def packed_lengths(steps: int, batch: int) -> torch.Tensor:
    """Lengths spread evenly over [T/2, T], in a shuffled order so enforce_sorted=False has work to do."""
    lengths = torch.linspace(steps / 2, steps, batch).round().long()
    return lengths[torch.randperm(batch, generator=torch.Generator().manual_seed(3))]


# ---------------------------------------------------------------- the work being timed


def data_of(t):
    """The tensor behind a tensor or a PackedSequence."""
    return t.data if isinstance(t, PackedSequence) else t


def fresh_leaf(x):
    """(input to pass, leaf tensor whose .grad is dx): x detached and requiring grad, packed or not."""
    leaf = data_of(x).detach().requires_grad_(True)
    return (x._replace(data=leaf) if isinstance(x, PackedSequence) else leaf), leaf


def forward_step(module: torch.nn.Module, x):
    with torch.no_grad():
        return module(x)


def train_step(module: torch.nn.Module, x, g: torch.Tensor):
    """Forward and backward; returns (outputs, gradients) so the sanity check can reuse it.

    x is a tensor or a PackedSequence; g has the shape of the output's data.
    """
    module.zero_grad(set_to_none=True)
    # The input needs a gradient: in a stacked network every layer but the first must produce dx,
    # so this times the full backward rather than the cheaper weights-only one.
    x, leaf = fresh_leaf(x)
    out, state = module(x)
    data_of(out).backward(g)
    return (out, state), (leaf.grad, *(p.grad for p in module.parameters()))


def make_runner(mode: str, module: torch.nn.Module, x, g: torch.Tensor):
    if mode == "forward":
        return lambda: forward_step(module, x)
    return lambda: train_step(module, x, g)


# ---------------------------------------------------------------- correctness before speed


def flatten_outputs(result) -> list[torch.Tensor]:
    out, state = result
    return [data_of(out), *(state if isinstance(state, tuple) else (state,))]


def check_result(mode: str, actual, expected, label: str) -> None:
    """Raise unless a make_runner result matches torch.nn's: outputs, and in train mode every gradient."""
    if mode == "forward":
        actual, expected = (actual, ()), (expected, ())
    (out_a, grads_a), (out_e, grads_e) = actual, expected
    for a, e in zip(flatten_outputs(out_a), flatten_outputs(out_e), strict=True):
        assert_close(a, e, "output", f"{label} {mode} output")
    for i, (a, e) in enumerate(zip(grads_a, grads_e, strict=True)):
        assert_close(a, e, "grad", f"{label} gradient #{i}")


def sanity_check(reference: torch.nn.Module, candidate: torch.nn.Module, x: torch.Tensor, g: torch.Tensor,
                 label: str) -> None:
    """Raise unless both contenders agree on outputs and gradients: a wrong engine must not get a timing."""
    check_result("forward", forward_step(candidate, x), forward_step(reference, x), label)
    expected = train_step(reference, x, g)
    check_result("train", train_step(candidate, x, g), expected, label)


# ---------------------------------------------------------------- timing


def time_once(run) -> float:
    """Milliseconds for one call."""
    start = time.perf_counter()
    run()
    return (time.perf_counter() - start) * 1e3


def warm_up(runners: dict[str, callable], rounds: int) -> dict[str, float]:
    """Run every contender `rounds` times (first calls pay for allocator growth and lazy init).

    Returns each contender's ms in the last round, a cost estimate for planning the timed rounds.
    """
    last = {name: float("nan") for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            last[name] = time_once(run)
    return last


def time_rounds(runners: dict[str, callable], rounds: dict[str, int], rotate: bool = False) -> dict[str, list[float]]:
    """ms samples per contender, running them in turn each round so machine noise is shared.

    A contender with fewer rounds than the others drops out after its last. rotate=True starts each
    round with the next contender, so none always runs right after the same neighbour (whose
    cache footprint it would inherit).
    """
    names = list(runners)
    samples = {name: [] for name in names}
    gc.collect()
    gc.disable()  # a collection landing inside one contender's call would bias that sample
    try:
        for i in range(max(rounds.values(), default=0)):
            k = i % len(names) if rotate else 0
            for name in names[k:] + names[:k]:
                if i < rounds[name]:
                    samples[name].append(time_once(runners[name]))
    finally:
        gc.enable()
    return samples


def time_alternating(runners: dict[str, callable], warmup: int, rounds: int) -> dict[str, float]:
    """Median ms per contender after `warmup` untimed rounds, all contenders timed `rounds` times in turn."""
    warm_up(runners, warmup)
    samples = time_rounds(runners, dict.fromkeys(runners, rounds))
    return {name: statistics.median(s) for name, s in samples.items()}


# ---------------------------------------------------------------- the machine's load (shared machines)

BUSY_CORES = 0.3  # other processes' average cores above which a row is marked as having competed for CPUs


def cpu_busy_s() -> float | None:
    """Seconds that all CPUs of the machine have been busy since boot (/proc/stat), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    except (OSError, ValueError):
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def cpu_meter(into: dict):
    """Average cores used during the block by this process (own) and by everything else (other).

    Why: on a shared machine the load average lags by a minute and counts this process too. "other"
    says directly whether a row's timings competed with other work for the cores.
    """
    wall0, own0, busy0 = time.perf_counter(), time.process_time(), cpu_busy_s()
    yield
    wall, own, busy = time.perf_counter() - wall0, time.process_time() - own0, cpu_busy_s()
    into["own_cores"] = own / wall
    into["other_cores"] = max(0.0, (busy - busy0 - own) / wall) if busy0 is not None else None


def other_cores_now(interval_s: float = 0.25) -> float | None:
    usage = {}
    with cpu_meter(usage):
        time.sleep(interval_s)
    return usage["other_cores"]


def wait_for_cores(threads: int, max_wait_s: float) -> dict:
    """Wait until other processes leave `threads` cores free, for at most max_wait_s.

    Why: with more busy threads than cores, every OpenMP barrier in torch waits for a descheduled
    thread's next time slice, and calls get 10x to 1000x slower (seen on a 2-core machine with a
    test suite running beside a 2-thread row). Such numbers say nothing about either contender, so a
    configuration that cannot get its cores is reported as skipped instead.
    """
    start = time.perf_counter()
    while True:
        other = other_cores_now()
        free = other is None or other <= (os.cpu_count() or 1) - threads + BUSY_CORES
        if free or time.perf_counter() - start >= max_wait_s:
            break
        time.sleep(1.0)
    return {"waited_s": round(time.perf_counter() - start, 1), "other_before": other, "starved": not free}


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def format_other(other: float | None) -> str:
    """Other processes' cores for a table, marked "!" above BUSY_CORES (the row competed for the CPUs)."""
    return f"{'-':>6}" if other is None else f"{other:>5.2f}{'!' if other > BUSY_CORES else ' '}"


# ---------------------------------------------------------------- provenance: which rnnkit ran


def package_dir() -> Path:
    """Where rnnkit was imported from: this checkout's src/, or a snapshot put first on PYTHONPATH."""
    return Path(rnnkit.__file__).resolve().parent


def git_state() -> dict:
    """Commit of the rnnkit that runs, and whether its sources differ from that commit."""
    def git(*args):
        proc = subprocess.run(["git", *args], cwd=package_dir(), capture_output=True, text=True, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else None
    return {"rnnkit_path": str(package_dir()), "commit": git("rev-parse", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--", "."))}


def engine_source_digest() -> str:
    """Hash of the engine sources: differs between start and end if someone edited them during the run."""
    h = hashlib.sha256()
    for path in sorted((package_dir() / "engines").glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- reporting


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux: platform's answer is vaguer but better than nothing
    return platform.processor() or platform.machine()


def numba_version() -> str | None:
    try:
        import numba
    except ImportError:
        return None  # the reference engine runs without it; the JSON says so rather than failing
    return numba.__version__


def machine_info(threads) -> dict:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "numba": numba_version(),
        "rnnkit": rnnkit.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads": threads,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def format_machine(info: dict) -> str:
    return (f"CPU: {info['cpu']}, {info['cores']} cores | torch {info['torch']} | numba {info['numba']} | "
            f"rnnkit {info['rnnkit']} | python {info['python']} | threads {info['threads']} | {info['date']}")


def write_json_atomic(path: Path, payload: dict) -> None:
    """Write via a temporary file in the same directory and rename, so no reader sees a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a results file is meant to be read
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


# ---------------------------------------------------------------- tables


@dataclasses.dataclass(frozen=True)
class Column:
    """One column of a table: its title, how a row gives its value (a key of the row dict, or a
    function of the row), the format spec for a number, and the alignment ("<" for text)."""
    title: str
    value: str | Callable[[dict], Any]
    fmt: str = ""
    align: str = ">"

    def text(self, row: dict) -> str:
        v = self.value(row) if callable(self.value) else row.get(self.value)
        if v is None:
            return "-"  # not measured (a contender left out), not zero
        if isinstance(v, (int, float)) and not isinstance(v, bool) and self.fmt:
            v = format(v, self.fmt)
        return str(v).replace("|", "\\|")  # a literal | would split the cell


def markdown_table(rows: list[dict], columns: list[Column], keys: int = 0,
                   unmeasured: Callable[[dict], str | None] = lambda row: None) -> str:
    """A markdown table of rows, padded so that it also reads as plain text.

    The first `keys` columns name a row; where unmeasured(row) gives a reason (skipped, failed), the
    row shows it in place of all other columns: its line ends there (markdown reads the missing cells
    as empty), and the reason does not widen its column.
    """
    header = [c.title for c in columns]
    body = []
    for row in rows:
        why = unmeasured(row)
        body.append(([c.text(row) for c in columns[:keys]], why) if why else ([c.text(row) for c in columns], None))
    widths = [max([len(header[i])] + [len(cells[i]) for cells, _ in body if i < len(cells)])
              for i in range(len(columns))]

    def line(cells, why=None):
        padded = [f"{t:{c.align}{w}}" for t, c, w in zip(cells, columns, widths)]
        return "| " + " | ".join(padded + ([why] if why else [])) + " |"

    rule = "|" + "|".join((":" + "-" * (w + 1) if c.align == "<" else "-" * (w + 1) + ":")
                          for c, w in zip(columns, widths)) + "|"
    return "\n".join([line(header), rule] + [line(cells, why) for cells, why in body])
