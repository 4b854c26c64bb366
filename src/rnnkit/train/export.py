"""Export a trained model to a file, load it back and check it against the model: `rnnkit export RUN`.

Two formats:

    pt2    torch.export's ExportedProgram (torch.export.save / torch.export.load). The rnnkit layers stay
           rnnkit operators, so loading the file needs `import rnnkit.engines` (which registers them).
    onnx   torch.onnx.export (its torch.export-based exporter): stock layers become ONNX's own RNN/LSTM/GRU
           operators (rnnkit.engines.onnx); needs the [export] extra (onnx, onnxscript, onnxruntime).

Batch and time stay dynamic where the caller says so (`dynamic_shapes`, torch.export's format). The
file is written to a temporary name beside the target and renamed, so a failed export never leaves a
file that looks complete; it is then loaded back and run on the example, and the largest absolute
difference from the model's own outputs is returned.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import torch

FORMATS = ("pt2", "onnx")


class ExportError(RuntimeError):
    """The model could not be exported, or the exported file does not reproduce it."""


def flat_tensors(result) -> list[torch.Tensor]:
    """Every tensor of a (nested) output, in order."""
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, (tuple, list)):
        return [t for r in result for t in flat_tensors(r)]
    if isinstance(result, dict):
        return [t for r in result.values() for t in flat_tensors(r)]
    return []


@contextlib.contextmanager
def temporary_beside(path: Path):
    """A temporary file name in path's folder, removed unless the caller renamed it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def save_pt2(model: torch.nn.Module, args: tuple, dynamic_shapes, path: Path) -> None:
    program = torch.export.export(model, args, dynamic_shapes=dynamic_shapes)
    with temporary_beside(path) as tmp:
        torch.export.save(program, str(tmp))
        os.replace(tmp, path)


def run_pt2(path: Path, args: tuple) -> list[torch.Tensor]:
    import rnnkit.engines  # noqa: F401  (the program calls rnnkit's operators, which this registers)

    return flat_tensors(torch.export.load(str(path)).module()(*args))


def save_onnx(model: torch.nn.Module, args: tuple, dynamic_shapes, path: Path) -> None:
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        raise ExportError("ONNX export needs onnx, onnxscript and onnxruntime: pip install 'rnnkit[export]'") from None
    beyond = sorted({type(m).__name__ for m in model.modules() if getattr(m, "active_family", lambda: None)()})
    if beyond:  # their operators have no ONNX translation: say so before the exporter fails deep inside
        raise ExportError(f"ONNX has no operator for the cells of {', '.join(beyond)} (layer norm, peepholes, "
                          f"minGRU/minLSTM, sLSTM): export with --format pt2 instead")
    program = torch.onnx.export(model, args, dynamic_shapes=dynamic_shapes)
    with temporary_beside(path) as tmp:
        program.save(str(tmp))
        os.replace(tmp, path)


def run_onnx(path: Path, args: tuple) -> list[torch.Tensor]:
    try:
        import onnxruntime
    except ImportError:
        raise ExportError("checking an ONNX file needs onnxruntime: pip install 'rnnkit[export]'") from None
    session = onnxruntime.InferenceSession(str(path))
    feeds = {i.name: a.detach().numpy() for i, a in zip(session.get_inputs(), flat_tensors(args), strict=False)}
    return [torch.from_numpy(o) for o in session.run(None, feeds)]


def dynamic_everywhere(args: tuple):
    """torch.export's dynamic_shapes for args with every dimension of every tensor left for it to decide
    (Dim.AUTO: dynamic where the model allows, such as batch and time; static where it needs a size)."""
    auto = torch.export.Dim.AUTO
    return tuple({d: auto for d in range(a.dim())} if isinstance(a, torch.Tensor) else None for a in args)


def export_and_check(model: torch.nn.Module, args: tuple, fmt: str, path: str | Path, dynamic_shapes=None) -> float:
    """Export model (called as model(*args)) to path in format fmt, reload it, run it on args and return
    the largest absolute difference from model(*args). Raises ExportError if the outputs differ in number or shape."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}: expected one of {', '.join(FORMATS)}")
    path = Path(path)
    model.eval()
    with torch.no_grad():
        expected = flat_tensors(model(*args))
        (save_pt2 if fmt == "pt2" else save_onnx)(model, args, dynamic_shapes, path)
        got = (run_pt2 if fmt == "pt2" else run_onnx)(path, args)
    if len(got) != len(expected) or any(g.shape != e.shape for g, e in zip(got, expected, strict=False)):
        raise ExportError(f"{path}: the exported model returns shapes {[tuple(g.shape) for g in got]}, "
                          f"the model {[tuple(e.shape) for e in expected]}")
    return max((float((g.double() - e.double()).abs().max()) for g, e in zip(got, expected, strict=True)
                if e.numel()), default=0.0)
