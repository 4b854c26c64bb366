"""The sLSTM family (rnnkit.cells.slstm, rnnkit.engines.slstm, rnnkit.nn.slstm): the equivalence chain.

(1) The reference engine's hand-derived BPTT == autograd on the equations written below in plain torch
    ops (independent of the package's code): float64 gradcheck of the operator, float32 equality of
    every output and every gradient under random upstream gradients on out and all four final states.
(2) The cpu engine (Numba) and the triton engine (under TRITON_INTERPRET=1) == the reference engine,
    with their output buffers poisoned with NaN.
(3) The layer rnnkit.nn.SLSTM runs and backpropagates in every input form.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is first imported (see tests/test_triton_engine.py)

import importlib  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402

from rnnkit.engines import variant_ops  # noqa: E402
from rnnkit.engines.slstm import cpu as slstm_cpu  # noqa: E402
from rnnkit.engines.slstm import triton as slstm_triton  # noqa: E402
from rnnkit.testing import assert_close  # noqa: E402

FAMILY = "slstm"
STATE_NAMES = ("h", "c", "n", "m")


# ---------------------------------------------------------------- the equations, written here


def block_product(h, r, heads):
    """hr[:, q*H + k*dh + u] = sum_v r[q*H + k*dh + u, v] h[:, k*dh + v], head by head and gate by gate."""
    hidden = h.shape[1]
    dh = hidden // heads
    parts = [[None] * heads for _ in range(4)]
    for q in range(4):
        for k in range(heads):
            rows = r[q * hidden + k * dh:q * hidden + (k + 1) * dh]  # (dh, dh)
            parts[q][k] = h[:, k * dh:(k + 1) * dh] @ rows.t()
    return torch.cat([torch.cat(p, dim=1) for p in parts], dim=1)


def equations(xp, batch_sizes, states, r, heads, reverse):
    """xLSTM's sLSTM over packed rows; rows beyond batch_sizes[t] keep their state. (out, [h, c, n, m])"""
    h, c, n, m = states
    offsets = [sum(batch_sizes[:t]) for t in range(len(batch_sizes))]
    outs = [None] * len(batch_sizes)
    order = range(len(batch_sizes) - 1, -1, -1) if reverse else range(len(batch_sizes))
    for t in order:
        bs = batch_sizes[t]
        a = xp[offsets[t]:offsets[t] + bs] + block_product(h[:bs], r, heads)
        a_i, a_f, a_z, a_o = a.chunk(4, dim=1)
        lf = F.logsigmoid(a_f)
        m_new = torch.maximum(lf + m[:bs], a_i)
        i = torch.exp(a_i - m_new)
        f = torch.exp(lf + m[:bs] - m_new)
        c_new = f * c[:bs] + i * torch.tanh(a_z)
        n_new = f * n[:bs] + i
        h_new = torch.sigmoid(a_o) * c_new / n_new
        h, c, n, m = (torch.cat([new, old[bs:]]) for new, old in ((h_new, h), (c_new, c), (n_new, n), (m_new, m)))
        outs[t] = h_new
    return torch.cat(outs), [h, c, n, m]


# ---------------------------------------------------------------- inputs


PACKINGS = {
    "T1": (3,),
    "padded_T4": (2,) * 4,
    "B1_T5": (1,) * 5,
}
SHAPES = {"H4-K1": (4, 1), "H6-K2": (6, 2), "H10-K2": (10, 2)}  # H10-K2: dh = 5, odd


def unsorted_packing(lengths=(5, 2, 4, 1)):
    """batch_sizes of pack_padded_sequence(enforce_sorted=False) for unsorted lengths: (4, 3, 2, 2, 1)."""
    packed = pack_padded_sequence(torch.zeros(max(lengths), len(lengths), 1), torch.tensor(lengths),
                                  enforce_sorted=False)
    return tuple(packed.batch_sizes.tolist())


PACKINGS["packed_unsorted"] = unsorted_packing()


def make_inputs(batch_sizes, hidden, heads, dtype=torch.float32, scale=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, s=1.0, shift=0.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * s + shift).to(dtype).requires_grad_()

    b, n = batch_sizes[0], sum(batch_sizes)
    xp = rnd(n, 4 * hidden, s=scale)
    states = [rnd(b, hidden, s=0.5), rnd(b, hidden), (torch.rand(b, hidden, generator=gen, dtype=torch.float64)
                                                     + 0.5).to(dtype).requires_grad_(), rnd(b, hidden, s=0.5)]
    r = rnd(4 * hidden, hidden // heads, s=0.5)
    return xp, states, r


def upstream(out, states_n, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype) for t in (out, *states_n)]


def run(engine, xp, batch_sizes, states, r, heads, reverse):
    return variant_ops.run(FAMILY, engine, f"heads={heads}", xp, batch_sizes, states, [r], [], reverse)


def outputs_and_grads(fn, xp, states, r):
    out, states_n = fn()
    results = [out, *states_n]
    grads = torch.autograd.grad(results, [xp, *states, r], upstream(out, states_n))
    return results, grads


def assert_all_close(actual, expected, label):
    (out_a, grads_a), (out_e, grads_e) = actual, expected
    for name, a, e in zip(("out", *(f"{s}_n" for s in STATE_NAMES)), out_a, out_e, strict=True):
        assert_close(a, e, "output", f"{label} {name}")
    for name, a, e in zip(("xp", *(f"{s}0" for s in STATE_NAMES), "r"), grads_a, grads_e, strict=True):
        assert_close(a, e, "grad", f"{label} d{name}")


# ---------------------------------------------------------------- (1) reference == the equations


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("packing", PACKINGS)
def test_reference_matches_equations(packing, shape, reverse):
    batch_sizes, (hidden, heads) = PACKINGS[packing], SHAPES[shape]
    xp, states, r = make_inputs(batch_sizes, hidden, heads)
    got = outputs_and_grads(lambda: run("reference", xp, batch_sizes, states, r, heads, reverse), xp, states, r)
    want = outputs_and_grads(lambda: equations(xp, batch_sizes, states, r, heads, reverse), xp, states, r)
    assert_all_close(got, want, f"{packing} {shape}")


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_reference_gradcheck_float64(reverse):
    batch_sizes, hidden, heads = PACKINGS["packed_unsorted"], 4, 2
    xp, states, r = make_inputs(batch_sizes, hidden, heads, torch.float64)

    def fn(xp, h, c, n, m, r):
        out, states_n = run("reference", xp, batch_sizes, [h, c, n, m], r, heads, reverse)
        return out, *states_n

    assert torch.autograd.gradcheck(fn, (xp, *states, r))


def test_tie_in_the_max_splits_the_gradient_in_halves():
    """Where lf + m == i~ exactly, m' = max(.) sends half its gradient to each side, as torch.maximum."""
    hidden = 2
    xp = torch.zeros(1, 4 * hidden, dtype=torch.float64, requires_grad=True)
    h0 = torch.zeros(1, hidden, dtype=torch.float64, requires_grad=True)
    m0 = torch.full((1, hidden), -F.logsigmoid(torch.tensor(0.0, dtype=torch.float64)).item(),
                    dtype=torch.float64, requires_grad=True)  # lf + m = 0 = i~
    c0, n0 = (torch.rand(1, hidden, dtype=torch.float64).add(0.5).requires_grad_() for _ in range(2))
    r = torch.randn(4 * hidden, hidden, dtype=torch.float64, requires_grad=True)
    states = [h0, c0, n0, m0]
    got = outputs_and_grads(lambda: run("reference", xp, (1,), states, r, 1, False), xp, states, r)
    want = outputs_and_grads(lambda: equations(xp, (1,), states, r, 1, False), xp, states, r)
    assert_all_close(got, want, "tie")


def test_gradgradcheck_once():
    batch_sizes, hidden, heads = (2, 1), 2, 1
    xp, states, r = make_inputs(batch_sizes, hidden, heads, torch.float64)

    def fn(xp, h, c, n, m, r):
        out, states_n = run("reference", xp, batch_sizes, [h, c, n, m], r, heads, False)
        return out, *states_n

    assert torch.autograd.gradgradcheck(fn, (xp, *states, r))


def test_large_preactivations_stay_finite():
    """xp scaled by 30: exp(i~) alone would overflow float32; the stabiliser keeps every gate <= 1."""
    batch_sizes, hidden, heads = (3,) * 6, 8, 2
    xp, states, r = make_inputs(batch_sizes, hidden, heads, scale=30.0)
    states = [torch.zeros_like(s).requires_grad_() for s in states]  # the layer's default: all zeros
    for engine in ("reference", "cpu"):
        (results, grads) = outputs_and_grads(lambda: run(engine, xp, batch_sizes, states, r, heads, False),
                                             xp, states, r)
        for t in (*results, *grads):
            assert torch.isfinite(t).all(), engine


def test_compile_fullgraph_no_graph_break():
    batch_sizes, hidden, heads = (2,) * 3, 4, 2
    xp, states, r = make_inputs(batch_sizes, hidden, heads)

    def fn(xp, h, c, n, m, r):
        out, states_n = variant_ops.run(FAMILY, "reference", "heads=2", xp, None, [h, c, n, m], [r], [], False)
        return out, *states_n

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    got = compiled(xp, *states, r)
    want = fn(xp, *states, r)
    for a, e in zip(got, want, strict=True):
        assert_close(a, e, "output", "compiled")


# ---------------------------------------------------------------- (2) the fast engines == reference


@pytest.fixture
def poison(monkeypatch):
    """Kernel output buffers start as NaN, so an element a kernel forgets to write fails the comparison."""
    nan = lambda like, *shape, dtype=None: torch.full(shape, float("nan"), dtype=dtype or like.dtype)  # noqa: E731
    monkeypatch.setattr(slstm_cpu, "empty", nan)
    monkeypatch.setattr(slstm_triton, "empty", nan)


def compare_with_reference(engine, packing, shape, reverse, dtype=torch.float32):
    batch_sizes, (hidden, heads) = PACKINGS[packing], SHAPES[shape]
    xp, states, r = make_inputs(batch_sizes, hidden, heads, dtype)
    got = outputs_and_grads(lambda: run(engine, xp, batch_sizes, states, r, heads, reverse), xp, states, r)
    want = outputs_and_grads(lambda: run("reference", xp, batch_sizes, states, r, heads, reverse), xp, states, r)
    assert_all_close(got, want, f"{engine} {packing} {shape}")


@pytest.mark.usefixtures("poison")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("packing", PACKINGS)
def test_cpu_matches_reference(packing, shape, reverse, dtype):
    compare_with_reference("cpu", packing, shape, reverse, dtype)


def interpreted() -> bool:
    """Whether the Triton kernels run under the interpreter in this process (the only way without a GPU)."""
    try:
        kernels = importlib.import_module("rnnkit.engines.triton_kernels")
    except ImportError:
        return False
    return kernels.INTERPRETED


needs_interpreter = pytest.mark.skipif(not interpreted(), reason="Triton is absent, or its kernels were decorated "
                                                                 "for the GPU (TRITON_INTERPRET is not 1)")


@needs_interpreter
@pytest.mark.usefixtures("poison")
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("packing", PACKINGS)
def test_triton_matches_reference(packing, shape, reverse):
    compare_with_reference("triton", packing, shape, reverse)


@needs_interpreter
@pytest.mark.usefixtures("poison")
def test_triton_several_row_tiles_and_column_tiles(monkeypatch):
    """B = 18 > 16 rows per program; dh = 5 with 4-unit column tiles: two tiles, the last one partial."""
    monkeypatch.setattr(slstm_triton, "MAX_BLOCK", 4)
    monkeypatch.setattr(slstm_triton, "pow2", lambda n: 4)
    PACKINGS["B18"] = (18, 17, 3)
    try:
        compare_with_reference("triton", "B18", "H10-K2", False)
    finally:
        del PACKINGS["B18"]


COMPILE_SCRIPT = '''
import inspect, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from rnnkit.engines.slstm import triton_kernels as K
count = 0
for fn in (K.slstm_forward, K.slstm_backward):
    for block, precision in ((16, "ieee"), (64, "tf32x3")):
        const = dict(REVERSE=True, PRECISION=precision, BLOCK_B=16, BLOCK_U=block, BLOCK_V=block)
        names = list(inspect.signature(fn.fn).parameters)
        sig = {n: "constexpr" if n in const else "i32" if n in ("T", "H", "DH") else
               "*i32" if n in ("sizes_ptr", "offsets_ptr") else "*fp32" for n in names}
        kernel = triton.compile(ASTSource(fn=fn, signature=sig, constexprs={(names.index(k),): v
                                                                           for k, v in const.items()}),
                                target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
        assert kernel.metadata.shared <= 232448, kernel.metadata.shared  # an H100/H200 block's limit
        count += 1
print(f"compiled {count}")
'''


def test_triton_kernels_compile_for_h100():
    """The interpreter misses what only the compiler rejects: compile both kernels for sm_90, no GPU needed."""
    pytest.importorskip("triton")
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    result = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "compiled 4" in result.stdout


# ---------------------------------------------------------------- (3) the layer


def layer_and_inputs(engine="auto", **kwargs):
    from rnnkit.nn.slstm import SLSTM
    torch.manual_seed(0)
    layer = SLSTM(3, 6, num_heads=2, engine=engine, **kwargs)
    return layer, torch.randn(4, 2, 3)


def random_hx(layer, batch, gen_seed=3):
    gen = torch.Generator().manual_seed(gen_seed)
    shape = (layer.num_layers * layer.num_directions, batch, layer.hidden_size)
    h0, c0, m0 = (torch.randn(shape, generator=gen) * 0.5 for _ in range(3))
    n0 = torch.rand(shape, generator=gen) + 0.5
    return tuple(s.requires_grad_() for s in (h0, c0, n0, m0))


@pytest.mark.parametrize("engine", ["reference", "auto"])
def test_layer_matches_equations(engine):
    """A bidirectional layer: each direction is the equations on xp = W_ih x + b_ih, states and gradients too."""
    layer, x = layer_and_inputs(engine, bidirectional=True)
    hx = random_hx(layer, 2)
    out, states_n = layer(x, hx)
    want_outs, want_states = [], [[], [], [], []]
    for d, suffix in enumerate(("", "_reverse")):
        xp = x.reshape(8, 3) @ getattr(layer, f"weight_ih_l0{suffix}").t() + getattr(layer, f"bias_ih_l0{suffix}")
        o, s = equations(xp, (2,) * 4, [h[d] for h in hx], getattr(layer, f"weight_hh_l0{suffix}"), 2, d == 1)
        want_outs.append(o.reshape(4, 2, 6))
        for acc, t in zip(want_states, s, strict=True):
            acc.append(t)
    want = [torch.cat(want_outs, dim=2), *(torch.stack(s) for s in want_states)]
    got = [out, *states_n]
    for a, e in zip(got, want, strict=True):
        assert_close(a, e, "output", "layer")
    leaves = [x.requires_grad_(), *hx, *layer.parameters()]
    g = upstream(got[0], got[1:])
    for a, e in zip(torch.autograd.grad(got, leaves, g, allow_unused=True),
                    torch.autograd.grad(want, leaves, g, allow_unused=True), strict=True):
        assert_close(a, e, "grad", "layer gradient")


LAYER_OPTIONS = {
    "two_layers_dropout": dict(num_layers=2, dropout=0.5),
    "bidirectional_two_layers": dict(num_layers=2, bidirectional=True),
    "batch_first": dict(batch_first=True),
    "no_bias": dict(bias=False),
}


@pytest.mark.parametrize("options", LAYER_OPTIONS)
def test_layer_options_run_and_backprop(options):
    layer, x = layer_and_inputs(**LAYER_OPTIONS[options])
    out, states = layer(x.transpose(0, 1) if layer.batch_first else x, random_hx(layer, 2))
    assert out.shape == ((2, 4) if layer.batch_first else (4, 2)) + (6 * layer.num_directions,)
    assert len(states) == 4 and all(s.shape == (layer.num_layers * layer.num_directions, 2, 6) for s in states)
    (out * torch.randn_like(out)).sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_layer_unbatched_equals_batch_of_one():
    layer, x = layer_and_inputs(bidirectional=True)
    hx = random_hx(layer, 1)
    out, states = layer(x[:, 0], tuple(s[:, 0] for s in hx))
    out1, states1 = layer(x[:, :1], hx)
    assert_close(out, out1[:, 0], "output", "unbatched")
    for a, b in zip(states, states1, strict=True):
        assert_close(a, b[:, 0], "output", "unbatched state")


def test_layer_packed_unsorted_equals_each_sequence_alone():
    from torch.nn.utils.rnn import pad_packed_sequence
    layer, _ = layer_and_inputs(bidirectional=True)
    lengths = torch.tensor([2, 5, 1, 4])
    x = torch.randn(5, 4, 3)
    hx = random_hx(layer, 4)
    out, states = layer(pack_padded_sequence(x, lengths, enforce_sorted=False), hx)
    padded, _ = pad_packed_sequence(out)
    for b, n in enumerate(lengths.tolist()):
        alone, alone_states = layer(x[:n, b:b + 1], tuple(s[:, b:b + 1] for s in hx))
        assert_close(padded[:n, b:b + 1], alone, "output", f"sequence {b}")
        for a, e in zip(states, alone_states, strict=True):
            assert_close(a[:, b:b + 1], e, "output", f"sequence {b} state")
    (padded * torch.randn_like(padded)).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


def test_layer_default_state_and_large_inputs_stay_finite():
    """hx=None starts from n = m = 0; inputs of size 30 push exp(i~) far beyond float32 without the stabiliser."""
    layer, x = layer_and_inputs(num_layers=2)
    out, states = layer(x * 30)
    (out * torch.randn_like(out)).sum().backward()
    assert all(torch.isfinite(t).all() for t in (out, *states, *(p.grad for p in layer.parameters())))


def test_layer_compiles_fullgraph():
    layer, x = layer_and_inputs()
    want, want_states = layer(x)  # eager first: registers the operator
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    out, states = compiled(x)
    for a, e in zip((out, *states), (want, *want_states), strict=True):
        assert_close(a, e, "output", "compiled layer")


@pytest.mark.parametrize("engine", ["reference", "cpu", "triton"])
def test_saved_shapes_declare_what_forward_saves(engine):
    """The operator's fake kernel (torch.compile, export) gives saved_shapes; the engine must save exactly that."""
    if engine == "triton" and not interpreted():
        pytest.skip("Triton kernels need the interpreter here")
    from rnnkit.engines import slstm as fam
    batch_sizes, hidden, heads = PACKINGS["packed_unsorted"], 6, 2
    xp, states, r = make_inputs(batch_sizes, hidden, heads)
    module = fam.ENGINES[engine]
    with torch.no_grad():
        _, _, saved = module.forward("heads=2", xp, batch_sizes, states, [r], [], False)
    declared = module.saved_shapes("heads=2", xp.shape[0], states, [r], xp.dtype)
    assert [(tuple(s.shape), s.dtype) for s in saved] == [(tuple(shape), dtype) for shape, dtype in declared]


def test_heads_that_do_not_fit_are_refused():
    from rnnkit.nn.slstm import SLSTM
    with pytest.raises(ValueError, match="must divide"):
        SLSTM(3, 6, num_heads=4)
    xp, states, r = make_inputs((2,), 6, 2)
    with pytest.raises(ValueError, match="heads=3"):
        run("reference", xp, (2,), states, r, 3, False)


def test_cpu_float32_exp_and_log1p_are_accurate():
    """The vectorisable exp and log1p of the float32 kernels, against libm in float64: far below float32's 6e-8."""
    import numpy as np
    from numba import njit

    from rnnkit.engines.slstm import cpu_kernels as K

    @njit
    def both(xs, e, out_exp, out_log):
        for i in range(xs.shape[0]):
            out_exp[i] = K.poly_exp(xs[i])
            out_log[i] = K.poly_log1p(e[i])

    xs = np.linspace(-100.0, 88.0, 20001)
    e = np.concatenate([np.linspace(0.0, 1.0, 10001), np.geomspace(1e-30, 1.0, 10000)])
    got_exp, got_log = np.empty_like(xs), np.empty_like(e)
    both(xs, e, got_exp, got_log)
    assert np.max(np.abs(got_exp / np.exp(xs) - 1)) < 1e-9
    assert np.max(np.abs(got_log - np.log1p(e)) / np.maximum(np.log1p(e), 1e-300)) < 1e-9
    special = np.array([np.nan, np.inf, -np.inf, 1000.0, -1000.0])
    out, _ = np.empty_like(special), np.empty_like(special)
    both(special, np.zeros_like(special), out, _)
    assert np.isnan(out[0]) and out[1] > 3.4e38 and out[2] == out[4] and out[4] < 1e-45 and out[3] == out[1]


def test_torch_func_grad_runs_the_plain_ops_recurrence():
    """Under torch.func the operator hands over to autograd_forward (plain ops): same values as the engines."""
    batch_sizes, hidden, heads = (2,) * 3, 4, 2
    xp, states, r = make_inputs(batch_sizes, hidden, heads)

    def loss(xp, r):
        out, states_n = variant_ops.run(FAMILY, "cpu", "heads=2", xp, batch_sizes, [s.detach() for s in states], [r],
                                        [], False)
        return (out * out).sum() + states_n[3].sum()

    got = torch.func.grad(loss, argnums=(0, 1))(xp.detach(), r.detach())
    want = torch.autograd.grad(loss(xp, r), [xp, r])
    for a, e in zip(got, want, strict=True):
        assert_close(a, e, "grad", "torch.func.grad")


def test_layer_step_equals_the_whole_sequence():
    layer, x = layer_and_inputs(num_layers=2)
    hx = random_hx(layer, 2)
    out, states = layer(x, hx)
    carried, ys = hx, []
    for t in range(x.shape[0]):
        y, carried = layer.step(x[t], carried)
        ys.append(y)
    assert_close(torch.stack(ys), out, "output", "stepped output")
    for a, e in zip(carried, states, strict=True):
        assert_close(a, e, "output", "stepped state")
    y, unbatched = layer.step(x[0, 0])
    assert y.shape == (6,) and all(s.shape == (2, 6) for s in unbatched)


@pytest.mark.parametrize("engine", ["cpu", "triton"])
def test_layer_engines_agree_with_reference(engine):
    """A bidirectional two-layer layer on packed unsorted input: every engine gives the reference's results."""
    from rnnkit.nn.slstm import SLSTM
    if engine == "triton" and not interpreted():
        pytest.skip("Triton kernels need the interpreter here")
    torch.manual_seed(0)
    layers = {e: SLSTM(3, 6, num_layers=2, bidirectional=True, num_heads=2, engine=e) for e in ("reference", engine)}
    layers[engine].load_state_dict(layers["reference"].state_dict())
    x = pack_padded_sequence(torch.randn(4, 3, 3), torch.tensor([2, 4, 1]), enforce_sorted=False)
    results = {}
    for e, layer in layers.items():
        leaf = x.data.detach().requires_grad_()
        out, states = layer(x._replace(data=leaf), random_hx(layer, 3))
        loss = (out.data * torch.linspace(-1, 1, out.data.numel()).view_as(out.data)).sum() + states[2].sum()
        results[e] = [out.data, *states, *torch.autograd.grad(loss, [leaf, *layer.parameters()])]
    for i, (a, b) in enumerate(zip(results[engine], results["reference"], strict=True)):
        assert_close(a, b, "output" if i < 5 else "grad", f"{engine} #{i}")
