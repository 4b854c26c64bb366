"""Tolerances for comparing rnnkit with torch.nn and engines with each other: the one place they live.

Errors are measured relative to the size of the expected tensor,
    max|actual - expected| / max(max|expected|, tiny),
so one helper serves outputs and gradients of any scale without per-element blow-ups near zero.
"""

from __future__ import annotations

import torch
from torch import Tensor

# (outputs, gradients) relative error bounds per dtype
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-4),
    # 16-bit inputs, compared with float64 results on the same values (float32 accumulation inside).
    # bfloat16 keeps 8 significant bits (2^-9 = 2e-3 per rounding): the GPU issue's 1e-2 bound.
    torch.bfloat16: (1e-2, 1e-2),
    torch.float16: (2e-3, 2e-3),
}


def relative_error(actual: Tensor, expected: Tensor) -> float:
    if actual.shape != expected.shape:
        raise AssertionError(f"shape mismatch: got {tuple(actual.shape)}, expected {tuple(expected.shape)}")
    expected = expected.detach().double()
    scale = max(expected.abs().max().item(), torch.finfo(torch.float64).tiny) if expected.numel() else 1.0
    return (actual.detach().double() - expected).abs().max().item() / scale if expected.numel() else 0.0


def assert_close(actual: Tensor, expected: Tensor, kind: str = "output", what: str = "") -> None:
    """Fail unless actual matches expected within the tolerance for its dtype and kind ("output" or "grad")."""
    if actual is None or expected is None:
        if actual is not expected:
            raise AssertionError(f"{what}: one side is None (actual {actual is None}, expected {expected is None})")
        return
    if actual.dtype != expected.dtype:
        raise AssertionError(f"{what}: dtype {actual.dtype} != {expected.dtype}")
    if not torch.isfinite(actual).all():
        raise AssertionError(f"{what}: non-finite values in the result")
    rtol = TOLERANCES[actual.dtype][0 if kind == "output" else 1]
    err = relative_error(actual, expected)
    if not err <= rtol:
        raise AssertionError(f"{what}: relative error {err:.3g} exceeds {rtol:g} ({kind}, {actual.dtype})")


def event_scalars(folder) -> list[tuple[str, int, float]]:
    """Every (tag, step, value) in a run folder's TensorBoard files, as any reader sees them (sorted):
    what the kill-and-resume tests compare between a resumed run and an uninterrupted one."""
    import glob
    import os

    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2

    out = []
    for name in sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*"))):
        for record in RawEventFileLoader(name).Load():
            event = event_pb2.Event.FromString(record)
            out += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
    return sorted(out)
