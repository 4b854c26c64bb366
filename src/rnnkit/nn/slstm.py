"""rnnkit.nn.SLSTM: a layer of xLSTM's sLSTM cells (Beck et al. 2024) with torch.nn.LSTM's options.

The cell (rnnkit.cells.slstm): an exponential input gate, a sigmoid forget gate in log form, a
normaliser state n and a stabiliser state m, and block-diagonal recurrent weights, one dense block
per head. The layer computes xp = W_ih x + b_ih for all steps at once and the operator of
rnnkit.engines.slstm runs the time loop (engine "auto": triton on CUDA, cpu otherwise).

Example:
    >>> import torch
    >>> from rnnkit.nn.slstm import SLSTM
    >>> layer = SLSTM(3, 8, num_layers=2, num_heads=2, batch_first=True)
    >>> out, (h_n, c_n, n_n, m_n) = layer(torch.randn(4, 5, 3))
    >>> out.shape, h_n.shape
    (torch.Size([4, 5, 8]), torch.Size([2, 4, 8]))
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

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
        xp = F.linear(x, w["weight_ih"], w.get("bias_ih"))  # (N, 4H), all steps at once
        return f"heads={self.num_heads}", xp, [w["weight_hh"]], []

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s + (f", num_heads={self.num_heads}" if self.num_heads != 1 else "")
