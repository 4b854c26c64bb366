"""Streaming: advance a multi-layer RNN, LSTM or GRU one step or one chunk at a time, state carried.

For online speech and time-series models, where input arrives a frame at a time. Calling the layer
with a sequence of one step pays the whole-sequence machinery per frame (and torch.nn.LSTM its
oneDNN set-up); `Stream.step` runs each layer's step on its own: a no-grad float32 frame on CPU in one
compiled call per layer (the CPU engine's `cpu.infer_small`), anything else as plain torch ops, the step
math of `rnnkit.cells` that rnnkit's cells run.
`Stream.chunk` runs the layer itself on a chunk of frames, from the carried state.

The results equal one call of the layer on the whole sequence (tests/test_stream.py), in every
form the layer takes (time-major, batch_first, unbatched), for any num_layers and proj_size. A
bidirectional layer cannot stream: its reverse direction starts from the end of the sequence.

Example:
    >>> import torch, rnnkit
    >>> lstm = rnnkit.LSTM(8, 16, num_layers=2).eval()
    >>> x = torch.randn(10, 3, 8)  # (T, B, I)
    >>> stream = lstm.stream()
    >>> with torch.no_grad():
    ...     y = [stream.step(x_t) for x_t in x[:6]]  # each (B, 16)
    ...     rest = stream.chunk(x[6:])  # (4, B, 16)
    ...     whole, (h_n, c_n) = lstm(x)
    >>> torch.allclose(torch.cat([torch.stack(y), rest]), whole, atol=1e-6)
    True
    >>> torch.allclose(stream.state[0], h_n, atol=1e-6)
    True
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional

from .. import engines
from . import checks
from .cells import STEPS


class Stream:
    """A layer's state, advanced by `step` (one frame) or `chunk` (several); made by `layer.stream()`.

    The stream binds the layer's weights when it is made: it keeps the parameter tensors it found
    then, so after changing the layer's parameters (loading other weights, moving the layer to
    another dtype or device, training it), make a new stream.

    Attributes:
        layer: the rnnkit.RNN, LSTM or GRU the stream advances.
    """

    def __init__(self, layer, batch_size: int | None = None, hx=None) -> None:
        name = type(layer).__name__
        if layer.bidirectional:
            raise ValueError(f"{name}: a bidirectional layer cannot stream: its reverse direction reads the "
                             f"sequence from its end. Call the layer on the whole sequence, or build it with "
                             f"bidirectional=False")
        if layer.layer_norm or layer.peephole:
            raise NotImplementedError(f"{name}: stream() runs torch.nn's cells; a layer with layer_norm or peephole "
                                      f"cannot stream yet. Call the layer on each chunk with the state it returned")
        if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool)
                                       or batch_size < 0):
            raise ValueError(f"{name}: batch_size should be a non-negative int or None, got {batch_size!r}")
        self.layer, self._name = layer, name
        self._lstm = layer.mode == "LSTM"
        step, kw = STEPS[layer.mode]
        self._step = step
        # per layer: (w_ih, b_ih, w_hh, b_hh, keyword arguments of the step)
        self._layers = [(w_ih, b_ih, w_hh, b_hh, dict(kw, w_hr=w_hr) if w_hr is not None else kw)
                        for ((w_ih, w_hh, b_ih, b_hh, w_hr),) in layer.layer_weights()]
        self._weight = layer.weight_ih_l0
        self._fits: dict[int, bool] = {}  # batch size -> whether every layer fits the one-call entry (_short)
        self._batch_size, self._hx = batch_size, hx
        self.reset()

    # ------------------------------------------------------------ state

    def reset(self) -> None:
        """Back to the state the stream was made with: hx, or zeros (of the first input's batch if no batch_size)."""
        self._states: list[tuple[Tensor, ...]] | None = None  # per layer: (h (B, P),) or (h, c (B, H))
        self._unbatched = False
        if self._hx is not None:
            h = self._hx[0] if self._lstm and isinstance(self._hx, (tuple, list)) else self._hx
            unbatched = isinstance(h, Tensor) and h.dim() == 2
            batch = 1 if unbatched else (h.shape[1] if isinstance(h, Tensor) and h.dim() == 3 else self._batch_size)
            if self._batch_size is not None and batch != self._batch_size:
                raise ValueError(f"{self._name}: batch_size={self._batch_size} but hx has batch size {batch}")
            self._set(self._hx, unbatched, batch)
        elif self._batch_size is not None:
            self._set(None, False, self._batch_size)

    @property
    def state(self):
        """h_n, or (h_n, c_n) for LSTM, in the layer's shapes: (num_layers, B, P), unbatched (num_layers, P).

        None before the first step or chunk of a stream made without batch_size or hx."""
        if self._states is None:
            return None
        stacked = [torch.stack(parts) for parts in zip(*self._states, strict=True)]  # (L, B, P), (L, B, H)
        if self._unbatched:
            stacked = [s.squeeze(1) for s in stacked]
        return tuple(stacked) if self._lstm else stacked[0]

    def _set(self, hx, unbatched: bool, batch: int) -> None:
        """Validate hx (None for zeros) as the layer does and keep it per layer, as (B, P) rows."""
        h0, c0 = self.layer.initial_states(hx, self._weight, batch, unbatched, None)  # (L, B, P), (L, B, H)
        self._unbatched = unbatched
        self._states = [(h0[k], c0[k]) if self._lstm else (h0[k],) for k in range(h0.shape[0])]

    def _start(self, x: Tensor, unbatched: bool, batch: int) -> None:
        """The first input of a stream made without batch_size or hx fixes its form."""
        if self._states is None:
            self._set(None, unbatched, batch)

    # ------------------------------------------------------------ advancing

    def step(self, x: Tensor) -> Tensor:
        """One frame through every layer. x: (B, input_size), or (input_size,) for an unbatched stream.

        Returns the top layer's output for the frame: (B, P) or (P,), P = proj_size or hidden_size."""
        if not isinstance(x, Tensor) or x.dim() not in (1, 2):
            checks.input_dims(f"{self._name} stream step", x, (1, 2))
        self._start(x, x.dim() == 1, x.shape[0] if x.dim() == 2 else 1)
        rows = x.unsqueeze(0) if x.dim() == 1 else x  # (B, I)
        self._check_frame(x, rows)
        layer = self.layer
        if layer.training and (layer.active_family() is not None or layer.weight_drop > 0):
            raise RuntimeError(f"{self._name} stream step: zoneout, recurrent_dropout and weight_drop act in training "
                               f"mode, which a step of torch.nn's cell would skip; call layer.eval() to stream, or "
                               f"stream.chunk() to run the layer itself")
        dropout = layer.dropout if layer.training else 0.0
        short = dropout == 0 and self._short(rows)
        states = []
        for k, ((w_ih, b_ih, w_hh, b_hh, kw), state) in enumerate(zip(self._layers, self._states, strict=True)):
            if k and dropout > 0:
                rows = functional.dropout(rows, dropout, training=True)  # between layers, as the layer does
            if short:  # the CPU engine's one-call entry: out equals h_n for one step, and feeds the next layer
                _, h, c = engines.cpu.infer_small(layer.mode, rows, state[0], state[1] if self._lstm else None, w_ih,
                                                  w_hh, b_ih, b_hh, False, kw.get("w_hr"))
                new = (h,) if c is None else (h, c)
            else:
                xp = functional.linear(rows, w_ih, b_ih)  # (B, G*H)
                new, _ = self._step(xp, state, w_hh, b_hh, keep=False, **kw)
            states.append(new)
            rows = new[0]  # (B, P)
        self._states = states
        return rows.squeeze(0) if self._unbatched else rows

    def _short(self, rows: Tensor) -> bool:
        """Whether this no-grad frame runs each layer's step through the CPU engine's one-call entry
        (cpu.infer_small: 3-4x faster than the step's plain ops at B=1) rather than through torch ops: plain eager
        CPU float32, no autocast, the CPU engine the one this layer would run (auto or cpu), and every layer
        small enough, float32 throughout (decided once per batch size: the stream binds its
        weights when made)."""
        if (torch.is_grad_enabled() or type(rows) is not Tensor or not rows.is_cpu or rows.dtype is not torch.float32
                or torch.is_autocast_enabled("cpu") or not engines.ops.eager((rows,))):
            return False
        engine = self.layer.engine if self.layer.engine != "auto" else engines.auto_choice()
        if engine not in ("auto", "cpu"):
            return False
        batch = rows.shape[0]
        fits = self._fits.get(batch)
        if fits is None:
            fits = self._fits[batch] = engines.cpu.why_not(rows) is None and batch > 0 and all(
                engines.cpu.small_layer(1, batch, w_ih.shape[1], w_ih, w_hh, b_ih, b_hh, kw.get("w_hr"))
                for w_ih, b_ih, w_hh, b_hh, kw in self._layers)
        return fits and all(s.dtype is torch.float32 for state in self._states for s in state)

    def _check_frame(self, x: Tensor, rows: Tensor) -> None:
        name = f"{self._name} stream step"
        want = 1 if self._unbatched else 2
        if x.dim() != want:
            form = "an unbatched stream takes (input_size,)" if self._unbatched else "a batched stream takes (B, input_size)"
            raise ValueError(f"{name}: {form}, got a {x.dim()}-D input of shape {tuple(x.shape)}")
        batch = self._states[0][0].shape[0]
        if rows.shape[0] != batch:
            raise RuntimeError(f"{name}: the stream carries a batch of {batch}, got an input of batch "
                               f"size {rows.shape[0]} (shape {tuple(x.shape)}); call reset() or make a new stream")
        checks.input_matches_weights(name, rows, self._weight, self.layer.input_size)

    def chunk(self, x: Tensor) -> Tensor:
        """Several frames: the layer itself runs on x from the carried state, and carries its final state.

        x has the layer's input form: (T, B, I), (B, T, I) with batch_first, (T, I) unbatched.
        Returns the layer's output for the chunk, in the same form."""
        if isinstance(x, Tensor) and x.dim() in (2, 3):
            batched = x.dim() == 3
            self._start(x, not batched, (x.shape[0] if self.layer.batch_first else x.shape[1]) if batched else 1)
        out, state = self.layer(x, self.state)
        h, c = state if self._lstm else (state, None)
        if self._unbatched:
            h, c = h.unsqueeze(1), None if c is None else c.unsqueeze(1)
        self._states = [(h[k], c[k]) if self._lstm else (h[k],) for k in range(h.shape[0])]
        return out

    def __repr__(self) -> str:
        state = self.state
        h = state[0] if self._lstm and state is not None else state
        shape = "not started" if h is None else f"state {tuple(h.shape)}"
        return f"Stream({self.layer!r}, {shape})"
