"""Each task's options in its own config section (issue 12, item 8): the task's dataclass in
rnnkit.tasks.options, named by its registry line; config.json stores only the task's fields, and a
config.json written before (one flat task section holding every task's fields) still loads, evaluates
and resumes."""

from __future__ import annotations

import dataclasses
import json

import pytest

from rnnkit import cli
from rnnkit.tasks import TASKS
from rnnkit.train.config import FLAT_TASK_FIELDS, ConfigError, RunConfig, TaskConfig

pytestmark = pytest.mark.usefixtures("one_thread", "in_tmp")  # tests/conftest.py

# The task section of config.json as rnnkit wrote it before tasks had their own (the flat TaskConfig's
# defaults, every field, whatever the task); "task" and the task's own values are put in per test.
FLAT_DEFAULTS = {"task": "lm", "corpus": "stdlib", "level": "char", "max_chars": 0, "dataset": "GunPoint",
                 "data": "", "text_field": "text", "label_field": "label", "length": 200, "delay": 100,
                 "examples": 10000, "patch": 1, "valid_fraction": 0.1, "beam": 1, "max_len": 0, "vocab_size": 0,
                 "teacher_forcing": "1"}
FLAT_TASKS = ("lm", "sentiment", "ucr", "fashion-mnist", "classify", "adding", "copy", "g2p", "translate", "tag",
              "caption")  # the tasks of that layout

ADDING = ["train", "adding", "--length", "8", "--examples", "96", "--batch-size", "16", "--hidden", "4",
          "--checkpoint-every", "3", "--eval-every", "5", "--no-progress"]


def fields(name: str) -> list[dataclasses.Field]:
    return dataclasses.fields(TASKS[name].options)


# ---------------------------------------------------------------- the options classes


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_declares_its_options_with_help_and_allowed_values(name):
    kind = TASKS[name].options
    assert dataclasses.is_dataclass(kind) and kind() == kind()  # every field has a default
    for f in fields(name):
        assert f.metadata["help"].strip(), (name, f.name)
        assert type(f.default) in (bool, int, float, str), (name, f.name)
        assert f.name != "task"  # the task's name is TaskConfig's own


def test_an_option_several_tasks_take_is_one_flag():
    """One type and the same choices whichever task takes it: the command line parses the flag once
    (defaults and ranges are each task's own)."""
    seen = {}
    for name in TASKS:
        for f in fields(name):
            key = (type(f.default), f.metadata.get("choices"))
            assert seen.setdefault(f.name, key) == key, (name, f.name)
    assert set(FLAT_TASK_FIELDS) <= set(seen)  # every field of the flat layout still belongs to a task


def test_the_flat_names_read_and_write_through():
    cfg = TaskConfig(task="adding", length=8)
    assert (cfg.task, cfg.length, cfg.examples) == ("adding", 8, 10000)
    assert cfg.to_dict() == {"task": "adding", "length": 8, "examples": 10000}
    assert TaskConfig.from_dict(cfg.to_dict()) == cfg
    assert RunConfig().task == TaskConfig("lm")
    with pytest.raises(AttributeError, match="task 'adding' has no option 'beam'"):
        cfg.beam


@pytest.mark.parametrize("given, match", [
    ({"beam": 2}, r"^--beam is an option of task g2p, translate, caption, not of adding "
                  r"\(its options: --length, --examples\)$"),
    ({"beam": 0}, r"^--beam must be at least 1, got 0$"),  # a bad value is named as such first
    ({"lenght": 8}, r"^--lenght is not an option of any task"),
])
def test_an_option_the_task_does_not_take_is_refused(given, match):
    with pytest.raises(ConfigError, match=match):
        TaskConfig(task="adding", **given)


# ---------------------------------------------------------------- config.json, this layout and the flat one


@pytest.mark.parametrize("name", FLAT_TASKS)
def test_a_flat_task_section_reads_as_the_tasks_own(name):
    """The flat layout's defaults are the defaults of every task it was written for: an old run reads
    as the same task."""
    assert TaskConfig.from_dict({**FLAT_DEFAULTS, "task": name}) == TaskConfig(name)
    assert set(TaskConfig(name).to_dict()) == {"task"} | {f.name for f in fields(name)}


def test_a_flat_task_section_keeps_the_tasks_values():
    flat = {**FLAT_DEFAULTS, "task": "translate", "beam": 4, "max_len": 20, "vocab_size": 2000, "length": 9}
    assert TaskConfig.from_dict(flat) == TaskConfig("translate", beam=4, max_len=20, vocab_size=2000)


@pytest.mark.parametrize("section, match", [
    ({"task": "adding", "lenght": 8}, "unknown option 'lenght' in the task section"),
    ({"task": "nosuch"}, f"unknown task 'nosuch': expected one of {', '.join(TASKS)}$"),
    ({"task": 3}, "the task name must be a string"),
])
def test_a_task_section_that_is_no_tasks_is_refused(section, match):
    with pytest.raises(ConfigError, match=match):
        TaskConfig.from_dict(section)


def test_a_run_folder_with_a_flat_config_evaluates_and_resumes(capsys, tmp_path):
    """A run trained before tasks had their own sections: eval reads it, --resume continues it to the
    numbers of an uninterrupted run, and rewrites config.json in the task's own layout."""
    straight, old = tmp_path / "straight", tmp_path / "old"
    assert cli.main([*ADDING, "--epochs", "2", "--out", str(straight)]) == 0
    assert cli.main([*ADDING, "--epochs", "1", "--out", str(old)]) == 0
    capsys.readouterr()
    assert cli.main(["eval", str(old)]) == 0
    evaluated = capsys.readouterr().out
    assert evaluated.startswith("test  ")
    config = json.loads((old / "config.json").read_text())
    new_layout = config["task"]
    assert new_layout == {"task": "adding", "length": 8, "examples": 96}
    config["task"] = {**FLAT_DEFAULTS, **new_layout}
    (old / "config.json").write_text(json.dumps(config, indent=2))

    assert cli.main(["eval", str(old)]) == 0
    assert capsys.readouterr().out == evaluated
    assert cli.main(["train", "--resume", str(old), "--epochs", "2", "--no-progress"]) == 0
    capsys.readouterr()
    assert json.loads((old / "config.json").read_text())["task"] == new_layout
    results = [json.loads((folder / "results.json").read_text()) for folder in (old, straight)]
    assert results[0]["step"] == 12 and results[0] == results[1]


# ---------------------------------------------------------------- the command line


def help_text(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main([*argv, "--help"])
    assert e.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


@pytest.mark.parametrize("name", list(TASKS))
def test_train_task_help_shows_that_tasks_options(capsys, name):
    text = help_text(capsys, "train", name)
    assert text.startswith(f"usage: rnnkit train {name} [options]")
    own = {f.name for f in fields(name)}
    for f in fields(name):
        assert f"--{f.name.replace('_', '-')} {f.name.upper()} {' '.join(f.metadata['help'].split())} " \
               f"(default: {f.default})" in text, f.name
    others = {f.name for task in TASKS for f in fields(task)} - own
    for other in others:
        assert f"--{other.replace('_', '-')} " not in text, other
    for flag in ("--hidden", "--epochs", "--out"):
        assert flag in text


def test_train_help_names_each_tasks_options(capsys):
    text = help_text(capsys, "train")
    for name in TASKS:
        flags = ", ".join("--" + f.name.replace("_", "-") for f in fields(name))
        assert f"{name} {' '.join(TASKS[name].description.split())} options: {flags}" in text, name


def test_another_tasks_option_is_a_one_line_error(capsys, tmp_path):
    code = cli.main(["train", "adding", "--valid-fraction", "0.2", "--out", "run"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err == ("rnnkit: error: --valid-fraction is an option of task sentiment, ucr, fashion-mnist, classify, "
                   "tag, not of adding (its options: --length, --examples)\n")
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()
