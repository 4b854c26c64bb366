"""rnnkit raises what torch.nn raises on the error cases of torch's own tests.

Two sources:
- every ModuleInfo error input that torch.testing._internal.common_modules holds for RNN, LSTM, GRU
  and the three cells, run against the rnnkit class in torch.nn's place: the same exception class,
  and torch's regex found in rnnkit's message (rnnkit's message may say more);
- the error cases of TestNN's RNN tests in torch's test/test_nn.py (not installed with torch), written
  out here, each run through torch.nn and rnnkit side by side.

The differences the issue listed (proj_size on RNN/GRU, hidden_size 0 on cells, a positional `bias`,
the order of checks in a cell) are compared with what torch.nn does on the same call.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch.testing._internal import common_modules  # needs expecttest (rnnkit's test extra); a few seconds

import rnnkit
from rnnkit.testing import assert_close

CLASSES = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"]
MODULE_INFOS = {info.module_cls: info for info in common_modules.module_db}


def error_inputs(name: str, dtype: torch.dtype) -> list:
    info = MODULE_INFOS[getattr(torch.nn, name)]
    return list(info.module_error_inputs_func(info, device="cpu", dtype=dtype, requires_grad=False, training=True))


def run_error_input(cls, error_input):
    """What torch's TestModule.test_errors does with one error input: construct, then call if asked."""
    module_input = error_input.module_error_input
    args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
    module = cls(*args, **kwargs)
    if error_input.error_on == common_modules.ModuleErrorEnum.FORWARD_ERROR:
        module(*module_input.forward_input.args, **module_input.forward_input.kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", CLASSES)
def test_every_module_info_error_input(name, dtype):
    cases = error_inputs(name, dtype)
    assert len(cases) >= 4, f"torch's ModuleInfo for {name} has {len(cases)} error inputs; expected at least 4"
    for k, case in enumerate(cases):
        what = f"{name} error input #{k} ({case.error_type.__name__}: {case.error_regex!r})"
        for cls in (getattr(torch.nn, name), getattr(rnnkit, name)):  # torch first: the case is an error there
            with pytest.raises(case.error_type) as info:
                run_error_input(cls, case)
            assert re.search(case.error_regex, str(info.value)), f"{what}: {cls.__module__} said {info.value}"
            assert type(info.value) is case.error_type or cls.__module__.startswith("torch"), \
                f"{what}: rnnkit raised {type(info.value).__name__}, a subclass"


# ---------------------------------------------------------------- the list of differences


def same_outcome(call):
    """Run call(torch.nn) and call(rnnkit); both raise the same class (returned) or both return."""
    outcomes = []
    for namespace in (torch.nn, rnnkit):
        try:
            outcomes.append(("ok", call(namespace)))
        except Exception as e:  # noqa: BLE001 - the class is what is compared
            outcomes.append((type(e), e))
    (torch_kind, torch_value), (kit_kind, kit_value) = outcomes
    assert kit_kind is torch_kind, f"torch.nn: {torch_kind} {torch_value!r}; rnnkit: {kit_kind} {kit_value!r}"
    return torch_value, kit_value


@pytest.mark.parametrize("name", ["RNN", "GRU"])
@pytest.mark.parametrize("proj_size", [0, 2])
def test_proj_size_on_rnn_and_gru(name, proj_size):
    """torch.nn rejects proj_size given at all (even 0) with ValueError."""
    torch_error, kit_error = same_outcome(lambda nn: getattr(nn, name)(3, 5, proj_size=proj_size))
    assert isinstance(kit_error, ValueError)
    assert str(torch_error) == "proj_size argument is only supported for LSTM, not RNN or GRU"
    assert str(kit_error) == (f"{name}: proj_size argument is only supported for LSTM, not RNN or GRU "
                              f"(got proj_size={proj_size})")


@pytest.mark.parametrize("name, kwargs", [("RNNCell", {"nonlinearity": "relu"}), ("RNNCell", {}),
                                          ("GRUCell", {}), ("LSTMCell", {})])
def test_cells_with_hidden_size_zero(name, kwargs):
    """TestNN.test_RNN_cell_forward_zero_hidden_size: the cell builds and returns (B, 0) states."""
    torch.manual_seed(0)
    ref = getattr(torch.nn, name)(10, 0, **kwargs)
    kit = getattr(rnnkit, name)(10, 0, **kwargs)
    kit.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(3, 10, requires_grad=True)
    hx = (torch.randn(3, 0), torch.randn(3, 0)) if name == "LSTMCell" else torch.randn(3, 0)
    ref_out, kit_out = ref(x, hx), kit(x, hx)
    flat = lambda out: list(out) if isinstance(out, tuple) else [out]  # noqa: E731
    assert [o.shape for o in flat(kit_out)] == [o.shape for o in flat(ref_out)] == [(3, 0)] * len(flat(ref_out))
    (grad,) = torch.autograd.grad(flat(kit_out), [x], [torch.randn(3, 0)] * len(flat(kit_out)), allow_unused=True)
    assert grad is None or (grad.shape == x.shape and not grad.any())


def test_cell_negative_hidden_size():
    torch_error, kit_error = same_outcome(lambda nn: nn.GRUCell(10, -1))
    assert isinstance(kit_error, RuntimeError) and "negative dimension" in str(torch_error)
    assert str(kit_error).startswith("GRUCell: hidden_size must not be negative")


def test_third_positional_argument_of_rnn_cell_is_bias():
    """torch.nn.RNNCell(10, 20, 'relu') takes 'relu' for bias (truthy: biases), and runs tanh."""
    torch.manual_seed(0)
    ref, kit = torch.nn.RNNCell(10, 20, "relu"), rnnkit.RNNCell(10, 20, "relu")
    assert repr(kit) == repr(ref) == "RNNCell(10, 20, bias=relu)"
    assert kit.nonlinearity == ref.nonlinearity == "tanh" and kit.bias == ref.bias == "relu"
    kit.load_state_dict(ref.state_dict(), strict=True)  # both have bias_ih and bias_hh
    x, h = torch.randn(3, 10), torch.randn(3, 20)
    assert_close(kit(x, h), ref(x, h), "output", "RNNCell with bias='relu'")
    # and the ModuleInfo case built on it fails at the call, with torch's class and words
    torch_error, kit_error = same_outcome(lambda nn: nn.RNNCell(10, 20, "relu")(x, torch.randn(3, 21)))
    assert isinstance(kit_error, RuntimeError)
    assert "hidden0 has inconsistent hidden_size: got 21, expected 20" in str(kit_error)


@pytest.mark.parametrize("bias", [0, 1, None, ""])
def test_cell_bias_taken_for_its_truth_value(bias):
    ref, kit = torch.nn.GRUCell(3, 5, bias=bias), rnnkit.GRUCell(3, 5, bias=bias)
    assert repr(kit) == repr(ref)
    assert [n for n, _ in kit.named_parameters()] == [n for n, _ in ref.named_parameters()]


@pytest.mark.parametrize("name", ["RNNCell", "GRUCell", "LSTMCell"])
def test_cell_checks_ranks_before_dtype(name):
    """A float64 input and a 4-D state into a float32 cell: torch.nn reports the rank (ValueError)."""
    x = torch.randn(3, 10, dtype=torch.float64)
    h = torch.randn(3, 1, 1, 20, dtype=torch.float64)
    hx = (h, h) if name == "LSTMCell" else h
    torch_error, kit_error = same_outcome(lambda nn: getattr(nn, name)(10, 20)(x, hx))
    assert isinstance(kit_error, ValueError)
    label = r"hx\[0\]" if name == "LSTMCell" else "hidden"
    assert re.search(rf"^{name}: Expected {label} to be 1D or 2D, got 4D instead", str(kit_error))


@pytest.mark.parametrize("name", ["RNNCell", "GRUCell", "LSTMCell"])
def test_cell_checks_shapes_before_dtype(name):
    """A float64 input of the wrong width into a float32 cell: the width (RuntimeError, torch's words)."""
    x = torch.randn(3, 11, dtype=torch.float64)
    torch_error, kit_error = same_outcome(lambda nn: getattr(nn, name)(10, 20)(x))
    assert "input has inconsistent input_size: got 11 expected 10" in str(torch_error)
    assert str(kit_error) == f"{name}: input has inconsistent input_size: got 11 expected 10 (input of shape (3, 11))"


# ---------------------------------------------------------------- TestNN's RNN tests (test/test_nn.py)


def test_rnn_nonlinearity():
    """TestNN.test_RNN_nonlinearity and test_RNN_nonlinearity_passed_as_arg."""
    for nn in (torch.nn, rnnkit):
        assert nn.RNN(1, 10).nonlinearity == "tanh"
        assert nn.RNN(1, 10, nonlinearity="relu").nonlinearity == "relu"
        assert nn.RNN(2, 3, 1, "relu").nonlinearity == "relu"
    _, kit_error = same_outcome(lambda nn: nn.RNN(1, 10, nonlinearity="garbage"))
    assert isinstance(kit_error, ValueError) and re.search("Unknown nonlinearity", str(kit_error))


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_error_rnn_seq_len_zero(name, bidirectional):
    """TestNN.test_error_RNN_seq_len_zero."""
    x = torch.ones(0, 10, 5)
    _, kit_error = same_outcome(lambda nn: getattr(nn, name)(5, 6, bidirectional=bidirectional)(x))
    assert isinstance(kit_error, RuntimeError)
    assert re.search("Expected sequence length to be larger than 0 in RNN", str(kit_error))


def test_rnn_cell_no_broadcasting():
    """TestNN.test_RNN_cell_no_broadcasting: a state or input that would broadcast is an error."""
    hidden_size, input_size = 20, 10
    x, good = torch.randn(3, input_size), torch.randn(3, hidden_size)
    for bad_x, bad_hx in ((x, torch.randn(1, hidden_size)), (x, torch.randn(3, 1)), (torch.randn(3, 1), good)):
        for name, hx in (("RNNCell", bad_hx), ("GRUCell", bad_hx), ("LSTMCell", (bad_hx, good)),
                         ("LSTMCell", (good, bad_hx))):
            _, kit_error = same_outcome(lambda nn: getattr(nn, name)(input_size, hidden_size)(bad_x, hx))  # noqa: B023
            assert isinstance(kit_error, RuntimeError), (name, kit_error)


def rnn_args_check_cases():
    """TestNN.test_rnn_args_check and test_projections_lstm_args_check: (name, proj_size, input, hidden)."""
    I, H, L, B, T, bad = 3, 5, 2, 4, 6, 7  # noqa: E741 - torch's names
    for name in ("RNN", "GRU", "LSTM"):
        for P in ((0, 2) if name == "LSTM" else (0,)):
            out = P or H
            good_x, good_h, good_c = (T, B, I), (L, B, out), (L, B, H)
            for label, x, h, c in (("input batch", (T, bad, I), good_h, good_c),
                                   ("hidden batch", good_x, (L, bad, out), (L, bad, H)),
                                   ("input size", (T, B, bad), good_h, good_c),
                                   ("hidden size", good_x, (L, B, bad), (L, B, bad)),
                                   ("hidden[0]", good_x, (L, B, bad), good_c),
                                   ("hidden[1]", good_x, good_h, (L, B, bad)),
                                   ("layers", good_x, (bad, B, out), (bad, B, H))):
                if name != "LSTM" and label == "hidden[1]":
                    continue
                yield pytest.param(name, P, x, h, c, id=f"{name}-proj{P}-{label}")


@pytest.mark.parametrize("name, proj_size, x_shape, h_shape, c_shape", list(rnn_args_check_cases()))
def test_rnn_args_check(name, proj_size, x_shape, h_shape, c_shape):
    x, h, c = torch.randn(x_shape), torch.randn(h_shape), torch.randn(c_shape)
    hx = (h, c) if name == "LSTM" else h
    kwargs = {"proj_size": proj_size} if proj_size else {}
    _, kit_error = same_outcome(lambda nn: getattr(nn, name)(3, 5, 2, **kwargs)(x, hx))
    assert isinstance(kit_error, RuntimeError)


@pytest.mark.parametrize("name", ["RNN", "GRU"])
def test_expected_hidden_size_words(name):
    """torch.nn's message for a wrong h_0 starts "Expected hidden size"; rnnkit's contains it."""
    x, h = torch.randn(6, 4, 3), torch.randn(1, 4, 7)
    torch_error, kit_error = same_outcome(lambda nn: getattr(nn, name)(3, 5)(x, h))
    for error in (torch_error, kit_error):
        assert "Expected hidden size (1, 4, 5), got [1, 4, 7]" in str(error)
