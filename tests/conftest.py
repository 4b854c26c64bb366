"""Fixtures shared by the test modules that train small models or run the CLI.

A module opts in with `pytestmark = pytest.mark.usefixtures("one_thread", "in_tmp")`.
"""

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def tuning_cache(tmp_path_factory):
    """engine="auto" on CPU times its candidates once per shape class and caches the choice on disk
    (rnnkit.engines.tune): the tests keep that cache in a folder of their own, not the user's."""
    import os

    from rnnkit.engines import tune
    old = os.environ.get("RNNKIT_CACHE_DIR")
    os.environ["RNNKIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("rnnkit-cache"))
    tune.forget()
    yield
    if old is None:
        os.environ.pop("RNNKIT_CACHE_DIR", None)
    else:
        os.environ["RNNKIT_CACHE_DIR"] = old
    tune.forget()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads: on a busy two-core machine torch's default two
    threads made these runs 10 to 40 times slower, and their spinning inflates the CPU time.
    Module scope, so it also covers module-scoped runs (test_cli.py's lm_run)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def in_tmp(monkeypatch, tmp_path):
    """Runs land in the test's own folder (the default --out is relative), and errors are not re-raised."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RNNKIT_DEBUG", raising=False)


@pytest.fixture
def check_export(capsys):
    """check_export(run_folder): `rnnkit export RUN` writes each format, loads it back, and the difference
    it reports from the PyTorch model is within float32's tolerance; no temporary file is left behind."""
    import importlib.util
    from pathlib import Path

    from rnnkit import cli

    def check(folder, formats=("pt2", "onnx")):
        folder = Path(folder)
        for fmt in formats:
            if fmt == "onnx" and importlib.util.find_spec("onnxruntime") is None:
                continue
            capsys.readouterr()
            assert cli.main(["export", str(folder), "--format", fmt]) == 0, capsys.readouterr().err
            out = capsys.readouterr().out
            assert f"wrote {folder / f'model.{fmt}'} ({fmt})" in out, out
            assert float(out.rsplit(":", 1)[1]) < 1e-4, out
            assert (folder / f"model.{fmt}").stat().st_size > 0
            assert not list(folder.glob(f".model.{fmt}.*")), "a temporary export file was left behind"

    return check
