"""layer.stream(): frames one at a time, or chunks, give what one call on the whole sequence gives."""

from __future__ import annotations

from functools import partial

import pytest
import torch

import rnnkit
from rnnkit.testing import assert_close

F64 = torch.float64
I, H, P, B, T = 3, 5, 2, 4, 7
FAMILIES = {
    "rnn_tanh": partial(rnnkit.RNN, nonlinearity="tanh"),
    "rnn_relu": partial(rnnkit.RNN, nonlinearity="relu"),
    "lstm": rnnkit.LSTM,
    "lstm_proj": partial(rnnkit.LSTM, proj_size=P),
    "gru": rnnkit.GRU,
}
FORMS = ["time_major", "batch_first", "unbatched"]


def build(family, num_layers, form, **kwargs):
    torch.manual_seed(0)
    return FAMILIES[family](I, H, num_layers=num_layers, batch_first=form == "batch_first", dtype=F64, **kwargs)


def sequence(form):
    return torch.randn({"time_major": (T, B, I), "batch_first": (B, T, I), "unbatched": (T, I)}[form], dtype=F64)


def initial_state(layer, form):
    """Random hx in the layer's shapes (LSTM: (h_0, c_0))."""
    lead = (layer.num_layers,) if form == "unbatched" else (layer.num_layers, B)
    h = torch.randn(*lead, layer.proj_size or H, dtype=F64)
    return (h, torch.randn(*lead, H, dtype=F64)) if isinstance(layer, rnnkit.LSTM) else h


def time_dim(layer, form):
    return 1 if form == "batch_first" else 0


def states(state):
    return list(state) if isinstance(state, tuple) else [state]


def assert_same(stream_out, stream_state, whole_out, whole_state, what):
    assert_close(stream_out, whole_out, "output", f"{what} output")
    for a, b in zip(states(stream_state), states(whole_state), strict=True):
        assert_close(a, b, "output", f"{what} final state")


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("how", ["steps", "chunks", "mixed"])
def test_stream_equals_whole_sequence(family, num_layers, form, how):
    layer = build(family, num_layers, form)
    x, hx = sequence(form), initial_state(layer, form)
    whole_out, whole_state = layer(x, hx)
    stream = layer.stream(hx=hx)
    d = time_dim(layer, form)
    frames = x.unbind(d)
    with torch.no_grad():
        if how == "steps":
            out = torch.stack([stream.step(f) for f in frames], d)
        elif how == "chunks":
            out = torch.cat([stream.chunk(c) for c in x.split([3, 1, 3], d)], d)
        else:  # a step, a chunk, steps
            parts = [stream.step(frames[0]).unsqueeze(d), stream.chunk(x.narrow(d, 1, 3))]
            parts += [stream.step(f).unsqueeze(d) for f in frames[4:]]
            out = torch.cat(parts, d)
    assert_same(out, stream.state, whole_out, whole_state, f"{family} L={num_layers} {form} {how}")


@pytest.mark.parametrize("form", ["time_major", "unbatched"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("family", FAMILIES)
def test_float32_frames_take_the_cpu_engine_in_one_call(family, num_layers, form, monkeypatch):
    """A no-grad float32 frame runs each layer through cpu.infer_small; the frames still give what one call on
    the whole sequence gives."""
    torch.manual_seed(0)
    layer = FAMILIES[family](I, H, num_layers=num_layers)
    x = sequence(form).float()
    hx = tuple(s.float() for s in states(initial_state(layer.double(), form)))
    layer.float()
    hx = hx if family.startswith("lstm") else hx[0]
    calls = []
    monkeypatch.setattr(rnnkit.engines.cpu, "infer_small",
                        lambda *a, _run=rnnkit.engines.cpu.infer_small: calls.append(1) or _run(*a))
    with torch.no_grad():
        whole_out, whole_state = layer(x, hx)
        calls.clear()
        stream = layer.stream(hx=hx)
        out = torch.stack([stream.step(f) for f in x.unbind(0)], 0)
    assert len(calls) == T * num_layers
    assert_same(out, stream.state, whole_out, whole_state, f"{family} L={num_layers} {form}")


@pytest.mark.parametrize("family", ["lstm_proj", "gru"])
@pytest.mark.parametrize("start", ["batch_size", "first_input"])
def test_stream_from_zeros(family, start):
    layer = build(family, 2, "time_major")
    x = sequence("time_major")
    whole_out, whole_state = layer(x)
    stream = layer.stream(batch_size=B) if start == "batch_size" else layer.stream()
    assert (stream.state is None) == (start == "first_input")
    with torch.no_grad():
        out = torch.stack([stream.step(f) for f in x])
    assert_same(out, stream.state, whole_out, whole_state, f"{family} from zeros ({start})")


def test_reset_goes_back_to_the_initial_state():
    layer = build("lstm", 2, "time_major")
    x, hx = sequence("time_major"), initial_state(layer, "time_major")
    stream = layer.stream(hx=hx)
    with torch.no_grad():
        first = stream.chunk(x)
        stream.reset()
        assert all(torch.equal(a, b) for a, b in zip(stream.state, hx, strict=True))
        again = torch.stack([stream.step(f) for f in x])
    assert_close(again, first, "output", "after reset")


def test_steps_under_grad_give_the_whole_sequence_gradients():
    """With autograd on, stepping is differentiable: the gradients of x, h_0, c_0 and every parameter
    equal those of the whole-sequence call, for a random upstream gradient."""
    layer = build("lstm_proj", 2, "time_major")
    x = sequence("time_major").requires_grad_()
    h0, c0 = (s.requires_grad_() for s in initial_state(layer, "time_major"))
    leaves = [x, h0, c0, *layer.parameters()]
    whole_out, (h_n, c_n) = layer(x, (h0, c0))
    stream = layer.stream(hx=(h0, c0))
    out = torch.stack([stream.step(f) for f in x])
    sh, sc = stream.state
    upstream = [torch.randn_like(t) for t in (whole_out, h_n, c_n)]
    expected = torch.autograd.grad([whole_out, h_n, c_n], leaves, upstream)
    actual = torch.autograd.grad([out, sh, sc], leaves, upstream)
    for k, (a, b) in enumerate(zip(actual, expected, strict=True)):
        assert_close(a, b, "grad", f"stream gradient #{k}")


def test_bidirectional_cannot_stream():
    with pytest.raises(ValueError, match=r"^GRU: a bidirectional layer cannot stream: its reverse direction reads "
                                         r"the sequence from its end"):
        rnnkit.GRU(I, H, bidirectional=True).stream()


@pytest.mark.parametrize("case", ["width", "batch", "rank", "dtype"])
def test_bad_frames(case):
    layer = build("gru", 2, "time_major")
    stream = layer.stream(batch_size=B)
    x, exc, match = {
        "width": (torch.randn(B, I + 1, dtype=F64), RuntimeError,
                  rf"GRU stream step: input\.size\(-1\) must be equal to input_size\. Expected {I}, got {I + 1}"),
        "batch": (torch.randn(B + 1, I, dtype=F64), RuntimeError,
                  rf"GRU stream step: the stream carries a batch of {B}, got an input of batch size {B + 1}"),
        "rank": (torch.randn(I, dtype=F64), ValueError,
                 rf"GRU stream step: a batched stream takes \(B, input_size\), got a 1-D input of shape \({I},\)"),
        "dtype": (torch.randn(B, I), ValueError,
                  r"GRU stream step: RNN input dtype \(torch\.float32\) does not match weight dtype \(torch\.float64\)"),
    }[case]
    with pytest.raises(exc, match=match):
        stream.step(x)


def test_hx_and_batch_size_must_agree():
    layer = build("rnn_tanh", 2, "time_major")
    with pytest.raises(ValueError, match=rf"RNN: batch_size={B + 1} but hx has batch size {B}"):
        layer.stream(batch_size=B + 1, hx=initial_state(layer, "time_major"))
    with pytest.raises(RuntimeError, match=r"RNN: Expected hidden size \(2, 4, 5\), got \[2, 4, 6\]"):
        layer.stream(hx=torch.randn(2, B, H + 1, dtype=F64))
