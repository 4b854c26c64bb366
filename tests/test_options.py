"""rnnkit.LSTM / GRU / RNN with the options torch.nn lacks: layer_norm, peephole, zoneout, recurrent_dropout,
weight_drop (rnnkit.nn.options, rnnkit.nn.variants).

The layer is checked against a plain autograd implementation of its equations written here (the engines'
own tests, tests/test_lstm_plus.py and test_gru_plus.py, chain the engines to their hand-derived BPTT);
the regularisers for the identity in eval mode, and their masks for rate and sharing.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit
from rnnkit.engines import variant_ops
from rnnkit.testing import assert_close

EPS = 1e-5


# ---------------------------------------------------------------- the equations, written out


def ln(v, w, b):
    return F.layer_norm(v, (v.shape[-1],), w, b, EPS)


def lstm_plus_layer(layer, x, h, c, masks=None, suffix="_l0"):
    """One direction of one layer, (T, B, I) padded, from the equations (Ba et al.; Gers; Gal; Krueger)."""
    p = {name[: -len(suffix)]: t for name, t in layer.named_parameters() if name.endswith(suffix)}
    rd, zh, zc = masks if masks is not None else (None, None, None)
    outs = []
    for t in range(x.shape[0]):
        xp = x[t] @ p["weight_ih"].t()
        hm = h * rd if rd is not None else h
        hp = hm @ p["weight_hh"].t()
        if layer.layer_norm:
            xp, hp = ln(xp, p["ln_ih_weight"], p["ln_ih_bias"]), ln(hp, p["ln_hh_weight"], p["ln_hh_bias"])
        a = xp + p["bias_ih"] + hp + p["bias_hh"]
        a_i, a_f, a_g, a_o = a.chunk(4, 1)
        if layer.peephole:
            p_i, p_f, p_o = p["weight_peephole"].chunk(3)
            a_i, a_f = a_i + p_i * c, a_f + p_f * c
        c_new = torch.sigmoid(a_f) * c + torch.sigmoid(a_i) * torch.tanh(a_g)
        if layer.peephole:
            a_o = a_o + p_o * c_new
        cc = ln(c_new, p["ln_cell_weight"], p["ln_cell_bias"]) if layer.layer_norm else c_new
        h_new = torch.sigmoid(a_o) * torch.tanh(cc)
        if zc is not None:
            c_new = zc[t] * c + (1 - zc[t]) * c_new
        if zh is not None:
            h_new = zh[t] * h + (1 - zh[t]) * h_new
        h, c = h_new, c_new
        outs.append(h)
    return torch.stack(outs), h, c


def gru_plus_layer(layer, x, h, masks=None, suffix="_l0"):
    p = {name[: -len(suffix)]: t for name, t in layer.named_parameters() if name.endswith(suffix)}
    rd, zh = masks if masks is not None else (None, None)
    outs = []
    for t in range(x.shape[0]):
        xp = x[t] @ p["weight_ih"].t()
        hp = (h * rd if rd is not None else h) @ p["weight_hh"].t()
        if layer.layer_norm:
            xp, hp = ln(xp, p["ln_ih_weight"], p["ln_ih_bias"]), ln(hp, p["ln_hh_weight"], p["ln_hh_bias"])
        x_r, x_z, x_n = (xp + p["bias_ih"]).chunk(3, 1)
        h_r, h_z, h_n = (hp + p["bias_hh"]).chunk(3, 1)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        h_new = (1 - z) * torch.tanh(x_n + r * h_n) + z * h
        if zh is not None:
            h_new = zh[t] * h + (1 - zh[t]) * h_new
        h = h_new
        outs.append(h)
    return torch.stack(outs), h


class Recorder:
    """Wraps variant_ops.run to keep the masks and parameters each call got."""

    def __init__(self, monkeypatch):
        self.calls, real = [], variant_ops.run

        def run(family, engine, config, xp, batch_sizes, states, params, masks, reverse):
            self.calls.append(dict(family=family, config=config, params=params, masks=masks))
            return real(family, engine, config, xp, batch_sizes, states, params, masks, reverse)

        monkeypatch.setattr(variant_ops, "run", run)


def grads(tensors):
    return [t.grad.clone() for t in tensors]


def randomise(layer):
    """Layer norm starts as the identity; random gains and biases test that they are used."""
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.startswith("ln_"):
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if "_weight_" in name else 0.0))


# ---------------------------------------------------------------- against the equations

LSTM_OPTIONS = {
    "ln": dict(layer_norm=True),
    "peephole": dict(peephole=True),
    "ln+peephole": dict(layer_norm=True, peephole=True),
    "zoneout": dict(zoneout=(0.3, 0.2)),
    "rdrop": dict(recurrent_dropout=0.3),
    "all": dict(layer_norm=True, peephole=True, zoneout=(0.3, 0.2), recurrent_dropout=0.3),
}


@pytest.mark.parametrize("engine", ["reference", "cpu"])
@pytest.mark.parametrize("opts", LSTM_OPTIONS.values(), ids=LSTM_OPTIONS.keys())
def test_lstm_options_equal_their_equations(opts, engine, monkeypatch):
    torch.manual_seed(0)
    T, B, I, H = 5, 3, 4, 6
    layer = rnnkit.LSTM(I, H, engine=engine, dtype=torch.float64, **opts)
    randomise(layer)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    h0, c0 = (torch.randn(1, B, H, dtype=torch.float64, requires_grad=True) for _ in range(2))
    rec = Recorder(monkeypatch)
    out, (h_n, c_n) = layer(x, (h0, c0))
    rd, zh, zc = (m if m.numel() else None for m in rec.calls[0]["masks"])
    masks = (rd, *(None if m is None else m.view(T, B, H) for m in (zh, zc)))
    want = lstm_plus_layer(layer, x, h0[0], c0[0], masks)
    ups = [torch.randn_like(t) for t in (out, h_n, c_n)]
    inputs = [x, h0, c0, *layer.parameters()]
    got_grads = torch.autograd.grad([out, h_n, c_n], inputs, ups)
    want_grads = torch.autograd.grad(list(want), inputs, [ups[0], ups[1][0], ups[2][0]])
    for a, b in zip((out, h_n[0], c_n[0]), want, strict=True):
        assert_close(a, b)
    for a, b in zip(got_grads, want_grads, strict=True):
        assert_close(a, b, kind="grad")


GRU_OPTIONS = {"ln": dict(layer_norm=True), "zoneout": dict(zoneout=0.3), "rdrop": dict(recurrent_dropout=0.3),
               "all": dict(layer_norm=True, zoneout=0.3, recurrent_dropout=0.3)}


@pytest.mark.parametrize("engine", ["reference", "cpu"])
@pytest.mark.parametrize("opts", GRU_OPTIONS.values(), ids=GRU_OPTIONS.keys())
def test_gru_options_equal_their_equations(opts, engine, monkeypatch):
    torch.manual_seed(1)
    T, B, I, H = 5, 3, 4, 6
    layer = rnnkit.GRU(I, H, engine=engine, dtype=torch.float64, **opts)
    randomise(layer)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(1, B, H, dtype=torch.float64, requires_grad=True)
    rec = Recorder(monkeypatch)
    out, h_n = layer(x, h0)
    rd, zh = (m if m.numel() else None for m in rec.calls[0]["masks"])
    want = gru_plus_layer(layer, x, h0[0], (rd, None if zh is None else zh.view(T, B, H)))
    ups = [torch.randn_like(t) for t in (out, h_n)]
    inputs = [x, h0, *layer.parameters()]
    got_grads = torch.autograd.grad([out, h_n], inputs, ups)
    want_grads = torch.autograd.grad(list(want), inputs, [ups[0], ups[1][0]])
    assert_close(out, want[0])
    assert_close(h_n[0], want[1])
    for a, b in zip(got_grads, want_grads, strict=True):
        assert_close(a, b, kind="grad")


# ---------------------------------------------------------------- every input form


FORMS = ["two_layers_bidirectional", "batch_first", "packed_unsorted", "unbatched", "lengths"]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("cls,opts", [(rnnkit.LSTM, dict(layer_norm=True, peephole=True)),
                                      (rnnkit.GRU, dict(layer_norm=True))], ids=["lstm", "gru"])
def test_options_take_every_input_form(cls, opts, form):
    """Each form against the same layer on the padded form, sequence by sequence where lengths differ."""
    torch.manual_seed(2)
    T, B, I, H = 4, 3, 5, 4
    kw = dict(num_layers=2, bidirectional=True) if form == "two_layers_bidirectional" else {}
    layer = cls(I, H, dtype=torch.float64, batch_first=form == "batch_first", **kw, **opts)
    randomise(layer)
    x = torch.randn(T, B, I, dtype=torch.float64)
    if form == "batch_first":
        out, _ = layer(x.transpose(0, 1))
        layer.batch_first = False
        assert_close(out.transpose(0, 1), layer(x)[0])
    elif form == "unbatched":
        out, _ = layer(x[:, 0])
        assert_close(out, layer(x[:, :1])[0][:, 0])
    elif form in ("packed_unsorted", "lengths"):
        lengths = torch.tensor([2, 4, 3])
        if form == "lengths":
            out, state = layer(x, lengths=lengths)
        else:
            packed, state = layer(pack_padded_sequence(x, lengths, enforce_sorted=False))
            out = pad_packed_sequence(packed, total_length=T)[0]
        for b in range(B):
            alone, alone_state = layer(x[: lengths[b], b: b + 1])
            assert_close(out[: lengths[b], b], alone[:, 0])
            h = state[0] if isinstance(state, tuple) else state
            h_alone = alone_state[0] if isinstance(alone_state, tuple) else alone_state
            assert_close(h[:, b], h_alone[:, 0])
    else:
        out, state = layer(x)
        assert out.shape == (T, B, 2 * H)
        out.backward(torch.randn_like(out))
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())


# ---------------------------------------------------------------- regularisers


@pytest.mark.parametrize("cls,opts", [
    (rnnkit.LSTM, dict(zoneout=(0.3, 0.2), recurrent_dropout=0.3, weight_drop=0.4)),
    (rnnkit.GRU, dict(zoneout=0.3, recurrent_dropout=0.3, weight_drop=0.4)),
    (rnnkit.RNN, dict(weight_drop=0.4))], ids=["lstm", "gru", "rnn"])
def test_regularisers_are_the_identity_in_eval_mode(cls, opts):
    torch.manual_seed(3)
    layer, plain = cls(4, 5, num_layers=2, **opts), cls(4, 5, num_layers=2)
    plain.load_state_dict(layer.state_dict())
    layer.eval(), plain.eval()
    x = torch.randn(6, 3, 4)
    a, b = layer(x), plain(x)
    assert torch.equal(a[0], b[0])
    reference = getattr(torch.nn, cls.__name__)(4, 5, num_layers=2)
    reference.load_state_dict(layer.state_dict())
    assert_close(a[0], reference(x)[0])


def test_masks_have_the_rate_and_sharing_asked_for(monkeypatch):
    torch.manual_seed(4)
    B, T, H, pz, pc, pr = 64, 50, 32, 0.3, 0.1, 0.25
    layer = rnnkit.LSTM(8, H, num_layers=2, bidirectional=True, zoneout=(pz, pc), recurrent_dropout=pr)
    rec = Recorder(monkeypatch)
    layer(torch.randn(T, B, 8))
    layer(torch.randn(T, B, 8))
    assert len(rec.calls) == 8  # 2 passes x 2 layers x 2 directions
    for call in rec.calls:
        rd, zh, zc = call["masks"]
        assert set(call["config"].split(",")) >= {"rdrop", "zoneout_h", "zoneout_c"}
        # recurrent dropout: one mask per sequence (B, H), shared by every step, inverted-dropout scaled
        assert rd.shape == (B, H)
        assert set(rd.unique().tolist()) <= {0.0, torch.tensor(1 / (1 - pr)).item()}  # in float32
        assert abs((rd == 0).float().mean().item() - pr) < 0.03
        # zoneout: one draw per step and unit (N, H), 1 = keep the previous value
        assert zh.shape == zc.shape == (T * B, H)
        assert abs(zh.mean().item() - pz) < 0.02 and abs(zc.mean().item() - pc) < 0.02
    # a new draw for each layer, direction and pass
    firsts = [c["masks"][0] for c in rec.calls]
    assert all(not torch.equal(a, b) for i, a in enumerate(firsts) for b in firsts[i + 1:])


def test_weight_drop_draws_one_mask_per_pass(monkeypatch):
    torch.manual_seed(5)
    p = 0.4
    layer = rnnkit.LSTM(8, 64, layer_norm=True, weight_drop=p)
    rec = Recorder(monkeypatch)
    for _ in range(2):
        layer(torch.randn(7, 4, 8))
    dropped = [c["params"][0].detach() for c in rec.calls]  # W_hh as the recurrence sees it, every step
    w = layer.weight_hh_l0.detach()
    for d in dropped:
        kept = d != 0
        assert abs(1 - kept.float().mean().item() - p) < 0.03
        assert torch.allclose(d[kept], w[kept] / (1 - p))
    assert not torch.equal(dropped[0], dropped[1])


def test_weight_drop_alone_runs_torch_cell_on_dropped_weights():
    torch.manual_seed(6)
    layer = rnnkit.LSTM(4, 5, weight_drop=0.5)
    x = torch.randn(6, 2, 4)
    torch.manual_seed(7)
    out, _ = layer(x)
    torch.manual_seed(7)
    mask_applied = F.dropout(layer.weight_hh_l0.detach(), 0.5, training=True)
    reference = torch.nn.LSTM(4, 5)
    reference.load_state_dict(layer.state_dict())
    with torch.no_grad():
        reference.weight_hh_l0.copy_(mask_applied)
    assert_close(out, reference(x)[0])
    out.backward(torch.randn_like(out))
    dropped_units = mask_applied == 0
    assert torch.all(layer.weight_hh_l0.grad[dropped_units] == 0)  # a dropped weight gets no gradient


# ---------------------------------------------------------------- construction


def test_parameters_have_plain_names_and_torch_numbers():
    torch.manual_seed(8)
    layer = rnnkit.LSTM(3, 4, num_layers=2, layer_norm=True, peephole=True)
    torch.manual_seed(8)
    plain = torch.nn.LSTM(3, 4, num_layers=2)
    names = [n for n, _ in layer.named_parameters()]
    assert names[:8] == [n for n, _ in plain.named_parameters()]
    assert names[8:] == [f"{k}_l{i}" for i in range(2) for k in (
        "ln_ih_weight", "ln_ih_bias", "ln_hh_weight", "ln_hh_bias", "ln_cell_weight", "ln_cell_bias",
        "weight_peephole")]
    for n, p in plain.named_parameters():  # the same seed gives torch.nn's weights
        assert torch.equal(getattr(layer, n), p)
    assert torch.equal(layer.ln_ih_weight_l1, torch.ones(16)) and torch.equal(layer.ln_cell_bias_l0, torch.zeros(4))
    missing = layer.load_state_dict(plain.state_dict(), strict=False).missing_keys  # torch.nn weights load
    assert len(missing) == 14


@pytest.mark.parametrize("make,error,text", [
    (lambda: rnnkit.LSTM(3, 4, zoneout=1.0), ValueError, "zoneout should be a probability in [0, 1)"),
    (lambda: rnnkit.LSTM(3, 4, zoneout=(0.1,)), ValueError, "zoneout should be a probability or a pair"),
    (lambda: rnnkit.GRU(3, 4, zoneout=(0.1, 0.2)), ValueError, "zoneout should be a probability, got"),
    (lambda: rnnkit.LSTM(3, 4, recurrent_dropout=-0.1), ValueError, "recurrent_dropout should be a probability"),
    (lambda: rnnkit.GRU(3, 4, weight_drop="0.1"), ValueError, "weight_drop should be a probability"),
    (lambda: rnnkit.LSTM(3, 4, layer_norm=1), TypeError, "layer_norm should be a bool, got int"),
    (lambda: rnnkit.LSTM(3, 4, proj_size=2, layer_norm=True), ValueError, "proj_size cannot be combined"),
    (lambda: rnnkit.GRU(3, 4, peephole=True), TypeError, "peephole"),
    (lambda: rnnkit.RNN(3, 4, layer_norm=True), TypeError, "layer_norm"),
], ids=["zoneout_1", "zoneout_pair_of_1", "gru_zoneout_pair", "negative_rdrop", "string_weight_drop",
        "int_layer_norm", "proj_with_ln", "gru_peephole", "rnn_layer_norm"])
def test_bad_options_are_refused(make, error, text):
    with pytest.raises(error, match=text.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        make()


def test_stream_refuses_what_it_cannot_run():
    with pytest.raises(NotImplementedError, match="layer_norm or peephole"):
        rnnkit.LSTM(3, 4, layer_norm=True).stream()
    stream = rnnkit.GRU(3, 4, zoneout=0.2).stream(batch_size=2)
    with pytest.raises(RuntimeError, match="call layer.eval"):
        stream.step(torch.randn(2, 3))
    stream.layer.eval()
    assert stream.step(torch.randn(2, 3)).shape == (2, 4)


# ---------------------------------------------------------------- the PyTorch stack


def test_compile_and_export_an_ln_lstm():
    torch.manual_seed(9)
    layer = rnnkit.LSTM(4, 6, num_layers=2, layer_norm=True, peephole=True).eval()
    randomise(layer)
    x = torch.randn(5, 3, 4)
    explanation = torch._dynamo.explain(layer)(x)
    assert explanation.graph_break_count == 0
    compiled = torch.compile(layer, fullgraph=True, backend="eager")
    assert_close(compiled(x)[0], layer(x)[0])
    t = torch.export.Dim("T", min=2, max=64)
    program = torch.export.export(layer, (x,), dynamic_shapes=({0: t},))
    y = torch.randn(9, 3, 4)
    assert_close(program.module()(y)[0], layer(y)[0])


def test_double_backward_through_an_ln_gru():
    torch.manual_seed(10)
    layer = rnnkit.GRU(3, 4, layer_norm=True, dtype=torch.float64)
    randomise(layer)
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradgradcheck(lambda x: layer(x)[0], (x,))


# ---------------------------------------------------------------- rnnkit train's options


@pytest.mark.parametrize("task,model,text", [
    ("adding", dict(cell="gru", peephole=True), "--peephole is an option of --cell lstm, got --cell gru"),
    ("adding", dict(cell="rnn", layer_norm=True), "--layer-norm is an option of --cell lstm, gru"),
    ("adding", dict(cell="slstm", hidden=10, heads=4), "--heads 4 must divide --hidden 10"),
    ("adding", dict(cell="gru", heads=2), "--heads is an option of --cell slstm"),
    ("g2p", dict(cell="lstm", layer_norm=True), "task g2p decodes one step at a time"),
    ("caption", dict(cell="mingru"), "task caption decodes one step at a time"),
], ids=["peephole_gru", "ln_rnn", "heads_not_dividing", "heads_on_gru", "g2p_ln", "caption_mingru"])
def test_train_refuses_cell_options_that_do_not_go_together(task, model, text):
    from rnnkit.train.config import ConfigError, ModelConfig, RunConfig, TaskConfig, check_model

    with pytest.raises(ConfigError, match=text.replace("(", r"\(")):
        check_model(RunConfig(task=TaskConfig(task=task), model=ModelConfig(**model)))


def test_an_old_config_without_the_new_options_still_reads():
    from rnnkit.train.config import ModelConfig, RunConfig

    old = RunConfig().to_dict()
    for key in ("layer_norm", "peephole", "zoneout", "recurrent_dropout", "weight_drop", "heads"):
        del old["model"][key]
    assert RunConfig.from_dict(old).model == ModelConfig()
