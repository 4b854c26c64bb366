"""rnnkit.nn.SLSTM: a layer of xLSTM's sLSTM cells (Beck et al. 2024) with torch.nn.LSTM's options.

The cell (rnnkit.cells.slstm): an exponential input gate, a sigmoid forget gate in log form, a
normaliser state n and a stabiliser state m, and block-diagonal recurrent weights, one dense block
per head. The layer computes xp = W_ih x + b_ih for all steps at once and the operator of
rnnkit.engines.slstm runs the time loop (engine "auto": triton on CUDA, cpu otherwise).

`layer.step(x_t, hx)` advances a unidirectional layer by one time step in O(1) memory (generation,
streaming); stepping through a sequence gives the whole-sequence call's output and final states.

Example:
    >>> import torch
    >>> from rnnkit.nn.slstm import SLSTM
    >>> layer = SLSTM(3, 8, num_layers=2, num_heads=2, batch_first=True)
    >>> out, (h_n, c_n, n_n, m_n) = layer(torch.randn(4, 5, 3))
    >>> out.shape, h_n.shape
    (torch.Size([4, 5, 8]), torch.Size([2, 4, 8]))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cells import slstm as cell
from ..engines import variant_ops
from .layers import Rows
from .variants import VariantLayer


class SLSTM(VariantLayer):
    """sLSTM layer. Parameters per layer and direction (suffix _l{k} or _l{k}_reverse):

        weight_ih (4H, input)   rows in gate order i, f, z, o
        weight_hh (4H, H/K)     the block-diagonal recurrent weights, K = num_heads: row q*H + k*dh + u
                                (gate q, head k, unit u) multiplies head k's slice h[k*dh:(k+1)*dh]
        bias_ih (4H)            when bias=True (there is no recurrent bias: it would add to this one)

    forward(input, hx=None) takes input as torch.nn.LSTM does (padded, batch_first, unbatched,
    PackedSequence) and hx = (h_0, c_0, n_0, m_0), each (L*D, B, H), zeros by default; it returns
    (output, (h_n, c_n, n_n, m_n)). Every parameter starts as U(-1/sqrt(H), 1/sqrt(H)), as torch.nn's.
    """

    family = "slstm"
    state_names = ("h", "c", "n", "m")

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device=None,
                 dtype=None, *, num_heads: int = 1, engine: str = "auto") -> None:
        if not isinstance(num_heads, int) or isinstance(num_heads, bool) or num_heads < 1:
            raise ValueError(f"SLSTM: num_heads should be a positive int, got {num_heads!r}")
        if isinstance(hidden_size, int) and hidden_size % num_heads:
            raise ValueError(f"SLSTM: num_heads={num_heads} must divide hidden_size={hidden_size}")
        self.num_heads = num_heads  # parameter_shapes reads it while the base class registers the parameters
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, device,
                         dtype, engine=engine)

    def parameter_shapes(self, layer_input: int) -> dict[str, tuple[int, ...]]:
        gates = 4 * self.hidden_size
        shapes = {"weight_ih": (gates, layer_input), "weight_hh": (gates, self.hidden_size // self.num_heads)}
        if self.bias:
            shapes["bias_ih"] = (gates,)
        return shapes

    def recurrence(self, index: int, direction: int, x: Tensor, rows: Rows):
        w = self.weights(index, direction)
        xp = variant_ops.input_projection(x, w["weight_ih"], w.get("bias_ih"))  # (N, 4H), all steps at once
        return f"heads={self.num_heads}", xp, [w["weight_hh"]], []

    def step(self, x: Tensor, hx=None) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor, Tensor]]:
        """One time step of every layer: x (B, I) or (I,); hx = (h, c, n, m), each (L, B, H) (or (L, H) for an
        unbatched x), or None (zeros). Returns (y (B, H) the top layer's h, (h, c, n, m) new). Plain torch ops
        (rnnkit.cells.slstm.forward), so autograd differentiates it when it is on."""
        name = type(self).__name__
        x, unbatched = self.step_input(x)
        shape = (self.num_layers, x.shape[0], self.hidden_size)
        if hx is None:
            states = [x.new_zeros(shape) for _ in self.state_names]
        else:
            if not isinstance(hx, (tuple, list)) or len(hx) != 4:
                raise TypeError(f"{name}.step: hx should be a tuple (h, c, n, m), got {type(hx).__name__}")
            states = [s.unsqueeze(1) if unbatched else s for s in hx]
            for state_name, s in zip(self.state_names, states, strict=True):
                if tuple(s.shape) != shape:
                    raise ValueError(f"{name}.step: {state_name} should be {shape}, got {tuple(s.shape)}")
        new = [[] for _ in states]
        for index in range(self.num_layers):
            w = self.weights(index, 0)
            xp = F.linear(x, w["weight_ih"], w.get("bias_ih"))  # (B, 4H)
            layer_new, _ = cell.forward(xp, tuple(s[index] for s in states), w["weight_hh"], self.num_heads)
            for acc, t in zip(new, layer_new, strict=True):
                acc.append(t)
            x = layer_new[0]
            if self.dropout > 0 and self.training and index < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)
        stacked = tuple(torch.stack(s) for s in new)
        if unbatched:
            return x.squeeze(0), tuple(s.squeeze(1) for s in stacked)
        return x, stacked

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s + (f", num_heads={self.num_heads}" if self.num_heads != 1 else "")
