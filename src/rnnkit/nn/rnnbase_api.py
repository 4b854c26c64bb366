"""torch.nn.RNNBase's argument helpers, for code that subclasses a layer and writes its own forward.

Such code (written against torch.nn) checks its arguments with `check_forward_args`, re-sorts the states of a
packed batch with `permute_hidden`, and calls torch's kernel on `self._flat_weights`; with rnnkit's layers
swapped in it must find the same methods, raising the same errors with the same messages.

Example:
    >>> import torch, rnnkit
    >>> lstm = rnnkit.LSTM(4, 3)
    >>> x, h0 = torch.randn(5, 2, 4), torch.zeros(1, 2, 3)
    >>> lstm.check_forward_args(x, (h0, h0), None)  # raises on a wrong size or dtype, as torch.nn's does
    >>> lstm.get_expected_hidden_size(x, None)
    (1, 2, 3)
"""

from __future__ import annotations

import torch
from torch import Tensor


class TorchRNNBaseHelpers:
    """The helpers of torch.nn.RNNBase (and torch.nn.LSTM's overrides, where self.mode is "LSTM")."""

    def check_input(self, input: Tensor, batch_sizes: Tensor | None) -> None:
        """The input's dtype (outside autocast), number of dimensions (2 packed, else 3) and feature size."""
        weight_dtype = self._flat_weights[0].dtype
        if input.dtype != weight_dtype and not torch._C._is_any_autocast_enabled():
            raise ValueError(f"RNN input dtype ({input.dtype}) does not match weight dtype ({weight_dtype}). Convert "
                             f"input: input.to({weight_dtype}), or convert model: model.to({input.dtype})")
        dims = 3 if batch_sizes is None else 2
        if input.dim() != dims:
            raise RuntimeError(f"input must have {dims} dimensions, got {input.dim()}")
        if input.size(-1) != self.input_size:
            raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected {self.input_size}, "
                               f"got {input.size(-1)}")

    def _expected_state_size(self, input: Tensor, batch_sizes: Tensor | None, width: int) -> tuple[int, int, int]:
        """(layers x directions, batch, width) for this input (batch from batch_sizes when packed)."""
        if batch_sizes is not None:
            batch = int(batch_sizes[0])
        else:
            batch = input.size(0) if self.batch_first else input.size(1)
        return self.num_layers * self.num_directions, batch, width

    def get_expected_hidden_size(self, input: Tensor, batch_sizes: Tensor | None) -> tuple[int, int, int]:
        """h_0's shape: its width is proj_size where the LSTM has a projection."""
        return self._expected_state_size(input, batch_sizes, self.proj_size or self.hidden_size)

    def check_hidden_size(self, hx: Tensor, expected_hidden_size: tuple[int, int, int],
                          msg: str = "Expected hidden size {}, got {}") -> None:
        if hx.size() != expected_hidden_size:
            raise RuntimeError(msg.format(expected_hidden_size, list(hx.size())))

    def check_forward_args(self, input: Tensor, hidden, batch_sizes: Tensor | None) -> None:
        """check_input, then each state's shape (an LSTM's hidden is the pair (h_0, c_0))."""
        self.check_input(input, batch_sizes)
        if self.mode != "LSTM":
            self.check_hidden_size(hidden, self.get_expected_hidden_size(input, batch_sizes))
            return
        self.check_hidden_size(hidden[0], self.get_expected_hidden_size(input, batch_sizes),
                               "Expected hidden[0] size {}, got {}")
        self.check_hidden_size(hidden[1], self.get_expected_cell_size(input, batch_sizes),
                               "Expected hidden[1] size {}, got {}")

    def permute_hidden(self, hx, permutation: Tensor | None):
        """The states reordered along the batch (a PackedSequence's sorted or unsorted indices); None: unchanged."""
        if permutation is None:
            return hx
        if self.mode == "LSTM":
            return hx[0].index_select(1, permutation), hx[1].index_select(1, permutation)
        return hx.index_select(1, permutation)
