"""Single-step cells: drop-ins for torch.nn.RNNCell, torch.nn.LSTMCell and torch.nn.GRUCell.

A cell call is a sequence of one step, so it runs on the same engine, and the same
hand-derived backward, as the layers.

Shapes: input (B, input_size) or (input_size,) unbatched; states (B, hidden_size) or (hidden_size,).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .. import engines
from . import checks
from .layers import GATES


class RecurrentCell(nn.Module):
    """What RNNCell, LSTMCell and GRUCell share; use those classes."""

    def __init__(self, mode: str, input_size: int, hidden_size: int, bias: bool, device, dtype, engine: str):
        super().__init__()
        checks.constructor(type(self).__name__, input_size, hidden_size, 1, bias, False, 0.0, 0)
        engines.check_name(engine)
        self.mode, self.engine = mode, engine
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        factory = {"device": device, "dtype": dtype}
        gate_size = GATES[mode] * hidden_size
        self.weight_ih = nn.Parameter(torch.empty((gate_size, input_size), **factory))
        self.weight_hh = nn.Parameter(torch.empty((gate_size, hidden_size), **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(gate_size, **factory))
            self.bias_hh = nn.Parameter(torch.empty(gate_size, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)) for every parameter, as torch.nn does."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        if getattr(self, "nonlinearity", "tanh") != "tanh":
            s += f", nonlinearity={self.nonlinearity!r}"
        return s

    def step(self, input: Tensor, states: tuple[Tensor | None, ...]):
        """Validate, run one step on the engine, return the new states (unbatched when the input was)."""
        name = type(self).__name__
        checks.input_dims(name, input, (1, 2))
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)  # (B, I)
        checks.input_matches_weights(name, x, self.weight_ih, self.input_size, dtype_error=RuntimeError)
        x = x.to(self.weight_ih.dtype)
        full = []
        for what, s in zip(("h_0", "c_0")[: len(states)], states, strict=True):
            if s is None:
                s = torch.zeros(x.shape[0], self.hidden_size, dtype=x.dtype, device=x.device)
            else:
                checks.state_dims(name, s, batched, input_dims=2)
                s = s if batched else s.unsqueeze(0)
                checks.state(name, what, s, (x.shape[0], self.hidden_size), x)
            full.append(s)
        run_layer = engines.select(self.engine, x)
        h0, c0 = full[0], full[1] if len(full) > 1 else None
        _, h, c = run_layer(self.mode, x, (x.shape[0],), h0, c0, self.weight_ih, self.weight_hh,
                            self.bias_ih, self.bias_hh, None, reverse=False)
        new = (h,) if c is None else (h, c)
        return new if batched else tuple(s.squeeze(0) for s in new)


class RNNCell(RecurrentCell):
    r"""Elman RNN cell, a drop-in for torch.nn.RNNCell: h' = act(W_ih x + b_ih + W_hh h + b_hh).

    Example:
        >>> import torch, rnnkit
        >>> cell = rnnkit.RNNCell(10, 20)
        >>> h = torch.zeros(3, 20)
        >>> for x in torch.randn(6, 3, 10):
        ...     h = cell(x, h)
        >>> h.shape
        torch.Size([3, 20])
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                 device=None, dtype=None, *, engine: str = "auto") -> None:
        checks.nonlinearity("RNNCell", nonlinearity)
        self.nonlinearity = nonlinearity
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", input_size, hidden_size, bias,
                         device, dtype, engine)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        return self.step(input, (hx,))[0]


class LSTMCell(RecurrentCell):
    r"""LSTM cell, a drop-in for torch.nn.LSTMCell, gate order (i, f, g, o). Returns (h', c').

    Example:
        >>> import torch, rnnkit
        >>> cell = rnnkit.LSTMCell(10, 20)
        >>> h, c = cell(torch.randn(3, 10))
        >>> h.shape, c.shape
        (torch.Size([3, 20]), torch.Size([3, 20]))
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None, *,
                 engine: str = "auto") -> None:
        super().__init__("LSTM", input_size, hidden_size, bias, device, dtype, engine)

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        if hx is not None:
            checks.lstm_hx("LSTMCell", hx)
        return self.step(input, (None, None) if hx is None else tuple(hx))


class GRUCell(RecurrentCell):
    r"""GRU cell, a drop-in for torch.nn.GRUCell, gate order (r, z, n).

    Example:
        >>> import torch, rnnkit
        >>> cell = rnnkit.GRUCell(10, 20)
        >>> cell(torch.randn(10)).shape
        torch.Size([20])
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None, *,
                 engine: str = "auto") -> None:
        super().__init__("GRU", input_size, hidden_size, bias, device, dtype, engine)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        return self.step(input, (hx,))[0]
