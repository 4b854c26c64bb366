"""The CPU engine against the reference engine (the next link of the equivalence chain), with every
buffer the kernels write poisoned with NaN, plus its activation functions and its selection.

The layer-level grid against torch.nn runs both engines in tests/test_torch_equivalence.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numba import njit

from rnnkit.engines import cpu, cpu_kernels, reference, small_product
from rnnkit.testing import assert_close


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    """Kernel output buffers start as NaN, so an element a kernel forgets to write fails the comparison."""
    monkeypatch.setattr(cpu, "empty", lambda like, *shape: torch.full(shape, float("nan"), dtype=like.dtype))


MODES = {"rnn_tanh": ("RNN_TANH", 1), "rnn_relu": ("RNN_RELU", 1), "lstm": ("LSTM", 4), "lstm_proj": ("LSTM", 4),
         "gru": ("GRU", 3)}
PACKINGS = {
    "T1": (3,),
    "padded_T5": (4,) * 5,
    "packed_unsorted_T6": (4, 4, 3, 2, 1, 1),  # what pack_padded_sequence makes of lengths like [6, 2, 4, 1]
}
SIZES = {"I5-H7": (5, 7), "I3-H33": (3, 33)}  # odd hidden sizes, none a multiple of a vector width


def layer_inputs(family, batch_sizes, inp, hidden, dtype):
    torch.manual_seed(0)
    _, gates = MODES[family]
    out_size = 3 if family == "lstm_proj" else hidden

    def mk(*shape):
        return (torch.randn(*shape, dtype=dtype) * 0.5).requires_grad_()

    b = batch_sizes[0]
    x, h0 = mk(sum(batch_sizes), inp), mk(b, out_size)
    c0 = mk(b, hidden) if family.startswith("lstm") else None
    w = (mk(gates * hidden, inp), mk(gates * hidden, out_size), mk(gates * hidden), mk(gates * hidden),
         mk(out_size, hidden) if family == "lstm_proj" else None)
    return x, h0, c0, w


@pytest.mark.parametrize("strategy", ["in_loop", "packed_tiles", "stepwise"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("packing", PACKINGS)
@pytest.mark.parametrize("family", MODES)
def test_cpu_engine_matches_reference(family, packing, size, reverse, bias, dtype, strategy, monkeypatch):
    """Every strategy: the recurrent product inside the compiled loop (the forward's through BLAS, or
    through register tiles over packed weights when enough steps repay packing), or one step at a time
    from Python (which large float32 steps take). Thresholds are lowered to force each at these small sizes."""
    if strategy == "packed_tiles":
        monkeypatch.setattr(cpu, "MIN_PACKED_STEPS", 1)
    if strategy == "stepwise":
        if dtype != torch.float32 or cpu._onednn_linear() is None:
            pytest.skip("the stepwise strategy is for float32 with oneDNN")
        monkeypatch.setattr(cpu, "STEPWISE_MIN_MACS", 0)
    batch_sizes = PACKINGS[packing]
    x, h0, c0, (w_ih, w_hh, b_ih, b_hh, w_hr) = layer_inputs(family, batch_sizes, *SIZES[size], dtype)
    if not bias:
        b_ih = b_hh = None
    mode = MODES[family][0]
    args = (mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse)
    fast = [t for t in cpu.run_layer(*args) if t is not None]
    slow = [t for t in reference.run_layer(*args) if t is not None]
    for name, a, b in zip(["out", "h_n", "c_n"], fast, slow, strict=False):
        assert_close(a, b, "output", name)
    leaves = [t for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr) if t is not None]
    upstream = [torch.randn_like(o) for o in slow]
    fast_grads = torch.autograd.grad(fast, leaves, upstream)
    slow_grads = torch.autograd.grad(slow, leaves, upstream)
    for k, (a, b) in enumerate(zip(fast_grads, slow_grads, strict=True)):
        assert_close(a, b, "grad", f"gradient of leaf {k}")


SHORT = {"T1_B1": (1, 1), "T3_B2": (3, 2), "T5_B3": (5, 3), "T19_B1": (19, 1), "T40_B1": (40, 1)}  # dot (B <= 2), sgemm_


@pytest.mark.parametrize("layout", ["contiguous", "strided"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("shape", SHORT)
@pytest.mark.parametrize("family", MODES)
def test_short_no_grad_calls_in_one_compiled_call(family, shape, size, reverse, bias, layout, monkeypatch):
    """cpu.infer hands short padded float32 calls to cpu_kernels.short_call (one compiled call, pointers in): the same
    outputs and states as the reference engine, every output element written (NaN-poisoned buffers)."""
    steps, batch = SHORT[shape]
    sizes = (batch,) * steps
    x, h0, c0, (w_ih, w_hh, b_ih, b_hh, w_hr) = layer_inputs(family, sizes, *SIZES[size], torch.float32)
    # torch's scale of W_hh: with randn / 2 at H=33 the recurrence is chaotic, and over 19 steps float32 rounding
    # alone grows past the tolerance (the float32 reference itself is then 2.5e-5 off float64)
    w_hh = w_hh.detach() / w_hh.shape[1] ** 0.5
    if not bias:
        b_ih = b_hh = None
    if layout == "strided":  # the same values in transposed storage: the entry must not read raw strides
        x, w_ih, w_hh, h0 = (t.detach().t().contiguous().t() for t in (x, w_ih, w_hh, h0))
    mode = MODES[family][0]
    args = (mode, x, sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse)
    taken = []
    monkeypatch.setattr(cpu, "infer_small", lambda *a, _run=cpu.infer_small: taken.append(1) or _run(*a))
    with torch.no_grad():
        assert cpu.small_call(*args[1:-1])
        fast = [t for t in cpu.infer(*args) if t is not None]
        slow = [t for t in reference.run_layer(*args) if t is not None]
    assert taken == [1], "the short call should have taken the one-call entry"
    assert len(fast) == len(slow)
    for name, a, b in zip(["out", "h_n", "c_n"], fast, slow, strict=False):
        assert a.shape == b.shape, name
        assert_close(a, b, "output", name)


def test_what_the_short_call_entry_leaves_to_the_general_one():
    """Longer calls (packing W_hh repays), packed batches, float64, one bias of two and large products do not fit."""
    x1, h1, c1, w1 = layer_inputs("lstm_proj", (2,) * 3, 5, 7, torch.float32)
    assert cpu.small_call(x1, (2,) * 3, h1, c1, *w1)
    assert not cpu.small_call(x1, (2,) * 3, h1, c1, w1[0], w1[1], w1[2], None, w1[4]), "one bias of two"
    assert not cpu.small_call(x1[:5], (2, 2, 1), h1, c1, *w1), "a packed batch"
    assert not cpu.small_call(x1.double(), (2,) * 3, h1.double(), c1.double(), *(w.double() for w in w1))
    assert not cpu.small_shape(cpu.MIN_PACKED_STEPS, 2, 5, 28, 7), "enough steps to pack W_hh"
    assert cpu.small_shape(cpu.MIN_PACKED_STEPS - 1, 2, 5, 28, 7)
    assert cpu.small_shape(1000, 1, 5, 28, 7), "one sequence: dot products at any length"
    assert not cpu.small_shape(1, 2, 4096, 4096, 1024), "an input projection for oneDNN"
    assert not cpu.small_shape(1, 4096, 8, 4096, 4096), "a step product for oneDNN, one step at a time"
    assert not cpu.small_shape(1, 1, 8, 4 * 4096, 4096), "one sequence whose step product goes to oneDNN"


@njit
def _apply(fn_id, x):
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = cpu_kernels.tanh(x[i]) if fn_id == 0 else cpu_kernels.sigmoid(x[i])
    return out


SPECIAL = [0.0, -0.0, 1e-30, -1e-7, 8.999, 9.0, 9.001, 40.0, -40.0, 1e4, -1e4, float("inf"), float("-inf")]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("fn", ["tanh", "sigmoid"])
def test_activations_are_accurate(fn, dtype):
    """float32 uses a rational tanh evaluated in float32 (it vectorises over twice the lanes): within 6 ulp of 1.0
    (3.6e-7), a few roundings of the exact value; float64 uses libm."""
    x = np.concatenate([np.linspace(-30, 30, 200001), np.array(SPECIAL)]).astype(dtype)
    got = _apply(0 if fn == "tanh" else 1, x).astype(np.float64)
    exact = torch.tanh(torch.from_numpy(x.astype(np.float64))) if fn == "tanh" else \
        torch.sigmoid(torch.from_numpy(x.astype(np.float64)))
    err = np.abs(got - exact.numpy()).max()
    assert err <= (3.6e-7 if dtype == np.float32 else 1e-15), err


def test_rational_tanh_fit_in_float64():
    """The fit itself (evaluated in float64, as minLSTM's float32 gate uses it): relative error 1.4e-9 at most,
    far below float32's 6e-8 rounding."""
    x = np.linspace(-9, 9, 100001)
    got = np.array([cpu_kernels.rational_tanh(v) for v in x[::97]])
    exact = np.tanh(x[::97])
    assert np.max(np.abs(got - exact) / np.maximum(np.abs(exact), 1e-300)) <= 2e-9


@pytest.mark.parametrize("fn", ["tanh", "sigmoid"])
def test_activations_keep_nan(fn):
    """A NaN that enters the compiled loop must leave it as NaN, never be clamped into a number."""
    x = np.array([np.nan, 1.0], dtype=np.float32)
    assert np.isnan(_apply(0 if fn == "tanh" else 1, x)[0])


def test_nan_input_gives_nan_output():
    import rnnkit
    lstm = rnnkit.LSTM(3, 4, engine="cpu")
    x = torch.randn(5, 2, 3)
    x[2, 1, 0] = float("nan")
    out, (h, c) = lstm(x)
    assert torch.isnan(out[2:, 1]).all() and torch.isfinite(out[:, 0]).all() and torch.isfinite(out[:2]).all()


def test_cpu_engine_refuses_what_it_cannot_run():
    assert cpu.why_not(torch.zeros(2, dtype=torch.float32)) is None
    assert cpu.why_not(torch.zeros(2, dtype=torch.bfloat16)) is None  # through its float32 kernels (autocast)
    assert "float32, float64 and bfloat16" in cpu.why_not(torch.zeros(2, dtype=torch.float16))
    assert "meta" in cpu.why_not(torch.zeros(2, device="meta"))


# ---------------------------------------------------------------- the step products on their own


@njit
def _from_state(fn, h, w, w_packed, hp, bs):
    cpu_kernels.product_from_state(fn, h, w, w_packed, hp, bs)


@njit
def _to_prev(fn, d, w, dh, bs, accumulate):
    cpu_kernels.product_to_prev(fn, d, w, dh, bs, accumulate)


def _operands(dtype, *shapes):
    gen = np.random.default_rng(sum(sum(s) for s in shapes))
    return [gen.standard_normal(s).astype(dtype) for s in shapes]


def _check_rows(got, expected, bs, untouched):
    """The first bs rows hold the product; the rows beyond bs keep what they held (NaN)."""
    assert_close(torch.from_numpy(got[:bs]), torch.from_numpy(expected.astype(got.dtype)), "output", "product")
    assert np.isnan(got[bs:]).all() == untouched


PRODUCT_ROWS = [1, 3, 5, 8, 13]
PRODUCT_SIZES = [5, 64, 100, 130]  # 100: tiles one vector wide cover part of the columns
PRODUCT_GATES = [(1, 0), (3, 0), (4, 0), (1, 3)]  # G = gates * P + extra: some G not a multiple of a tile
DTYPES = {"f32": np.float32, "f64": np.float64}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gates", PRODUCT_GATES, ids=lambda g: f"G{g[0]}P+{g[1]}")
@pytest.mark.parametrize("p", PRODUCT_SIZES)
@pytest.mark.parametrize("bs", PRODUCT_ROWS)
@pytest.mark.parametrize("packed", [True, False], ids=["tiles", "blas"])
def test_product_from_state(bs, p, gates, dtype, packed):
    """hp[:bs] = h[:bs] W^T through packed tiles or BLAS; h has more rows than run (a packed batch's step)."""
    dtype = DTYPES[dtype]
    g = gates[0] * p + gates[1]
    h, w = _operands(dtype, (bs + 2, p), (g, p))
    w_packed = small_product.pack(w) if packed else np.zeros((0, 0, 0), dtype)
    hp = np.full((bs + 2, g), np.nan, dtype)
    _from_state(cpu.gemm_fn(torch.from_numpy(h).dtype), h, w, w_packed, hp, bs)
    _check_rows(hp, h[:bs].astype(np.float64) @ w.T.astype(np.float64), bs, True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("accumulate", [False, True], ids=["set", "add"])
@pytest.mark.parametrize("gates", PRODUCT_GATES, ids=lambda g: f"G{g[0]}P+{g[1]}")
@pytest.mark.parametrize("p", PRODUCT_SIZES)
@pytest.mark.parametrize("bs", PRODUCT_ROWS)
def test_product_to_prev(bs, p, gates, accumulate, dtype):
    """dh[:bs] (+)= d[:bs] W, d a column slice of wider rows (as GRU's dxp[:, :2H])."""
    dtype = DTYPES[dtype]
    k = gates[0] * p + gates[1]
    d_wide, w, dh0 = _operands(dtype, (bs + 2, k + 7), (k, p), (bs, p))
    d = d_wide[:, :k]
    dh = np.full((bs + 2, p), np.nan, dtype)
    dh[:bs] = dh0 if accumulate else np.nan
    _to_prev(cpu.gemm_fn(torch.from_numpy(d_wide).dtype), d, w, dh, bs, accumulate)
    expected = d[:bs].astype(np.float64) @ w.astype(np.float64) + (dh0 if accumulate else 0)
    _check_rows(dh, expected, bs, True)


@pytest.mark.parametrize("accumulate", [False, True], ids=["set", "add"])
def test_products_above_the_tile_limit_use_blas(accumulate):
    """Steps above TILE_MAX_MACS go to BLAS (float64 here, so that oneDNN's stepwise route is not the one taken)."""
    bs, k = 17, 1000
    p = cpu_kernels.TILE_MAX_MACS // (bs * k) + 1
    d, w, h = _operands(np.float64, (bs, k), (k, p), (bs, p))
    fn = cpu.gemm_fn(torch.float64)
    dh = h.copy()
    _to_prev(fn, d, w, dh, bs, accumulate)
    assert_close(torch.from_numpy(dh), torch.from_numpy(d @ w + (h if accumulate else 0)), "output", "to_prev")
    hp = np.full((bs, k), np.nan)
    _from_state(fn, h, w, small_product.pack(w), hp, bs)
    assert_close(torch.from_numpy(hp), torch.from_numpy(h @ w.T), "output", "from_state")
