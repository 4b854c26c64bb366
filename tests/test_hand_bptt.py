"""The first links of the equivalence chain, in float64:

    hand-derived step backward (rnnkit.cells)  ==  autograd through the same step forward
    hand-written BPTT (reference engine)        ==  autograd through the same time loop
    reference engine and layers                 pass torch.autograd.gradcheck, packed input included
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit
from rnnkit.cells import gru, lstm, rnn
from rnnkit.engines import reference
from rnnkit.testing import assert_close

F64 = torch.float64
B, I, H, P = 3, 4, 5, 2

# family name -> (cell module, gate count, extra kwargs for forward/backward, state widths)
CELLS = {
    "rnn_tanh": (rnn, 1, {"nonlinearity": "tanh"}),
    "rnn_relu": (rnn, 1, {"nonlinearity": "relu"}),
    "lstm": (lstm, 4, {}),
    "lstm_proj": (lstm, 4, {"w_hr": "proj"}),
    "gru": (gru, 3, {}),
}
MODES = {"rnn_tanh": "RNN_TANH", "rnn_relu": "RNN_RELU", "lstm": "LSTM", "lstm_proj": "LSTM", "gru": "GRU"}


def rand(*shape):
    return torch.randn(*shape, dtype=F64, requires_grad=True)


def cell_setup(family):
    """Cell module, bound keyword args, recurrent weights and a random previous state."""
    cell, gates, extra = CELLS[family]
    kw = dict(extra)
    out_size = H
    if kw.get("w_hr") == "proj":
        kw["w_hr"], out_size = rand(P, H), P
    w_hh, b_hh = rand(gates * H, out_size), rand(gates * H)
    state = (rand(B, out_size), rand(B, H)) if cell is lstm else (rand(B, H),)
    return cell, kw, w_hh, b_hh, state, gates


@pytest.mark.parametrize("family", CELLS)
def test_step_backward_matches_autograd(family):
    torch.manual_seed(0)
    cell, kw, w_hh, b_hh, prev, gates = cell_setup(family)
    xp = rand(B, gates * H)
    new, cache = cell.forward(xp, prev, w_hh, b_hh, **kw)
    d_new = tuple(torch.randn_like(n) for n in new)

    dxp, dhp, d_prev = cell.backward(d_new, new, prev, cache, w_hh, **kw)

    auto = torch.autograd.grad(new, (xp, *prev, b_hh), d_new)
    assert_close(dxp, auto[0], "grad", "dxp")
    for k, (mine, theirs) in enumerate(zip(d_prev, auto[1:-1], strict=True)):
        assert_close(mine, theirs, "grad", f"d_prev[{k}]")
    # b_hh enters only through hp, so its gradient is the row sum of dhp
    assert_close(dhp.sum(0), auto[-1], "grad", "dhp")


def engine_inputs(family, batch_sizes, requires_grad=True):
    """x, h0, c0 and layer weights for reference.run_layer, with a fixed seed."""
    torch.manual_seed(0)
    _, gates, extra = CELLS[family]
    out_size = P if "w_hr" in extra else H
    mk = partial(torch.randn, dtype=F64, requires_grad=requires_grad)
    b = batch_sizes[0]
    x = mk(sum(batch_sizes), I)
    h0, c0 = mk(b, out_size), (mk(b, H) if family.startswith("lstm") else None)
    w = (mk(gates * H, I), mk(gates * H, out_size), mk(gates * H), mk(gates * H),
         mk(P, H) if "w_hr" in extra else None)
    return x, h0, c0, w


PACKINGS = {"padded_T3": (3, 3, 3), "packed_T4": (3, 3, 2, 1), "T1": (2,)}


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("packing", PACKINGS)
@pytest.mark.parametrize("family", CELLS)
def test_hand_bptt_matches_autograd_through_the_loop(family, packing, reverse):
    """The engine's autograd.Function against autograd through the same loop of the same cell math."""
    batch_sizes = PACKINGS[packing]
    x, h0, c0, (w_ih, w_hh, b_ih, b_hh, w_hr) = engine_inputs(family, batch_sizes)
    mode = MODES[family]
    out, h_n, c_n = reference.run_layer(mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse)

    cell, _, extra = CELLS[family]
    kw = {k: v for k, v in extra.items() if k != "w_hr"}
    if w_hr is not None:
        kw["w_hr"] = w_hr
    step = partial(cell.forward, w_hh=w_hh, b_hh=b_hh, **kw)
    xp = reference.input_projection(x, w_ih, b_ih)
    state0 = (h0,) if c0 is None else (h0, c0)
    new, _, final = reference.bptt_forward(step, xp.split(batch_sizes), state0, batch_sizes, reverse)
    auto_outs = [reference.stack(new, 0), *final]
    mine_outs = [out, h_n] + ([c_n] if c0 is not None else [])
    for a, b in zip(mine_outs, auto_outs, strict=True):
        assert_close(a, b, "output", "forward")

    leaves = [t for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr) if t is not None]
    upstream = [torch.randn_like(o) for o in mine_outs]
    mine = torch.autograd.grad(mine_outs, leaves, upstream)
    auto = torch.autograd.grad(auto_outs, leaves, upstream)
    for k, (a, b) in enumerate(zip(mine, auto, strict=True)):
        assert_close(a, b, "grad", f"leaf {k}")


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("family", CELLS)
def test_engine_gradcheck_packed(family, reverse):
    batch_sizes = PACKINGS["packed_T4"]
    x, h0, c0, w = engine_inputs(family, batch_sizes)
    mode = MODES[family]
    has_c = c0 is not None

    def f(x, h0, *rest):
        c0_, weights = (rest[0], rest[1:]) if has_c else (None, rest)
        w_ih, w_hh, b_ih, b_hh = weights[:4]
        w_hr = weights[4] if len(weights) > 4 else None
        out, h_n, c_n = reference.run_layer(mode, x, batch_sizes, h0, c0_, w_ih, w_hh, b_ih, b_hh, w_hr, reverse)
        return (out, h_n) + ((c_n,) if has_c else ())

    inputs = (x, h0) + ((c0,) if has_c else ()) + tuple(t for t in w if t is not None)
    assert torch.autograd.gradcheck(f, inputs)


LAYERS = {
    "rnn_tanh": partial(rnnkit.RNN, nonlinearity="tanh"),
    "rnn_relu": partial(rnnkit.RNN, nonlinearity="relu"),
    "lstm": rnnkit.LSTM,
    "lstm_proj": partial(rnnkit.LSTM, proj_size=P),
    "gru": rnnkit.GRU,
}


@pytest.mark.parametrize("family", LAYERS)
def test_layer_gradcheck_packed_unsorted(family):
    """Two bidirectional layers on unsorted packed input: input, states and every parameter."""
    torch.manual_seed(0)
    layer = LAYERS[family](I, H, num_layers=2, bidirectional=True, dtype=F64)
    names = [n for n, _ in layer.named_parameters()]
    lstm_like = family.startswith("lstm")
    out_size = P if family == "lstm_proj" else H
    x = torch.randn(4, 3, I, dtype=F64, requires_grad=True)
    h0 = torch.randn(4, 3, out_size, dtype=F64, requires_grad=True)
    c0 = torch.randn(4, 3, H, dtype=F64, requires_grad=True)
    lengths = torch.tensor([2, 4, 1])

    def f(x, h0, c0, *params):
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        hx = (h0, c0) if lstm_like else h0
        out, hn = torch.func.functional_call(layer, dict(zip(names, params, strict=True)), (packed, hx))
        return (out.data,) + (hn if lstm_like else (hn,))

    inputs = (x, h0, c0) + tuple(p.detach().requires_grad_() for p in layer.parameters())
    assert torch.autograd.gradcheck(f, inputs)


CELL_LAYERS = {
    "rnn_tanh": partial(rnnkit.RNNCell, nonlinearity="tanh"),
    "rnn_relu": partial(rnnkit.RNNCell, nonlinearity="relu"),
    "lstm": rnnkit.LSTMCell,
    "gru": rnnkit.GRUCell,
}


@pytest.mark.parametrize("family", CELL_LAYERS)
def test_cell_gradcheck(family):
    torch.manual_seed(0)
    cell = CELL_LAYERS[family](I, H, dtype=F64)
    names = [n for n, _ in cell.named_parameters()]
    x, h, c = (torch.randn(B, n, dtype=F64, requires_grad=True) for n in (I, H, H))

    def f(x, h, c, *params):
        hx = (h, c) if family == "lstm" else h
        out = torch.func.functional_call(cell, dict(zip(names, params, strict=True)), (x, hx))
        return out if isinstance(out, tuple) else (out,)

    inputs = (x, h, c) + tuple(p.detach().requires_grad_() for p in cell.parameters())
    assert torch.autograd.gradcheck(f, inputs)


# values kept per time step and per running sequence, as stated in rnnkit.engines.reference's docstring
KEPT_PER_STEP = {"rnn_tanh": H, "rnn_relu": H, "lstm": H + 5 * H, "lstm_proj": P + 5 * H, "gru": 5 * H}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("family", CELLS)
def test_engine_keeps_what_its_docstring_states(family, dtype):
    """Bytes the engine saves for the backward, beyond the caller's own tensors (input, states, weights)."""
    batch_sizes = PACKINGS["packed_T4"]
    x, h0, c0, w = engine_inputs(family, batch_sizes)
    callers = [t.to(dtype).detach().requires_grad_() for t in (x, h0, c0, *w) if t is not None]
    it = iter(callers)
    x, h0, c0 = next(it), next(it), (next(it) if c0 is not None else None)
    w = [next(it) if t is not None else None for t in w]
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        reference.run_layer(MODES[family], x, batch_sizes, h0, c0, *w, False)
    theirs = {t.data_ptr() for t in callers}
    kept = sum(t.numel() * t.element_size() for t in saved if t is not None and t.data_ptr() not in theirs)
    rows = sum(batch_sizes)  # one row per running sequence per step
    assert kept == rows * KEPT_PER_STEP[family] * torch.empty((), dtype=dtype).element_size()
