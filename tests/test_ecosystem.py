"""Everywhere torch.nn's recurrent layers go, rnnkit's go too, with the same numbers.

- double backward: gradgradcheck (float64) through layers and cells on every engine, and a
  Hessian-vector product equal to torch.nn's;
- torch.func: per-sample gradients by vmap(grad) equal a Python loop; jacrev and functional_call
  equal torch.nn's;
- torch.compile(fullgraph=True) with no graph break, outputs and gradients equal to eager;
- torch.export with dynamic batch and time, run at a second shape; torch.jit.trace; jit.script's error;
- ONNX through onnxruntime (its own RNN/LSTM/GRU operators; proj_size as a Scan);
- torch.autocast on CPU: the dtypes torch.nn returns, values within bfloat16's tolerance.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # the triton engine on CPU tensors (see test_triton_engine.py)

import pytest  # noqa: E402
import torch  # noqa: E402
from torch.func import functional_call, grad, jacrev, vmap  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402

import rnnkit  # noqa: E402
from rnnkit.testing import assert_close  # noqa: E402

FAMILIES = {"rnn_tanh": ("RNN", {}), "rnn_relu": ("RNN", {"nonlinearity": "relu"}), "lstm": ("LSTM", {}),
            "gru": ("GRU", {})}
OPTIONS = {
    "plain": {},
    "bidir_2layers_dropout": {"num_layers": 2, "bidirectional": True, "dropout": 0.3},
    "batch_first": {"batch_first": True},
}
ENGINES = ["reference", "cpu"]
T, B, I, H = 3, 2, 2, 3


def layer_pair(family: str, options: dict, engine: str, dtype=torch.float64, **extra):
    """rnnkit's layer and torch.nn's with the same weights."""
    name, kw = FAMILIES[family]
    kw = {**kw, **options, **extra}
    ours = getattr(rnnkit, name)(I, H, engine=engine, dtype=dtype, **kw)
    theirs = getattr(torch.nn, name)(I, H, dtype=dtype, **kw)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def outputs(result) -> tuple:
    """(output, h_n) or (output, h_n, c_n) as one flat tuple of tensors; a PackedSequence gives its data."""
    out, state = result
    out = out.data if isinstance(out, torch.nn.utils.rnn.PackedSequence) else out
    return (out, *state) if isinstance(state, tuple) else (out, state)


def as_function(module, make_input):
    """f(x, *params) -> outputs, with dropout masks fixed by a seed so repeated calls are the same function."""
    names = [n for n, _ in module.named_parameters()]

    def f(x, *params):
        torch.manual_seed(0)
        return outputs(functional_call(module, dict(zip(names, params, strict=True)), (make_input(x),)))

    return f, [p.detach().clone().requires_grad_() for p in module.parameters()]


def inputs(options: dict, dtype=torch.float64):
    shape = (B, T, I) if options.get("batch_first") else (T, B, I)
    return torch.randn(shape, dtype=dtype, requires_grad=True)


# ---------------------------------------------------------------- double backward


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("option", [*OPTIONS, "packed_unsorted", "unbatched", "proj"])
@pytest.mark.parametrize("family", FAMILIES)
def test_gradgradcheck_layers(family, option, engine):
    if option == "proj" and family != "lstm":
        pytest.skip("proj_size is an LSTM option")
    torch.manual_seed(1)
    extra = {"proj_size": 2} if option == "proj" else {}
    ours, _ = layer_pair(family, OPTIONS.get(option, {}), engine, **extra)
    ours.train()
    x = inputs(OPTIONS.get(option, {}))
    make_input = (lambda v: pack_padded_sequence(v, torch.tensor([2, 3]), enforce_sorted=False)) \
        if option == "packed_unsorted" else (lambda v: v[:, 0]) if option == "unbatched" else (lambda v: v)
    f, params = as_function(ours, make_input)
    assert torch.autograd.gradgradcheck(f, (x, *params), fast_mode=True)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("family", ["RNNCell", "LSTMCell", "GRUCell"])
def test_gradgradcheck_cells(family, engine):
    torch.manual_seed(2)
    cell = getattr(rnnkit, family)(I, H, engine=engine, dtype=torch.float64)
    names = [n for n, _ in cell.named_parameters()]
    state = (torch.randn(B, H, dtype=torch.float64, requires_grad=True),) * (2 if family == "LSTMCell" else 1)
    state = tuple(s.detach().clone().requires_grad_() for s in state)

    def f(x, *rest):
        params, hx = rest[:len(names)], rest[len(names):]
        out = functional_call(cell, dict(zip(names, params, strict=True)), (x, hx if len(hx) > 1 else hx[0]))
        return out if isinstance(out, tuple) else (out,)

    x = torch.randn(B, I, dtype=torch.float64, requires_grad=True)
    params = [p.detach().clone().requires_grad_() for p in cell.parameters()]
    assert torch.autograd.gradgradcheck(f, (x, *params, *state), fast_mode=True)


@pytest.mark.parametrize("engine", [*ENGINES, "triton"])
@pytest.mark.parametrize("family", FAMILIES)
def test_hessian_vector_product_equals_torch(family, engine):
    """A gradient penalty's gradient: d/dθ ||dL/dx||^2, the double backward a user runs, against torch.nn's."""
    torch.manual_seed(3)
    dtype = torch.float32 if engine == "triton" else torch.float64
    ours, theirs = layer_pair(family, {"num_layers": 2, "bidirectional": True}, engine, dtype=dtype)
    x = inputs({}, dtype)
    upstream = None
    results = []
    for module in (ours, theirs):
        outs = outputs(module(x))
        upstream = upstream or [torch.randn_like(o) for o in outs]
        loss = sum((o * u).sum() for o, u in zip(outs, upstream, strict=True))
        (dx,) = torch.autograd.grad(loss, x, create_graph=True)
        penalty = (dx * dx).sum()
        results.append(torch.autograd.grad(penalty, [x, *module.parameters()]))
    for a, b in zip(*results, strict=True):
        assert_close(a, b, "grad", f"{family} {engine}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("engine", [*ENGINES, "aten", "triton"])
@pytest.mark.parametrize("family", FAMILIES)
def test_a_batch_of_upstream_gradients(family, engine, dtype):
    """torch.autograd.grad(..., is_grads_batched=True), which gradcheck runs by default, and torch.func.vmap over
    a backward of a graph built outside it: each slice equals torch.nn's gradient for that upstream alone."""
    if engine == "aten" and (family != "lstm" or dtype != torch.float32):
        pytest.skip("the aten engine runs float32 LSTMs only")
    if engine == "triton" and dtype != torch.float32:
        pytest.skip("the triton engine runs float32 and 16-bit types")
    torch.manual_seed(9)
    ours, theirs = layer_pair(family, {"num_layers": 2, "bidirectional": True}, engine, dtype=dtype)
    x = inputs({}, dtype)
    results = []
    for module in (ours, theirs):
        out = module(x)[0]
        upstream = torch.randn(3, *out.shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
        wrt = [x, *module.parameters()]
        batched = torch.autograd.grad(out, wrt, upstream, is_grads_batched=True, retain_graph=True)
        by_vmap = vmap(lambda u: torch.autograd.grad(out, x, u, retain_graph=True)[0])(upstream)  # noqa: B023
        results.append((batched, by_vmap))
    (ours_batched, ours_vmap), (theirs_batched, theirs_vmap) = results
    for k, (a, b) in enumerate(zip(ours_batched, theirs_batched, strict=True)):
        assert_close(a, b, "grad", f"{family} {engine} gradient {k}")
    assert_close(ours_vmap, theirs_vmap, "grad", f"{family} {engine} vmap over the backward")


@pytest.mark.parametrize("grad_mode", [True, False], ids=["grad", "no_grad"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("engine", [*ENGINES, "auto", "aten"])
@pytest.mark.parametrize("family", FAMILIES)
def test_forward_mode_ad_equals_torch(family, engine, dtype, grad_mode):
    """torch.autograd.forward_ad dual tensors (a jvp without torch.func): the engines have no jvp rule, so a dual
    level sends the call to plain ops; repeated calls too (no quick lane). torch.nn's float32 LSTM fails here
    (oneDNN has no forward-AD formula), so the tangent is compared with torch.nn's in float64."""
    import torch.autograd.forward_ad as fwad

    if engine == "aten" and (family != "lstm" or dtype != torch.float32):
        pytest.skip("the aten engine runs float32 LSTMs only")
    torch.manual_seed(10)
    ours, theirs = layer_pair(family, {"num_layers": 2}, engine, dtype=dtype)
    theirs.double()
    x, tangent = torch.randn(T, B, I, dtype=dtype), torch.randn(T, B, I, dtype=dtype)
    with fwad.dual_level():
        want = fwad.unpack_dual(theirs(fwad.make_dual(x.double(), tangent.double()))[0]).tangent
    for call in range(3):
        with torch.set_grad_enabled(grad_mode), fwad.dual_level():
            got = fwad.unpack_dual(ours(fwad.make_dual(x, tangent))[0]).tangent
        assert got is not None, f"{family} {engine}: the tangent was lost"
        assert_close(got, want.to(dtype), "grad", f"{family} {engine} call {call}")


# ---------------------------------------------------------------- torch.func


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("family", FAMILIES)
def test_per_sample_gradients_by_vmap_grad(family, engine):
    torch.manual_seed(4)
    ours, _ = layer_pair(family, {"num_layers": 2}, engine)
    params = {n: p.detach() for n, p in ours.named_parameters()}
    xs, targets = torch.randn(B, T, I, dtype=torch.float64), torch.randn(B, T, H, dtype=torch.float64)

    def loss(params, x, target):  # one sample: unbatched (T, I) input
        out, _ = functional_call(ours, params, (x,))
        return ((out - target) ** 2).sum()

    batched = vmap(grad(loss), in_dims=(None, 0, 0))(params, xs, targets)
    for b in range(B):
        one = grad(loss)(params, xs[b], targets[b])
        for name in params:
            assert_close(batched[name][b], one[name], "grad", f"{family} {engine} {name} sample {b}")
    # and the per-sample gradient equals plain autograd on that sample alone
    for b in range(B):
        ours.zero_grad()
        out, _ = ours(xs[b])
        ((out - targets[b]) ** 2).sum().backward()
        for name, p in ours.named_parameters():
            assert_close(batched[name][b], p.grad, "grad", f"{family} {engine} {name} sample {b} vs autograd")


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("family", FAMILIES)
def test_jacrev_and_functional_call_equal_torch(family, engine):
    torch.manual_seed(5)
    ours, theirs = layer_pair(family, {"bidirectional": True}, engine)
    x = torch.randn(T, B, I, dtype=torch.float64)
    j_ours = jacrev(lambda v: ours(v)[0])(x)
    j_theirs = jacrev(lambda v: theirs(v)[0])(x)
    assert_close(j_ours, j_theirs, "grad", f"{family} {engine} jacrev")
    params = {n: torch.randn_like(p) for n, p in ours.named_parameters()}
    for a, b in zip(outputs(functional_call(ours, params, (x,))), outputs(functional_call(theirs, params, (x,))),
                    strict=True):
        assert_close(a, b, "output", f"{family} {engine} functional_call")


@pytest.mark.parametrize("family", ["RNNCell", "LSTMCell", "GRUCell"])
def test_cells_under_vmap_grad(family):
    torch.manual_seed(6)
    cell = getattr(rnnkit, family)(I, H, dtype=torch.float64)
    params = {n: p.detach() for n, p in cell.named_parameters()}
    xs = torch.randn(B, 4, I, dtype=torch.float64)

    def loss(params, x):  # a cell run in a loop over one unbatched sequence
        state = None
        for x_t in x:
            state = functional_call(cell, params, (x_t, state))
        return (state[0] if isinstance(state, tuple) else state).pow(2).sum()

    batched = vmap(grad(loss), in_dims=(None, 0))(params, xs)
    for b in range(B):
        one = grad(loss)(params, xs[b])
        for name in params:
            assert_close(batched[name][b], one[name], "grad", f"{family} {name}")


# ---------------------------------------------------------------- torch.compile, export, trace, script


class Model(torch.nn.Module):
    """An embedding, a two-layer rnnkit stack and a linear head: the shape of the task models."""

    def __init__(self, family: str, engine: str, batch_first: bool = True):
        super().__init__()
        name, kw = FAMILIES[family]
        self.embed = torch.nn.Embedding(11, 4)
        self.rnn = getattr(rnnkit, name)(4, 6, num_layers=2, batch_first=batch_first, engine=engine, **kw)
        self.head = torch.nn.Linear(6, 11)

    def forward(self, tokens):
        return self.head(self.rnn(self.embed(tokens))[0])


class CellModel(torch.nn.Module):
    """A decoder-style loop of rnnkit cells."""

    def __init__(self, engine: str):
        super().__init__()
        self.lstm = rnnkit.LSTMCell(4, 5, engine=engine)
        self.gru = rnnkit.GRUCell(5, 5, engine=engine)
        self.rnn = rnnkit.RNNCell(5, 5, engine=engine)

    def forward(self, x):  # (T, B, 4)
        h = torch.zeros(x.shape[1], 5)  # typed states from the start, as torch.jit.script wants
        state, h2, h3, outs = (h, h), h, h, []
        for x_t in x:
            state = self.lstm(x_t, state)
            h2 = self.gru(state[0], h2)
            h3 = self.rnn(h2, h3)
            outs.append(h3)
        return torch.stack(outs)


def compiled_equals_eager(model, x):
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, [str(r.reason) for r in explanation.break_reasons]
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    assert_close(y, model(x), "output", "compiled")
    upstream = torch.randn_like(y)
    params = list(model.parameters())
    for a, b in zip(torch.autograd.grad(y, params, upstream), torch.autograd.grad(model(x), params, upstream),
                    strict=True):
        assert_close(a, b, "grad", "compiled")


@pytest.mark.parametrize("module", ["layer", "bidir_stack", "cell"])
def test_compile_warns_about_nothing(module):
    """Compiling an rnnkit module raises no warning (an lru_cache in the traced code made Dynamo warn of "silent
    incorrectness" on every compile)."""
    import warnings

    torch._dynamo.reset()
    layer = {"layer": lambda: rnnkit.GRU(I, H), "bidir_stack": lambda: rnnkit.LSTM(I, H, 2, bidirectional=True),
             "cell": lambda: rnnkit.LSTMCell(I, H)}[module]()
    x = torch.randn(B, I) if module == "cell" else torch.randn(T, B, I)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.compile(layer, fullgraph=True, backend="aot_eager")(x)
    assert [str(w.message) for w in caught] == []


@pytest.mark.parametrize("engine", ["auto", *ENGINES, "triton"])
@pytest.mark.parametrize("family", FAMILIES)
def test_compile_fullgraph_without_breaks(family, engine):
    if engine == "triton" and family != "lstm":
        pytest.skip("one family is enough under the (slow) Triton interpreter")
    torch.manual_seed(7)
    torch._dynamo.reset()
    compiled_equals_eager(Model(family, engine), torch.randint(0, 11, (2, 3)))


@pytest.mark.parametrize("engine", ENGINES)
def test_compile_cells_in_a_loop(engine):
    torch.manual_seed(8)
    torch._dynamo.reset()
    compiled_equals_eager(CellModel(engine), torch.randn(3, 2, 4))


@pytest.mark.parametrize("engine", ["auto", *ENGINES])
@pytest.mark.parametrize("option", ["plain", "bidir_2layers_dropout", "batch_first", "proj", "with_h0"])
@pytest.mark.parametrize("family", FAMILIES)
def test_export_dynamic_batch_and_time(family, option, engine):
    if option == "proj" and family != "lstm":
        pytest.skip("proj_size is an LSTM option")
    torch.manual_seed(9)
    ours, _ = layer_pair(family, OPTIONS.get(option, {}), engine, dtype=torch.float32,
                         **({"proj_size": 2} if option == "proj" else {}))
    ours.eval()
    batch_first = OPTIONS.get(option, {}).get("batch_first", False)
    b_dim, t_dim = (0, 1) if batch_first else (1, 0)
    batch, steps = torch.export.Dim("batch"), torch.export.Dim("steps")
    x = torch.randn((B, T, I) if batch_first else (T, B, I))
    args, shapes = (x,), ({b_dim: batch, t_dim: steps},)
    if option == "with_h0":
        h0 = torch.randn(1, B, H)
        hx = (h0, torch.randn(1, B, H)) if family == "lstm" else h0
        args += (hx,)
        shapes += (((({1: batch},) * 2) if family == "lstm" else {1: batch}),)
    program = torch.export.export(ours, args, dynamic_shapes=shapes)
    x2 = torch.randn((5, 7, I) if batch_first else (7, 5, I))
    args2 = (x2,)
    if option == "with_h0":
        h0 = torch.randn(1, 5, H)
        args2 += ((h0, torch.randn(1, 5, H)) if family == "lstm" else h0,)
    for a, b in zip(outputs(program.module()(*args2)), outputs(ours(*args2)), strict=True):
        assert_close(a, b, "output", f"{family} {option} exported")


@pytest.mark.parametrize("engine", ENGINES)
def test_jit_trace_runs_a_second_shape(engine):
    torch.manual_seed(10)
    model = Model("lstm", engine).eval()
    traced = torch.jit.trace(model, (torch.randint(0, 11, (2, 3)),))
    tokens = torch.randint(0, 11, (4, 6))
    assert_close(traced(tokens), model(tokens), "output", "traced")
    cells = CellModel(engine)
    traced = torch.jit.trace(cells, (torch.randn(3, 2, 4),))
    x = torch.randn(3, 5, 4)  # a trace unrolls its loop: same T, another batch
    assert_close(traced(x), cells(x), "output", "traced cells")


@pytest.mark.parametrize("model", ["layers", "cells"])
@pytest.mark.parametrize("family", FAMILIES)
def test_jit_script_compiles_torch_nn_twins_on_the_same_parameters(family, model):
    if model == "cells" and family != "lstm":
        pytest.skip("one cell model holds all three cells")
    """torch.jit.script compiles torch.nn's layer or cell in each rnnkit module's place (nn/twin.py), holding the
    same Parameter objects: torch.nn's numbers, and a step of the scripted model trains the rnnkit one."""
    torch.manual_seed(8)
    module = Model(family, "auto") if model == "layers" else CellModel("auto")
    x = torch.randint(0, 11, (3, 5)) if model == "layers" else torch.randn(3, 2, 4)
    expected = module(x)
    params = dict(module.named_parameters())
    scripted = torch.jit.script(module)
    assert_close(scripted(x), expected, "output", f"{family} {model} scripted")
    assert {n: id(p) for n, p in scripted.named_parameters()} == {n: id(p) for n, p in params.items()}
    before = params["head.weight" if model == "layers" else "gru.weight_hh"].detach().clone()
    scripted(x).sum().backward()
    torch.optim.SGD(scripted.parameters(), lr=0.1).step()
    assert not torch.equal(before, params["head.weight" if model == "layers" else "gru.weight_hh"])


class OwnForward(rnnkit.GRU):
    def forward(self, input, hx=None):
        return super().forward(input, hx)


@pytest.mark.parametrize("module", [rnnkit.LSTM(2, 3, layer_norm=True), rnnkit.GRU(2, 3, zoneout=0.1),
                                    rnnkit.MinGRU(2, 3), rnnkit.GRU(2, 3, engine="reference"),
                                    rnnkit.GRUCell(2, 3, engine="cpu"), OwnForward(2, 3)],
                         ids=["layer_norm", "zoneout", "mingru", "engine_named", "cell_engine_named", "subclass"])
def test_jit_script_says_what_to_use_instead(module):
    """What has no torch.nn twin (or must not fall back to one) raises, saying what works instead."""
    with pytest.raises(RuntimeError, match="torch.jit.trace, torch.export.export or torch.compile"):
        torch.jit.script(module)


# ---------------------------------------------------------------- ONNX


ONNX_CASES = {
    "rnn_tanh": ("RNN", {}), "rnn_relu": ("RNN", {"nonlinearity": "relu"}), "lstm": ("LSTM", {}), "gru": ("GRU", {}),
    "lstm_2layers_bidir_batch_first": ("LSTM", {"num_layers": 2, "bidirectional": True, "batch_first": True}),
    "gru_2layers_bidir": ("GRU", {"num_layers": 2, "bidirectional": True}),
    "rnn_relu_bidir_batch_first": ("RNN", {"nonlinearity": "relu", "bidirectional": True, "batch_first": True}),
    "lstm_proj": ("LSTM", {"proj_size": 3, "num_layers": 2}),
}


class Flat(torch.nn.Module):
    """A layer whose outputs come out as a flat tuple (what an ONNX graph returns)."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x, h0=None, c0=None):
        return outputs(self.layer(x, None if h0 is None else h0 if c0 is None else (h0, c0)))


@pytest.mark.parametrize("with_h0", [False, True], ids=["no_h0", "h0"])
@pytest.mark.parametrize("case", ONNX_CASES)
def test_onnx_runs_in_onnxruntime(case, with_h0, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    torch.manual_seed(11)
    name, kw = ONNX_CASES[case]
    layer = getattr(rnnkit, name)(4, 5, **kw).eval()
    model = Flat(layer)
    batch_first, d = kw.get("batch_first", False), (2 if kw.get("bidirectional") else 1) * kw.get("num_layers", 1)

    def example(b, t):
        x = torch.randn((b, t, 4) if batch_first else (t, b, 4))
        p = kw.get("proj_size") or 5
        hx = (torch.randn(d, b, p),) + ((torch.randn(d, b, 5),) if name == "LSTM" else ())
        return (x, *hx) if with_h0 else (x,)

    batch, steps = torch.export.Dim("batch"), torch.export.Dim("steps")
    shapes = ({0: batch, 1: steps} if batch_first else {0: steps, 1: batch},)
    if with_h0:
        shapes += ({1: batch},) * (2 if name == "LSTM" else 1)
    program = torch.onnx.export(model, example(2, 3), dynamic_shapes=shapes)
    ops = {node.op_type for node in program.model_proto.graph.node}
    assert ({"Scan"} if kw.get("proj_size") else {name}) <= ops, ops  # ONNX's own operator, or the scan
    path = tmp_path / "model.onnx"
    program.save(str(path))
    session = ort.InferenceSession(str(path))
    args = example(5, 7)  # another batch and length than the export's
    got = session.run(None, {i.name: a.numpy() for i, a in zip(session.get_inputs(), args, strict=True)})
    for a, b in zip(got, model(*args), strict=True):
        assert_close(torch.from_numpy(a), b, "output", case)


# ---------------------------------------------------------------- autocast


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16], ids=["f32_input", "bf16_input"])
@pytest.mark.parametrize("case", ["rnn_tanh", "rnn_relu", "lstm", "gru", "lstm_proj", "lstm_2layers_bidir"])
def test_autocast_cpu_matches_torch(case, input_dtype, engine):
    torch.manual_seed(12)
    family = case.split("_2")[0].replace("_proj", "")
    extra = {"proj_size": 2} if case == "lstm_proj" else {"num_layers": 2, "bidirectional": True} \
        if "2layers" in case else {}
    ours, theirs = layer_pair(family, {}, engine, dtype=torch.float32, **extra)
    x = torch.randn(T, B, I).to(input_dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, expected = outputs(ours(x)), outputs(theirs(x))
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == b.dtype, f"{case}: rnnkit returns {a.dtype}, torch.nn {b.dtype}"
        assert_close(a.to(torch.bfloat16), b.to(torch.bfloat16), "output", case)  # bfloat16's tolerance
    loss = got[0].float().pow(2).sum()
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in ours.parameters())


@pytest.mark.parametrize("engine", ["auto", *ENGINES])
@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"])
def test_autocast_state_carried_in_the_low_dtype(name, engine):
    """A language model carries the state of one call into the next: under autocast that state is bfloat16
    and the next input (an embedding's output) float32. torch.nn casts both; so must rnnkit, with torch.nn's
    output dtype and values (found on a GPU: `rnnkit train lm --amp bf16` raised a dtype mismatch)."""
    torch.manual_seed(14)
    ours = getattr(rnnkit, name)(I, H, engine=engine)
    theirs = getattr(torch.nn, name)(I, H)
    theirs.load_state_dict(ours.state_dict())
    cell = name.endswith("Cell")
    x = torch.randn((B, I) if cell else (T, B, I))
    h = torch.randn((B, H) if cell else (1, B, H)).to(torch.bfloat16)
    hx = (h, h.clone()) if name.startswith("LSTM") else h
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, expected = ours(x, hx), theirs(x, hx)
    got, expected = (got, expected) if cell else (outputs(got), outputs(expected))
    got, expected = (got, expected) if isinstance(got, tuple) else ((got,), (expected,))
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == b.dtype, f"{name} on {engine}: rnnkit returns {a.dtype}, torch.nn {b.dtype}"
        assert_close(a.to(torch.bfloat16), b.to(torch.bfloat16), "output", name)


@pytest.mark.parametrize("engine", ["auto", *ENGINES])
@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16], ids=["f32_input", "bf16_input"])
@pytest.mark.parametrize("family", ["RNNCell", "LSTMCell", "GRUCell"])
def test_autocast_cpu_cells_match_torch(family, input_dtype, engine):
    torch.manual_seed(13)
    ours = getattr(rnnkit, family)(I, H, engine=engine)
    theirs = getattr(torch.nn, family)(I, H)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(B, I).to(input_dtype)
    hx = torch.randn(B, H).to(input_dtype)
    hx = (hx, hx.clone()) if family == "LSTMCell" else hx
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, expected = ours(x, hx), theirs(x, hx)
    got, expected = (got, expected) if isinstance(got, tuple) else ((got,), (expected,))
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == b.dtype, f"{family} on {engine}: rnnkit returns {a.dtype}, torch.nn {b.dtype}"
        assert_close(a.to(torch.bfloat16), b.to(torch.bfloat16), "output", family)


# ---------------------------------------------------------------- FLOP counting and meta tensors


@pytest.mark.parametrize("options", [{}, {"num_layers": 2, "bidirectional": True}, {"proj_size": 2}],
                         ids=["plain", "2layers_bidir", "proj"])
@pytest.mark.parametrize("family", FAMILIES)
def test_flop_counter_counts_what_torch_nn_counts(family, options):
    """FlopCounterMode sees each rnnkit operator whole and counts its registered formula: the forward's FLOPs equal
    torch.nn's (float64, where torch runs aten's loop of matrix products, which the mode counts; its float32 LSTM
    runs oneDNN, which the mode cannot see); the backward's are counted too."""
    from torch.utils.flop_counter import FlopCounterMode

    if "proj_size" in options and family != "lstm":
        pytest.skip("proj_size is an LSTM option")
    ours, theirs = layer_pair(family, options, "auto")
    x = inputs({})
    counts = []
    for module in (theirs, ours, ours.float()):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(x.to(next(module.parameters()).dtype))
        counts.append(counter.get_total_flops())
    assert counts[0] > 0 and counts == [counts[0]] * 3, counts
    with FlopCounterMode(display=False) as counter:
        ours.double()(x)[0].sum().backward()
    backward = sum(v for k, v in counter.get_flop_counts()["Global"].items() if "backward" in str(k))
    assert backward >= counts[0], (backward, counts[0])


@pytest.mark.parametrize("module", ["RNN", "LSTM", "GRU", "LSTM_proj_bidir", "RNNCell", "LSTMCell", "GRUCell",
                                    "ln_gru", "mingru"])
def test_meta_tensors_give_torch_nn_shapes(module):
    """A forward on the meta device (shape inference: init_empty_weights, FLOP estimates) gives torch.nn's shapes."""
    build = {"RNN": lambda ns: ns.RNN(I, H, 2), "LSTM": lambda ns: ns.LSTM(I, H, batch_first=True),
             "GRU": lambda ns: ns.GRU(I, H), "LSTM_proj_bidir": lambda ns: ns.LSTM(I, H, proj_size=2, bidirectional=True),
             "RNNCell": lambda ns: ns.RNNCell(I, H), "LSTMCell": lambda ns: ns.LSTMCell(I, H),
             "GRUCell": lambda ns: ns.GRUCell(I, H), "ln_gru": lambda ns: rnnkit.GRU(I, H, layer_norm=True),
             "mingru": lambda ns: rnnkit.MinGRU(I, H)}[module]
    x = torch.randn(B, I) if module.endswith("Cell") else torch.randn(T, B, I)
    twin = torch.nn if module in ("RNN", "LSTM", "GRU", "LSTM_proj_bidir") or module.endswith("Cell") else rnnkit
    with torch.device("meta"):
        ours = build(rnnkit)
    want = [t.shape for t in torch.utils._pytree.tree_leaves(build(twin)(x))]
    got = torch.utils._pytree.tree_leaves(ours(x.to("meta")))
    assert all(t.is_meta for t in got) and [t.shape for t in got] == want
