"""Bad input to the layers and cells: the exception class torch.nn raises, and a message that names
what was expected and what was given.

Every case runs the same mistake through rnnkit and torch.nn (same weights). rnnkit must raise the
class torch raises; where torch gives no error, or only an incidental one from deep inside (an
IndexError or AttributeError, a silent wrong result), the case says why and only rnnkit is checked.
The last tests check the validators are not over-eager: unsorted packed input with a length-1
sequence, and an empty batch (B = 0), which torch accepts.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import rnnkit
from rnnkit.engines import ENGINE_NAMES
from rnnkit.testing import assert_close

I, H, P, B, T = 3, 5, 2, 2, 4  # P: LSTM projection size

LAYERS = [pytest.param(torch.nn.RNN, rnnkit.RNN, id="RNN"),
          pytest.param(torch.nn.LSTM, rnnkit.LSTM, id="LSTM"),
          pytest.param(torch.nn.GRU, rnnkit.GRU, id="GRU")]
CELLS = [pytest.param(torch.nn.RNNCell, rnnkit.RNNCell, id="RNNCell"),
         pytest.param(torch.nn.LSTMCell, rnnkit.LSTMCell, id="LSTMCell"),
         pytest.param(torch.nn.GRUCell, rnnkit.GRUCell, id="GRUCell")]
BOTH = LAYERS + CELLS


def per_state(params):
    """(torch_cls, kit_cls, what) for what in h_0, and c_0 for LSTM and LSTMCell."""
    return [pytest.param(*p.values, what, id=f"{p.id}-{what}") for p in params
            for what in (("h_0", "c_0") if p.values[1] in (rnnkit.LSTM, rnnkit.LSTMCell) else ("h_0",))]


def pair(torch_cls, kit_cls, *args, **kwargs):
    """torch.nn module and rnnkit module with identical weights."""
    ref = torch_cls(*args, **kwargs)
    kit = kit_cls(*args, **kwargs)
    kit.load_state_dict(ref.state_dict(), strict=True)
    return ref, kit


def is_lstm(cls) -> bool:
    return cls in (rnnkit.LSTM, rnnkit.LSTMCell)


def states(kit_cls, h_shape, c_shape=None, **kwargs):
    """hx for kit_cls: h_0, or (h_0, c_0) for LSTM and LSTMCell (c_0 shaped like h_0 unless given)."""
    h = torch.randn(h_shape, **kwargs)
    return (h, torch.randn(c_shape or h_shape, **kwargs)) if is_lstm(kit_cls) else h


def shape_re(shape) -> str:
    return re.escape(str(tuple(shape)))


def raises_like_torch(exc, match, call, ref, kit, torch_too=True):
    """call(kit) raises exc with a message matching `match`, and call(ref) raises exc too (if torch_too)."""
    with pytest.raises(exc, match=match):
        call(kit)
    if torch_too:
        with pytest.raises(exc):
            call(ref)


# ================================================================ layers: forward


@pytest.mark.parametrize("torch_cls, kit_cls", LAYERS)
@pytest.mark.parametrize("kind", ["time_major", "batch_first", "unbatched", "packed"])
def test_layer_wrong_feature_size(torch_cls, kit_cls, kind):
    ref, kit = pair(torch_cls, kit_cls, I, H, batch_first=kind == "batch_first")
    x = {"time_major": torch.randn(T, B, I + 1), "batch_first": torch.randn(B, T, I + 1),
         "unbatched": torch.randn(T, I + 1),
         "packed": pack_padded_sequence(torch.randn(T, B, I + 1), torch.tensor([T, 2]))}[kind]
    raises_like_torch(RuntimeError, rf"{kit_cls.__name__}: input\.size\(-1\) must be equal to input_size\. "
                                    rf"Expected {I}, got {I + 1}", lambda m: m(x), ref, kit)


@pytest.mark.parametrize("torch_cls, kit_cls", LAYERS)
@pytest.mark.parametrize("case", ["width", "num_layers", "bidirectional"])
def test_layer_wrong_h0_shape(torch_cls, kit_cls, case):
    kwargs = {"width": {}, "num_layers": {"num_layers": 2}, "bidirectional": {"bidirectional": True}}[case]
    ref, kit = pair(torch_cls, kit_cls, I, H, **kwargs)
    expected = (1 if case == "width" else 2, B, H)
    given = (1, B, H + 1) if case == "width" else (1, B, H)
    hx = states(kit_cls, given, expected)  # c_0 (LSTM) is right: only h_0 is wrong
    label = r"hidden\[0\]" if is_lstm(kit_cls) else "hidden"
    raises_like_torch(RuntimeError, rf"{kit_cls.__name__}: Expected {label} size {shape_re(expected)}, "
                                    rf"got {re.escape(str(list(given)))} \(h_0 of shape {shape_re(given)}\)",
                      lambda m: m(torch.randn(T, B, I), hx), ref, kit)


def test_lstm_wrong_c0_shape():
    ref, kit = pair(torch.nn.LSTM, rnnkit.LSTM, I, H)
    hx = (torch.randn(1, B, H), torch.randn(1, B, H + 1))
    raises_like_torch(RuntimeError, rf"LSTM: Expected hidden\[1\] size {shape_re((1, B, H))}, "
                                    rf"got {re.escape(str([1, B, H + 1]))} \(c_0 of shape",
                      lambda m: m(torch.randn(T, B, I), hx), ref, kit)


@pytest.mark.parametrize("wrong", ["h0_hidden_wide", "c0_proj_wide"])
def test_lstm_proj_state_widths(wrong):
    """With proj_size, h_0 is proj_size wide and c_0 hidden_size wide; each the other way round fails."""
    ref, kit = pair(torch.nn.LSTM, rnnkit.LSTM, I, H, proj_size=P)
    if wrong == "h0_hidden_wide":
        hx, what, expected, given = (torch.randn(1, B, H), torch.randn(1, B, H)), "h_0", (1, B, P), (1, B, H)
    else:
        hx, what, expected, given = (torch.randn(1, B, P), torch.randn(1, B, P)), "c_0", (1, B, H), (1, B, P)
    label = r"hidden\[0\]" if what == "h_0" else r"hidden\[1\]"
    raises_like_torch(RuntimeError, rf"LSTM: Expected {label} size {shape_re(expected)}, "
                                    rf"got {re.escape(str(list(given)))} \({what} of shape {shape_re(given)}\)",
                      lambda m: m(torch.randn(T, B, I), hx), ref, kit)


@pytest.mark.parametrize("torch_cls, kit_cls", LAYERS)
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
def test_layer_batch_size_mismatch(torch_cls, kit_cls, batch_first):
    ref, kit = pair(torch_cls, kit_cls, I, H, batch_first=batch_first)
    x = torch.randn((B, T, I) if batch_first else (T, B, I))
    hx = states(kit_cls, (1, B + 1, H))
    label = r"hidden\[0\]" if is_lstm(kit_cls) else "hidden"
    raises_like_torch(RuntimeError, rf"{kit_cls.__name__}: Expected {label} size {shape_re((1, B, H))}, "
                                    rf"got {re.escape(str([1, B + 1, H]))} \(h_0 has batch size {B + 1} but the "
                                    rf"input has batch size {B}\)", lambda m: m(x, hx), ref, kit)


@pytest.mark.parametrize("torch_cls, kit_cls", LAYERS)
def test_layer_unbatched_input_with_3d_state(torch_cls, kit_cls):
    ref, kit = pair(torch_cls, kit_cls, I, H)
    hx = states(kit_cls, (1, 1, H))
    raises_like_torch(RuntimeError, rf"{kit_cls.__name__}: For unbatched 2-D input, the initial states should "
                                    rf"also be 2-D but got a 3-D tensor of shape {shape_re((1, 1, H))}",
                      lambda m: m(torch.randn(T, I), hx), ref, kit)


@pytest.mark.parametrize("torch_cls, kit_cls", LAYERS)
def test_layer_batched_input_with_2d_state(torch_cls, kit_cls):
    ref, kit = pair(torch_cls, kit_cls, I, H)
    hx = states(kit_cls, (1, H))
    raises_like_torch(RuntimeError, rf"{kit_cls.__name__}: For batched 3-D input, the initial states should "
                                    rf"also be 3-D but got a 2-D tensor of shape {shape_re((1, H))}",
                      lambda m: m(torch.randn(T, B, I), hx), ref, kit)


@pytest.mark.parametrize("torch_cls, kit_cls", LAYERS)
def test_layer_integer_input(torch_cls, kit_cls):
    ref, kit = pair(torch_cls, kit_cls, I, H)
    x = torch.ones(T, B, I, dtype=torch.long)
    raises_like_torch(ValueError, rf"{kit_cls.__name__}: input must be a floating-point tensor of dtype "
                                  rf"torch\.float32, got torch\.int64", lambda m: m(x), ref, kit)


@pytest.mark.parametrize("torch_cls, kit_cls", LAYERS)
def test_layer_float64_input_into_float32_weights(torch_cls, kit_cls):
    ref, kit = pair(torch_cls, kit_cls, I, H)
    x = torch.randn(T, B, I, dtype=torch.float64)
    raises_like_torch(ValueError, rf"{kit_cls.__name__}: RNN input dtype \(torch\.float64\) does not match weight "
                                  rf"dtype \(torch\.float32\)", lambda m: m(x), ref, kit)


@pytest.mark.parametrize("torch_cls, kit_cls, what", per_state(LAYERS))
def test_layer_float32_state_with_float64_input(torch_cls, kit_cls, what):
    """torch.nn raises for a float32 h_0 (it meets the weights in a matrix product) but silently
    promotes a float32 c_0 to float64; rnnkit holds every state to the input's dtype."""
    ref, kit = pair(torch_cls, kit_cls, I, H, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64)
    h = torch.randn(1, B, H, dtype=torch.float32 if what == "h_0" else torch.float64)
    c = torch.randn(1, B, H, dtype=torch.float32 if what == "c_0" else torch.float64)
    hx = (h, c) if is_lstm(kit_cls) else h
    raises_like_torch(RuntimeError, rf"{kit_cls.__name__}: {what} dtype \(torch\.float32\) does not match input "
                                    rf"dtype \(torch\.float64\)", lambda m: m(x, hx), ref, kit,
                      torch_too=what == "h_0")


@pytest.mark.parametrize("torch_cls, kit_cls", LAYERS)
def test_layer_input_on_another_device(torch_cls, kit_cls):
    ref, kit = pair(torch_cls, kit_cls, I, H)
    x = torch.randn(T, B, I, device="meta")
    raises_like_torch(RuntimeError, rf"{kit_cls.__name__}: input and parameter tensors are not on the same "
                                    rf"device: input on meta, parameters on cpu", lambda m: m(x), ref, kit)


@pytest.mark.parametrize("torch_cls, kit_cls", LAYERS)
@pytest.mark.parametrize("shape", [(I,), (T, B, 1, I)], ids=["1D", "4D"])
def test_layer_input_dims(torch_cls, kit_cls, shape):
    ref, kit = pair(torch_cls, kit_cls, I, H)
    x = torch.randn(shape)
    raises_like_torch(ValueError, rf"{kit_cls.__name__}: Expected input to be 2D or 3D, got {len(shape)}D instead",
                      lambda m: m(x), ref, kit)


@pytest.mark.parametrize("torch_cls, kit_cls", LAYERS)
@pytest.mark.parametrize("kind", ["time_major", "batch_first", "unbatched"])
def test_layer_empty_sequence(torch_cls, kit_cls, kind):
    ref, kit = pair(torch_cls, kit_cls, I, H, batch_first=kind == "batch_first")
    x = torch.randn({"time_major": (0, B, I), "batch_first": (B, 0, I), "unbatched": (0, I)}[kind])
    raises_like_torch(RuntimeError, rf"{kit_cls.__name__}: Expected sequence length to be larger than 0 in RNN, got 0 "
                                    rf"\(input of shape {shape_re(x.shape)}\)", lambda m: m(x), ref, kit)


@pytest.mark.parametrize("torch_cls, kit_cls", LAYERS)
def test_layer_packed_sequence_inconsistent_with_its_data(torch_cls, kit_cls):
    """pack_padded_sequence accepts a length longer than T and builds batch_sizes [2, 2, 1, 1, 1, 1]
    (sum 8) over 6 rows of data. torch.nn then fails deep inside (RuntimeError "start (6) + length (1)
    exceeds dimension size (6)"); rnnkit says what is wrong."""
    ref, kit = pair(torch_cls, kit_cls, I, H)
    packed = pack_padded_sequence(torch.randn(T, B, I), torch.tensor([T + 2, 2]))
    assert sum(packed.batch_sizes.tolist()) == 8 and packed.data.shape[0] == 6  # torch accepted it silently
    raises_like_torch(RuntimeError, rf"{kit_cls.__name__}: PackedSequence batch_sizes sum to 8 but its data has "
                                    rf"6 rows", lambda m: m(packed), ref, kit)


# ---------------------------------------------------------------- lengths= (rnnkit only)

# torch.nn has no lengths=; its way is pack_padded_sequence(x, lengths, enforce_sorted=False), so
# rnnkit's class is compared with what that raises, where it raises at all: it silently accepts a
# length longer than T (see the test above) and silently truncates float lengths.
LENGTHS_CASES = [
    pytest.param([T + 1, 2], rf"lengths must lie in \[1, {T}\] \(the input's time dimension\), got min 2 and max {T + 1}",
                 False, id="longer_than_T"),
    pytest.param([T, 0], rf"lengths must lie in \[1, {T}\] \(the input's time dimension\), got min 0 and max {T}",
                 True, id="zero_length"),
    pytest.param([T, 2, 1], rf"expected lengths of shape \({B},\), one per sequence, got shape \(3,\)",
                 True, id="wrong_count"),
    pytest.param([4.0, 2.0], r"expected integer lengths, got dtype torch\.float32", False, id="float"),
]


@pytest.mark.parametrize("torch_cls, kit_cls", LAYERS)
@pytest.mark.parametrize("lengths, match, torch_too", LENGTHS_CASES)
def test_layer_bad_lengths(torch_cls, kit_cls, lengths, match, torch_too):
    ref, kit = pair(torch_cls, kit_cls, I, H)
    x = torch.randn(T, B, I)
    with pytest.raises(RuntimeError, match=rf"{kit_cls.__name__}: {match}"):
        kit(x, lengths=lengths)
    if torch_too:
        with pytest.raises(RuntimeError):
            ref(pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False))


@pytest.mark.parametrize("torch_cls, kit_cls", LAYERS)
def test_layer_lengths_with_empty_batch(torch_cls, kit_cls):
    """pack_padded_sequence cannot pack an empty batch (RuntimeError); rnnkit says so, and how to avoid it."""
    ref, kit = pair(torch_cls, kit_cls, I, H)
    x = torch.randn(T, 0, I)
    with pytest.raises(RuntimeError, match=rf"{kit_cls.__name__}: lengths= needs a batch of at least 1 sequence, "
                                           rf"got batch size 0"):
        kit(x, lengths=torch.zeros(0, dtype=torch.long))
    with pytest.raises(RuntimeError):
        ref(pack_padded_sequence(x, torch.zeros(0, dtype=torch.long), enforce_sorted=False))


# ---------------------------------------------------------------- LSTM / LSTMCell hx


def lstm_hx_cases():
    """(hx, exception, message, whether torch raises the same class)."""
    h = lambda batched: torch.randn((1, B, H) if batched else (B, H))  # noqa: E731
    for torch_cls, kit_cls, batched in ((torch.nn.LSTM, rnnkit.LSTM, True),
                                        (torch.nn.LSTMCell, rnnkit.LSTMCell, False)):
        name, cell = kit_cls.__name__, not batched
        yield pytest.param(torch_cls, kit_cls, h(batched), TypeError,
                           rf"{name}: expected hx to be a tuple \(h_0, c_0\), got Tensor",
                           cell,  # torch: LSTMCell TypeError; LSTM an incidental IndexError (hx[1])
                           id=f"{name}-tensor")
        yield pytest.param(torch_cls, kit_cls, (h(batched),), RuntimeError,
                           rf"{name}: expected hx to be a tuple of 2 tensors \(h_0, c_0\), got a tuple of 1",
                           cell,  # torch: LSTMCell RuntimeError; LSTM an incidental IndexError
                           id=f"{name}-1-tuple")
        yield pytest.param(torch_cls, kit_cls, (h(batched),) * 3, RuntimeError,
                           rf"{name}: expected hx to be a tuple of 2 tensors \(h_0, c_0\), got a tuple of 3",
                           True,  # torch: RuntimeError "lstm expects two hidden states"
                           id=f"{name}-3-tuple")
        yield pytest.param(torch_cls, kit_cls, (h(batched), None), TypeError,
                           rf"{name}: expected hx to be a tuple of 2 tensors \(h_0, c_0\), got \(Tensor, NoneType\)",
                           False,  # torch: an incidental AttributeError (None.dim())
                           id=f"{name}-c0-None")


@pytest.mark.parametrize("torch_cls, kit_cls, hx, exc, match, torch_too", list(lstm_hx_cases()))
def test_lstm_hx_not_two_tensors(torch_cls, kit_cls, hx, exc, match, torch_too):
    ref, kit = pair(torch_cls, kit_cls, I, H)
    x = torch.randn((T, B, I) if kit_cls is rnnkit.LSTM else (B, I))
    raises_like_torch(exc, match, lambda m: m(x, hx), ref, kit, torch_too)


# ================================================================ cells: forward


@pytest.mark.parametrize("torch_cls, kit_cls", CELLS)
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
def test_cell_wrong_feature_size(torch_cls, kit_cls, batched):
    ref, kit = pair(torch_cls, kit_cls, I, H)
    x = torch.randn((B, I + 1) if batched else (I + 1,))
    raises_like_torch(RuntimeError, rf"{kit_cls.__name__}: input has inconsistent input_size: got {I + 1} "
                                    rf"expected {I} \(input of shape {shape_re(x.shape)}\)", lambda m: m(x), ref, kit)


@pytest.mark.parametrize("torch_cls, kit_cls, what", per_state(CELLS))
def test_cell_wrong_state_width(torch_cls, kit_cls, what):
    ref, kit = pair(torch_cls, kit_cls, I, H)
    wrong = torch.randn(B, H + 1)
    hx = (wrong, torch.randn(B, H)) if what == "h_0" else (torch.randn(B, H), wrong)
    hx = hx if is_lstm(kit_cls) else hx[0]
    k = 0 if what == "h_0" else 1
    raises_like_torch(RuntimeError, rf"{kit_cls.__name__}: hidden{k} has inconsistent hidden_size: got {H + 1}, "
                                    rf"expected {H} \({what} of shape {shape_re((B, H + 1))}\)",
                      lambda m: m(torch.randn(B, I), hx), ref, kit)


@pytest.mark.parametrize("torch_cls, kit_cls", CELLS)
def test_cell_batch_size_mismatch(torch_cls, kit_cls):
    ref, kit = pair(torch_cls, kit_cls, I, H)
    hx = states(kit_cls, (B + 1, H))
    raises_like_torch(RuntimeError, rf"{kit_cls.__name__}: Input batch size {B} doesn't match hidden0 batch size "
                                    rf"{B + 1} \(h_0 of shape {shape_re((B + 1, H))}\)",
                      lambda m: m(torch.randn(B, I), hx), ref, kit)


@pytest.mark.parametrize("torch_cls, kit_cls", CELLS)
@pytest.mark.parametrize("case", ["unbatched_input_2d_state", "batched_input_1d_state", "3d_state"])
def test_cell_state_dims(torch_cls, kit_cls, case):
    ref, kit = pair(torch_cls, kit_cls, I, H)
    x, state_shape, exc, match = {
        "unbatched_input_2d_state": (torch.randn(I), (1, H), RuntimeError,
                                     r"For unbatched 1-D input, the initial states should also be 1-D "
                                     rf"but got a 2-D tensor of shape {shape_re((1, H))}"),
        "batched_input_1d_state": (torch.randn(B, I), (H,), RuntimeError,
                                   r"For batched 2-D input, the initial states should also be 2-D "
                                   rf"but got a 1-D tensor of shape {shape_re((H,))}"),
        "3d_state": (torch.randn(B, I), (1, B, H), ValueError,  # torch.nn's cells check this in Python
                     (r"Expected hx\[0\]" if is_lstm(kit_cls) else "Expected hidden") +
                     rf" to be 1D or 2D, got 3D instead \(h_0 of shape {shape_re((1, B, H))}\)"),
    }[case]
    hx = states(kit_cls, state_shape)
    raises_like_torch(exc, rf"{kit_cls.__name__}: {match}", lambda m: m(x, hx), ref, kit)


@pytest.mark.parametrize("torch_cls, kit_cls", CELLS)
def test_cell_integer_input(torch_cls, kit_cls):
    """torch.nn's cells raise RuntimeError (from the matrix product), not the layers' ValueError."""
    ref, kit = pair(torch_cls, kit_cls, I, H)
    x = torch.ones(B, I, dtype=torch.long)
    raises_like_torch(RuntimeError, rf"{kit_cls.__name__}: input must be a floating-point tensor of dtype "
                                    rf"torch\.float32, got torch\.int64", lambda m: m(x), ref, kit)


@pytest.mark.parametrize("torch_cls, kit_cls", CELLS)
def test_cell_float64_input_into_float32_weights(torch_cls, kit_cls):
    ref, kit = pair(torch_cls, kit_cls, I, H)
    x = torch.randn(B, I, dtype=torch.float64)
    raises_like_torch(RuntimeError, rf"{kit_cls.__name__}: RNN input dtype \(torch\.float64\) does not match weight "
                                    rf"dtype \(torch\.float32\)", lambda m: m(x), ref, kit)


@pytest.mark.parametrize("torch_cls, kit_cls, what", per_state(CELLS))
def test_cell_float32_state_with_float64_input(torch_cls, kit_cls, what):
    """As for the layers: torch.nn.LSTMCell silently promotes a float32 c_0; rnnkit raises."""
    ref, kit = pair(torch_cls, kit_cls, I, H, dtype=torch.float64)
    x = torch.randn(B, I, dtype=torch.float64)
    h = torch.randn(B, H, dtype=torch.float32 if what == "h_0" else torch.float64)
    c = torch.randn(B, H, dtype=torch.float32 if what == "c_0" else torch.float64)
    hx = (h, c) if is_lstm(kit_cls) else h
    raises_like_torch(RuntimeError, rf"{kit_cls.__name__}: {what} dtype \(torch\.float32\) does not match input "
                                    rf"dtype \(torch\.float64\)", lambda m: m(x, hx), ref, kit,
                      torch_too=what == "h_0")


@pytest.mark.parametrize("torch_cls, kit_cls", CELLS)
def test_cell_input_on_another_device(torch_cls, kit_cls):
    ref, kit = pair(torch_cls, kit_cls, I, H)
    x = torch.randn(B, I, device="meta")
    raises_like_torch(RuntimeError, rf"{kit_cls.__name__}: input and parameter tensors are not on the same "
                                    rf"device: input on meta, parameters on cpu", lambda m: m(x), ref, kit)


@pytest.mark.parametrize("torch_cls, kit_cls", CELLS)
@pytest.mark.parametrize("shape", [(T, B, I), ()], ids=["3D", "0D"])
def test_cell_input_dims(torch_cls, kit_cls, shape):
    ref, kit = pair(torch_cls, kit_cls, I, H)
    x = torch.randn(shape)
    raises_like_torch(ValueError, rf"{kit_cls.__name__}: Expected input to be 1D or 2D, got {len(shape)}D instead",
                      lambda m: m(x), ref, kit)


# ================================================================ constructors


@pytest.mark.parametrize("torch_cls, kit_cls", LAYERS)
@pytest.mark.parametrize("num_layers", [0, -1])
def test_num_layers_below_one(torch_cls, kit_cls, num_layers):
    raises_like_torch(ValueError, rf"{kit_cls.__name__}: num_layers must be greater than zero, got {num_layers}$",
                      lambda cls: cls(I, H, num_layers=num_layers), torch_cls, kit_cls)


@pytest.mark.parametrize("torch_cls, kit_cls", LAYERS)
@pytest.mark.parametrize("dropout, exc", [(-0.1, ValueError), (1.5, ValueError), ("a", ValueError),
                                          (None, TypeError)],  # torch runs float(dropout) first
                         ids=["negative", "above_one", "string", "None"])
def test_dropout_outside_unit_interval(torch_cls, kit_cls, dropout, exc):
    raises_like_torch(exc, rf"{kit_cls.__name__}: dropout should be a number in range \[0, 1\] representing the "
                           rf"probability of an element being zeroed, got {re.escape(repr(dropout))}$",
                      lambda cls: cls(I, H, num_layers=2, dropout=dropout), torch_cls, kit_cls)


@pytest.mark.parametrize("proj_size", [H, H + 1], ids=["equal", "larger"])
def test_proj_size_not_below_hidden_size(proj_size):
    raises_like_torch(ValueError, rf"LSTM: proj_size has to be smaller than hidden_size, got proj_size={proj_size} "
                                  rf"and hidden_size={H}$",
                      lambda cls: cls(I, H, proj_size=proj_size), torch.nn.LSTM, rnnkit.LSTM)


def test_negative_proj_size():
    raises_like_torch(ValueError, r"LSTM: proj_size should be a positive integer or zero to disable projections, "
                                  r"got -1$", lambda cls: cls(I, H, proj_size=-1), torch.nn.LSTM, rnnkit.LSTM)


@pytest.mark.parametrize("torch_cls, kit_cls", [pytest.param(torch.nn.RNN, rnnkit.RNN, id="RNN"),
                                                pytest.param(torch.nn.RNNCell, rnnkit.RNNCell, id="RNNCell")])
def test_unknown_nonlinearity(torch_cls, kit_cls):
    """torch.nn.RNNCell accepts any nonlinearity at construction (and fails at the first forward);
    rnnkit fails at construction for both."""
    raises_like_torch(ValueError, rf"{kit_cls.__name__}: Unknown nonlinearity 'sigmoid'\. "
                                  rf"Select from 'tanh' or 'relu'\.",
                      lambda cls: cls(I, H, nonlinearity="sigmoid"), torch_cls, kit_cls,
                      torch_too=torch_cls is torch.nn.RNN)


@pytest.mark.parametrize("torch_cls, kit_cls", BOTH)
def test_unknown_engine(torch_cls, kit_cls):
    """rnnkit only: torch.nn has no engine= argument."""
    expected = ", ".join(map(repr, ENGINE_NAMES))
    with pytest.raises(ValueError, match=rf"unknown engine 'nope': expected one of {re.escape(expected)}$"):
        kit_cls(I, H, engine="nope")


# ================================================================ not over-eager


@pytest.mark.parametrize("torch_cls, kit_cls", LAYERS)
def test_unsorted_packed_input_with_a_length_one_sequence(torch_cls, kit_cls):
    """enforce_sorted=False with a length-1 sequence is valid: rnnkit runs it and matches torch.nn,
    and lengths= gives the same as packing."""
    ref, kit = pair(torch_cls, kit_cls, I, H)
    x, lengths = torch.randn(T, 3, I), torch.tensor([1, T, 2])
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    (out, state), (ref_out, ref_state) = kit(packed), ref(packed)
    assert isinstance(out, PackedSequence)
    assert torch.equal(out.batch_sizes, ref_out.batch_sizes)
    assert_close(out.data, ref_out.data, what="output")
    for s, r in zip(state if is_lstm(kit_cls) else (state,), ref_state if is_lstm(kit_cls) else (ref_state,), strict=True):
        assert_close(s, r, what="final state")

    padded_out, padded_state = kit(x, lengths=lengths)
    assert_close(padded_out, pad_packed_sequence(ref_out, total_length=T)[0], what="lengths= output")
    assert_close(padded_state if not is_lstm(kit_cls) else padded_state[0],
                 ref_state if not is_lstm(kit_cls) else ref_state[0], what="lengths= h_n")


@pytest.mark.parametrize("torch_cls, kit_cls", LAYERS)
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("with_state", [False, True], ids=["no_h0", "h0"])
def test_layer_empty_batch_works_like_torch(torch_cls, kit_cls, batch_first, with_state):
    """B = 0 padded input: torch.nn returns empty outputs of the right shapes, so rnnkit does too
    (and its backward runs)."""
    ref, kit = pair(torch_cls, kit_cls, I, H, num_layers=2, bidirectional=True, batch_first=batch_first)
    x = torch.randn((0, T, I) if batch_first else (T, 0, I), requires_grad=True)
    hx = states(kit_cls, (4, 0, H)) if with_state else None
    (out, state), (ref_out, ref_state) = kit(x, hx), ref(x, hx)
    assert out.shape == ref_out.shape == ((0, T, 2 * H) if batch_first else (T, 0, 2 * H))
    flat = lambda s: s if isinstance(s, tuple) else (s,)  # noqa: E731
    assert [s.shape for s in flat(state)] == [r.shape for r in flat(ref_state)]
    out.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("torch_cls, kit_cls", CELLS)
@pytest.mark.parametrize("with_state", [False, True], ids=["no_h0", "h0"])
def test_cell_empty_batch_works_like_torch(torch_cls, kit_cls, with_state):
    ref, kit = pair(torch_cls, kit_cls, I, H)
    x = torch.randn(0, I)
    hx = states(kit_cls, (0, H)) if with_state else None
    flat = lambda s: s if isinstance(s, tuple) else (s,)  # noqa: E731
    assert [s.shape for s in flat(kit(x, hx))] == [r.shape for r in flat(ref(x, hx))]
