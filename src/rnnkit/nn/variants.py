"""Cells torch.nn does not have, with torch.nn's layer options: the layer side of rnnkit.engines.variant_ops.

Two kinds of layer run here:

- rnnkit.LSTM and rnnkit.GRU built with options torch.nn lacks (all composable, one fused call):

      layer_norm=True           layer normalisation of the input and recurrent pre-activations (and of
                                the LSTM's cell state before its tanh), learnable gain and bias
                                (Ba, Kiros & Hinton 2016)
      peephole=True             LSTM only: the gates i, f read c_{t-1}, the gate o reads c_t
                                (Gers & Schmidhuber 2000)
      zoneout=p or (p_h, p_c)   in training each unit of h (and of the LSTM's c) keeps its previous
                                value with probability p, one draw per step and unit (Krueger et al. 2016)
      recurrent_dropout=p       in training the recurrent input h_{t-1} of the gates is multiplied by a
                                dropout mask drawn once per sequence and shared by all steps (the
                                variational dropout of Gal & Ghahramani 2016)
      weight_drop=p             in training W_hh is multiplied by a dropout mask drawn once per forward
                                pass (DropConnect, the weight-dropped LSTM of Merity et al. 2017)

  The regularisers are the identity in eval mode; with only regularisers, an eval-mode layer runs
  torch.nn's own cell (and DropConnect alone runs it in training too, on the dropped weights).

- layers of new cell families (rnnkit.MinGRU, MinLSTM, SLSTM) subclass VariantLayer.

Either way, per layer and direction, `recurrence` turns the layer's input rows into what the family's
operator takes (config, xp, params, masks) with ordinary autograd ops over all steps at once, and the
operator runs the time loop on the chosen engine.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from .. import engines
from ..engines import variant_ops
from . import checks
from .layers import RecurrentLayer, Rows, cast_states


def variant_forward(layer: RecurrentLayer, family: str, input, hx, lengths):
    """forward of a layer whose cells come from engine family `family`.

    Under torch.autocast these cells run in the input's dtype, as torch.nn's GRU does on CPU (autocast has
    no policy for them, and casting half of their ops, the products but not the layer norms, would mix
    dtypes at the operator): the output has the input's dtype, and so do the states they start from."""
    data = input.data if isinstance(input, PackedSequence) else input
    if isinstance(data, Tensor) and engines.ops.autocast_on(data.device.type):
        with torch.autocast(data.device.type, enabled=False):  # states carried from a low-dtype call: the input's
            return variant_forward(layer, family, input, cast_states(hx, data.dtype), lengths)
    name = type(layer).__name__
    rows, form = layer.to_rows(input, lengths)
    if form.export_lengths is not None:
        raise NotImplementedError(f"{name}: lengths= under torch.export is not supported for these cells; export "
                                  "the model on padded input without lengths, or on a PackedSequence-free path")
    states0 = layer.initial_state_list(hx, rows, form.unbatched)  # each (L*D, B, .)
    engine = variant_ops.resolve(family, engines.auto_choice() if layer.engine == "auto" else layer.engine,
                                 rows.data.device.type, rows.data.dtype)
    x, finals = rows.data, [[] for _ in states0]
    for index in range(layer.num_layers):
        outs = []
        for direction in range(layer.num_directions):
            k = index * layer.num_directions + direction
            config, xp, params, masks = layer.recurrence(index, direction, x, rows)
            out, states_n = variant_ops.run(family, engine, config, xp, rows.batch_sizes, [s[k] for s in states0],
                                            params, masks, direction == 1)
            outs.append(out)
            for final, s in zip(finals, states_n, strict=True):
                final.append(s)
        x = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]  # (N, D*H)
        if layer.dropout > 0 and layer.training and index < layer.num_layers - 1:
            x = F.dropout(x, layer.dropout, training=True)
    return layer.from_rows(x, [torch.stack(f) for f in finals], rows, form)


# ---------------------------------------------------------------- new cell families


class VariantLayer(RecurrentLayer):
    """Base of the layers of cell families torch.nn does not have (rnnkit.MinGRU, MinLSTM, SLSTM).

    It gives them everything rnnkit.LSTM has around the cell: the input forms (padded, batch_first,
    unbatched, PackedSequence, lengths=), num_layers, bidirectional, dropout between layers, initial
    states, engine selection, and state_dicts with torch-style names (weight_ih_l0, ...).

    A subclass sets:
        family       the engine family (a folder of rnnkit.engines, see variant_ops.py)
        state_names  names of its states, ("h",) or ("h", "c", "n", "m"): forward returns h_n alone or
                     the tuple of all, and takes hx in the same form
    and defines:
        parameter_shapes(layer_input) -> {kind: shape}   the parameters of one layer and direction,
                                         registered as f"{kind}_l{layer}{_reverse}"
        recurrence(index, direction, x, rows) -> (config, xp, params, masks)
                                         the operator's arguments for one layer and direction, from the
                                         layer's input rows x (N, I); `self.weights(index, direction)`
                                         gives that layer's parameters by kind
    """

    family: str = ""
    state_names: tuple[str, ...] = ("h",)

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device=None,
                 dtype=None, *, engine: str = "auto") -> None:
        super().__init__(type(self).__name__.upper(), input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype, engine=engine)

    def active_family(self) -> str:
        return self.family

    def weights(self, index: int, direction: int) -> dict[str, Tensor]:
        """The parameters of layer `index`, direction `direction`, by kind (weight_ih, bias_ih, ...)."""
        suffix = f"_l{index}" + ("_reverse" if direction else "")
        names = self._all_weights[index * self.num_directions + direction]
        return {n[: -len(suffix)]: getattr(self, n) for n in names}

    def layer_weights(self):
        raise NotImplementedError(f"{type(self).__name__} has no torch.nn cell to run; use weights(index, direction)")

    def initial_state_list(self, hx, rows: Rows, unbatched: bool) -> list[Tensor]:
        """Each initial state (L*D, B, H), validated, in the engine's row order; zeros where hx is None."""
        name, data = type(self).__name__, rows.data
        shape = (self.num_layers * self.num_directions, rows.batch, self.hidden_size)
        if hx is None:
            return [torch.zeros(shape, dtype=data.dtype, device=data.device) for _ in self.state_names]
        several = len(self.state_names) > 1
        if several and (not isinstance(hx, (tuple, list)) or len(hx) != len(self.state_names)):
            raise TypeError(f"{name}: hx should be a tuple ({', '.join(s + '_0' for s in self.state_names)}), "
                            f"got {type(hx).__name__}" + (f" of {len(hx)}" if isinstance(hx, (tuple, list)) else ""))
        states = list(hx) if several else [hx]
        checks.state_dims(name, tuple(states) if several else states[0], batched=not unbatched)
        result = []
        for state_name, s in zip(self.state_names, states, strict=True):
            s = s.unsqueeze(1) if unbatched else s
            checks.state(name, f"{state_name}_0", s, shape, data, state_name)
            if rows.packed is not None and rows.packed.sorted_indices is not None:
                s = s.index_select(1, rows.packed.sorted_indices)
            result.append(s)
        return result

    def step_input(self, x: Tensor) -> tuple[Tensor, bool]:
        """A step's input as (B, I) rows, and whether it came unbatched; what step() of a subclass checks first."""
        name = type(self).__name__
        if self.bidirectional:
            raise ValueError(f"{name}.step: a bidirectional layer needs the whole sequence; step runs one direction")
        if not isinstance(x, Tensor) or x.dim() not in (1, 2):
            raise ValueError(f"{name}.step: x should be (batch, input_size) or (input_size,), got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        return (x.unsqueeze(0), True) if x.dim() == 1 else (x, False)

    def stream(self, batch_size: int | None = None, hx=None):
        raise NotImplementedError(f"{type(self).__name__} has no stream(); use its step() for one step at a time")
