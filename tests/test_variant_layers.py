"""Every layer of a cell torch.nn lacks, where torch.nn's layers go: torch.compile, torch.export, double
backward, torch.func, state_dicts, and engines named on the layer.

The math of each family is tested in its own module (test_lstm_plus, test_gru_plus, test_minimal,
test_slstm); here one small layer per kind goes through the PyTorch stack.
"""

from __future__ import annotations

import pytest
import torch

import rnnkit
from rnnkit.testing import assert_close

LAYERS = {
    "ln_peephole_lstm": lambda: rnnkit.LSTM(3, 4, num_layers=2, layer_norm=True, peephole=True),
    "ln_gru": lambda: rnnkit.GRU(3, 4, bidirectional=True, layer_norm=True),
    "mingru": lambda: rnnkit.MinGRU(3, 4, num_layers=2),
    "minlstm": lambda: rnnkit.MinLSTM(3, 4, bidirectional=True),
    "slstm": lambda: rnnkit.SLSTM(3, 4, num_heads=2),
}


def first(output):
    return output[0]


def make(kind: str, dtype=torch.float32):
    torch.manual_seed(0)
    return LAYERS[kind]().to(dtype).eval()


@pytest.mark.parametrize("kind", LAYERS)
def test_compiles_to_one_graph(kind):
    layer, x = make(kind), torch.randn(5, 2, 3)
    assert torch._dynamo.explain(layer)(x).graph_break_count == 0
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    assert_close(compiled(x)[0], layer(x)[0])


@pytest.mark.parametrize("kind", LAYERS)
def test_exports_with_dynamic_batch_and_time(kind):
    layer, x = make(kind), torch.randn(5, 2, 3)
    dims = {0: torch.export.Dim("T", min=2, max=100), 1: torch.export.Dim("B", min=2, max=64)}
    program = torch.export.export(layer, (x,), dynamic_shapes=(dims,))
    y = torch.randn(9, 3, 3)
    assert_close(program.module()(y)[0], layer(y)[0])


@pytest.mark.parametrize("kind", LAYERS)
def test_double_backward(kind):
    layer = make(kind, torch.float64)
    x = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradgradcheck(lambda x: layer(x)[0], (x,))


@pytest.mark.parametrize("kind", LAYERS)
def test_a_batch_of_upstream_gradients(kind):
    """is_grads_batched=True (gradcheck's default batched check): each slice equals its own backward."""
    layer = make(kind, torch.float64)
    x = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    out = layer(x)[0]
    upstream = torch.randn(4, *out.shape, dtype=torch.float64)
    wrt = [x, *layer.parameters()]
    batched = torch.autograd.grad(out, wrt, upstream, is_grads_batched=True, retain_graph=True)
    for k in range(len(upstream)):
        for got, want in zip(batched, torch.autograd.grad(out, wrt, upstream[k], retain_graph=True), strict=True):
            assert_close(got[k], want, "grad", f"{kind} slice {k}")
    torch.autograd.gradcheck(lambda x: layer(x)[0], (x,), check_batched_grad=True)


@pytest.mark.parametrize("kind", LAYERS)
def test_forward_mode_ad_equals_a_jvp_by_double_backward(kind):
    """torch.autograd.forward_ad dual tensors: the same Jacobian-vector product as torch.autograd.functional.jvp."""
    import torch.autograd.forward_ad as fwad

    layer = make(kind, torch.float64)
    x, tangent = torch.randn(3, 2, 3, dtype=torch.float64), torch.randn(3, 2, 3, dtype=torch.float64)
    with fwad.dual_level():
        got = fwad.unpack_dual(layer(fwad.make_dual(x, tangent))[0]).tangent
    _, want = torch.autograd.functional.jvp(lambda v: layer(v)[0], x, tangent)
    assert_close(got, want, "grad", kind)


@pytest.mark.parametrize("kind", LAYERS)
def test_torch_func_grad_equals_autograd(kind):
    layer = make(kind, torch.float64)
    params = dict(layer.named_parameters())
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    g = torch.randn(4, 2, layer.hidden_size * layer.num_directions, dtype=torch.float64)

    def loss(p):
        return (torch.func.functional_call(layer, p, (x,))[0] * g).sum()

    grads = torch.func.grad(loss)(params)
    want = torch.autograd.grad(loss(params), list(params.values()))
    for name, w in zip(params, want, strict=True):
        assert_close(grads[name], w, kind="grad")


@pytest.mark.parametrize("kind", LAYERS)
def test_state_dict_round_trips_strictly(kind):
    a, b = make(kind), LAYERS[kind]()
    b.load_state_dict(a.state_dict(), strict=True)
    x = torch.randn(4, 2, 3)
    assert torch.equal(a(x)[0], b.eval()(x)[0])
    assert all("." not in name for name in a.state_dict())  # plain names, no submodules


@pytest.mark.parametrize("engine", ["reference", "cpu", "aten"])
@pytest.mark.parametrize("kind", LAYERS)
def test_every_cpu_engine_name_runs(kind, engine):
    """aten (torch's fused LSTM) has no such cells: it hands them to cpu, as it does any call it cannot run."""
    layer = make(kind)
    x = torch.randn(4, 2, 3)
    expected = layer(x)[0]
    layer.engine = engine
    assert_close(layer(x)[0], expected)


def test_an_engine_that_cannot_run_raises():
    layer = rnnkit.MinGRU(3, 4, engine="triton")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match="engine 'triton' cannot run minimal cells here"):
        import os
        if os.environ.get("TRITON_INTERPRET") == "1":  # the interpreter takes CPU tensors: ask for float64 instead
            layer.double()(torch.randn(3, 2, 3, dtype=torch.float64))
        else:
            layer(torch.randn(3, 2, 3))


@pytest.mark.parametrize("kind", LAYERS)
def test_a_saved_program_loads_in_a_new_process(kind, tmp_path):
    """`import rnnkit.engines` registers the families' operators too, so a saved program loads and runs."""
    import subprocess
    import sys

    layer, x = make(kind), torch.randn(5, 2, 3)
    program = torch.export.export(layer, (x,))
    torch.export.save(program, tmp_path / "layer.pt2")
    torch.save({"x": x, "out": layer(x)[0]}, tmp_path / "io.pt")
    code = (f"import torch, rnnkit.engines; io = torch.load({str(tmp_path / 'io.pt')!r}); "
            f"m = torch.export.load({str(tmp_path / 'layer.pt2')!r}).module(); "
            "assert torch.allclose(m(io['x'])[0], io['out'], atol=1e-6), 'different output'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_onnx_export_of_these_cells_says_what_to_do_instead(tmp_path):
    pytest.importorskip("onnxscript")
    from rnnkit.train.export import ExportError, export_and_check

    model = rnnkit.LSTM(3, 4, layer_norm=True).eval()
    with pytest.raises(ExportError, match="ONNX has no operator for the cells of LSTM.*--format pt2"):
        export_and_check(model, (torch.randn(5, 2, 3),), "onnx", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_the_input_projection_and_its_gradients_equal_f_linear(bias):
    """variant_ops.input_projection (the CPU engine's products, oneDNN where faster) against F.linear,
    including a second derivative."""
    from rnnkit.engines.variant_ops import input_projection

    torch.manual_seed(3)
    x = torch.randn(700, 96, requires_grad=True)
    w = torch.randn(128, 96, requires_grad=True)
    b = torch.randn(128, requires_grad=True) if bias else None
    inputs = [t for t in (x, w, b) if t is not None]
    g = torch.randn(700, 128)
    got, want = input_projection(x, w, b), torch.nn.functional.linear(x, w, b)
    assert_close(got, want)
    first = [torch.autograd.grad(out, inputs, g, create_graph=True) for out in (got, want)]
    for a, e in zip(*first, strict=True):
        assert_close(a, e, kind="grad")
    # the second derivative through the first (create_graph): w's gradient reaches x
    weights = torch.randn(128, 96)
    second = [torch.autograd.grad((grads[1] * weights).sum(), x)[0] for grads in first]
    assert_close(second[0], second[1], kind="grad")
    x64 = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    w64 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradgradcheck(lambda x, w: input_projection(x, w), (x64, w64))


@pytest.mark.parametrize("kind", LAYERS)
def test_autocast_takes_a_state_carried_in_the_low_dtype(kind):
    """A state from an earlier call under autocast may be bfloat16: it is cast to the input's dtype, as the
    stock layers cast it to theirs, and the result equals the call given that state in float32."""
    layer, x = make(kind), torch.randn(5, 2, 3)
    _, state = layer(x)
    low = tuple(s.to(torch.bfloat16) for s in state) if isinstance(state, tuple) else state.to(torch.bfloat16)
    high = tuple(s.float() for s in low) if isinstance(low, tuple) else low.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x, low)[0]
    assert out.dtype == torch.float32
    assert_close(out, layer(x, high)[0])


@pytest.mark.parametrize("kind", LAYERS)
def test_autocast_runs_them_in_the_input_dtype(kind):
    """Autocast has no policy for these cells: they run in the input's dtype (as torch.nn's GRU on CPU), never
    half of their ops in bfloat16."""
    layer, x = make(kind), torch.randn(5, 2, 3)
    expected = layer(x)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)[0]
    assert out.dtype == torch.float32
    assert_close(out, expected)
