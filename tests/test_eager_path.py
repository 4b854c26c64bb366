"""Eager calls skip the registered operator's Python dispatch (rnnkit.engines.ops.eager), with the same numbers.

The operator is what compile, export, jit.trace, ONNX and dispatch modes must see; a plain eager call
runs the same bodies through an autograd.Function (or, with nothing to differentiate, the forward body
alone). These tests check both routes give identical outputs and gradients, that a plain call really
takes the short route, and that a dispatch mode (FlopCounterMode, a user's mode) still sees the operator.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import rnnkit
from rnnkit.engines import aten, ops

CASES = {"rnn": ("RNN", {}), "lstm": ("LSTM", {}), "gru": ("GRU", {}), "lstm_proj": ("LSTM", {"proj_size": 2}),
         "lstm_2layers_bidir": ("LSTM", {"num_layers": 2, "bidirectional": True})}
ENGINES = ["reference", "cpu"] + (["aten"] if aten.why_not(torch.zeros(1)) is None else [])


class SeenOps(TorchDispatchMode):
    """Records the name of every operator dispatched while active."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def run(layer, x, h0, mode=None):
    """Output, final states and every gradient for random upstream gradients (seeded: the same each call)."""
    params = list(layer.parameters())
    leaves = [x, *h0, *params]
    for t in leaves:
        t.grad = None
    with mode if mode is not None else contextlib.nullcontext(), torch.enable_grad():
        out, hn = layer(x, h0 if len(h0) > 1 else h0[0])
        hn = hn if isinstance(hn, tuple) else (hn,)
        outs = (out, *hn)
        gen = torch.Generator().manual_seed(1)
        ups = [torch.randn(o.shape, generator=gen, dtype=o.dtype) for o in outs]
        grads = torch.autograd.grad(outs, leaves, ups)
    return [o.detach() for o in outs], list(grads)


def inputs(name: str, opts: dict, engine: str, batch: int = 2):
    torch.manual_seed(0)
    layer = getattr(rnnkit, name)(3, 4, engine=engine, **opts)
    dirs, layers = 2 if opts.get("bidirectional") else 1, opts.get("num_layers", 1)
    x = torch.randn(5, batch, 3, requires_grad=True)
    h = torch.randn(dirs * layers, batch, opts.get("proj_size") or 4, requires_grad=True)
    states = (h, torch.randn(dirs * layers, batch, 4, requires_grad=True)) if name == "LSTM" else (h,)
    return layer, x, states


@pytest.mark.parametrize("batch", [2, 0], ids=["B2", "B0"])
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("case", CASES)
def test_eager_route_equals_operator_route(case, engine, batch):
    name, opts = CASES[case]
    layer, x, states = inputs(name, opts, engine, batch)
    seen = SeenOps()
    via_op = run(layer, x, states, seen)
    assert any(n.startswith("rnnkit.") and "_forward" in n for n in seen.names), "the mode did not see the operator"
    eager = run(layer, x, states)
    for a, b in zip(eager[0] + eager[1], via_op[0] + via_op[1], strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("grad_mode", [True, False], ids=["grad", "no_grad"])
@pytest.mark.parametrize("engine", ["reference", "cpu"])
def test_plain_call_skips_the_operator(engine, grad_mode, monkeypatch):
    layer, x, states = inputs("GRU", {}, engine)
    expected = layer(x, states[0])[0].detach()

    def refuse(*args):
        raise AssertionError("a plain eager call went through the operator's dispatch")

    monkeypatch.setitem(ops.OPS, engine, refuse)
    with torch.set_grad_enabled(grad_mode):
        out, _ = layer(x, states[0])
        if grad_mode:
            out.backward(torch.randn_like(out))
            assert x.grad is not None and layer.weight_hh_l0.grad is not None
    assert torch.equal(out.detach(), expected)


def test_double_backward_on_the_eager_route():
    """create_graph=True through the autograd.Function: the Hessian-vector product equals torch.nn's."""
    torch.manual_seed(0)
    ours = rnnkit.LSTM(3, 4, engine="cpu").double()
    theirs = torch.nn.LSTM(3, 4).double()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    v = [torch.randn_like(p) for p in ours.parameters()]
    hvps = []
    for layer in (ours, theirs):
        params = list(layer.parameters())
        out, _ = layer(x)
        g = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum(),
                                params, create_graph=True)
        hvps.append(torch.autograd.grad(sum((a * b).sum() for a, b in zip(g, v, strict=True)), params))
    for a, b in zip(*hvps, strict=True):
        torch.testing.assert_close(a, b)


def test_flop_counter_sees_the_operator():
    from torch.utils.flop_counter import FlopCounterMode

    layer, x, states = inputs("LSTM", {}, "cpu")
    seen = SeenOps()
    with FlopCounterMode(display=False), seen:
        layer(x, states)
    assert "rnnkit.cpu_forward.default" in seen.names
