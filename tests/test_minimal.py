"""minGRU and minLSTM (rnnkit.engines.minimal, rnnkit.nn.minimal): the equivalence chain.

1. The reference engine's log-space scan and hand-derived backward scan == autograd on the sequential
   recurrence written here from the equations (float64 and float32, every output and gradient, random
   upstream gradients), and float64 gradcheck / one gradgradcheck of variant_ops.run.
2. cpu (Numba) and triton (under TRITON_INTERPRET=1) == reference, with NaN-poisoned kernel buffers.
3. The layers: every input form and option runs and backpropagates, torch.compile(fullgraph=True) has no
   graph break, step() == the whole-sequence call, and a T=2000 float32 sequence stays finite and
   equals the sequential loop (the stability the log-space form needs float64 for; see reference.py).
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # the triton engine on CPU tensors (see test_triton_engine.py)

import pytest  # noqa: E402
import torch  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402

from rnnkit.engines import variant_ops  # noqa: E402
from rnnkit.engines.minimal import cpu  # noqa: E402
from rnnkit.nn.minimal import MinGRU, MinLSTM  # noqa: E402
from rnnkit.testing import assert_close  # noqa: E402

CONFIGS = {"mingru": 2, "minlstm": 3}


# ---------------------------------------------------------------- the equations, written independently


def g(x):
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def loop(config, xp, batch_sizes, h0, reverse):
    """The paper's equations as a sequential loop over packed rows, for autograd. (out (N, H), h_n (B, H))"""
    hidden = h0.shape[1]
    offsets = [sum(batch_sizes[:t]) for t in range(len(batch_sizes))]
    h = list(h0.unbind(0))
    out = [None] * xp.shape[0]
    order = range(len(batch_sizes) - 1, -1, -1) if reverse else range(len(batch_sizes))
    for t in order:
        for b in range(batch_sizes[t]):
            k = xp[offsets[t] + b]
            if config == "mingru":
                z = torch.sigmoid(k[:hidden])
                h[b] = (1 - z) * h[b] + z * g(k[hidden:])
            else:
                f, i = torch.sigmoid(k[:hidden]), torch.sigmoid(k[hidden:2 * hidden])
                h[b] = f / (f + i) * h[b] + i / (f + i) * g(k[2 * hidden:])
            out[offsets[t] + b] = h[b]
    return torch.stack(out), torch.stack(h)


PACKINGS = {
    "T1": (3,),
    "padded_T5": (3,) * 5,
    "packed_unsorted_T6": tuple(pack_padded_sequence(torch.zeros(6, 4, 1), torch.tensor([6, 2, 4, 1]),
                                                     enforce_sorted=False).batch_sizes.tolist()),
    "B1_T4": (1,) * 4,
}


def inputs(config, batch_sizes, hidden, dtype, seed=0):
    torch.manual_seed(seed)
    xp = (2 * torch.randn(sum(batch_sizes), CONFIGS[config] * hidden, dtype=dtype)).requires_grad_()
    h0 = torch.randn(batch_sizes[0], hidden, dtype=dtype).requires_grad_()  # both signs
    return xp, h0


def run_with_grads(fn, xp, h0, seed=1):
    out, h_n = fn(xp, h0)
    torch.manual_seed(seed)
    # drawn in float32 whatever the dtype, so a float32 run and its float64 ground truth get the same numbers
    d_out, d_h_n = (torch.randn(t.shape).to(t.dtype) for t in (out, h_n))
    dxp, dh0 = torch.autograd.grad([out, h_n], [xp, h0], [d_out, d_h_n])
    return out, h_n, dxp, dh0


def operator(engine, config, batch_sizes, reverse):
    def fn(xp, h0):
        out, (h_n,) = variant_ops.run("minimal", engine, config, xp, batch_sizes, [h0], [], [], reverse)
        return out, h_n
    return fn


def assert_all_close(actual, expected, what):
    for a, e, name, kind in zip(actual, expected, ("out", "h_n", "dxp", "dh0"), ("output", "output", "grad", "grad"),
                                strict=True):
        assert_close(a, e, kind, f"{what} {name}")


# ---------------------------------------------------------------- 1. reference == the equations


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("hidden", [4, 5], ids=["H4", "H5"])
@pytest.mark.parametrize("packing", PACKINGS)
@pytest.mark.parametrize("config", CONFIGS)
def test_reference_scan_equals_the_loop(config, packing, hidden, reverse, dtype):
    batch_sizes = PACKINGS[packing]
    xp, h0 = inputs(config, batch_sizes, hidden, dtype)
    expected = run_with_grads(lambda a, b: loop(config, a, batch_sizes, b, reverse), xp, h0)
    actual = run_with_grads(operator("reference", config, batch_sizes, reverse), xp, h0)
    assert_all_close(actual, expected, f"reference {config}")


@pytest.mark.parametrize("engine", ["reference", "cpu"])
@pytest.mark.parametrize("config", CONFIGS)
def test_gradcheck_float64(config, engine):
    batch_sizes = PACKINGS["packed_unsorted_T6"]
    xp, h0 = inputs(config, batch_sizes, 3, torch.float64)
    for reverse in (False, True):
        fn = operator(engine, config, batch_sizes, reverse)
        assert torch.autograd.gradcheck(fn, (xp, h0))


def test_gradgradcheck_float64():
    batch_sizes = (2, 2, 1)
    xp, h0 = inputs("minlstm", batch_sizes, 2, torch.float64)
    assert torch.autograd.gradgradcheck(operator("cpu", "minlstm", batch_sizes, False), (xp, h0))


@pytest.mark.parametrize("config", CONFIGS)
def test_extreme_gates(config):
    """Gate logits up to +-60: a and f, i round to 0 or 1 in float32. The reference stays finite and equals the
    loop in float64; cpu (whose minLSTM redoes such units in the stable form) and triton equal the reference."""
    batch_sizes = (2,) * 4
    xp, h0 = inputs(config, batch_sizes, 3, torch.float64)
    with torch.no_grad():
        xp.mul_(15.0)
    expected = run_with_grads(lambda a, b: loop(config, a, batch_sizes, b, False), xp, h0)
    assert_all_close(run_with_grads(operator("reference", config, batch_sizes, False), xp, h0), expected, "reference")
    xp32, h032 = (t.detach().float().requires_grad_() for t in (xp, h0))
    expected = run_with_grads(operator("reference", config, batch_sizes, False), xp32, h032)
    engines = ["cpu"] + (["triton"] if triton_available() else [])
    for engine in engines:
        actual = run_with_grads(operator(engine, config, batch_sizes, False), xp32, h032)
        assert_all_close(actual, expected, f"{engine} extreme")


# ---------------------------------------------------------------- 2. every engine == reference


@pytest.fixture
def poison(monkeypatch):
    """Kernel output buffers start as NaN, so an element a kernel forgets to write fails the comparison."""
    from rnnkit.engines.minimal import triton as tri
    monkeypatch.setattr(cpu, "empty", lambda like, *shape: torch.full(shape, float("nan"), dtype=like.dtype))
    monkeypatch.setattr(tri, "empty", lambda like, *shape, dtype=None:
                        torch.full(shape, float("nan"), dtype=dtype or like.dtype))


@pytest.mark.usefixtures("poison")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("packing", PACKINGS)
@pytest.mark.parametrize("config", CONFIGS)
def test_cpu_equals_reference(config, packing, reverse, dtype):
    batch_sizes = PACKINGS[packing]
    xp, h0 = inputs(config, batch_sizes, 7, dtype)
    expected = run_with_grads(operator("reference", config, batch_sizes, reverse), xp, h0)
    assert_all_close(run_with_grads(operator("cpu", config, batch_sizes, reverse), xp, h0), expected, "cpu")


@pytest.mark.usefixtures("poison")
@pytest.mark.parametrize("config", CONFIGS)
def test_cpu_bfloat16_runs_the_float32_loop(config):
    batch_sizes = PACKINGS["packed_unsorted_T6"]
    xp, h0 = (t.detach().bfloat16().requires_grad_() for t in inputs(config, batch_sizes, 5, torch.float32))
    expected = run_with_grads(operator("reference", config, batch_sizes, True), xp, h0)
    assert_all_close(run_with_grads(operator("cpu", config, batch_sizes, True), xp, h0), expected, "cpu bf16")


def triton_available() -> bool:
    try:
        from rnnkit.engines.minimal import triton as tri
    except ImportError:
        return False
    return tri.why_not(torch.zeros(1)) is None


def triton_or_skip():
    if not triton_available():
        pytest.skip("the triton engine cannot run CPU tensors here (no triton, or TRITON_INTERPRET unset)")
    from rnnkit.engines.minimal import triton as tri
    return tri


@pytest.mark.usefixtures("poison")
@pytest.mark.parametrize("blocks", [(64, 32), (2, 4)], ids=["one_chunk", "chunks_T2_H4"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("packing", ["T1", "padded_T5", "packed_unsorted_T6"])
@pytest.mark.parametrize("config", CONFIGS)
def test_triton_equals_reference(config, packing, reverse, blocks, monkeypatch):
    """Under the interpreter; small blocks make several time chunks (the carried state) and unit blocks."""
    tri = triton_or_skip()
    monkeypatch.setattr(tri, "BLOCK_T", blocks[0])
    monkeypatch.setattr(tri, "BLOCK_H", blocks[1])
    batch_sizes = PACKINGS[packing]
    xp, h0 = inputs(config, batch_sizes, 5, torch.float32)
    expected = run_with_grads(operator("reference", config, batch_sizes, reverse), xp, h0)
    assert_all_close(run_with_grads(operator("triton", config, batch_sizes, reverse), xp, h0), expected, "triton")


@pytest.mark.parametrize("engine", ["reference", "cpu", "triton"])
@pytest.mark.parametrize("config", CONFIGS)
def test_long_sequence_float32_is_stable(config, engine):
    """T = 2000 in float32: finite, and equal to the sequential loop run in float64 (to float32's tolerance)."""
    if engine == "triton":
        triton_or_skip()
    num_steps, batch, hidden = (2000, 2, 3) if engine != "triton" else (300, 1, 2)  # the interpreter is slow
    batch_sizes = (batch,) * num_steps
    xp, h0 = inputs(config, batch_sizes, hidden, torch.float32)
    expected = [t.float() for t in run_with_grads(
        lambda a, b: reference_sequential(config, a, batch, b), xp.detach().double().requires_grad_(),
        h0.detach().double().requires_grad_())]
    actual = run_with_grads(operator(engine, config, batch_sizes, False), xp, h0)
    assert_all_close(actual, expected, f"{engine} T={num_steps}")


def reference_sequential(config, xp, batch, h0):
    """The loop above on a padded batch, vectorised over the batch (the per-row loop is slow at T = 2000)."""
    hidden, h, outs = h0.shape[1], h0, []
    for k in xp.split(batch):
        if config == "mingru":
            z = torch.sigmoid(k[:, :hidden])
            h = (1 - z) * h + z * g(k[:, hidden:])
        else:
            f, i = torch.sigmoid(k[:, :hidden]), torch.sigmoid(k[:, hidden:2 * hidden])
            h = f / (f + i) * h + i / (f + i) * g(k[:, 2 * hidden:])
        outs.append(h)
    return torch.cat(outs), h


# ---------------------------------------------------------------- 3. the layers


LAYERS = {"mingru": MinGRU, "minlstm": MinLSTM}


@pytest.mark.parametrize("engine", ["reference", "cpu", "auto"])
@pytest.mark.parametrize("config", CONFIGS)
def test_layer_options_run_and_backprop(config, engine):
    torch.manual_seed(3)
    cls = LAYERS[config]
    x = torch.randn(5, 3, 4)
    reference_layer = cls(4, 6, num_layers=2, bidirectional=True, engine="reference")
    layer = cls(4, 6, num_layers=2, bidirectional=True, engine=engine)
    layer.load_state_dict(reference_layer.state_dict())
    h0 = torch.randn(4, 3, 6)
    for inp, hx in ((x, h0), (pack_padded_sequence(x, torch.tensor([5, 2, 4]), enforce_sorted=False), h0),
                    (x[:, 0], h0[:, 0])):
        results = []
        for m in (layer, reference_layer):
            m.zero_grad()
            out, h_n = m(inp, hx)
            data = out.data if hasattr(out, "batch_sizes") else out
            torch.manual_seed(4)
            (data * torch.randn_like(data)).sum().backward()
            results.append((data, h_n, [p.grad for p in m.parameters()]))
        (out, h_n, grads), (e_out, e_h_n, e_grads) = results
        assert_close(out, e_out, "output", "out")
        assert_close(h_n, e_h_n, "output", "h_n")
        for a, e in zip(grads, e_grads, strict=True):
            assert_close(a, e, "grad", "parameter")
    lengths = torch.tensor([5, 2, 4])
    with_lengths, _ = layer(x, lengths=lengths)
    packed, _ = layer(pack_padded_sequence(x, lengths, enforce_sorted=False))
    expected = torch.nn.utils.rnn.pad_packed_sequence(packed)[0]
    assert_close(with_lengths[:expected.shape[0]], expected, "output", "lengths=")
    bf = cls(4, 6, batch_first=True, dropout=0.5, num_layers=2, engine=engine).train()
    out, h_n = bf(x.transpose(0, 1))
    assert out.shape == (3, 5, 6) and h_n.shape == (2, 3, 6)
    out.sum().backward()
    assert all(p.grad is not None for p in bf.parameters())


@pytest.mark.parametrize("config", CONFIGS)
def test_layer_parameters(config):
    layer = LAYERS[config](4, 6, num_layers=2, bidirectional=True)
    shapes = {n: tuple(p.shape) for n, p in layer.named_parameters()}
    g = CONFIGS[config] * 6
    assert shapes == {"weight_ih_l0": (g, 4), "bias_ih_l0": (g,), "weight_ih_l0_reverse": (g, 4),
                      "bias_ih_l0_reverse": (g,), "weight_ih_l1": (g, 12), "bias_ih_l1": (g,),
                      "weight_ih_l1_reverse": (g, 12), "bias_ih_l1_reverse": (g,)}
    bound = 6 ** -0.5
    assert all(p.abs().max() <= bound for p in layer.parameters())
    assert set(dict(LAYERS[config](4, 6, bias=False).named_parameters())) == {"weight_ih_l0"}


@pytest.mark.parametrize("config", CONFIGS)
def test_step_equals_whole_sequence(config):
    torch.manual_seed(5)
    layer = LAYERS[config](4, 5, num_layers=2, engine="cpu")
    x, h0 = torch.randn(6, 3, 4), torch.randn(2, 3, 5)
    out, h_n = layer(x, h0)
    h, ys = h0, []
    with torch.no_grad():
        for x_t in x:
            y, h = layer.step(x_t, h)
            ys.append(y)
    assert_close(torch.stack(ys), out.detach(), "output", "step outputs")
    assert_close(h, h_n.detach(), "output", "step state")
    y, h1 = layer.step(x[0, 0])  # unbatched, from zeros
    assert y.shape == (5,) and h1.shape == (2, 5)
    single = LAYERS[config](4, 5, batch_first=True)
    out, h_n = single(x.transpose(0, 1))
    y, h = single.step(x[0], h_n[0])  # one layer: h may be (B, H), and comes back so
    assert y.shape == (3, 5) and h.shape == (3, 5)
    assert_close(y, single(x[:1].transpose(0, 1), h_n)[0][:, 0], "output", "step from h_n")
    with pytest.raises(ValueError, match="bidirectional"):
        LAYERS[config](4, 5, bidirectional=True).step(x[0])


@pytest.mark.parametrize("config", CONFIGS)
def test_compile_fullgraph_without_breaks(config):
    torch.manual_seed(6)
    torch._dynamo.reset()
    layer = LAYERS[config](4, 5, num_layers=2, batch_first=True, engine="cpu")
    x = torch.randn(2, 3, 4)
    explanation = torch._dynamo.explain(layer)(x)
    assert explanation.graph_break_count == 0, [str(r.reason) for r in explanation.break_reasons]
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    y, h = compiled(x)
    e_y, e_h = layer(x)
    assert_close(y, e_y, "output", "compiled out")
    upstream = torch.randn_like(y)
    params = list(layer.parameters())
    for a, b in zip(torch.autograd.grad(y, params, upstream), torch.autograd.grad(e_y, params, upstream), strict=True):
        assert_close(a, b, "grad", "compiled")


COMPILE_FOR_H100 = """
import inspect
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from rnnkit.engines.minimal import triton_kernels as K
count = 0
for dtype in ("fp32", "bf16"):
    for fn in (K.minimal_forward, K.minimal_backward):
        for minlstm in (False, True):
            constexprs = dict(H=256, MINLSTM=minlstm, BLOCK_T=64, BLOCK_H=32)
            names = list(inspect.signature(fn.fn).parameters)
            sig = {n: "constexpr" if n in constexprs else "i32" if n in ("T", "B") else "*i32" if n == "rows_ptr"
                   else f"*{dtype}" for n in names}
            consts = {(names.index(k),): v for k, v in constexprs.items()}
            triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                           options={"num_warps": 4})
            count += 1
print(f"compiled {count} kernel variants for sm_90")
"""


def test_triton_kernels_compile_for_h100():
    """What the interpreter cannot show: the kernels compile for sm_90 (fresh process, no interpreter)."""
    import subprocess
    import sys
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    result = subprocess.run([sys.executable, "-c", COMPILE_FOR_H100], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "compiled 8" in result.stdout
