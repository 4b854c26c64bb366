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
from rnnkit.testing import assert_close

CASES = {"rnn": ("RNN", {}), "lstm": ("LSTM", {}), "gru": ("GRU", {}), "lstm_proj": ("LSTM", {"proj_size": 2}),
         "lstm_2layers_bidir": ("LSTM", {"num_layers": 2, "bidirectional": True}),
         "lstm_proj": ("LSTM", {"proj_size": 3}), "lstm_proj_2layers": ("LSTM", {"proj_size": 3, "num_layers": 2})}
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
    if grad_mode or engine == "reference":
        assert torch.equal(out.detach(), expected)
    else:  # the CPU engine's short-call entry (cpu_kernels.short_call) forms its products as dot products: rounding differs
        assert_close(out.detach(), expected)


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


# ---------------------------------------------------------------- the quick lane of repeated no-grad calls

QUICK = {"rnn_tanh": ("RNN", {}), "rnn_relu": ("RNN", {"nonlinearity": "relu"}), "lstm": ("LSTM", {}),
         "gru": ("GRU", {}), "gru_2layers_bidir": ("GRU", {"num_layers": 2, "bidirectional": True}),
         "lstm_2layers_bidir": ("LSTM", {"num_layers": 2, "bidirectional": True}),
         "lstm_proj": ("LSTM", {"proj_size": 3}), "lstm_proj_2layers": ("LSTM", {"proj_size": 3, "num_layers": 2})}


def quick_layer(case: str, engine: str):
    name, kw = QUICK[case]
    torch.manual_seed(21)
    ours, theirs = getattr(rnnkit, name)(5, 7, engine=engine, **kw), getattr(torch.nn, name)(5, 7, **kw)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def states(case: str, batch: int):
    name, kw = QUICK[case]
    layers = kw.get("num_layers", 1) * (2 if kw.get("bidirectional") else 1)
    h = torch.randn(layers, batch, kw.get("proj_size", 7))
    return (h, torch.randn(layers, batch, 7)) if name == "LSTM" else h


def flat(result):
    out, st = result
    return [out, *(st if isinstance(st, tuple) else (st,))]


@pytest.mark.parametrize("engine", ["auto", "cpu"])
@pytest.mark.parametrize("given_states", [False, True], ids=["zero_states", "given_states"])
@pytest.mark.parametrize("shape", [(1, 1), (6, 3)], ids=["T1_B1", "T6_B3"])
@pytest.mark.parametrize("case", QUICK)
def test_quick_lane_repeats_the_general_path_exactly(case, shape, given_states, engine):
    """A repeated no-grad call of the same form skips validation and choosing (RecurrentLayer.quick_run): its
    results equal the general path's bit for bit (the same choice, made again with the memo cleared: the
    first call may have timed, and chosen, in between), and torch.nn's within the tolerance."""
    ours, theirs = quick_layer(case, engine)
    steps, batch = shape
    x = torch.randn(steps, batch, 5)
    hx = states(case, batch) if given_states else None
    with torch.no_grad():
        first = flat(ours(x, hx))
        assert ours.__dict__.get("_quick"), "the first call should have recorded its choice"
        seen = []
        ours.quick_run = lambda *a, _run=ours.quick_run: seen.append(1) or _run(*a)
        quick = flat(ours(x, hx))
        assert seen == [1], "the second call should have taken the quick lane"
        ours._quick.clear()
        general = flat(ours(x, hx))
        assert seen == [1], "with the memo cleared the general path runs"
        expected = flat(theirs(x, hx))
    for a, b, c, e in zip(quick, general, first, expected, strict=True):
        assert torch.equal(a, b)
        assert_close(a, e, "output", case)
        assert_close(c, e, "output", case)


@pytest.mark.parametrize("why", ["grad", "batch_first", "bad_state", "dropout_training", "autocast", "dispatch_mode",
                                 "float64_state", "double_module"])
def test_quick_lane_only_where_nothing_else_could_matter(why):
    """Calls that need the general path still take it after a quick-eligible call recorded its choice: a
    gradient, another input form, a state to validate (whose error must still be raised), randomness,
    autocast, a dispatch mode that must see the operator."""
    torch.manual_seed(3)
    layer = rnnkit.GRU(5, 7, num_layers=2, dropout=0.5 if why == "dropout_training" else 0.0)
    x = torch.randn(4, 2, 5)
    with torch.no_grad():
        layer(x)
        layer(x)  # recorded, then replayed
    layer.quick_run = lambda *a: pytest.fail(f"{why}: the quick lane ran")
    if why == "grad":
        layer(x)
    elif why == "batch_first":
        layer.batch_first = True
        with torch.no_grad():
            layer(x)
    elif why in ("bad_state", "float64_state"):
        hx = torch.zeros(2, 3, 7) if why == "bad_state" else torch.zeros(2, 2, 7, dtype=torch.float64)
        with torch.no_grad(), pytest.raises(RuntimeError, match="Expected hidden size|dtype"):
            layer(x, hx)
    elif why == "dropout_training":
        with torch.no_grad():
            a, b = layer(x)[0], layer(x)[0]
        assert not torch.equal(a, b), "dropout between layers should differ between calls"
    elif why == "autocast":
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            layer(x)
    elif why == "dispatch_mode":
        with torch.no_grad(), SeenOps() as mode:
            layer(x)
        assert mode.names, "the mode should have seen the call's operators"
    elif why == "double_module":
        layer.double()
        with torch.no_grad():
            layer(x.double())


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
def test_a_weight_changed_since_the_choice_is_not_run_quick(name):
    """The quick lane's single compiled call reads raw float32 memory: a weight replaced by a float64 one after
    the choice was recorded sends the call to the general path, which raises as torch.nn does (from its products)."""
    layer, twin = getattr(rnnkit, name)(5, 7, engine="cpu"), getattr(torch.nn, name)(5, 7)  # auto might time aten
    x = torch.randn(1, 1, 5)
    with torch.no_grad():
        layer(x)
        layer(x)
        assert "small" in layer._quick.values(), "a T=1 call of one small layer should take the short-call entry"
        for module in (layer, twin):
            module.weight_hh_l0.data = module.weight_hh_l0.data.double()
        with pytest.raises(RuntimeError):
            twin(x)
        with pytest.raises(RuntimeError, match="weight_hh_l0 of torch.float64"):
            layer(x)


@pytest.mark.parametrize("winner", ["aten", "cpu"])
@pytest.mark.parametrize("name", ["RNN", "GRU", "LSTM"])
def test_grad_mode_replays_only_torchs_stack(name, winner, monkeypatch, tmp_path):
    """A decoder trained one step at a time calls the layer with grad mode on: where the whole-stack timing chose
    torch's stack, the quick lane replays it (autograd differentiates torch's own ops: the same gradients as
    torch.nn, bit for bit); where rnnkit's engine won, the general path runs (the quick lanes are inference entries)."""
    from rnnkit.engines import tune

    monkeypatch.setenv("RNNKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("RNNKIT_TUNE", raising=False)
    tune.forget()
    monkeypatch.setattr(tune, "calibrate", lambda *a, **k: {"engine": "cpu"})
    monkeypatch.setattr(tune, "time_stacks", lambda *a, **k: {"engine": winner})
    torch.manual_seed(4)
    ours, theirs = getattr(rnnkit, name)(5, 7), getattr(torch.nn, name)(5, 7)
    theirs.load_state_dict(ours.state_dict())
    xs = torch.randn(4, 1, 2, 5, requires_grad=True)
    seen = []
    ours.quick_run = lambda *a, _run=ours.quick_run: seen.append(1) or _run(*a)
    results = []
    for module in (ours, theirs):
        state, outs = None, []
        for x in xs:
            out, state = module(x, state)
            outs.append(out)
        total = torch.cat(outs)
        results.append((total, *torch.autograd.grad(total, [xs, *module.parameters()], torch.ones_like(total))))
    tune.forget()
    assert len(seen) == (3 if winner == "aten" else 0), "the steps after the first should replay torch's stack"
    for a, b in zip(*results, strict=True):
        if winner == "aten":
            assert torch.equal(a, b)
        else:
            assert_close(a, b, "grad")


def test_a_saved_layer_leaves_its_choices_behind(tmp_path):
    """torch.save and deepcopy leave out the quick lane's memo (timed for this process and machine): the copy
    chooses again, and gives the same numbers."""
    import copy

    layer = rnnkit.GRU(5, 7)
    x = torch.randn(1, 2, 5)
    with torch.no_grad():
        layer(x), layer(x)
        assert layer.__dict__.get("_quick")
        torch.save(layer, tmp_path / "layer.pt")
        for other in (torch.load(tmp_path / "layer.pt", weights_only=False), copy.deepcopy(layer)):
            assert "_quick" not in other.__dict__
            assert torch.equal(other(x)[0], layer(x)[0])
    assert layer.__dict__.get("_quick"), "the original keeps its memo"
