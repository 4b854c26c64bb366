"""The repository's promises to a newcomer: the README's commands are the ones CI runs, and the examples work."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_has_two_commands_and_ci_runs_the_test_one():
    commands = readme_commands()
    assert len(commands) == 2, commands
    install_and_run, install_and_test = commands
    assert "pip install torch==2.13.0" in install_and_run and install_and_run.endswith("rnnkit demo")
    assert "pytest" in install_and_test
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert install_and_test in ci_lines


def test_quickstart_loss_falls():
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py"), "--steps", "40"],
                            capture_output=True, text=True, timeout=300, check=True)
    mse = [float(m) for m in re.findall(r"mse ([0-9.]+)", result.stdout)]
    assert len(mse) >= 3, result.stdout
    assert mse[-1] < mse[0] / 5, result.stdout


def test_readme_python_examples_run(tmp_path, monkeypatch):
    """Every ```python block of the README runs as written (in a folder of its own: one writes model.onnx)."""
    import pytest

    pytest.importorskip("onnxscript")
    blocks = re.findall(r"```python\n(.+?)\n```", (ROOT / "README.md").read_text(), flags=re.S)
    assert len(blocks) >= 4, "the README lost its examples"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:  # in order, sharing names as a reader's session would
        exec(compile(block, "README.md", "exec"), namespace)
