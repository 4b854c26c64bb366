"""Multi-layer RNN, LSTM and GRU: drop-ins for torch.nn.RNN, torch.nn.LSTM and torch.nn.GRU.

Same constructor arguments, parameter names and shapes, initialisation, inputs and outputs
as torch.nn, so a state_dict moves between the two with strict=True. Every layer and
direction runs on an engine from rnnkit.engines (one layer, one direction per call);
this module only reshapes, validates, stacks layers and applies dropout between them.

Shapes (time-major unless batch_first; L = num_layers, D = 2 if bidirectional else 1,
P = proj_size or hidden_size):

    input  (T, B, input_size), (B, T, input_size), (T, input_size) unbatched, or a PackedSequence
    h_0    (L*D, B, P)        c_0 (LSTM)  (L*D, B, hidden_size)
    output (T, B, D*P)        h_n         (L*D, B, P)          c_n (L*D, B, hidden_size)

Beyond torch.nn: forward takes `lengths=` for padded input (no pack/unpack needed; the
output is zero past each length and h_n is the state at each sequence's last step), and
the constructor takes `engine=` (see rnnkit.engines.select).
"""

from __future__ import annotations

import math
import warnings
from functools import partial
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .. import engines
from . import checks, options
from .rnnbase_api import TorchRNNBaseHelpers

GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}
TORCH_LANES = ("aten", "cells")  # the quick lanes that run torch's own ops (which autograd differentiates itself)
# Above this many multiply-adds a call's arithmetic takes milliseconds on any CPU, so rnnkit's Python per
# call (~0.05 ms) cannot decide between its engine and torch's whole stack, and timing the two would cost
# seconds once per shape class for nothing (and a slice of a large call can call a tie the wrong way)
STACK_TIMING_MAX_MACS = 1 << 30


class Rows(NamedTuple):
    """Any input form, as the engines take it: time-major packed rows."""
    data: Tensor  # (N, I)
    batch_sizes: Tensor | None  # sequences running at each step (int64, non-increasing); None: all B at every step
    batch: int  # B, the sequences of the batch
    packed: PackedSequence | None  # the packed form, when there is one (its batch order and indices)


class InputForm(NamedTuple):
    """How the caller gave the input, so the output goes back the same way."""
    packed: bool  # a PackedSequence came in, so one goes out
    unbatched: bool  # 2-D input without a batch dimension
    steps: int  # T of padded input
    batch: int  # B of padded input
    padded_lengths: bool  # padded input with lengths=: pad the packed output back to T
    export_lengths: Tensor | None = None  # lengths= while torch.export traces: masked steps, not packing


def run_stack(run_layer, mode: str, x: Tensor, batch_sizes: Tensor | None, h0: Tensor, c0: Tensor | None,
              weights: list[list[tuple]], dropout: float, training: bool):
    """All layers and directions. x: (N, I) packed rows. Returns out (N, D*P), h_n (L*D, B, P), c_n or None."""
    h_n, c_n = [], []
    for layer, directions in enumerate(weights):
        outs = []
        for direction, w in enumerate(directions):
            k = layer * len(directions) + direction
            out, h, c = run_layer(mode, x, batch_sizes, h0[k], None if c0 is None else c0[k], *w,
                                  reverse=direction == 1)
            outs.append(out)
            h_n.append(h)
            c_n.append(c)
        x = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]  # (N, D*P)
        if dropout > 0 and training and layer < len(weights) - 1:
            x = torch.nn.functional.dropout(x, dropout, training=True)
    return x, torch.stack(h_n), None if c0 is None else torch.stack(c_n)


def masked_layer(lengths: Tensor, mode: str, x: Tensor, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse):
    """A padded batch with lengths, as a masked scan of plain ops: what packing gives, for torch.export."""
    from ..engines.reference import scan_forward

    return scan_forward(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, lengths=lengths)


def autocast_dtype(mode: str, device_type: str, input, hx=None) -> torch.dtype | None:
    """The dtype torch.nn's layer computes in under torch.autocast, or None when autocast is off here.

    On CUDA, torch.nn runs every mode in the autocast dtype (cuDNN's RNN is on autocast's list). On CPU,
    LSTM and RNN run in it and return it; GRU is not on the list: it stays in float32 for a float32
    input and float32 state (and runs in the low dtype when the input or the state already is).
    """
    if not engines.ops.autocast_on(device_type):
        return None
    low = torch.get_autocast_dtype(device_type)
    data = input.data if isinstance(input, PackedSequence) else input
    if device_type == "cpu" and mode == "GRU" and data.dtype != low and getattr(hx, "dtype", None) != low:
        return None
    return low


def cast_states(hx, dtype: torch.dtype):
    """hx (a state, a tuple of states or None) with every tensor in `dtype`: under autocast torch.nn casts the
    states with the input, so a state carried from an earlier call (already in the low dtype) meets a float32
    input there. Anything not a tensor passes through, for the checks to name."""
    if isinstance(hx, Tensor):
        return hx.to(dtype)
    if isinstance(hx, (tuple, list)):
        return tuple(s.to(dtype) if isinstance(s, Tensor) else s for s in hx)
    return hx


def weight_names(layer: int, direction: int) -> tuple[str, ...]:
    """torch.nn's parameter names of one layer and direction: w_ih, w_hh, b_ih, b_hh, w_hr. Memoized in a plain dict:
    torch.compile warns at every functools.lru_cache it traces through."""
    names = _WEIGHT_NAMES.get((layer, direction))
    if names is None:
        suffix = f"_l{layer}" + ("_reverse" if direction else "")
        names = _WEIGHT_NAMES[layer, direction] = tuple(
            f"{k}{suffix}" for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr"))
    return names


_WEIGHT_NAMES: dict[tuple[int, int], tuple[str, ...]] = {}


class RecurrentLayer(TorchRNNBaseHelpers, nn.Module):
    """What RNN, LSTM and GRU share; use those classes."""

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 device=None, dtype=None, *, engine: str = "auto", layer_norm: bool = False, peephole: bool = False,
                 zoneout=0.0, recurrent_dropout: float = 0.0, weight_drop: float = 0.0) -> None:
        super().__init__()
        name = type(self).__name__
        checks.constructor(name, input_size, hidden_size, num_layers, bias, batch_first, dropout, proj_size)
        engines.check_name(engine)  # an unknown engine name fails here, not at the first forward
        self.zoneout_h, self.zoneout_c = options.check(name, mode, proj_size, dict(
            layer_norm=layer_norm, peephole=peephole, zoneout=zoneout, recurrent_dropout=recurrent_dropout,
            weight_drop=weight_drop))
        self.layer_norm, self.peephole, self.zoneout = layer_norm, peephole, zoneout
        self.recurrent_dropout, self.weight_drop = float(recurrent_dropout), float(weight_drop)
        self.mode, self.engine = mode, engine
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional, self.proj_size = bidirectional, proj_size
        if dropout > 0 and num_layers == 1:
            warnings.warn(f"{name}: dropout is applied between layers, so dropout={dropout} has no effect "
                          f"with num_layers=1", stacklevel=3)

        self.factory = {"device": device, "dtype": dtype}
        out_size = self.output_size
        self._flat_weights_names, self._all_weights, self._extra_weights_names = [], [], []
        # Registration order is torch's, so reset_parameters draws the same numbers from the same seed;
        # parameters torch.nn does not have (layer norm, peepholes) come after all of torch's.
        for extra in (False, True):
            for layer in range(num_layers):
                for suffix in ("", "_reverse")[: self.num_directions]:
                    layer_input = input_size if layer == 0 else out_size * self.num_directions
                    shapes = self.extra_parameter_shapes() if extra else self.parameter_shapes(layer_input)
                    names = [f"{kind}_l{layer}{suffix}" for kind in shapes]
                    for n, s in zip(names, shapes.values(), strict=True):
                        setattr(self, n, nn.Parameter(torch.empty(s, **self.factory)))
                    if extra:
                        self._extra_weights_names.extend(names)
                    else:
                        self._flat_weights_names.extend(names)
                        self._all_weights.append(names)
        self.reset_parameters()

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        return self.proj_size or self.hidden_size

    def parameter_shapes(self, layer_input: int) -> dict[str, tuple[int, ...]]:
        """torch.nn's parameters of one layer and direction, by kind, in torch's order."""
        gate_size = GATES[self.mode] * self.hidden_size
        shapes = {"weight_ih": (gate_size, layer_input), "weight_hh": (gate_size, self.output_size)}
        if self.bias:
            shapes.update(bias_ih=(gate_size,), bias_hh=(gate_size,))
        if self.proj_size:
            shapes["weight_hr"] = (self.proj_size, self.hidden_size)
        return shapes

    def extra_parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Parameters of one layer and direction that torch.nn does not have (rnnkit.nn.options)."""
        return options.parameter_shapes(self)

    def active_family(self) -> str | None:
        """The engine family of cells torch.nn does not have that this call runs, or None for torch.nn's cell."""
        return options.family(self)

    def recurrence(self, index: int, direction: int, x: Tensor, rows: Rows):
        """The operator arguments (config, xp, params, masks) of active_family() for one layer and direction."""
        return options.recurrence(self, index, direction, x, rows)

    def initial_state_list(self, hx, rows: Rows, unbatched: bool) -> list[Tensor]:
        h0, c0 = self.initial_states(hx, rows.data, rows.batch, unbatched, rows.packed)
        return [h0] if c0 is None else [h0, c0]

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        return [[getattr(self, n) for n in names] for names in self._all_weights]

    @property
    def _flat_weights(self) -> list[nn.Parameter]:
        return [getattr(self, n) for n in self._flat_weights_names]

    def reset_parameters(self) -> None:
        """U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)) for every parameter, as torch.nn does (torch.nn's
        first, in its order, so a seed gives its numbers); layer norm starts as the identity (gain 1, bias 0)."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for name in self._flat_weights_names + self._extra_weights_names:
            p = getattr(self, name)
            if name.startswith("ln_"):
                nn.init.ones_(p) if "_weight_" in name else nn.init.zeros_(p)
            else:
                nn.init.uniform_(p, -bound, bound)

    def __getstate__(self):
        """Pickling (torch.save, copy.deepcopy) leaves out the quick lane's memo: its choices were timed for this
        process and machine (and keyed by this process's tune.generation); the copy chooses again."""
        state = dict(self.__dict__)
        state.pop("_quick", None)
        state.pop("_weight_names_set", None)
        return state

    def __prepare_scriptable__(self):
        """torch.jit.script calls this first and compiles what it returns: torch.nn's twin of this layer, holding
        its Parameter objects (nn/twin.py), or an error that says what to use instead."""
        from .twin import layer_twin

        return layer_twin(self, {"LSTM": LSTM, "GRU": GRU}.get(self.mode, RNN))

    def flatten_parameters(self) -> None:
        """No-op, for drop-in compatibility: rnnkit keeps no flat cuDNN weight buffer."""

    def _init_flat_weights(self) -> None:
        """No-op: torch.nn refreshes its cached list of weights here (code that swaps weights calls it);
        rnnkit's `_flat_weights` reads the current attributes on every call."""

    _update_flat_weights = _init_flat_weights

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        for key, default in (("num_layers", 1), ("bias", True), ("batch_first", False), ("dropout", 0.0),
                             ("bidirectional", False), ("engine", "auto"), ("layer_norm", False),
                             ("peephole", False), ("zoneout", 0.0), ("recurrent_dropout", 0.0), ("weight_drop", 0.0)):
            if getattr(self, key) != default:
                s += f", {key}={getattr(self, key)!r}"
        return s

    def direction_weights(self, layer: int, direction: int) -> tuple:
        """(w_ih, w_hh, b_ih, b_hh, w_hr) of one layer and direction, None where absent."""
        params = self._parameters  # the fast lookup; a parametrized or deleted weight is not in it: getattr finds it
        names = self.__dict__.get("_weight_names_set")
        if names is None:  # a name this layer never had (weight_hr without proj_size) is None without a getattr
            names = self.__dict__["_weight_names_set"] = frozenset(self._flat_weights_names)
        return tuple(params[name] if name in params else getattr(self, name, None) if name in names else None
                     for name in weight_names(layer, direction))

    def layer_weights(self) -> list[list[tuple]]:
        """Per layer, per direction: (w_ih, w_hh, b_ih, b_hh, w_hr), None where absent."""
        return [[self.direction_weights(layer, d) for d in range(self.num_directions)]
                for layer in range(self.num_layers)]

    def check_weights(self, weights: list[list[tuple]]) -> None:
        """Every weight in weight_ih_l0's dtype and on its device, as torch.nn's products require (it raises from
        inside them); rnnkit's engines would otherwise compute in mixed precision without a word."""
        first = weights[0][0][0]
        dtype, device = first.dtype, first.get_device()
        for layer, directions in enumerate(weights):
            for direction, ws in enumerate(directions):
                for w, name in zip(ws, weight_names(layer, direction), strict=True):
                    if w is not None and (w.dtype is not dtype or w.get_device() != device):
                        checks.parameter_mismatch(type(self).__name__, name, w, first)

    def stream(self, batch_size: int | None = None, hx=None):
        """A `rnnkit.nn.stream.Stream` that advances this layer one step or one chunk at a time.

        It starts from hx (the layer's h_0 or (h_0, c_0)) or zeros, of batch_size sequences or
        of the first input's batch. A bidirectional layer cannot stream (ValueError).

        Example:
            >>> import torch, rnnkit
            >>> gru = rnnkit.GRU(4, 8, num_layers=2, batch_first=True)
            >>> stream = gru.stream(batch_size=3)
            >>> stream.step(torch.randn(3, 4)).shape, stream.chunk(torch.randn(3, 5, 4)).shape
            (torch.Size([3, 8]), torch.Size([3, 5, 8]))
            >>> stream.state.shape
            torch.Size([2, 3, 8])
        """
        from .stream import Stream  # stream.py imports cells.py, which imports this module

        return Stream(self, batch_size, hx)

    # ------------------------------------------------------------ forward

    def forward(self, input, hx=None, *, lengths=None):
        family = self.active_family()
        if family is not None:  # a cell torch.nn does not have (rnnkit.nn.variants)
            from .variants import variant_forward
            return variant_forward(self, family, input, hx, lengths)
        quick = self.quick_key(input, hx) if lengths is None else None
        if quick is not None and (how := self.__dict__.get("_quick", {}).get(quick)) is not None and (
                how in TORCH_LANES or not quick[-1]):  # with grad mode on, only torch's ways (autograd's own ops)
            result = self.quick_run(how, input, hx)
            if result is not None:
                return result
        rows, form = self.to_rows(input, lengths)
        low = autocast_dtype(self.mode, rows.data.device.type, input, hx)
        states = hx
        if low is not None:  # what torch.nn computes in under autocast: the input and the states cast alike
            rows = rows._replace(data=rows.data.to(low))
            states = cast_states(hx, low)
        h0, c0 = self.initial_states(states, rows.data, rows.batch, form.unbatched, rows.packed)
        weights = self.layer_weights()
        self.check_weights(weights)
        if self.weight_drop > 0 and self.training:  # DropConnect alone: torch.nn's cell on the dropped W_hh
            weights = [[(w_ih, options.dropped(self, w_hh), *rest) for w_ih, w_hh, *rest in layer] for layer in weights]
        if low is not None:  # gradients reach the parameters through the casts
            weights = [[tuple(None if w is None else w.to(low) for w in ws) for ws in layer] for layer in weights]
        run_layer = engines.select(self.engine, rows.data)
        if form.export_lengths is not None:
            run_layer = partial(masked_layer, form.export_lengths.to(rows.data.device))
        way = self.torch_way(rows, h0, c0, weights) if run_layer is engines.tune.run_layer else None
        if way == "aten":
            out, h_n, c_n = engines.aten.run_stack(rows.data.reshape(-1, rows.batch, rows.data.shape[1]), h0, c0,
                                                   weights, self.dropout, self.training, self.bidirectional,
                                                   self.mode)
        elif way == "cells":
            out, h_n, c_n = engines.aten.run_cells(rows.data.reshape(-1, rows.batch, rows.data.shape[1]), h0, c0,
                                                   weights, self.dropout, self.training, self.mode)
        else:
            out, h_n, c_n = run_stack(run_layer, self.mode, rows.data, rows.batch_sizes, h0, c0, weights,
                                      self.dropout, self.training)
        if quick is not None:  # the next such call skips the bookkeeping above (quick_run), with the choice made
            # again: this call may have read or added timings (engines.tune.generation, part of the key)
            way = self.torch_way(rows, h0, c0, weights) if run_layer is engines.tune.run_layer else None
            if way is not None:
                how = way
            elif quick[-1]:  # grad mode replays torch's ways only: nothing else worth choosing (or remembering)
                how = None
            else:
                cpu = self.cpu_every_layer(run_layer, rows)
                how = self.cpu_lane(rows.data.shape[0] // rows.batch, rows.batch) if cpu else "engine"
            if how is not None:
                key = quick if engines.tune.generation() == quick[4] else self.quick_key(input, hx)
                self.__dict__.setdefault("_quick", {})[key] = how
        if low is not None and self.proj_size and rows.data.device.type == "cpu":
            # torch.nn's CPU LSTM with a projection keeps its cell state in c_0's dtype under autocast
            c_n = c_n.to((input.data if form.packed else input).dtype if hx is None else hx[1].dtype)
        return self.from_rows(out, [h_n] if c_n is None else [h_n, c_n], rows, form)

    def quick_key(self, input, hx) -> tuple | None:
        """For an eager call on CPU float32 in the plainest form (padded time-major 3-D input, states None or of
        exact shape, nothing random): the key under which forward remembers what it chose for such a call
        ("aten", "cells", "small", "cpu" or "engine"), so that the next one skips validation and choosing
        (quick_run): a decoder calling the layer once per step pays this bookkeeping on every step, tens of
        microseconds against torch.nn's few. The key holds everything the choice depends on, grad mode last: with
        grad mode on only torch's ways ("aten", "cells") are replayed (torch's ops, which autograd differentiates
        itself); the other lanes are inference entries. None: the general path."""
        if (type(input) is not Tensor or input.dim() != 3 or self.batch_first or input.dtype != torch.float32
                or not input.is_cpu or self.engine not in ("auto", "cpu")
                or (self.training and (self.dropout > 0 or self.weight_drop > 0))):
            return None
        steps, batch, size = input.shape
        weight = self._parameters.get("weight_ih_l0")  # absent when parametrized: the general path
        if (size != self.input_size or steps == 0 or batch == 0 or weight is None or weight.dtype != torch.float32
                or not weight.is_cpu or not self.quick_states(hx, batch)):
            return None
        if (torch.is_autocast_enabled("cpu") or not engines.ops.nothing_watching()
                or engines.ops.plain_ops_only() or engines.ops.in_onnx_export()):
            return None
        return (steps, batch, self.engine, engines.auto_choice(), engines.tune.generation(),
                engines.tune.enabled(), torch.get_num_threads(), torch.is_grad_enabled())

    def quick_states(self, hx, batch: int) -> bool:
        """hx is None, or plain CPU float32 states of exactly the expected shape."""
        if hx is None:
            return True
        shape = (self.num_layers * self.num_directions, batch, self.hidden_size)
        if self.mode != "LSTM":
            return type(hx) is Tensor and hx.shape == shape and hx.dtype == torch.float32 and hx.is_cpu
        h_shape = (shape[0], batch, self.proj_size) if self.proj_size else shape
        return (type(hx) is tuple and len(hx) == 2 and all(
            type(s) is Tensor and s.shape == want and s.dtype == torch.float32 and s.is_cpu
            for s, want in zip(hx, (h_shape, shape))))

    def layer_inputs(self) -> list[int]:
        """The input size of each layer."""
        return [self.input_size] + [self.hidden_size * self.num_directions] * (self.num_layers - 1)

    def cpu_every_layer(self, run_layer, rows: Rows) -> bool:
        """Whether run_layer runs every layer of this (padded float32 no-grad) call on the CPU engine: it is the CPU
        engine, or auto's, which chooses per layer for an LSTM only (engines.tune) and chose the CPU engine for
        each layer's shape class (or does not time)."""
        if run_layer is engines.cpu.run_layer:
            return True
        if run_layer is not engines.tune.run_layer:
            return False
        return self.mode != "LSTM" or not engines.tune.enabled() or engines.tune.every_layer_chose(
            "cpu", self.mode, False, rows.data.shape[0] // rows.batch, rows.batch, self.layer_inputs(),
            self.hidden_size)

    def cpu_lane(self, steps: int, batch: int) -> str:
        """How the quick lane runs a call whose every layer is on the CPU engine: "small" (one direction, every layer
        small enough for the engine's single compiled call, as cpu.small_call admits) or "cpu" (its inference entry
        per layer, through run_stack)."""
        small = not self.bidirectional and all(
            engines.cpu.small_layer(steps, batch, inputs, *self.direction_weights(layer, 0))
            for layer, inputs in enumerate(self.layer_inputs()))
        return "small" if small else "cpu"

    def quick_run(self, how: str, input: Tensor, hx):
        """forward for a call quick_key admitted, on what the general path chose for the same key: the same
        operations on the same tensors, without the bookkeeping. None where the choice no longer applies (the
        general path then runs)."""
        return self.run_lane(how, input, hx)

    def run_lane(self, how: str, input: Tensor, hx):
        """A padded float32 call (T, B, I) on lane `how` ("aten", "cells", "small", "cpu" or "engine"), unchecked: what
        quick_run replays, and what the whole-stack timing times. Only torch's ("aten", "cells") may run with grad
        mode on."""
        steps, batch, size = input.shape
        if hx is None:
            shape = (self.num_layers * self.num_directions, batch, self.hidden_size)
            h0 = torch.zeros(shape[:2] + (self.proj_size or self.hidden_size,), dtype=input.dtype)
            c0 = torch.zeros(shape, dtype=input.dtype) if self.mode == "LSTM" else None
        else:
            h0, c0 = hx if self.mode == "LSTM" else (hx, None)
        if how == "small":  # one direction, each layer one compiled call (cpu.small_call): a decoder's layer
            return self.small_lane(input, h0, c0)
        if how == "cells":  # torch's cell functions a step at a time, one direction: (T, B, H)
            out, h_n, c_n = engines.aten.run_cells(input, h0, c0, self.layer_weights(), self.dropout, self.training,
                                                   self.mode)
            return out, h_n if c_n is None else (h_n, c_n)
        if how == "aten":  # torch's stack on torch.nn's flat weight list (a projection never takes it): (T, B, D*H)
            params = self._parameters  # a parametrized weight is not in it: getattr finds it
            flat = [params[n] if n in params else getattr(self, n) for n in self._flat_weights_names]
            out, h_n, c_n = engines.aten.torch_stack(input, h0, c0, flat, self.bias, self.num_layers, self.dropout,
                                                     self.training, self.bidirectional, self.mode)
            return out, h_n if c_n is None else (h_n, c_n)
        weights = self.layer_weights()
        if how == "cpu":  # every layer on the CPU engine (cpu_every_layer): its inference entry, unchecked
            run_layer = engines.cpu.infer_layer
        else:  # auto choosing per layer (an LSTM), or the reference engine (no Numba)
            run_layer = engines.select(self.engine, input)
            if run_layer is engines.tune.run_layer:
                run_layer = engines.tune.infer_layer  # the same choice, without ops.run_layer's checks
        out, h_n, c_n = run_stack(run_layer, self.mode, input.reshape(-1, size), None, h0, c0, weights, self.dropout,
                                  self.training)
        out = out.reshape(steps, batch, out.shape[-1])  # (T, B, D*H)
        return out, h_n if c_n is None else (h_n, c_n)

    def small_lane(self, input: Tensor, h0: Tensor, c0: Tensor | None):
        """run_lane's "small": input (T, B, I), states (L, B, .). One layer takes the states as they are (no views);
        a stack feeds each layer's out (T, B, P) to the next and stacks the final states. None where a weight is no
        longer float32 (changed since the choice: the general path then says why)."""
        single = self.num_layers == 1
        x, hs, cs = input, [], []
        for layer in range(self.num_layers):
            w_ih, w_hh, b_ih, b_hh, w_hr = self.direction_weights(layer, 0)
            if not engines.cpu.all_float32(w_ih, w_hh, b_ih, b_hh, w_hr):
                return None
            x, h, c = engines.cpu.infer_small(self.mode, x, h0 if single else h0[layer],
                                              c0 if single or c0 is None else c0[layer], w_ih, w_hh, b_ih, b_hh,
                                              False, w_hr)
            hs.append(h)
            cs.append(c)
        h_n = hs[0] if single else torch.stack(hs)  # (L, B, P)
        if c0 is None:
            return x, h_n
        return x, (h_n, cs[0] if single else torch.stack(cs))

    def torch_way(self, rows: Rows, h0: Tensor, c0: Tensor | None, weights) -> str | None:
        """Where engine="auto" on CPU found torch's own implementation faster than the CPU engine for this call's
        shape class (engines.tune), timed on this machine, which way: "aten" (oneDNN's fused LSTM won every
        layer's timing, or torch.lstm / torch.gru / torch.rnn_* won a timing of the whole stack against rnnkit's:
        short calls, where rnnkit's Python per call outweighs the work) or "cells" (torch's cell functions a step
        at a time won that timing: short one-direction calls with a gradient). None: rnnkit's engine. Padded
        float32 only, no projection."""
        data = rows.data
        if (self.proj_size or rows.batch_sizes is not None or data.dtype != torch.float32 or data.shape[0] == 0
                or engines.ops.plain_ops_only()):  # torch's stack has no vmap or forward-AD rule on oneDNN
            return None
        tensors = [data, h0, c0, *(w for layer in weights for ws in layer for w in ws if w is not None)]
        train = engines.tune.needs_grad(*tensors)
        inputs = self.layer_inputs()
        steps = data.shape[0] // rows.batch
        if self.mode == "LSTM" and engines.tune.whole_stack_is_aten("LSTM", train, steps, rows.batch, inputs,
                                                                      self.hidden_size):
            return "aten"
        gates = GATES[self.mode] * self.hidden_size
        macs = data.shape[0] * gates * sum(i + self.hidden_size for i in inputs) * self.num_directions
        if macs > STACK_TIMING_MAX_MACS:  # Python per call cannot matter: the per-layer choice stands, untimed
            return None
        return engines.tune.torch_way(self.mode, train, steps, rows.batch, inputs, self.hidden_size,
                                      self.num_directions, partial(self.stack_runner, rows, h0, c0, weights, train))

    def stack_runner(self, rows: Rows, h0: Tensor, c0: Tensor | None, weights, train: bool, strategy: str, steps: int):
        """A function that runs the first `steps` steps of this call's stack on `strategy` ("cpu": rnnkit's CPU
        engine; "aten" or "cells": torch's own, engines.tune.torch_way), without dropout (timing must not draw
        random numbers), and its backward when training: what engines.tune times."""
        x = rows.data[:steps * rows.batch].detach().reshape(steps, rows.batch, -1)
        weights = [[tuple(None if w is None else w.detach().requires_grad_(train) for w in ws) for ws in layer]
                   for layer in weights]
        h, c = h0.detach(), None if c0 is None else c0.detach()

        def run():
            if not train:  # inference as the quick lane runs it (the parameters as they are: nothing is recorded)
                with torch.no_grad():
                    how = strategy if strategy in TORCH_LANES else self.cpu_lane(steps, rows.batch)
                    return self.run_lane(how, x, h if c is None else (h, c))
            with torch.enable_grad():
                if strategy == "aten":  # a repeated grad-mode call replays this from the quick lane
                    out = engines.aten.run_stack(x, h, c, weights, 0.0, False, self.bidirectional, self.mode)[0]
                elif strategy == "cells":  # (likewise)
                    out = engines.aten.run_cells(x, h, c, weights, 0.0, False, self.mode)[0]
                else:  # rnnkit's engine runs from the general path, whose own steps are part of its cost
                    # (a decoder trained one step at a time pays them on every step: about 60 us)
                    rows_, form = self.to_rows(x.transpose(0, 1) if self.batch_first else x, None)  # its form
                    self.initial_states((h, c) if self.mode == "LSTM" else h, rows_.data, rows_.batch, False, None)
                    self.check_weights(self.layer_weights())  # the real weights are read, not differentiated
                    out, h_n, c_n = run_stack(engines.cpu.run_layer, self.mode, rows_.data, None, h, c, weights, 0.0,
                                              False)
                    out = self.from_rows(out, [h_n] if c_n is None else [h_n, c_n], rows_, form)[0]
                out.backward(torch.ones_like(out))
        return run

    def to_rows(self, input, lengths) -> tuple[Rows, InputForm]:
        """Validate the input and bring any form of it to the engines' packed rows."""
        name = type(self).__name__
        if isinstance(input, PackedSequence):
            if lengths is not None:
                raise ValueError(f"{name}: lengths= is for padded input; a PackedSequence carries its own lengths")
            packed, form = input, InputForm(packed=True, unbatched=False, steps=0, batch=0, padded_lengths=False)
        else:
            checks.input_dims(name, input, (2, 3))
            unbatched = input.dim() == 2
            x = input.unsqueeze(0 if self.batch_first else 1) if unbatched else input
            x = x.transpose(0, 1) if self.batch_first else x  # (T, B, I)
            checks.sequence_length(name, x.shape[0], input)
            form = InputForm(False, unbatched, x.shape[0], x.shape[1], padded_lengths=lengths is not None)
            packed = None
            if lengths is not None and torch.compiler.is_exporting():
                # packing makes shapes depend on the lengths' values, which an exported program cannot
                # have; the masked scan gives the packed result on the padded batch instead
                form = form._replace(padded_lengths=False, export_lengths=torch.as_tensor(lengths))
            elif lengths is not None:
                lengths = checks.lengths(name, lengths, x.shape[0], x.shape[1])
                if bool((lengths == x.shape[0]).all()):  # nothing to skip: packing and padding back would only cost
                    form = form._replace(padded_lengths=False)
                else:
                    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        if packed is not None:
            checks.packed(name, packed.data, packed.batch_sizes, packed.sorted_indices)
            rows = Rows(packed.data, packed.batch_sizes, int(packed.batch_sizes[0]), packed)
        else:
            rows = Rows(x.reshape(-1, x.shape[-1]), None, x.shape[1], None)  # (T*B, I)
        weight = self.weight_ih_l0
        checks.input_matches_weights(name, rows.data, weight, self.input_size)
        if rows.data.dtype != weight.dtype:  # only under autocast
            rows = rows._replace(data=rows.data.to(weight.dtype))
        return rows, form

    def from_rows(self, out: Tensor, states: list[Tensor], rows: Rows, form: InputForm):
        """Give the output back in the form the input came in; final states (each (L*D, B, .)) in the caller's
        batch order."""
        packed = rows.packed
        if packed is not None and packed.unsorted_indices is not None:
            states = [s.index_select(1, packed.unsorted_indices) for s in states]
        if packed is not None:  # built anew, not _replace'd: torch.compile mistraces PackedSequence._replace
            packed = PackedSequence(out, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)
        if form.packed:
            return packed, self.pack_states(states)
        if form.padded_lengths:
            out = pad_packed_sequence(packed, total_length=form.steps)[0]  # (T, B, D*P)
        out = out.reshape(form.steps, form.batch, out.shape[-1])  # (T, B, D*P); -1 fails for B = 0
        output = out.transpose(0, 1) if self.batch_first else out
        if form.unbatched:
            output = output.squeeze(0 if self.batch_first else 1)
            states = [s.squeeze(1) for s in states]
        return output, self.pack_states(states)

    def initial_states(self, hx, data: Tensor, batch: int, unbatched: bool, packed: PackedSequence | None):
        """Validated (h_0, c_0) in the engine's row order: zeros when hx is None. c_0 is None unless LSTM."""
        name, lstm = type(self).__name__, self.mode == "LSTM"
        h_shape = (self.num_layers * self.num_directions, batch, self.proj_size or self.hidden_size)
        c_shape = h_shape[:2] + (self.hidden_size,)
        if hx is None:
            zeros = dict(dtype=data.dtype, device=data.device)
            return torch.zeros(h_shape, **zeros), torch.zeros(c_shape, **zeros) if lstm else None
        if lstm:
            checks.lstm_hx(name, hx)
        checks.state_dims(name, tuple(hx) if lstm else hx, batched=not unbatched)
        h0, c0 = hx if lstm else (hx, None)
        if unbatched:
            h0, c0 = h0.unsqueeze(1), None if c0 is None else c0.unsqueeze(1)
        checks.state(name, "h_0", h0, h_shape, data, "hidden[0]" if lstm else "hidden")
        if lstm:
            checks.state(name, "c_0", c0, c_shape, data, "hidden[1]")
        if packed is not None and packed.sorted_indices is not None:  # the engine sees sequences longest first
            order = packed.sorted_indices
            h0, c0 = h0.index_select(1, order), None if c0 is None else c0.index_select(1, order)
        return h0, c0

    def pack_states(self, states: list[Tensor]):
        """What forward returns as the final state: h_n alone, or a tuple (h_n, c_n, ...) for cells with more."""
        return states[0] if len(states) == 1 else tuple(states)


class RNN(RecurrentLayer):
    r"""Elman RNN, a drop-in for torch.nn.RNN: h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh).

    act is tanh or relu (`nonlinearity`). Step math and its backward: rnnkit.cells.rnn.

    Example:
        >>> import torch, rnnkit
        >>> rnn = rnnkit.RNN(10, 20, num_layers=2)
        >>> output, h_n = rnn(torch.randn(5, 3, 10))
        >>> output.shape, h_n.shape
        (torch.Size([5, 3, 20]), torch.Size([2, 3, 20]))
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, *, engine: str = "auto", proj_size=checks.NOT_GIVEN,
                 weight_drop: float = 0.0) -> None:
        checks.no_projection("RNN", proj_size)
        checks.nonlinearity("RNN", nonlinearity)
        self.nonlinearity = nonlinearity
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", input_size, hidden_size, num_layers,
                         bias, batch_first, dropout, bidirectional, 0, device, dtype, engine=engine,
                         weight_drop=weight_drop)


class LSTM(RecurrentLayer):
    r"""LSTM, a drop-in for torch.nn.LSTM, gate order (i, f, g, o), optional projection.

    c_t = f * c_{t-1} + i * g,  h_t = o * tanh(c_t)  (h_t = W_hr (o * tanh(c_t)) with proj_size).
    Step math and its backward: rnnkit.cells.lstm. Returns (output, (h_n, c_n)).

    Example:
        >>> import torch, rnnkit
        >>> lstm = rnnkit.LSTM(10, 20, batch_first=True, proj_size=8)
        >>> output, (h_n, c_n) = lstm(torch.randn(3, 5, 10))
        >>> output.shape, h_n.shape, c_n.shape
        (torch.Size([3, 5, 8]), torch.Size([1, 3, 8]), torch.Size([1, 3, 20]))
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 device=None, dtype=None, *, engine: str = "auto", layer_norm: bool = False, peephole: bool = False,
                 zoneout=0.0, recurrent_dropout: float = 0.0, weight_drop: float = 0.0) -> None:
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, device, dtype, engine=engine, layer_norm=layer_norm, peephole=peephole,
                         zoneout=zoneout, recurrent_dropout=recurrent_dropout, weight_drop=weight_drop)

    def get_expected_cell_size(self, input: Tensor, batch_sizes: Tensor | None) -> tuple[int, int, int]:
        """c_0's shape (torch.nn.LSTM's helper): its width is hidden_size, with or without a projection."""
        return self._expected_state_size(input, batch_sizes, self.hidden_size)


class GRU(RecurrentLayer):
    r"""GRU, a drop-in for torch.nn.GRU, gate order (r, z, n).

    n = tanh(W_in x + b_in + r * (W_hn h + b_hn)),  h_t = (1 - z) * n + z * h_{t-1}.
    Step math and its backward: rnnkit.cells.gru.

    Example:
        >>> import torch, rnnkit
        >>> gru = rnnkit.GRU(10, 20, bidirectional=True)
        >>> output, h_n = gru(torch.randn(5, 3, 10))
        >>> output.shape, h_n.shape
        (torch.Size([5, 3, 40]), torch.Size([2, 3, 20]))
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, *, engine: str = "auto", proj_size=checks.NOT_GIVEN,
                 layer_norm: bool = False, zoneout: float = 0.0, recurrent_dropout: float = 0.0,
                 weight_drop: float = 0.0) -> None:
        checks.no_projection("GRU", proj_size)
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         0, device, dtype, engine=engine, layer_norm=layer_norm, zoneout=zoneout,
                         recurrent_dropout=recurrent_dropout, weight_drop=weight_drop)
