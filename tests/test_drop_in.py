"""rnnkit as a drop-in for torch.nn: parameters, initialisation, state_dicts, cells, torch.compile, lengths=."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit
from rnnkit.testing import assert_close

LAYERS = {
    "rnn_relu": (partial(torch.nn.RNN, nonlinearity="relu"), partial(rnnkit.RNN, nonlinearity="relu")),
    "lstm": (torch.nn.LSTM, rnnkit.LSTM),
    "lstm_proj": (partial(torch.nn.LSTM, proj_size=3), partial(rnnkit.LSTM, proj_size=3)),
    "gru": (torch.nn.GRU, rnnkit.GRU),
}
CELLS = {
    "rnn_tanh": (torch.nn.RNNCell, rnnkit.RNNCell),
    "rnn_relu": (partial(torch.nn.RNNCell, nonlinearity="relu"), partial(rnnkit.RNNCell, nonlinearity="relu")),
    "lstm": (torch.nn.LSTMCell, rnnkit.LSTMCell),
    "gru": (torch.nn.GRUCell, rnnkit.GRUCell),
}
LAYER_ARGS = dict(num_layers=2, bidirectional=True, bias=True)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("family", LAYERS)
def test_same_parameters_and_initialisation(family, bias):
    """Same names, shapes, order, and the same numbers from the same seed."""
    torch_cls, kit_cls = LAYERS[family]
    torch.manual_seed(3)
    ref = torch_cls(4, 6, num_layers=3, bidirectional=True, bias=bias)
    torch.manual_seed(3)
    kit = kit_cls(4, 6, num_layers=3, bidirectional=True, bias=bias)
    ref_params, kit_params = dict(ref.named_parameters()), dict(kit.named_parameters())
    assert list(kit_params) == list(ref_params)
    for name, p in ref_params.items():
        assert torch.equal(kit_params[name], p), name
    assert kit._flat_weights_names == ref._flat_weights_names
    assert [[p.shape for p in ws] for ws in kit.all_weights] == [[p.shape for p in ws] for ws in ref.all_weights]


@pytest.mark.parametrize("family", LAYERS)
def test_state_dict_round_trip_strict(family):
    torch_cls, kit_cls = LAYERS[family]
    ref, kit = torch_cls(4, 6, **LAYER_ARGS), kit_cls(4, 6, **LAYER_ARGS)
    ref.load_state_dict(kit.state_dict(), strict=True)  # rnnkit -> torch
    for k, v in kit.state_dict().items():
        assert torch.equal(ref.state_dict()[k], v)
    fresh = kit_cls(4, 6, **LAYER_ARGS)
    fresh.load_state_dict(ref.state_dict(), strict=True)  # torch -> rnnkit
    x = torch.randn(5, 2, 4)
    assert_close(fresh(x)[0], ref(x)[0], "output", "output after loading torch's state_dict")


@pytest.mark.parametrize("family", LAYERS)
def test_repr_matches_torch(family):
    torch_cls, kit_cls = LAYERS[family]
    assert repr(kit_cls(4, 6, **LAYER_ARGS, batch_first=True)) == repr(torch_cls(4, 6, **LAYER_ARGS, batch_first=True))


@pytest.mark.parametrize("state", ["h0", "noh0"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("family", CELLS)
def test_cells_match_torch(family, dtype, bias, batched, state):
    torch_cls, kit_cls = CELLS[family]
    torch.manual_seed(0)
    ref = torch_cls(5, 7, bias=bias, dtype=dtype)
    kit = kit_cls(5, 7, bias=bias, dtype=dtype)
    kit.load_state_dict(ref.state_dict(), strict=True)
    lead = (3,) if batched else ()
    x = torch.randn(lead + (5,), dtype=dtype, requires_grad=True)
    states = [torch.randn(lead + (7,), dtype=dtype, requires_grad=True) for _ in range(2 if family == "lstm" else 1)]
    hx = None if state == "noh0" else (tuple(states) if family == "lstm" else states[0])
    leaves = [x] + (states if hx is not None else [])
    outs = []
    for module in (ref, kit):
        out = module(x, hx)
        outs.append(list(out) if isinstance(out, tuple) else [out])
    upstream = [torch.randn_like(o) for o in outs[0]]
    grads = [torch.autograd.grad(o, leaves + list(m.parameters()), upstream) for o, m in zip(outs, (ref, kit), strict=True)]
    for a, b in zip(outs[1], outs[0], strict=True):
        assert_close(a, b, "output", "cell output")
    for a, b in zip(grads[1], grads[0], strict=True):
        assert_close(a, b, "grad", "cell gradient")


@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("family", LAYERS)
def test_lengths_keyword_matches_pack_and_pad(family, batch_first):
    """lengths= gives what the pack -> torch.nn -> pad dance gives, gradients included."""
    torch_cls, kit_cls = LAYERS[family]
    torch.manual_seed(0)
    ref = torch_cls(4, 6, **LAYER_ARGS, batch_first=batch_first, dtype=torch.float64)
    kit = kit_cls(4, 6, **LAYER_ARGS, batch_first=batch_first, dtype=torch.float64)
    kit.load_state_dict(ref.state_dict())
    lengths = torch.tensor([3, 5, 1, 4])
    x = torch.randn((4, 5, 4) if batch_first else (5, 4, 4), dtype=torch.float64, requires_grad=True)
    packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
    ref_out, ref_state = ref(packed)
    ref_out = pad_packed_sequence(ref_out, batch_first=batch_first, total_length=5)[0]
    kit_out, kit_state = kit(x, lengths=lengths)
    ref_outs = [ref_out, *(ref_state if isinstance(ref_state, tuple) else (ref_state,))]
    kit_outs = [kit_out, *(kit_state if isinstance(kit_state, tuple) else (kit_state,))]
    upstream = [torch.randn_like(o) for o in ref_outs]
    for a, b in zip(kit_outs, ref_outs, strict=True):
        assert_close(a, b, "output", "lengths= output")
    ga = torch.autograd.grad(kit_outs, [x], upstream)[0]
    gb = torch.autograd.grad(ref_outs, [x], upstream)[0]
    assert_close(ga, gb, "grad", "lengths= input gradient")


def test_runs_inside_torch_compile():
    """A model around rnnkit.LSTM compiles (graph break at the engine) and matches eager, gradients included."""
    torch.manual_seed(0)

    class Tagger(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(20, 8)
            self.rnn = rnnkit.LSTM(8, 16, num_layers=2, batch_first=True, bidirectional=True)
            self.head = torch.nn.Linear(32, 5)

        def forward(self, tokens):
            return self.head(self.rnn(self.embed(tokens))[0])

    model = Tagger()
    tokens = torch.randint(0, 20, (3, 7))
    eager = model(tokens)
    eager_grads = torch.autograd.grad(eager.square().mean(), list(model.parameters()))
    compiled = torch.compile(model)
    out = compiled(tokens)
    grads = torch.autograd.grad(out.square().mean(), list(model.parameters()))
    assert_close(out, eager, "output", "compiled output")
    for a, b in zip(grads, eager_grads, strict=True):
        assert_close(a, b, "grad", "compiled gradient")


@pytest.mark.parametrize("family", LAYERS)
def test_default_dtype_float64_and_eval_backward(family):
    _, kit_cls = LAYERS[family]
    kit = kit_cls(4, 6, dtype=torch.float64).eval()
    x = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    out = kit(x)[0]
    assert out.dtype == torch.float64
    (g,) = torch.autograd.grad(out, x, torch.randn_like(out))
    assert g.shape == x.shape and torch.isfinite(g).all() and g.abs().sum() > 0


def test_engine_selection():
    assert rnnkit.LSTM(2, 3, engine="reference").engine == "reference"
    with pytest.raises(ValueError, match=r"unknown engine 'cuda-magic': expected one of 'auto', 'reference', 'cpu'"):
        rnnkit.GRU(2, 3, engine="cuda-magic")


def test_engine_asked_by_name_that_cannot_run_says_why():
    gru = rnnkit.GRU(2, 3, engine="cpu", dtype=torch.float16)
    with pytest.raises(RuntimeError, match=r"engine 'cpu' cannot run here: it supports float32, float64 and "
                                           r"bfloat16, got torch.float16"):
        gru(torch.randn(4, 1, 2, dtype=torch.float16))
    auto = rnnkit.GRU(2, 3, dtype=torch.float16)  # auto takes the reference engine where cpu does not apply
    assert auto(torch.randn(4, 1, 2, dtype=torch.float16))[0].shape == (4, 1, 3)


def test_use_sets_what_auto_means_in_a_block(monkeypatch):
    # a whole-stack timing that picks torch's own stack would run none of the engines counted here
    monkeypatch.setattr(rnnkit.engines.tune, "time_stacks", lambda *a, **k: {"engine": "cpu"})
    calls = []
    for name in ("reference", "cpu", "aten"):
        module = rnnkit.engines.ENGINES[name]
        original = module.run_layer
        monkeypatch.setattr(module, "run_layer",
                            lambda *a, _n=name, _f=original, **k: calls.append(_n) or _f(*a, **k))
    lstm, x = rnnkit.LSTM(2, 3), torch.randn(4, 1, 2)
    lstm(x)
    with rnnkit.engines.use("reference"):
        lstm(x)
        rnnkit.LSTM(2, 3, engine="cpu")(x)  # a name given to the layer wins over the block
    lstm(x)
    # auto on CPU runs the CPU engine or torch's fused LSTM, whichever timing here found faster (engines/tune.py)
    auto = {"cpu", "aten"}
    assert len(calls) == 4 and calls[0] in auto and calls[1:3] == ["reference", "cpu"] and calls[3] in auto


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_weight_norm_parametrization_equals_torch(name):
    """torch.nn.utils.parametrizations on a recurrent weight (weight norm, AWD-LSTM-style wrappers): the weight is
    then a property recomputed per access, so the layer must read it anew on every call."""
    from torch.nn.utils.parametrizations import weight_norm

    torch.manual_seed(0)
    ours, theirs = getattr(rnnkit, name)(3, 4), getattr(torch.nn, name)(3, 4)
    theirs.load_state_dict(ours.state_dict())
    ours, theirs = weight_norm(ours, "weight_hh_l0"), weight_norm(theirs, "weight_hh_l0")
    x = torch.randn(5, 2, 3)
    for step in range(2):  # the second call after an update of the parametrization's parameters
        outs = [m(x)[0] for m in (ours, theirs)]
        assert_close(outs[0], outs[1], kind="output")
        g = torch.randn_like(outs[0])
        for m, o in zip((ours, theirs), outs, strict=True):
            m.zero_grad()
            o.backward(g)
        grads = [m.parametrizations.weight_hh_l0.original1.grad for m in (ours, theirs)]
        assert_close(grads[0], grads[1], kind="grad")
        with torch.no_grad():
            for m in (ours, theirs):
                m.parametrizations.weight_hh_l0.original1.add_(0.1)


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
@pytest.mark.parametrize("steps", [1, 3], ids=["T1", "T3"])
@pytest.mark.parametrize("layers", [1, 2], ids=["L1", "L2"])
@pytest.mark.parametrize("family", ["RNN", "LSTM", "GRU"])
def test_final_states_detach_in_place_as_torch_nn_s_do(family, layers, steps, grad):
    """Truncated-BPTT code written for torch.nn detaches the returned states in place (h.detach_()): every call of a
    loop (the first through the general path, the rest through the quick lane, on whatever auto chose: torch's
    cells among them) must return states that allow it, not views."""
    layer = getattr(rnnkit, family)(4, 3, num_layers=layers)
    x = torch.randn(steps, 2, 4, requires_grad=grad)
    hidden = None
    with torch.set_grad_enabled(grad):
        for _ in range(4):
            out, hidden = layer(x, hidden)
            for state in hidden if isinstance(hidden, tuple) else (hidden,):
                state.detach_()
