"""rnnkit layers against torch.nn with the same weights: every output and every gradient.

The grid: cell family x num_layers x bidirectional x bias x input kind (padded time-major,
batch_first, packed with unsorted lengths including a length-1 sequence, unbatched) x
initial state given or omitted x dtype. Upstream gradients are random on every output.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit
from rnnkit.testing import assert_close

I, H, P, B, T = 5, 7, 3, 4, 6  # odd sizes on purpose; P is the LSTM projection size
LENGTHS = [3, 6, 1, 4]  # unsorted, with a length-1 sequence

FAMILIES = {
    "rnn_tanh": (torch.nn.RNN, rnnkit.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (torch.nn.RNN, rnnkit.RNN, {"nonlinearity": "relu"}),
    "lstm": (torch.nn.LSTM, rnnkit.LSTM, {}),
    "lstm_proj": (torch.nn.LSTM, rnnkit.LSTM, {"proj_size": P}),
    "gru": (torch.nn.GRU, rnnkit.GRU, {}),
}
INPUT_KINDS = ("padded", "batch_first", "packed", "unbatched")


def make_pair(family, num_layers, bidirectional, bias, batch_first, dtype, dropout=0.0, engine="auto"):
    """torch.nn module and rnnkit module with identical weights."""
    torch_cls, kit_cls, kw = FAMILIES[family]
    args = dict(num_layers=num_layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional,
                dropout=dropout, dtype=dtype, **kw)
    ref = torch_cls(I, H, **args)
    kit = kit_cls(I, H, **args, engine=engine)
    kit.load_state_dict(ref.state_dict(), strict=True)
    return ref, kit


def make_input(kind, dtype):
    """A leaf x (the tensor gradients are taken for) and what is fed to the layer."""
    shape = {"padded": (T, B, I), "batch_first": (B, T, I), "packed": (T, B, I), "unbatched": (T, I)}[kind]
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    if kind == "packed":
        return x, pack_padded_sequence(x, torch.tensor(LENGTHS), enforce_sorted=False)
    return x, x


def make_states(family, num_layers, bidirectional, kind, dtype):
    """Random leaf initial states of the right shape: [h_0] or [h_0, c_0]."""
    proj = FAMILIES[family][2].get("proj_size", 0)
    lead = (num_layers * (2 if bidirectional else 1),) + (() if kind == "unbatched" else (B,))
    states = [torch.randn(lead + (proj or H,), dtype=dtype, requires_grad=True)]
    if family.startswith("lstm"):
        states.append(torch.randn(lead + (H,), dtype=dtype, requires_grad=True))
    return states


def run(module, inp, states, family):
    """Forward; returns the output tensors in a fixed order: [output, h_n] or [output, h_n, c_n]."""
    hx = None if not states else (tuple(states) if family.startswith("lstm") else states[0])
    out, hn = module(inp, hx)
    out = out.data if isinstance(out, torch.nn.utils.rnn.PackedSequence) else out
    return [out, *(hn if isinstance(hn, tuple) else (hn,))]


def compare(ref, kit, family, kind, dtype, with_state, num_layers, bidirectional):
    torch.manual_seed(1)
    x, inp = make_input(kind, dtype)
    states = make_states(family, num_layers, bidirectional, kind, dtype) if with_state else []
    ref_outs, kit_outs = run(ref, inp, states, family), run(kit, inp, states, family)
    upstream = [torch.randn_like(o) for o in ref_outs]
    leaves = [x, *states]
    ref_grads = torch.autograd.grad(ref_outs, leaves + list(ref.parameters()), upstream, retain_graph=True)
    kit_grads = torch.autograd.grad(kit_outs, leaves + list(kit.parameters()), upstream)
    names = ["output", "h_n", "c_n"][: len(ref_outs)]
    for name, a, b in zip(names, kit_outs, ref_outs, strict=True):
        assert_close(a, b, "output", name)
    grad_names = ["input", "h_0", "c_0"][: len(leaves)] + [n for n, _ in kit.named_parameters()]
    assert len(kit_grads) == len(grad_names)
    for name, a, b in zip(grad_names, kit_grads, ref_grads, strict=True):
        assert_close(a, b, "grad", f"d{name}")


GRID = list(itertools.product(FAMILIES, (1, 2, 3), (False, True), (True, False), INPUT_KINDS, (True, False)))


def grid_id(case):
    family, layers, bidir, bias, kind, with_state = case
    return "-".join([family, f"L{layers}", "bi" if bidir else "uni", "bias" if bias else "nobias", kind,
                     "h0" if with_state else "noh0"])


ENGINES = ["reference", "cpu"]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", GRID, ids=[grid_id(c) for c in GRID])
def test_matches_torch(case, dtype, engine):
    family, num_layers, bidirectional, bias, kind, with_state = case
    torch.manual_seed(0)
    ref, kit = make_pair(family, num_layers, bidirectional, bias, kind == "batch_first", dtype, engine=engine)
    compare(ref, kit, family, kind, dtype, with_state, num_layers, bidirectional)


@pytest.mark.parametrize("family", FAMILIES)
def test_eval_mode_ignores_dropout_and_still_backpropagates(family):
    """Dropout is off in eval mode; rnnkit runs backward in eval mode (cuDNN cannot)."""
    torch.manual_seed(0)
    ref, kit = make_pair(family, 3, True, True, False, torch.float64, dropout=0.5)
    ref.eval(), kit.eval()
    compare(ref, kit, family, "packed", torch.float64, True, 3, True)


@pytest.mark.parametrize("family", FAMILIES)
def test_dropout_one_zeroes_what_the_next_layer_sees(family):
    """With p=1 in training every layer after the first sees zeros: deterministic, so torch must agree."""
    torch.manual_seed(0)
    ref, kit = make_pair(family, 2, False, True, False, torch.float64, dropout=1.0)
    compare(ref, kit, family, "padded", torch.float64, True, 2, False)


@pytest.mark.parametrize("family", FAMILIES)
def test_dropout_applies_between_layers_in_training(family):
    """Training-mode dropout changes the output, but never touches the input of the first layer."""
    torch.manual_seed(0)
    _, kit = make_pair(family, 2, False, True, False, torch.float64, dropout=0.5)
    x = torch.randn(T, B, I, dtype=torch.float64)
    train_out, train_state = kit(x)
    kit.eval()
    eval_out, eval_state = kit(x)
    assert not torch.allclose(train_out, eval_out)
    h_n = [s[0] if isinstance(s, tuple) else s for s in (train_state, eval_state)]
    assert torch.equal(h_n[0][0], h_n[1][0])  # layer 0's final state


LONG_SHAPES = {"T64-B5-H33": (64, 5, 33), "T200-B2-H17": (200, 2, 17)}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("shape", LONG_SHAPES)
@pytest.mark.parametrize("family", FAMILIES)
def test_long_sequences_float32(family, shape, engine):
    """Float32 rounding must not build up along the time loop beyond the shared tolerance."""
    steps, batch, hidden = LONG_SHAPES[shape]
    torch_cls, kit_cls, kw = FAMILIES[family]
    torch.manual_seed(0)
    ref = torch_cls(I, hidden, num_layers=2, bidirectional=True, **kw)
    kit = kit_cls(I, hidden, num_layers=2, bidirectional=True, **kw, engine=engine)
    kit.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(steps, batch, I, requires_grad=True)
    ref_outs, kit_outs = run(ref, x, [], family), run(kit, x, [], family)
    upstream = [torch.randn_like(o) for o in ref_outs]
    ref_grads = torch.autograd.grad(ref_outs, [x, *ref.parameters()], upstream)
    kit_grads = torch.autograd.grad(kit_outs, [x, *kit.parameters()], upstream)
    for a, b in zip(kit_outs, ref_outs, strict=True):
        assert_close(a, b, "output", "output")
    for (name, _), a, b in zip([("input", None), *kit.named_parameters()], kit_grads, ref_grads, strict=True):
        assert_close(a, b, "grad", f"d{name}")
