"""Cells called one step at a time: engine="auto" runs plain torch ops, a named engine runs that engine.

The plain step is rnnkit.cells' forward with keep=False (the hand-derived backward of the same
forward is checked against autograd in test_hand_bptt.py); here: it equals torch.nn and every
engine (outputs and all gradients), the rule of when it runs, and what autograd through plain ops
buys: double backward, torch.func, torch.compile, torch.export, jit.trace and ONNX.
"""

from __future__ import annotations

import io
from functools import partial

import re

import pytest
import torch

import rnnkit
from rnnkit import engines
from rnnkit.cells import gru, lstm, rnn
from rnnkit.testing import assert_close

F64 = torch.float64
I, H, B = 4, 6, 3
CELLS = {
    "rnn_tanh": (torch.nn.RNNCell, rnnkit.RNNCell),
    "rnn_relu": (partial(torch.nn.RNNCell, nonlinearity="relu"), partial(rnnkit.RNNCell, nonlinearity="relu")),
    "lstm": (torch.nn.LSTMCell, rnnkit.LSTMCell),
    "gru": (torch.nn.GRUCell, rnnkit.GRUCell),
}


def pair(family, dtype=F64, **kwargs):
    torch.manual_seed(0)
    torch_cls, kit_cls = CELLS[family]
    ref = torch_cls(I, H, dtype=dtype)
    kit = kit_cls(I, H, dtype=dtype, **kwargs)
    kit.load_state_dict(ref.state_dict(), strict=True)
    return ref, kit


def inputs(family, dtype=F64, steps=(), batch=(B,)):
    """x (*steps, *batch, I) and hx (h, or (h, c) for LSTM; (*batch, H)), all leaves that require grad."""
    x = torch.randn(*steps, *batch, I, dtype=dtype, requires_grad=True)
    states = [torch.randn(*batch, H, dtype=dtype, requires_grad=True) for _ in range(2 if family == "lstm" else 1)]
    return x, (tuple(states) if family == "lstm" else states[0]), [x, *states]


def as_list(out):
    return list(out) if isinstance(out, tuple) else [out]


@pytest.mark.parametrize("engine", ["auto", "reference", "cpu"])
@pytest.mark.parametrize("family", CELLS)
def test_every_engine_matches_torch_over_a_loop(family, engine):
    """Five steps of a loop, the state carried: outputs and the gradients of x, h_0 (c_0) and every parameter."""
    ref, kit = pair(family, engine=engine)
    x, hx, leaves = inputs(family, steps=(5,))
    results = []
    for module in (ref, kit):
        state, outs = hx, []
        for t in range(5):
            state = module(x[t], state)
            outs.extend(as_list(state))
        results.append(outs)
    upstream = [torch.randn_like(o) for o in results[0]]
    grads = [torch.autograd.grad(outs, leaves + list(m.parameters()), upstream)
             for outs, m in zip(results, (ref, kit), strict=True)]
    for a, b in zip(results[1], results[0], strict=True):
        assert_close(a, b, "output", f"{family} {engine} output")
    for k, (a, b) in enumerate(zip(grads[1], grads[0], strict=True)):
        assert_close(a, b, "grad", f"{family} {engine} gradient #{k}")


@pytest.mark.parametrize("family", ["rnn_tanh", "lstm", "gru"])
def test_keep_false_gives_the_same_step(family):
    module, kw = {"rnn_tanh": (rnn, {"nonlinearity": "tanh"}), "lstm": (lstm, {}), "gru": (gru, {})}[family]
    gates = {"rnn_tanh": 1, "lstm": 4, "gru": 3}[family]
    xp, w_hh, b_hh = torch.randn(B, gates * H, dtype=F64), torch.randn(gates * H, H, dtype=F64), torch.randn(gates * H, dtype=F64)
    state = tuple(torch.randn(B, H, dtype=F64) for _ in range(2 if family == "lstm" else 1))
    kept, cache = module.forward(xp, state, w_hh, b_hh, **kw)
    plain, none = module.forward(xp, state, w_hh, b_hh, keep=False, **kw)
    assert none is None or none == ()
    assert family == "rnn_tanh" or cache is not None
    for a, b in zip(plain, kept, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("family", CELLS)
def test_torch_step_operator_is_the_cells_math(family):
    """An auto cell runs torch's step operator; it equals rnnkit.cells' step math, every output and gradient."""
    _, kit = pair(family)
    x, hx, leaves = inputs(family)
    full = list(hx) if isinstance(hx, tuple) else [hx]
    fused, math = kit.plain_step(x, full), kit.math_step(x, full)
    upstream = [torch.randn_like(t) for t in fused]
    params = list(kit.parameters())
    for a, b in zip(fused, math, strict=True):
        assert_close(a, b, "output", family)
    for a, b in zip(torch.autograd.grad(fused, leaves + params, upstream),
                    torch.autograd.grad(math, leaves + params, upstream), strict=True):
        assert_close(a, b, "grad", family)


# ---------------------------------------------------------------- which path runs


def count_selects(monkeypatch):
    calls = []
    original = engines.select
    monkeypatch.setattr(engines, "select", lambda name, x: calls.append(name) or original(name, x))
    return calls


@pytest.mark.parametrize("family", CELLS)
def test_auto_runs_plain_ops_without_an_engine(family, monkeypatch):
    calls = count_selects(monkeypatch)
    _, kit = pair(family)
    x, hx, _ = inputs(family)
    kit(x, hx)
    assert calls == []
    assert rnnkit.nn.cells.runs_plain("auto") and not rnnkit.nn.cells.runs_plain("cpu")


@pytest.mark.parametrize("engine", ["reference", "cpu"])
def test_named_engine_runs_through_select(engine, monkeypatch):
    calls = count_selects(monkeypatch)
    _, kit = pair("lstm", engine=engine)
    x, hx, _ = inputs("lstm")
    kit(x, hx)
    assert calls == [engine]


def test_use_block_makes_auto_cells_run_that_engine(monkeypatch):
    calls = count_selects(monkeypatch)
    _, kit = pair("gru")
    x, hx, _ = inputs("gru")
    with engines.use("reference"):
        kit(x, hx)
    kit(x, hx)
    assert calls == ["auto"]  # the block's call went to select (which reads "reference"); the other did not


def test_an_error_that_is_not_the_callers_comes_from_the_op():
    """When an op fails but the call itself is valid (here, a weight replaced by one of the wrong shape),
    the op's own error comes out, not a misleading rnnkit message."""
    ref, kit = pair("gru")
    kit.weight_hh = ref.weight_hh = torch.nn.Parameter(torch.randn(3 * H, H + 1, dtype=F64))
    x, hx, _ = inputs("gru")
    with pytest.raises(RuntimeError) as theirs:
        ref(x, hx)
    with pytest.raises(RuntimeError, match=re.escape(str(theirs.value))):  # torch.nn's own words
        kit(x, hx)


# ---------------------------------------------------------------- what plain ops buy


@pytest.mark.parametrize("family", CELLS)
def test_double_backward(family):
    _, kit = pair(family)
    x, hx, leaves = inputs(family)
    names = [n for n, _ in kit.named_parameters()]

    def f(*args):
        k = len(leaves)
        state = tuple(args[1:k]) if family == "lstm" else args[1]
        out = torch.func.functional_call(kit, dict(zip(names, args[k:], strict=True)), (args[0], state))
        return tuple(as_list(out))

    params = tuple(p.detach().requires_grad_() for p in kit.parameters())
    assert torch.autograd.gradgradcheck(f, tuple(leaves) + params)


@pytest.mark.parametrize("family", CELLS)
def test_vmap_and_jacrev_match_a_loop(family):
    ref, kit = pair(family)
    x, hx, _ = inputs(family, batch=(5, B))  # vmap over 5 batches of B
    hx = tuple(s.detach() for s in hx) if family == "lstm" else hx.detach()
    x = x.detach()
    batched = torch.func.vmap(lambda x, hx: kit(x, hx))(x, hx)
    for t in range(5):
        hx_t = tuple(s[t] for s in hx) if family == "lstm" else hx[t]
        for a, b in zip(as_list(batched), as_list(ref(x[t], hx_t)), strict=True):
            assert_close(a[t], b, "output", f"{family} vmap step {t}")
    hx0 = tuple(s[0] for s in hx) if family == "lstm" else hx[0]
    first = lambda m: lambda x: as_list(m(x, hx0))[0]  # noqa: E731
    assert_close(torch.func.jacrev(first(kit))(x[0]), torch.autograd.functional.jacobian(first(ref), x[0]),
                 "grad", f"{family} jacrev")


def test_compiles_without_graph_breaks():
    ref, kit = pair("lstm", dtype=torch.float32)
    x, hx, _ = inputs("lstm", dtype=torch.float32)
    x, hx = x.detach(), tuple(s.detach() for s in hx)
    torch._dynamo.reset()
    compiled = torch.compile(kit, fullgraph=True, backend="aot_eager")
    for a, b in zip(compiled(x, hx), ref(x, hx), strict=True):
        assert_close(a, b, "output", "compiled LSTMCell")


@pytest.mark.parametrize("family", ["lstm", "gru"])
def test_export_trace_and_onnx(family):
    import onnxruntime  # the test extra holds it; imported here, as it takes a while

    ref, kit = pair(family, dtype=torch.float32)
    x, hx, _ = inputs(family, dtype=torch.float32)
    x, hx = x.detach(), (tuple(s.detach() for s in hx) if family == "lstm" else hx.detach())
    expected = as_list(ref(x, hx))
    exported = torch.export.export(kit, (x, hx))
    with pytest.warns(torch.jit.TracerWarning):  # the shape check reads sizes; the trace keeps them fixed
        traced = torch.jit.trace(kit, (x, hx))
    for name, out in (("export", exported.module()(x, hx)), ("jit.trace", traced(x, hx))):
        for a, b in zip(as_list(out), expected, strict=True):
            assert_close(a, b, "output", f"{family} {name}")
    flat = [x, *(hx if family == "lstm" else (hx,))]
    f = io.BytesIO()
    torch.onnx.export(kit, (x, hx), f, dynamo=False, input_names=[f"in{k}" for k in range(len(flat))])
    session = onnxruntime.InferenceSession(f.getvalue())
    outs = session.run(None, {f"in{k}": t.numpy() for k, t in enumerate(flat)})
    for a, b in zip(outs, expected, strict=True):
        assert_close(torch.from_numpy(a), b, "output", f"{family} onnx")
