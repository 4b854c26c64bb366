"""The CPU engine against the reference engine (the next link of the equivalence chain), with every
buffer the kernels write poisoned with NaN, plus its activation functions and its selection.

The layer-level grid against torch.nn runs both engines in tests/test_torch_equivalence.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numba import njit

from rnnkit.engines import cpu, cpu_kernels, reference
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


@pytest.mark.parametrize("strategy", ["in_loop", "one_row_product", "stepwise"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("packing", PACKINGS)
@pytest.mark.parametrize("family", MODES)
def test_cpu_engine_matches_reference(family, packing, size, reverse, bias, dtype, strategy, monkeypatch):
    """Every strategy: the recurrent product inside the compiled loop (BLAS, or the row product that
    one-row steps take when there are many), or one step at a time from Python (which large float32
    steps take). Thresholds are lowered to force each at these small sizes."""
    if strategy == "one_row_product":
        monkeypatch.setattr(cpu, "MIN_ONE_ROW_STEPS", 1)
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
    """float32 uses a rational tanh (it vectorises); it must be as good as float32 rounding allows."""
    x = np.concatenate([np.linspace(-30, 30, 200001), np.array(SPECIAL)]).astype(dtype)
    got = _apply(0 if fn == "tanh" else 1, x).astype(np.float64)
    exact = torch.tanh(torch.from_numpy(x.astype(np.float64))) if fn == "tanh" else \
        torch.sigmoid(torch.from_numpy(x.astype(np.float64)))
    err = np.abs(got - exact.numpy()).max()
    assert err <= (1.2e-7 if dtype == np.float32 else 1e-15), err


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
