"""minGRU and minLSTM layers (Feng et al. 2024, "Were RNNs All We Needed?"), with torch.nn.GRU's interface.

    layer = rnnkit.MinGRU(input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                          dropout=0.0, bidirectional=False, device=None, dtype=None, *, engine="auto")
    output, h_n = layer(input, h_0)        input: (T, B, I), (B, T, I) with batch_first, (T, I), or a
                                           PackedSequence; h_0 (L*D, B, H); output (T, B, D*H)

Parameters per layer and direction: weight_ih_l{k}{_reverse} (2H or 3H, in) and bias_ih_l{k}{_reverse},
U(-1/sqrt(H), 1/sqrt(H)) as torch.nn. There is no W_hh: the gates read the input only, so training runs
the recurrence as a scan over time (rnnkit.engines.minimal; math in rnnkit.cells.minimal).

`layer.step(x_t, h)` advances a unidirectional layer by one time step in O(1) memory (generation,
streaming); stepping through a sequence gives the whole-sequence call's output and final state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cells import minimal as cell
from ..engines import variant_ops
from .layers import Rows
from .variants import VariantLayer


class MinimalLayer(VariantLayer):
    """What MinGRU and MinLSTM share; use those classes."""

    family = "minimal"
    config = ""  # "mingru" or "minlstm"

    def parameter_shapes(self, layer_input: int) -> dict[str, tuple[int, ...]]:
        gate_size = cell.blocks(self.config) * self.hidden_size
        shapes = {"weight_ih": (gate_size, layer_input)}
        if self.bias:
            shapes["bias_ih"] = (gate_size,)
        return shapes

    def recurrence(self, index: int, direction: int, x: Tensor, rows: Rows):
        """xp = x W_ih^T + b_ih for all steps at once, the operator's only input: no recurrent weights."""
        w = self.weights(index, direction)
        return self.config, variant_ops.input_projection(x, w["weight_ih"], w.get("bias_ih")), [], []

    def step(self, x: Tensor, h: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One time step of every layer: x (B, I) or (I,), h (L, B, H) or (L, H) or None (zeros).

        Returns (y, h_new): y (B, H) the top layer's new state, h_new (L, B, H), or (B, H) when h was given
        as (B, H), which a one-layer model may do (y_t, h = layer.step(x_t, h_n[0])). Plain torch ops, so
        autograd differentiates it when it is on; nothing about earlier steps is kept."""
        name = type(self).__name__
        x, unbatched = self.step_input(x)
        one_layer_state = h is not None and not unbatched and h.dim() == 2 and self.num_layers == 1
        h = h.unsqueeze(0) if one_layer_state else h
        if h is None:
            h = x.new_zeros(self.num_layers, x.shape[0], self.hidden_size)
        else:
            h = h.unsqueeze(1) if unbatched else h
            if tuple(h.shape) != (self.num_layers, x.shape[0], self.hidden_size):
                raise ValueError(f"{name}.step: h should be {(self.num_layers, x.shape[0], self.hidden_size)}, "
                                 f"got {tuple(h.shape)}")
        new = []
        for index in range(self.num_layers):
            w = self.weights(index, 0)
            x = cell.forward(self.config, F.linear(x, w["weight_ih"], w.get("bias_ih")), h[index])
            new.append(x)
            if self.dropout > 0 and self.training and index < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)
        h_new = torch.stack(new)
        if one_layer_state:
            return x, h_new[0]
        return (x.squeeze(0), h_new.squeeze(1)) if unbatched else (x, h_new)


class MinGRU(MinimalLayer):
    """minGRU: z = sigmoid(k_z), h~ = g(k_h), h_t = (1 - z) h_{t-1} + z h~, with [k_z, k_h] = W_ih x + b_ih."""

    config = "mingru"


class MinLSTM(MinimalLayer):
    """minLSTM: f, i = sigmoid(k_f), sigmoid(k_i), normalised to f' + i' = 1; h_t = f' h_{t-1} + i' g(k_h)."""

    config = "minlstm"
