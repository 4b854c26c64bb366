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

from rnnkit.testing import assert_close

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


def train(args: list[str], out: str, processes: int) -> dict:
    launcher = [sys.executable, "-m", "rnnkit.cli"]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
                    "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "rnnkit.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(launcher + ["train", *args, *COMMON, "--out", out], capture_output=True, text=True,
                          timeout=240, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)


@pytest.mark.parametrize("task", list(RUNS))
def test_two_processes_match_one_with_the_same_global_batch(tmp_path, task):
    args = list(RUNS[task])
    if task == "lm":
        corpus = tmp_path / "corpus.txt"
        corpus.write_text(TEXT)
        args += ["--corpus", str(corpus)]
    one = train(args, str(tmp_path / "one"), processes=1)
    two = train(args, str(tmp_path / "two"), processes=2)
    assert one["progress"]["step"] == two["progress"]["step"] > 0
    for name, w in one["model"].items():
        assert not torch.equal(w, torch.zeros_like(w)) or "bias" in name
        assert_close(two["model"][name], w, kind="grad", what=f"{task} {name} after DDP vs one process")
    if task == "lm":  # the carried hidden state is gathered from both processes into the checkpoint
        for a, b in zip(one["carry"], two["carry"]):
            assert a.shape == b.shape
            assert_close(b, a, kind="grad", what="carried state")
