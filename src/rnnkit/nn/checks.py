"""Input validation for the layers and cells.

Each check raises the exception class torch.nn raises for the same mistake (ValueError or
RuntimeError), with a message that names what was expected and what was given.
"""

from __future__ import annotations

import itertools
import numbers

import torch
from torch import Tensor

from ..engines.ops import autocast_on


def shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


# ---------------------------------------------------------------- constructor arguments


def constructor(name: str, input_size, hidden_size, num_layers, bias, batch_first, dropout, proj_size) -> None:
    for arg, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers),
                       ("proj_size", proj_size)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name}: {arg} should be of type int, got: {type(value).__name__}")
    for arg, value in (("bias", bias), ("batch_first", batch_first)):
        if not isinstance(value, bool):
            raise TypeError(f"{name}: {arg} should be of type bool, got: {type(value).__name__}")
    if input_size <= 0:
        raise ValueError(f"{name}: input_size must be greater than zero, got {input_size}")
    if hidden_size <= 0:
        raise ValueError(f"{name}: hidden_size must be greater than zero, got {hidden_size}")
    if num_layers < 1:
        raise ValueError(f"{name}: num_layers must be greater than zero, got {num_layers}")
    dropout_probability(name, dropout)
    if proj_size < 0:
        raise ValueError(f"{name}: proj_size should be a positive integer or zero to disable projections, "
                         f"got {proj_size}")
    if proj_size >= hidden_size:
        raise ValueError(f"{name}: proj_size has to be smaller than hidden_size, got proj_size={proj_size} "
                         f"and hidden_size={hidden_size}")


class _NotGiven:
    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN = _NotGiven()  # the default of an argument whose mere presence is an error


def no_projection(name: str, proj_size) -> None:
    """torch.nn.RNN and GRU raise ValueError for proj_size given at all, even proj_size=0."""
    if proj_size is not NOT_GIVEN:
        raise ValueError(f"{name}: proj_size argument is only supported for LSTM, not RNN or GRU "
                         f"(got proj_size={proj_size!r})")


def cell_constructor(name: str, input_size, hidden_size) -> None:
    """torch.nn's cells validate nothing: sizes of 0 build cells with empty states ((B, 0) for
    hidden_size 0), and a negative size fails in torch.empty with a RuntimeError, as here."""
    for arg, value in (("input_size", input_size), ("hidden_size", hidden_size)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name}: {arg} should be of type int, got: {type(value).__name__}")
        if value < 0:
            raise RuntimeError(f"{name}: {arg} must not be negative (Trying to create tensor with negative "
                               f"dimension), got {value}")


def dropout_probability(name: str, value) -> None:
    """A number in [0, 1]. torch calls float(dropout) first, so what float() rejects with a TypeError
    (None, a list, a complex number) is a TypeError, everything else out of range a ValueError."""
    message = (f"{name}: dropout should be a number in range [0, 1] representing the probability of an "
               f"element being zeroed, got {value!r}")
    try:
        float(value)
    except TypeError:
        raise TypeError(message) from None
    except ValueError:
        raise ValueError(message) from None
    if not isinstance(value, numbers.Number) or isinstance(value, bool) or not 0 <= value <= 1:
        raise ValueError(message)


def nonlinearity(name: str, value) -> None:
    if value not in ("tanh", "relu"):
        raise ValueError(f"{name}: Unknown nonlinearity {value!r}. Select from 'tanh' or 'relu'.")


# ---------------------------------------------------------------- forward arguments


def input_dims(name: str, input: Tensor, allowed: tuple[int, int]) -> None:
    if not isinstance(input, Tensor):
        raise TypeError(f"{name}: expected input to be a Tensor or PackedSequence, got {type(input).__name__}")
    if input.dim() not in allowed:
        lo, hi = allowed
        raise ValueError(f"{name}: Expected input to be {lo}D or {hi}D, got {input.dim()}D instead "
                         f"(shape {shape(input)})")


def input_matches_weights(name: str, data: Tensor, weight: Tensor, input_size: int,
                          dtype_error: type[Exception] = ValueError) -> None:
    """dtype, device and feature size of the (N, I) input rows against the layer's weights.

    torch.nn's layers raise ValueError for a dtype mismatch, its cells RuntimeError (from the
    matrix product); the cells pass dtype_error=RuntimeError."""
    if not data.is_floating_point():
        raise dtype_error(f"{name}: input must be a floating-point tensor of dtype {weight.dtype}, "
                         f"got {data.dtype}. Convert input: input.to({weight.dtype})")
    if data.dtype != weight.dtype and not autocast_on(data.device.type):
        # "RNN input dtype" for every layer: torch.nn's words, which its tests match
        raise dtype_error(f"{name}: RNN input dtype ({data.dtype}) does not match weight dtype ({weight.dtype}). "
                         f"Convert input: input.to({weight.dtype}), or convert model: model.to({data.dtype})")
    if data.device != weight.device:
        raise RuntimeError(f"{name}: input and parameter tensors are not on the same device: "
                           f"input on {data.device}, parameters on {weight.device}")
    if data.shape[-1] != input_size:
        raise RuntimeError(f"{name}: input.size(-1) must be equal to input_size. "
                           f"Expected {input_size}, got {data.shape[-1]}")


def parameter_mismatch(name: str, what: str, weight: Tensor, first: Tensor) -> None:
    raise RuntimeError(f"{name}: every parameter must have weight_ih_l0's dtype and device ({first.dtype} on "
                       f"{first.device}), got {what} of {weight.dtype} on {weight.device}. Convert the whole "
                       f"module: module.to({first.dtype})")


def sequence_length(name: str, num_steps: int, input: Tensor) -> None:
    if num_steps < 1:
        raise RuntimeError(f"{name}: Expected sequence length to be larger than 0 in RNN, got {num_steps} "
                           f"(input of shape {shape(input)})")


def packed(name: str, data: Tensor, batch_sizes: Tensor, sorted_indices: Tensor | None) -> None:
    """A PackedSequence must describe its data exactly; torch's packing does not always ensure it."""
    if data.dim() != 2:
        raise ValueError(f"{name}: expected PackedSequence data of shape (total steps, input_size), "
                         f"got {data.dim()}D shape {shape(data)}")
    sizes = batch_sizes.tolist()
    if len(sizes) == 0:
        raise RuntimeError(f"{name}: expected a sequence length of at least 1, got an empty PackedSequence")
    if min(sizes) < 1 or any(a < b for a, b in itertools.pairwise(sizes)):
        raise RuntimeError(f"{name}: PackedSequence batch_sizes must be positive and non-increasing, "
                           f"got {sizes}")
    if sum(sizes) != data.shape[0]:
        raise RuntimeError(f"{name}: PackedSequence batch_sizes sum to {sum(sizes)} but its data has "
                           f"{data.shape[0]} rows; were the lengths given to pack_padded_sequence longer "
                           f"than the padded input's time dimension?")
    if sorted_indices is not None and sorted_indices.numel() != sizes[0]:
        raise RuntimeError(f"{name}: PackedSequence sorted_indices has {sorted_indices.numel()} entries "
                           f"for a batch of {sizes[0]}")


def lengths(name: str, lengths, num_steps: int, batch: int) -> Tensor:
    """Per-sequence lengths for padded input: integers in [1, T], one per batch element."""
    if batch == 0:  # torch.nn.utils.rnn.pack_padded_sequence: "Cannot pack empty tensors."
        raise RuntimeError(f"{name}: lengths= needs a batch of at least 1 sequence, got batch size 0; "
                           f"call without lengths= for an empty batch")
    lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1 or lengths.numel() != batch:
        raise RuntimeError(f"{name}: expected lengths of shape ({batch},), one per sequence, "
                           f"got shape {shape(lengths)}")
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise RuntimeError(f"{name}: expected integer lengths, got dtype {lengths.dtype}")
    lo, hi = int(lengths.min()), int(lengths.max())
    if lo < 1 or hi > num_steps:
        raise RuntimeError(f"{name}: lengths must lie in [1, {num_steps}] (the input's time dimension), "
                           f"got min {lo} and max {hi}")
    return lengths.cpu()


def state(name: str, what: str, state: Tensor, expected: tuple[int, int, int], data: Tensor,
          label: str = "hidden") -> None:
    """A layer's initial state against its expected shape (L*D, B, P) (and the input's dtype and device).

    label is torch.nn's name for it, which its messages use: "hidden" (RNN, GRU), "hidden[0]" and
    "hidden[1]" (LSTM's h_0 and c_0)."""
    if not isinstance(state, Tensor):
        raise TypeError(f"{name}: expected {what} to be a Tensor, got {type(state).__name__}")
    if shape(state) != expected:
        detail = f"{what} of shape {shape(state)}"
        if state.dim() == 3 and state.shape[1] != expected[1]:
            detail = f"{what} has batch size {state.shape[1]} but the input has batch size {expected[1]}"
        raise RuntimeError(f"{name}: Expected {label} size {expected}, got {list(state.shape)} ({detail})")
    if state.dtype != data.dtype:
        raise RuntimeError(f"{name}: {what} dtype ({state.dtype}) does not match input dtype ({data.dtype})")
    if state.device != data.device:
        raise RuntimeError(f"{name}: {what} is on {state.device} but the input is on {data.device}")


def cell_call(name: str, input, states: tuple, input_size: int, hidden_size: int, weight: Tensor) -> None:
    """One cell call, checked in torch.nn's order, so the first mistake raises what torch.nn raises.

    torch.nn's cells check ranks in Python (ValueError), then shapes in the cell op (RuntimeError,
    whose words their tests match: "input has inconsistent input_size", "Input batch size 3 doesn't
    match hidden0 batch size 5", "hidden0 has inconsistent hidden_size"), then meet the dtype and
    device in the matrix product (RuntimeError). states holds h_0 (and c_0), or None for zeros."""
    input_dims(name, input, (1, 2))
    lstm = len(states) == 2
    for k, s in enumerate(states):
        if s is not None and not isinstance(s, Tensor):
            raise TypeError(f"{name}: expected {STATE_NAMES[k]} to be a Tensor, got {type(s).__name__}")
        if s is not None and s.dim() not in (1, 2):
            label = f"hx[{k}]" if lstm else "hidden"
            raise ValueError(f"{name}: Expected {label} to be 1D or 2D, got {s.dim()}D instead "
                             f"({STATE_NAMES[k]} of shape {shape(s)})")
    given = [s for s in states if s is not None]
    state_dims(name, tuple(given), input.dim() == 2, input_dims=2)
    if input.shape[-1] != input_size:
        raise RuntimeError(f"{name}: input has inconsistent input_size: got {input.shape[-1]} expected "
                           f"{input_size} (input of shape {shape(input)})")
    batch = input.shape[0] if input.dim() == 2 else None
    for k, s in enumerate(states):
        if s is None:
            continue
        what = f"{STATE_NAMES[k]} of shape {shape(s)}"
        if batch is not None and s.shape[0] != batch:
            raise RuntimeError(f"{name}: Input batch size {batch} doesn't match hidden{k} batch size "
                               f"{s.shape[0]} ({what})")
        if s.shape[-1] != hidden_size:
            raise RuntimeError(f"{name}: hidden{k} has inconsistent hidden_size: got {s.shape[-1]}, expected "
                               f"{hidden_size} ({what})")
    input_matches_weights(name, input, weight, input_size, dtype_error=RuntimeError)
    for k, s in enumerate(states):
        if s is not None and s.dtype != input.dtype and not autocast_on(input.device.type):
            raise RuntimeError(f"{name}: {STATE_NAMES[k]} dtype ({s.dtype}) does not match input dtype "
                               f"({input.dtype})")
        if s is not None and s.device != input.device:
            raise RuntimeError(f"{name}: {STATE_NAMES[k]} is on {s.device} but the input is on {input.device}")


STATE_NAMES = ("h_0", "c_0")


def state_dims(name: str, hx, batched: bool, input_dims: int = 3) -> None:
    """States have the input's rank (layers: 3-D batched, 2-D unbatched; cells pass input_dims=2)."""
    want = input_dims if batched else input_dims - 1
    tensors = hx if isinstance(hx, tuple) else (hx,)
    for t in tensors:
        if isinstance(t, Tensor) and t.dim() != want:
            kind = f"batched {input_dims}-D" if batched else f"unbatched {input_dims - 1}-D"
            raise RuntimeError(f"{name}: For {kind} input, the initial states should also be {want}-D "
                               f"but got a {t.dim()}-D tensor of shape {shape(t)}")


def lstm_hx(name: str, hx) -> None:
    """(h_0, c_0): a tuple (or list) of two. torch's cell op raises TypeError for anything but a tuple
    and RuntimeError ("expects two hidden states") for a tuple of another length."""
    if not isinstance(hx, (tuple, list)):
        raise TypeError(f"{name}: expected hx to be a tuple (h_0, c_0), got {type(hx).__name__}")
    if len(hx) != 2:
        raise RuntimeError(f"{name}: expected hx to be a tuple of 2 tensors (h_0, c_0), "
                           f"got a {type(hx).__name__} of {len(hx)}")
    if not all(isinstance(t, Tensor) for t in hx):
        raise TypeError(f"{name}: expected hx to be a tuple of 2 tensors (h_0, c_0), "
                        f"got ({', '.join(type(t).__name__ for t in hx)})")
