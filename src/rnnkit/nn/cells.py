"""Single-step cells: drop-ins for torch.nn.RNNCell, torch.nn.LSTMCell and torch.nn.GRUCell.

How a cell call runs (`runs_plain` is the one place this is decided):

- `engine="auto"` (the default): the step is torch's own step operator (`torch.lstm_cell`,
  `torch.gru_cell`, `torch.rnn_tanh_cell`, `torch.rnn_relu_cell`: the step math of
  `rnnkit.cells.{rnn,lstm,gru}.forward`, composed in C++; tests/test_cells.py checks the two agree),
  and autograd differentiates it. A cell call is one step of a loop the caller writes (decoders,
  attention, tutorials), where a whole-sequence engine has nothing to fuse and its dispatch is the
  whole cost. Python overhead is the budget there: the same step as a dozen Python-level ops ran at
  0.81-0.95x of torch.nn's cells where a call is overhead-bound; torch's operator plus the lean
  checks below costs less than torch.nn's own module call. It gives double backward, torch.func,
  torch.compile, torch.export, jit.trace, ONNX export and autocast exactly as torch.nn's cells have
  them, and under torch.func transforms (which have no batching rule for torch's cell operators,
  so torch.nn's cells fail under vmap) the same step as plain Python-level ops (`math_step`). Inside
  `with rnnkit.engines.use(name):` an auto cell runs engine `name` instead, as the layers do.
- `engine="reference" | "cpu" | "triton"`: the step runs on that engine (`engines.select`),
  a sequence of one step, with the engine's hand-derived backward.

Shapes: input (B, input_size) or (input_size,) unbatched; states (B, hidden_size) or (hidden_size,).
Like torch.nn's cells, the constructor validates little: hidden_size=0 gives (B, 0) states, and
`bias` is taken for its truth value (torch.nn.RNNCell(10, 20, 'relu') has biases and runs tanh).

Example:
    >>> import torch, rnnkit
    >>> cell = rnnkit.LSTMCell(10, 20)
    >>> h = c = torch.zeros(3, 20)
    >>> for x in torch.randn(6, 3, 10):
    ...     h, c = cell(x, (h, c))
    >>> h.shape
    torch.Size([3, 20])
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .. import engines
from ..cells import gru, lstm, rnn
from . import checks
from .layers import GATES

# mode -> (the family's step math, its keyword arguments)
STEPS = {"RNN_TANH": (rnn.forward, {"nonlinearity": "tanh"}), "RNN_RELU": (rnn.forward, {"nonlinearity": "relu"}),
         "LSTM": (lstm.forward, {}), "GRU": (gru.forward, {})}
# mode -> torch's step operator for the same math: what an auto cell runs
TORCH_STEPS = {"RNN_TANH": torch.rnn_tanh_cell, "RNN_RELU": torch.rnn_relu_cell, "GRU": torch.gru_cell}


def runs_plain(engine: str) -> bool:
    """Whether a cell built with `engine` runs its step as plain torch ops: "auto", outside a `use` block."""
    return engine == "auto" and engines.auto_choice() == "auto"


class RecurrentCell(nn.Module):
    """What RNNCell, LSTMCell and GRUCell share; use those classes."""

    def __init__(self, mode: str, input_size: int, hidden_size: int, bias, device, dtype, engine: str):
        super().__init__()
        checks.cell_constructor(type(self).__name__, input_size, hidden_size)
        engines.check_name(engine)
        self.mode, self.engine = mode, engine
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        self._step, self._step_kw = STEPS[mode]
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
        """U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)) for every parameter, as torch.nn does (0 if hidden_size is 0)."""
        bound = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0.0
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.bias is not True:  # torch.nn prints any other value, e.g. bias=relu
            s += f", bias={self.bias}"
        if getattr(self, "nonlinearity", "tanh") != "tanh":
            s += f", nonlinearity={self.nonlinearity}"
        return s

    def __prepare_scriptable__(self):
        """torch.jit.script calls this first and compiles what it returns: torch.nn's twin of this cell, holding
        its Parameter objects (nn/twin.py)."""
        from .twin import cell_twin

        return cell_twin(self, {"LSTM": LSTMCell, "GRU": GRUCell}.get(self.mode, RNNCell))

    def step(self, input: Tensor, states: tuple[Tensor | None, ...]) -> tuple[Tensor, ...]:
        """Validate, run one step, return the new states (unbatched when the input was).

        states: (h_0,) or (h_0, c_0), None for zeros. The hot path checks only what would otherwise
        pass silently (ranks and state shapes that broadcast, a state dtype that promotes); any other
        mistake makes an op raise, and then checks.cell_call says what was wrong."""
        hidden = self.hidden_size
        dims = input.dim() if isinstance(input, Tensor) else -1
        if dims not in (1, 2):
            checks.cell_call(type(self).__name__, input, states, self.input_size, hidden, self.weight_ih)
        want = (input.shape[0], hidden) if dims == 2 else (hidden,)  # each state's shape
        for s in states:
            if s is not None and (not isinstance(s, Tensor) or s.shape != want or (
                    s.dtype != input.dtype and not engines.ops.autocast_on(input.device.type))):
                checks.cell_call(type(self).__name__, input, states, self.input_size, hidden, self.weight_ih)
        x = input if dims == 2 else input.unsqueeze(0)  # (B, I)
        zeros = None
        full = []
        for s in states:
            if s is None:
                if zeros is None:
                    zeros = torch.zeros(x.shape[0], hidden, dtype=x.dtype, device=x.device)
                s = zeros
            elif dims == 1:
                s = s.unsqueeze(0)
            full.append(s)  # (B, H)
        try:
            new = self.plain_step(x, full) if runs_plain(self.engine) else self.engine_step(x, full)
        except Exception:
            # an op failed: name the mistake if it is one of the caller's, else let the op's error out
            checks.cell_call(type(self).__name__, input, states, self.input_size, hidden, self.weight_ih)
            raise
        return new if dims == 2 else tuple(s.squeeze(0) for s in new)

    def plain_step(self, x: Tensor, full: list[Tensor]) -> tuple[Tensor, ...]:
        """One step by torch's step operator, differentiated by autograd. x: (B, I), full: [h (B, H), (c (B, H))]."""
        p = self._parameters  # one dict lookup instead of nn.Module.__getattr__ per parameter
        weights = p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"]
        if torch._C._are_functorch_transforms_active():  # torch has no vmap rule for its cell operators
            return self.math_step(x, full)
        if self.mode == "LSTM":
            return torch.lstm_cell(x, full, *weights)
        return (TORCH_STEPS[self.mode](x, full[0], *weights),)

    def math_step(self, x: Tensor, full: list[Tensor]) -> tuple[Tensor, ...]:
        """The same step in rnnkit.cells' math as plain Python-level ops (tests check plain_step against it)."""
        p = self._parameters
        xp = torch.nn.functional.linear(x, p["weight_ih"], p["bias_ih"])  # (B, G*H)
        return self._step(xp, tuple(full), p["weight_hh"], p["bias_hh"], keep=False, **self._step_kw)[0]

    def engine_step(self, x: Tensor, full: list[Tensor]) -> tuple[Tensor, ...]:
        """One step on the engine the cell names: a sequence of length one. x: (B, I)."""
        dtype = self.weight_ih.dtype
        if engines.ops.autocast_on(x.device.type):  # the dtype torch's cell operators compute in there
            low = torch.get_autocast_dtype(x.device.type)
            low_in = x.dtype == low or any(s.dtype == low for s in full)  # torch's cell then returns low
            dtype = low if self.mode.startswith("RNN") or low_in else dtype
        weights = [None if w is None else w.to(dtype) for w in (self.weight_ih, self.weight_hh, self.bias_ih,
                                                                 self.bias_hh)]
        x, full = x.to(dtype), [s.to(dtype) for s in full]
        run_layer = engines.select(self.engine, x)
        h0, c0 = full[0], full[1] if len(full) > 1 else None
        _, h, c = run_layer(self.mode, x, (x.shape[0],), h0, c0, *weights, None, reverse=False)
        return (h,) if c is None else (h, c)


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
        if hx is None:
            return self.step(input, (None, None))
        if type(hx) is not tuple or len(hx) != 2 or hx[0] is None or hx[1] is None:
            checks.lstm_hx("LSTMCell", hx)
            hx = tuple(hx)
        return self.step(input, hx)


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
