"""Data-parallel training: two processes (torchrun, gloo, CPU) reach the weights one process reaches.

Each process takes half of every global batch and the loss is scaled so that DDP's gradient
average is the global mean (rnnkit.train.distributed). Without dropout the two runs differ only
in summation order, so the weights agree within the float32 gradient tolerance.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch

from rnnkit.testing import assert_close, event_scalars

TEXT = "".join(f"def f{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(40))

COMMON = ["--epochs", "1", "--optimizer", "sgd", "--threads", "1", "--no-progress", "--seed", "3", "--checkpoint-every", "1000"]
RUNS = {
    "adding": ["adding", "--length", "12", "--examples", "64", "--batch-size", "16", "--cell", "gru", "--hidden", "8",
               "--layers", "2", "--lr", "0.1"],
    "lm": ["lm", "--batch-size", "4", "--bptt", "8", "--bptt-back", "12", "--cell", "lstm", "--hidden", "8",
           "--embed", "8", "--lr", "0.1", "--max-steps", "8"],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(argv: list[str], processes: int, script: str | None = None, env: dict | None = None):
    """rnnkit ARGV (or `script` ARGV) in one process or under torchrun; the finished process."""
    program = [script] if script else ["-m", "rnnkit.cli"]
    launcher = [sys.executable, *program]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
                    "--master_addr=127.0.0.1", f"--master_port={free_port()}", *program]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(launcher + argv, capture_output=True, text=True, timeout=240, env=env)


def train(args: list[str], out: str, processes: int, lines: list[str] | None = None) -> dict:
    done = launch(["train", *args, *COMMON, "--out", out], processes)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    if lines is not None:
        lines += done.stdout.splitlines()
    return torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)


@pytest.mark.parametrize("task", list(RUNS))
def test_two_processes_match_one_with_the_same_global_batch(tmp_path, task):
    args = list(RUNS[task])
    if task == "lm":
        corpus = tmp_path / "corpus.txt"
        corpus.write_text(TEXT)
        args += ["--corpus", str(corpus)]
    one_lines, two_lines = [], []
    one = train(args, str(tmp_path / "one"), processes=1, lines=one_lines)
    two = train(args, str(tmp_path / "two"), processes=2, lines=two_lines)
    # only rank 0 prints: the same lines as one process, each once, one test result (of the best weights)
    shape = lambda lines: [line.split(":")[0] if line.startswith("step") else line.split()[0] for line in lines]
    assert shape(two_lines) == shape(one_lines), two_lines
    assert [line.startswith("test ") for line in two_lines].count(True) == 1
    assert one["progress"]["step"] == two["progress"]["step"] > 0
    for name, w in one["model"].items():
        assert not torch.equal(w, torch.zeros_like(w)) or "bias" in name
        assert_close(two["model"][name], w, kind="grad", what=f"{task} {name} after DDP vs one process")
    if task == "lm":  # the carried hidden state is gathered from both processes into the checkpoint
        for a, b in zip(one["carry"], two["carry"]):
            assert a.shape == b.shape
            assert_close(b, a, kind="grad", what="carried state")


# ---------------------------------------------------------------- SIGKILL and --resume

KILL_SCRIPT = """
import os, signal, sys
from rnnkit import cli
from rnnkit.train import trainer

KILL_AT = int(os.environ["KILL_AT_STEP"])
train_step = trainer.Trainer.train_step


def killed_at(self, batch):
    if self.step + 1 == KILL_AT:  # every process dies before this step, as a kill -9 of the job would do
        os.kill(os.getpid(), signal.SIGKILL)
    return train_step(self, batch)


trainer.Trainer.train_step = killed_at
sys.exit(cli.main(sys.argv[1:]))
"""

KILLED = {  # (arguments, step to kill at): checkpoints every 3 steps, training-loss rows every 10
    "adding": (["adding", "--length", "8", "--examples", "64", "--batch-size", "8", "--cell", "gru", "--hidden",
                "8", "--lr", "0.05", "--epochs", "2", "--eval-every", "5"], 14),
    "lm": (["lm", "--batch-size", "4", "--bptt", "8", "--bptt-back", "12", "--cell", "lstm", "--hidden", "8",
            "--embed", "8", "--lr", "0.1", "--max-steps", "16", "--dropout", "0.2", "--eval-every", "7"], 12),
}




@pytest.mark.parametrize("processes", [1, 2], ids=["one-process", "ddp"])
@pytest.mark.parametrize("task", list(KILLED))
def test_a_run_killed_with_sigkill_resumes_to_the_same_weights_and_logs(tmp_path, task, processes):
    args, kill_at = KILLED[task]
    args = [*args, "--optimizer", "adam", "--threads", "1", "--no-progress", "--seed", "5", "--checkpoint-every", "3"]
    if task == "lm":
        corpus = tmp_path / "corpus.txt"
        corpus.write_text(TEXT)
        args += ["--corpus", str(corpus)]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert launch(["train", *args, "--out", str(straight)], processes).returncode == 0
    script = tmp_path / "kill_at.py"
    script.write_text(KILL_SCRIPT)
    done = launch(["train", *args, "--out", str(killed)], processes, str(script), {"KILL_AT_STEP": str(kill_at)})
    assert done.returncode != 0 and not (killed / "results.json").exists()
    assert (killed / ".lock").exists()  # left by the killed run: it must not block the resume
    done = launch(["train", "--resume", str(killed), "--no-progress"], processes)
    assert done.returncode == 0, done.stderr[-3000:]

    a, b = (torch.load(folder / "checkpoint.pt", weights_only=True) for folder in (straight, killed))
    for part in ("model", "optimizer"):
        flat_a, flat_b = torch.utils._pytree.tree_flatten(a[part])[0], torch.utils._pytree.tree_flatten(b[part])[0]
        assert all(torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y for x, y in zip(flat_a, flat_b)), part
    assert torch.equal(torch.load(straight / "best.pt", weights_only=True)["model"]["head.weight"],
                       torch.load(killed / "best.pt", weights_only=True)["model"]["head.weight"])
    for log in ("metrics.csv", "grad_norms.csv", "results.json"):
        assert (killed / log).read_text() == (straight / log).read_text(), log
    assert event_scalars(killed) == event_scalars(straight)
