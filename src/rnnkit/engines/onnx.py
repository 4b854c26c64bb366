"""ONNX translations of the engine operators: a stock layer becomes ONNX's own RNN, LSTM or GRU operator.

torch.onnx.export (its default, torch.export-based exporter) turns every operator of the exported
graph into ONNX through a registry of translations, which it builds from torch's own list at each
export. `install()` adds the rnnkit operators to that list the moment torch's exporter loads it, so
a plain `torch.onnx.export(model, args, ...)` works for models that hold rnnkit layers, with no
extra argument, and `import rnnkit` does not import onnxscript. The translation covers padded
batches (dynamic batch and time); ONNX has no LSTM projection, so rnnkit.nn runs a layer with
`proj_size` as a `torch.ops.higher_order.scan` of plain ops while exporting, which ONNX gets as Scan.

Gate orders differ: torch's LSTM is (i, f, g, o) and ONNX's (i, o, f, c); torch's GRU is (r, z, n)
and ONNX's (z, r, h), with linear_before_reset=1 being torch's GRU (r multiplies W_hn h + b_hn).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

# torch's list of translations lives in _torchlib_registry; it is complete once _registration, which
# imports it half-way through its own loading, has loaded
REGISTRY_MODULE = "torch.onnx._internal.exporter._registration"
GATE_ORDER = {"LSTM": (0, 3, 1, 2), "GRU": (1, 0, 2), "RNN_TANH": (0,), "RNN_RELU": (0,)}  # ONNX's, in torch's blocks


def translate(mode: str, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse: bool):
    """rnnkit::E_forward as ONNX: x (N, I) rows of a padded batch -> (T, B, I), one ONNX recurrent op."""
    from onnxscript import opset18 as op

    if batch_sizes is not None:
        raise NotImplementedError("rnnkit: ONNX export takes padded batches; a PackedSequence or lengths= has "
                                  "no ONNX form here: pad the batch (and mask the outputs) instead")
    if w_hr is not None:
        raise NotImplementedError("rnnkit: proj_size is exported as a scan; this operator should not have it")
    gates, hidden = len(GATE_ORDER[mode]), w_hh.shape[1]

    def reorder(w):  # torch's gate blocks in ONNX's order, with the direction axis ONNX wants in front
        blocks = [op.Slice(w, [k * hidden], [(k + 1) * hidden], [0]) for k in range(gates)]
        return op.Unsqueeze(op.Concat(*[blocks[k] for k in GATE_ORDER[mode]], axis=0), [0])

    batch = op.Shape(h0, start=0, end=1)
    seq = op.Reshape(x, op.Concat(op.Constant(value_ints=[-1]), batch, op.Shape(x, start=1, end=2), axis=0))
    args = [seq, reorder(w_ih), reorder(w_hh)]
    args.append(op.Concat(reorder(b_ih), reorder(b_hh), axis=1) if b_ih is not None else None)
    args += [None, op.Unsqueeze(h0, [0])]  # sequence_lens, initial_h
    attrs = dict(hidden_size=hidden, direction="reverse" if reverse else "forward")
    empty = op.CastLike(op.ConstantOfShape(op.Constant(value_ints=[0])), x)
    if mode == "LSTM":
        y, h_n, c_n = op.LSTM(*args, op.Unsqueeze(c0, [0]), **attrs)
        c_n = op.Squeeze(c_n, [0])
    elif mode == "GRU":
        y, h_n = op.GRU(*args, linear_before_reset=1, **attrs)
        c_n = empty
    else:
        y, h_n = op.RNN(*args, activations=["Tanh" if mode == "RNN_TANH" else "Relu"], **attrs)
        c_n = empty
    out = op.Reshape(y, op.Concat(op.Constant(value_ints=[-1]), op.Constant(value_ints=[hidden]), axis=0))
    return out, op.Squeeze(h_n, [0]), c_n, op.Identity(empty), op.Identity(empty), op.Identity(empty)


def register(_registration_module=None) -> None:
    """Add the translation of every engine's forward operator to torch's list of ONNX translations."""
    import torch
    from torch.onnx._internal.exporter._torchlib import _torchlib_registry

    from . import ops  # noqa: F401  (the operators must exist)

    for engine in ops.ENGINE_MODULES:
        target = getattr(torch.ops.rnnkit, f"{engine}_forward").default
        _torchlib_registry.onnx_impl(target, trace_only=True)(translate)


class _RegisterWhenLoaded(importlib.abc.MetaPathFinder):
    """Runs `register` right after torch's ONNX registry module is first imported."""

    def find_spec(self, name, path, target=None):
        if name != REGISTRY_MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            register(module)

        spec.loader.exec_module = exec_then_register
        return spec


def install() -> None:
    """Make torch.onnx.export translate rnnkit's operators: now if its registry is loaded, else when it is."""
    if REGISTRY_MODULE in sys.modules:
        register(sys.modules[REGISTRY_MODULE])
    elif not any(isinstance(f, _RegisterWhenLoaded) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterWhenLoaded())
