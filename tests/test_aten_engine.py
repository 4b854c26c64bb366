"""The "aten" engine (torch's fused float32 LSTM, oneDNN) against the reference engine, and what it hands over.

Same grid as tests/test_cpu_engine.py: outputs and every gradient, odd sizes, T=1, padded and
unsorted packed, both directions, with and without bias. The calls oneDNN's layer cannot run
(packed batches of different lengths, proj_size, GRU and RNN) go to the CPU engine, whose buffers
start as NaN here as there.
"""

from __future__ import annotations

import pytest
import torch

import rnnkit
from rnnkit.engines import aten, cpu, ops, reference
from rnnkit.testing import assert_close

from test_cpu_engine import MODES, PACKINGS, SIZES, layer_inputs

pytestmark = pytest.mark.skipif(aten.why_not(torch.zeros(1)) is not None, reason="this torch build has no oneDNN")


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    monkeypatch.setattr(cpu, "empty", lambda like, *shape: torch.full(shape, float("nan"), dtype=like.dtype))


def run_and_compare(run_layer, family, packing, size, reverse, bias):
    batch_sizes = PACKINGS[packing]
    x, h0, c0, (w_ih, w_hh, b_ih, b_hh, w_hr) = layer_inputs(family, batch_sizes, *SIZES[size], torch.float32)
    if not bias:
        b_ih = b_hh = None
    args = (MODES[family][0], x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse)
    fast = [t for t in run_layer(*args) if t is not None]
    slow = [t for t in reference.run_layer(*args) if t is not None]
    assert len(fast) == len(slow)
    for name, a, b in zip(["out", "h_n", "c_n"], fast, slow, strict=False):
        assert_close(a, b, "output", name)
    leaves = [t for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr) if t is not None]
    upstream = [torch.randn_like(o) for o in slow]
    for k, (a, b) in enumerate(zip(torch.autograd.grad(fast, leaves, upstream),
                                   torch.autograd.grad(slow, leaves, upstream), strict=True)):
        assert_close(a, b, "grad", f"gradient of leaf {k}")


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("packing", PACKINGS)
@pytest.mark.parametrize("family", MODES)
def test_aten_engine_matches_reference(family, packing, size, reverse, bias):
    run_and_compare(aten.run_layer, family, packing, size, reverse, bias)


def test_aten_runs_oneDNN_where_it_can_and_hands_over_elsewhere(monkeypatch):
    calls = []
    original = ops.run_layer
    monkeypatch.setattr(ops, "run_layer", lambda engine, *a: calls.append(engine) or original(engine, *a))
    for family, packing in [("lstm", "padded_T5"), ("lstm", "T1"), ("lstm", "packed_unsorted_T6"),
                            ("lstm_proj", "padded_T5"), ("gru", "padded_T5"), ("rnn_tanh", "padded_T5")]:
        run_and_compare(aten.run_layer, family, packing, "I5-H7", False, True)
    assert [c for c in calls if c != "reference"] == ["aten", "aten", "cpu", "cpu", "cpu", "cpu"]


def test_aten_operator_called_directly_refuses_what_it_cannot_run():
    x, h0, c0 = torch.randn(6, 2), torch.randn(4, 3), torch.randn(4, 3)
    w_ih, w_hh = torch.randn(12, 2), torch.randn(12, 3)
    with pytest.raises(RuntimeError, match="sequences of different lengths"):
        torch.ops.rnnkit.aten_forward("LSTM", x, torch.tensor([4, 2]), h0, c0, w_ih, w_hh, None, None, None, False)
    with pytest.raises(RuntimeError, match="torch fuses only the LSTM"):
        torch.ops.rnnkit.aten_forward("GRU", x[:4], None, h0, None, torch.randn(9, 2), torch.randn(9, 3), None, None,
                                      None, False)


def test_aten_by_name_refuses_other_dtypes_and_devices():
    lstm = rnnkit.LSTM(2, 3, engine="aten", dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"engine 'aten' cannot run here: it runs float32"):
        lstm(torch.randn(4, 1, 2, dtype=torch.float64))
    assert "meta" in aten.why_not(torch.zeros(2, device="meta"))


def test_aten_layer_matches_torch_nn_bidirectional_two_layers():
    torch.manual_seed(0)
    ref = torch.nn.LSTM(5, 7, num_layers=2, bidirectional=True)
    kit = rnnkit.LSTM(5, 7, num_layers=2, bidirectional=True, engine="aten")
    kit.load_state_dict(ref.state_dict())
    x = torch.randn(6, 3, 5, requires_grad=True)
    (a, (ha, ca)), (b, (hb, cb)) = kit(x), ref(x)
    for p, q in ((a, b), (ha, hb), (ca, cb)):
        assert_close(p, q, "output", "layer output")
    up = torch.randn_like(a)
    ga = torch.autograd.grad(a, [x, *kit.parameters()], up)
    gb = torch.autograd.grad(b, [x, *ref.parameters()], up)
    for k, (p, q) in enumerate(zip(ga, gb, strict=True)):
        assert_close(p, q, "grad", f"gradient {k}")


def test_aten_double_backward_hands_over_to_autograd():
    torch.manual_seed(0)
    lstm = rnnkit.LSTM(2, 3, engine="aten")
    x = torch.randn(4, 2, 2, requires_grad=True)
    out, _ = lstm(x)
    (g,) = torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.sum(), x)
    ref = rnnkit.LSTM(2, 3, engine="reference")
    ref.load_state_dict(lstm.state_dict())
    out_r, _ = ref(x)
    (g_r,) = torch.autograd.grad(out_r.pow(2).sum(), x, create_graph=True)
    (gg_r,) = torch.autograd.grad(g_r.sum(), x)
    assert_close(gg, gg_r, "grad", "second derivative")
