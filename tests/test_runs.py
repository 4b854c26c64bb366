"""Run folders (issue 12): one process per folder, names that cannot collide, logs as exact as the
weights after a kill, files with the user's umask, leftovers removed, checkpoints that cannot run code.

The kill-and-resume comparisons of the weights and logs themselves are in tests/test_train.py
(in-process) and tests/test_ddp.py (SIGKILL, one and two processes).
"""

from __future__ import annotations

import json
import os
import random
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnkit import cli
from rnnkit.tasks import make_task
from rnnkit.train import checkpoint as ckpt
from rnnkit.train.config import ModelConfig, RunConfig, TaskConfig, TrainConfig
from rnnkit.train.files import atomic_write_text, lock_folder, unlock
from rnnkit.train.runlog import RunFolder, RunFolderError
from rnnkit.train.trainer import Trainer
from rnnkit.testing import event_scalars

pytestmark = pytest.mark.usefixtures("one_thread", "in_tmp")  # tests/conftest.py

ADDING = ["train", "adding", "--length", "8", "--examples", "96", "--batch-size", "16", "--hidden", "4",
          "--epochs", "2", "--checkpoint-every", "3", "--eval-every", "5", "--no-progress"]


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}




def adding_config(**train) -> RunConfig:
    return RunConfig(task=TaskConfig(task="adding", length=8, examples=96), model=ModelConfig(hidden=4),
                     train=TrainConfig(**{"epochs": 2, "batch_size": 16, "checkpoint_every": 3, **train}))


# ---------------------------------------------------------------- one process per folder


def test_default_run_names_do_not_collide(tmp_path):
    first = RunFolder.create(str(tmp_path / "runs" / "adding-lstm-20260101-000000"), unique=True)
    second = RunFolder.create(str(tmp_path / "runs" / "adding-lstm-20260101-000000"), unique=True)
    assert (first.path, second.path) == (str(tmp_path / "runs" / "adding-lstm-20260101-000000"),
                                         str(tmp_path / "runs" / "adding-lstm-20260101-000000-2"))
    first.close()
    second.close()


def test_two_runs_started_together_get_their_own_folders(tmp_path):
    """The issue's case: two default-named runs in the same second, different seeds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    runs = [subprocess.Popen([sys.executable, "-m", "rnnkit.cli", *ADDING, "--seed", str(seed), "--threads", "1"],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for seed in (1, 2)]
    for p in runs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
    folders = sorted((tmp_path / "runs").iterdir())
    assert len(folders) == 2
    seeds = set()
    for folder in folders:
        config = json.loads((folder / "config.json").read_text())
        state = ckpt.load(str(folder / "checkpoint.pt"))
        assert state["config"] == config  # the checkpoint is the run the config describes
        seeds.add(config["train"]["seed"])
        rows = (folder / "metrics.csv").read_text().splitlines()
        assert len(rows) == len(set(rows)), "a row was written twice"
    assert seeds == {1, 2}


def test_a_folder_in_use_is_refused_at_once(capsys, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    lock = lock_folder(str(folder))  # as another process training into it would hold it
    try:
        for argv in ([*ADDING, "--out", folder], ["train", "--resume", folder]):
            if argv[1] == "--resume":
                (folder / "config.json").write_text(json.dumps(adding_config().to_dict()))
            before = snapshot(folder)
            code, out, err = run_cli(capsys, *argv)
            assert code == 2 and out == "", out
            assert err == f"rnnkit: error: {folder} is in use by process {os.getpid()} (another rnnkit train); " \
                          "wait for it to end or pick another --out\n"
            assert snapshot(folder) == before
    finally:
        unlock(lock)


def test_a_stale_lock_blocks_nothing_and_resume_continues(capsys, tmp_path):
    """A killed run leaves .lock behind (the kernel dropped its flock): --resume goes on."""
    folder = tmp_path / "run"
    code, _, _ = run_cli(capsys, *ADDING, "--epochs", "1", "--out", folder)
    assert code == 0 and (folder / ".lock").exists()
    code, out, err = run_cli(capsys, "train", "--resume", folder, "--epochs", "2", "--no-progress")
    assert code == 0, err
    assert json.loads((folder / "results.json").read_text())["step"] == 12


def test_a_fresh_run_never_writes_into_a_killed_runs_files(capsys, tmp_path):
    """A run killed before its first checkpoint left config.json and metrics.csv: a new run is refused,
    and --resume trains it from step 0 to what an uninterrupted run writes."""
    folder, straight = tmp_path / "run", tmp_path / "straight"
    assert run_cli(capsys, *ADDING, "--out", straight)[0] == 0
    assert run_cli(capsys, *ADDING, "--out", folder)[0] == 0
    for name in ("checkpoint.pt", "best.pt", "results.json"):
        (folder / name).unlink()
    before = snapshot(folder)
    code, out, err = run_cli(capsys, *ADDING, "--out", folder)
    assert code == 2 and f"{folder} already holds a run; continue it with --resume {folder}" in err
    assert snapshot(folder) == before
    code, out, err = run_cli(capsys, "train", "--resume", folder, "--no-progress")
    assert code == 0, err
    assert "has no checkpoint yet; training it from step 0" in out
    for name in ("metrics.csv", "grad_norms.csv", "results.json"):
        assert (folder / name).read_text() == (straight / name).read_text(), name
    assert event_scalars(folder) == event_scalars(straight)


# ---------------------------------------------------------------- resume


def test_resume_of_a_finished_run_does_nothing_and_says_so(capsys, tmp_path):
    folder = tmp_path / "run"
    assert run_cli(capsys, *ADDING, "--out", folder)[0] == 0
    before = snapshot(folder)
    for extra in ([], ["--epochs", "2"], ["--epochs", "1"]):
        code, out, err = run_cli(capsys, "train", "--resume", folder, "--no-progress", *extra)
        assert code == 0, err
        assert f"{folder} finished at step 12 (its results.json is written); nothing to do" in out
        assert "test " not in out
        assert snapshot(folder) == before  # no new test rows, no new event file
    assert len(list(folder.glob("events.out.tfevents.*"))) == 1


def test_leftover_temporary_files_are_removed_at_the_next_start(capsys, tmp_path):
    folder = tmp_path / "run"
    assert run_cli(capsys, *ADDING, "--epochs", "1", "--out", folder)[0] == 0
    for name in (".tmp-3f2a9c.part", "plots/.tmp-77aa01.part"):  # as a kill during a write leaves them
        (folder / name).write_bytes(b"half a checkpoint")
    assert run_cli(capsys, "train", "--resume", folder, "--epochs", "2", "--no-progress")[0] == 0
    assert not list(folder.rglob(".tmp-*"))


def test_logs_after_a_resumed_finished_run_are_extended_not_repeated(capsys, tmp_path):
    """--resume with a larger --max-steps: the old test rows go, the new ones come once."""
    folder = tmp_path / "run"
    assert run_cli(capsys, *ADDING, "--max-steps", "4", "--out", folder)[0] == 0
    assert run_cli(capsys, "train", "--resume", folder, "--max-steps", "8", "--no-progress")[0] == 0
    rows = (folder / "metrics.csv").read_text().splitlines()
    tests = [r for r in rows if ",test," in r]
    assert tests and all(r.startswith("8,") for r in tests)
    assert [tag for tag, _, _ in event_scalars(folder)].count("test/mse") == 1


# ---------------------------------------------------------------- file modes


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_files_are_created_with_the_users_umask(capsys, tmp_path, umask):
    old = os.umask(umask)
    try:
        folder = tmp_path / "run"
        assert run_cli(capsys, *ADDING, "--epochs", "1", "--out", folder)[0] == 0
        assert run_cli(capsys, "train", "--resume", folder, "--epochs", "2", "--no-progress")[0] == 0
    finally:
        os.umask(old)
    modes = {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.is_file()}
    assert {"checkpoint.pt", "best.pt", "config.json", "results.json", "metrics.csv", "grad_norms.csv",
            "plots/loss.png"} <= modes.keys()
    assert {name: mode for name, mode in modes.items() if mode != 0o666 & ~umask} == {}


# ---------------------------------------------------------------- loading never runs code


class RunsCode:
    """Unpickling this calls Path.touch: code the checkpoint's author chose."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (Path(self.marker),)


def test_a_checkpoint_that_would_run_code_is_refused_and_the_code_does_not_run(capsys, tmp_path):
    marker = tmp_path / "the-code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.ones(2)}, "step": 1, "metric": RunsCode(str(marker))}, evil)
    with pytest.raises(ckpt.CheckpointError, match=r"needs \S+ to load, more than tensors and plain "
                                                    r"values; rnnkit does not run code from a checkpoint"):
        ckpt.load(str(evil))
    assert not marker.exists()

    folder = tmp_path / "run"  # the same through the command line, as a run folder received from someone
    assert run_cli(capsys, *ADDING, "--epochs", "1", "--out", folder)[0] == 0
    (folder / "best.pt").write_bytes(evil.read_bytes())
    for argv in (["eval", folder], ["train", "--resume", folder, "--epochs", "2"]):
        if argv[0] == "train":
            (folder / "checkpoint.pt").write_bytes(evil.read_bytes())
        code, out, err = run_cli(capsys, *argv)
        assert code == 2 and err.count("\n") == 1 and "does not run code from a checkpoint" in err, err
        assert not marker.exists()


def test_checkpoints_hold_only_tensors_and_plain_values(tmp_path):
    """What makes weights_only loading possible: the RNG states, carried state and task state included."""
    config = adding_config(epochs=1)
    Trainer(make_task(config), config, str(tmp_path / "run"), progress=False, print_fn=lambda *a: None).fit()
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)  # no safe_globals: plain types only
    draws = lambda: (torch.rand(3), float(np.random.rand()), random.random())
    ckpt.set_rng_state(state["rng"])
    first = draws()
    ckpt.set_rng_state(state["rng"])
    second = draws()
    assert torch.equal(first[0], second[0]) and first[1:] == second[1:]


def test_a_checkpoint_from_before_tensor_rng_states_still_resumes(tmp_path):
    """Older checkpoints hold numpy's RNG state as a numpy array: rebuilding that runs no code, so it loads."""
    folder = str(tmp_path / "run")
    config = adding_config(epochs=1)
    Trainer(make_task(config), config, folder, progress=False, print_fn=lambda *a: None).fit()
    path = os.path.join(folder, "checkpoint.pt")
    state = ckpt.load(path)
    np.random.seed(5)
    random.seed(5)
    state["rng"]["numpy"], state["rng"]["python"] = np.random.get_state(), random.getstate()  # the old form
    expected = (float(np.random.rand()), random.random())
    torch.save(state, path)
    np.random.seed(0)
    random.seed(0)
    ckpt.set_rng_state(ckpt.load(path)["rng"])
    assert (float(np.random.rand()), random.random()) == expected
    config = adding_config(epochs=2)
    trainer = Trainer(make_task(config), config, folder, resume=True, progress=False, print_fn=lambda *a: None)
    trainer.fit()
    assert trainer.epoch == 2


def test_a_checkpoint_of_another_task_is_refused(capsys, tmp_path, monkeypatch):
    lm, adding = tmp_path / "lm", tmp_path / "adding"
    (tmp_path / "corpus.txt").write_text("the cat sat on the mat. " * 40)
    assert run_cli(capsys, "train", "lm", "--corpus", tmp_path / "corpus.txt", "--hidden", "4", "--embed", "4",
                   "--batch-size", "4", "--bptt", "8", "--max-steps", "3", "--out", lm, "--no-progress")[0] == 0
    assert run_cli(capsys, *ADDING, "--epochs", "1", "--out", adding)[0] == 0
    for name in ("checkpoint.pt", "best.pt"):
        (lm / name).write_bytes((adding / name).read_bytes())
    for argv in (["generate", lm, "--prompt", "the"], ["eval", lm], ["train", "--resume", lm, "--max-steps", "5"]):
        code, out, err = run_cli(capsys, *argv)
        assert code == 2 and out == "" and err.count("\n") == 1, err
        assert "was written by a 'adding' run, but the run's config.json says 'lm'" in err, err


def test_atomic_text_files_keep_the_old_version_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    atomic_write_text(str(path), "old\n")

    def broken(f):
        f.write("half")
        raise OSError(28, "No space left on device")

    from rnnkit.train import files

    with pytest.raises(OSError):
        files.atomic_write(str(path), broken, binary=False)
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["results.json"]


def test_run_folder_create_refuses_a_folder_with_a_run(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.csv").write_text("step,epoch,split,metric,value\n")
    with pytest.raises(RunFolderError, match="already holds a run"):
        RunFolder.create(str(tmp_path / "run"))
