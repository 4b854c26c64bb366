"""ATen engine: torch's own fused CPU kernel for the float32 LSTM, the one torch.nn.LSTM itself runs.

torch.nn.LSTM on CPU runs oneDNN's fused LSTM one layer and direction at a time, through
`torch.ops.aten.mkldnn_rnn_layer` and, for the gradient, `mkldnn_rnn_layer_backward`. This engine
calls the same two operators with the same arguments, so where oneDNN's LSTM is the fastest way to
run a layer on a machine, rnnkit's "auto" can take it (rnnkit.engines.tune decides by timing both)
and is then never slower than torch.nn.

What it can run (`why_not_call`): an LSTM, float32, every sequence of the batch as long as the others
(a padded batch: oneDNN's layer takes no batch_sizes), no proj_size, and a torch built with oneDNN.
Anything else it hands to the CPU engine in `run_layer`, before the operator is called, so each
operator's saved tensors keep one meaning; called directly, its operator raises saying why.

Saved for the backward: oneDNN's workspace (opaque bytes whose size only oneDNN knows, hence a
dynamic size in the fake kernel) and the final states h_n, c_n, which oneDNN's backward reads.
The operator always runs oneDNN's training variant: it cannot see whether a gradient will be
wanted (an autograd formula's forward runs in no-grad mode). A call that needs no gradient (no_grad,
or no input requiring one) never reaches the operator: `run_layer` calls oneDNN's inference variant,
`aten::mkldnn_rnn_layer` with train=False, itself an aten operator like any other, as torch.nn does.
That variant is about 20% faster (measured 6.9 against 8.4 ms at T=1000, B=8, H=64, one thread).
"""

from __future__ import annotations

import contextlib
from functools import lru_cache

import torch
from torch import Tensor

LSTM_MODE = 2  # oneDNN's (and cuDNN's) number for LSTM in these operators


@lru_cache(maxsize=1)
def _unavailable() -> str | None:
    if not torch.backends.mkldnn.is_available():
        return "this torch build has no oneDNN (torch.backends.mkldnn.is_available() is False)"
    if not hasattr(torch.ops.aten, "mkldnn_rnn_layer") or not hasattr(torch.ops.aten, "mkldnn_rnn_layer_backward"):
        return "this torch build has no aten::mkldnn_rnn_layer"
    return None


def why_not(x: Tensor) -> str | None:
    """Why this engine cannot run on input x at all, or None. (Per call it may still hand over: why_not_call.)"""
    if (err := _unavailable()) is not None:
        return err
    if x.device.type != "cpu":
        return f"it runs on CPU tensors, got a tensor on {x.device}"
    if x.dtype != torch.float32:
        return f"it runs float32 (oneDNN's fused LSTM), got {x.dtype}"
    return None


def why_not_call(mode: str, x: Tensor, batch_sizes, w_hr: Tensor | None) -> str | None:
    """Why oneDNN's fused layer cannot run this call, or None. batch_sizes: a tuple of ints or None (padded)."""
    if (err := why_not(x)) is not None:
        return err
    if not torch._C._get_mkldnn_enabled():
        return "oneDNN is disabled (torch.backends.mkldnn.flags(enabled=False))"
    if mode != "LSTM":
        return f"torch fuses only the LSTM on CPU, got {mode}"
    if w_hr is not None:
        return "oneDNN's LSTM has no projection (proj_size)"
    if batch_sizes is not None and len(set(batch_sizes)) > 1:
        return "oneDNN's layer takes no batch_sizes: sequences of different lengths"
    return None


def _biases(b_ih: Tensor | None, b_hh: Tensor | None, w_hh: Tensor) -> tuple[Tensor, Tensor]:
    if b_ih is not None:
        return b_ih, b_hh
    zeros = w_hh.new_zeros(w_hh.shape[0])
    return zeros, zeros


def _padded(x: Tensor, batch_sizes) -> Tensor:
    """(T, B, I) view of the packed rows of a batch whose sequences all run every step."""
    steps, batch = len(batch_sizes), batch_sizes[0]
    return x.reshape(steps, batch, x.shape[1])


def _run_forward(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse, train: bool):
    hidden = c0.shape[1]
    b1, b2 = _biases(b_ih, b_hh, w_hh)
    # oneDNN's layer keeps no workspace in no-grad mode, even with train=True
    with torch.enable_grad() if train else contextlib.nullcontext():
        return torch.ops.aten.mkldnn_rnn_layer(_padded(x, batch_sizes).contiguous(), w_ih.contiguous(),
                                               w_hh.contiguous(), b1, b2, h0.contiguous(), c0.contiguous(), reverse,
                                               [], LSTM_MODE, hidden, 1, b_ih is not None, False, False, train)


def forward(mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse):
    """One layer, one direction, no autograd: out, h_n, c_n, saved = (workspace, h_n copy, c_n copy)."""
    if (reason := why_not_call(mode, x, batch_sizes, w_hr)) is not None:
        raise RuntimeError(f"engine 'aten' cannot run this call: {reason}")
    out, h_n, c_n, workspace = _run_forward(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse, train=True)
    # copies: an operator may not return one tensor twice (h_n and c_n are outputs too)
    return out.reshape(x.shape[0], -1), h_n, c_n, (workspace, h_n.clone(), c_n.clone())


def backward(mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, out, saved, d_out, d_h_n, d_c_n,
             need_dx: bool):
    """oneDNN's BPTT for `forward`: dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh, None."""
    if (reason := why_not_call(mode, x, batch_sizes, w_hr)) is not None:
        raise RuntimeError(f"engine 'aten' cannot run this call: {reason}")
    workspace, h_n, c_n = saved
    hidden = c0.shape[1]
    b1, b2 = _biases(b_ih, b_hh, w_hh)
    x3 = _padded(x, batch_sizes).contiguous()
    steps, batch = x3.shape[:2]
    d_c_n = d_c_n if d_c_n is not None else torch.zeros_like(c_n)
    dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0 = torch.ops.aten.mkldnn_rnn_layer_backward(
        x3, w_ih.contiguous(), w_hh.contiguous(), b1, b2, h0.contiguous(), c0.contiguous(),
        out.reshape(steps, batch, hidden).contiguous(), h_n, c_n, d_out.reshape(steps, batch, hidden).contiguous(),
        d_h_n.contiguous(), d_c_n.contiguous(), reverse, LSTM_MODE, hidden, 1, b_ih is not None, True, False, [],
        False, workspace)
    has_bias = b_ih is not None
    return (dx.reshape(x.shape) if need_dx else None, dh0, dc0, dw_ih, dw_hh, db_ih if has_bias else None,
            db_hh if has_bias else None, None)


def saved_shapes(mode: str, n: int, hidden: int, dtype: torch.dtype, has_proj: bool, batch: int = 0):
    """What `forward` saves: the workspace (size known only to oneDNN: None, a dynamic size), h_n, c_n."""
    return [((None,), torch.uint8), ((batch, hidden), dtype), ((batch, hidden), dtype)]


def run_layer(mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse):
    """rnnkit.engines.ops.run_layer on this engine, or on the CPU engine for a call oneDNN's layer cannot run."""
    from . import ops
    sizes = tuple(batch_sizes.tolist()) if isinstance(batch_sizes, Tensor) else batch_sizes
    if why_not_call(mode, x, sizes, w_hr) is not None:
        return ops.run_layer(handover(x), mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse)
    if x.shape[0] and not ops.plain_ops_only() and not (
            torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                            for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh))):
        steps = x.shape[0] // h0.shape[0]
        out, h_n, c_n, _ = _run_forward(x, (h0.shape[0],) * steps, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse,
                                        train=False)
        return out.reshape(x.shape[0], -1), h_n, c_n
    return ops.run_layer("aten", mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse)


TORCH_STACKS = {"LSTM": torch.lstm, "GRU": torch.gru, "RNN_TANH": torch.rnn_tanh, "RNN_RELU": torch.rnn_relu}


def run_stack(x: Tensor, h0: Tensor, c0: Tensor | None, weights: list[list[tuple]], dropout: float, training: bool,
              bidirectional: bool, mode: str = "LSTM") -> tuple[Tensor, Tensor, Tensor | None]:
    """Every layer and direction in one call of torch's own implementation (torch.lstm, torch.gru, torch.rnn_tanh,
    torch.rnn_relu: what torch.nn's layers run; oneDNN's fused LSTM on CPU), for engine="auto" where timing found
    it faster for this call's shape class (engines.tune): rnnkit then adds nothing between the caller and the
    kernel. x (T, B, I); weights per layer and direction (w_ih, w_hh, b_ih, b_hh, None); h0, c0 (L*D, B, H).
    Returns out (T*B, D*H), h_n, c_n (None but for LSTM). Autograd differentiates it, as for torch.nn (double
    backward included)."""
    flat = [w for layer in weights for ws in layer for w in ws[:4] if w is not None]
    out, h_n, c_n = torch_stack(x, h0, c0, flat, weights[0][0][2] is not None, len(weights), dropout, training,
                                bidirectional, mode)
    return out.reshape(-1, out.shape[-1]), h_n, c_n


def torch_stack(x: Tensor, h0: Tensor, c0: Tensor | None, flat: list[Tensor], has_bias: bool, layers: int,
                dropout: float, training: bool, bidirectional: bool, mode: str) -> tuple[Tensor, Tensor, Tensor | None]:
    """run_stack on torch.nn's flat weight list (w_ih, w_hh[, b_ih, b_hh] per layer and direction), with out as
    torch returns it, (T, B, D*H): what a layer's quick lane hands back as it is."""
    args = (flat, has_bias, layers, dropout, training, bidirectional, False)
    if mode == "LSTM":
        return torch.lstm(x, (h0, c0), *args)
    (out, h_n), c_n = TORCH_STACKS[mode](x, h0, *args), None
    return out, h_n, c_n


TORCH_CELLS = {"LSTM": torch.lstm_cell, "GRU": torch.gru_cell, "RNN_TANH": torch.rnn_tanh_cell,
               "RNN_RELU": torch.rnn_relu_cell}


def run_cells(x: Tensor, h0: Tensor, c0: Tensor | None, weights: list[list[tuple]], dropout: float, training: bool,
              mode: str) -> tuple[Tensor, Tensor, Tensor | None]:
    """A one-direction stack as torch's own cell functions, a step at a time (torch.lstm_cell, torch.gru_cell, ...:
    what torch.nn's cells run), for engine="auto" where the whole-stack timing found it the fastest: a short call
    with a gradient, where torch's whole-stack kernels cost most (oneDNN builds its LSTM primitive on every call:
    a T=1, B=1, H=128 LSTM step ran 130 us forward in torch.lstm against 51 in torch.lstm_cell). x (T, B, I);
    weights per layer, one direction each (w_ih, w_hh, b_ih, b_hh, None); h0, c0 (L, B, H). Returns out (T, B, H),
    h_n, c_n (None but for LSTM); autograd differentiates it (double backward included)."""
    cell = TORCH_CELLS[mode]
    h_n, c_n = [], []
    for layer, ((w_ih, w_hh, b_ih, b_hh, _),) in enumerate(weights):
        h, c = h0[layer], None if c0 is None else c0[layer]
        outs = []
        for t in range(x.shape[0]):
            if c is None:
                h = cell(x[t], h, w_ih, w_hh, b_ih, b_hh)
            else:
                h, c = cell(x[t], (h, c), w_ih, w_hh, b_ih, b_hh)
            outs.append(h)
        x = torch.stack(outs)  # (T, B, H): new tensors, not views (callers detach_ states and outputs in place)
        if dropout > 0 and training and layer < len(weights) - 1:
            x = torch.nn.functional.dropout(x, dropout, training=True)
        h_n.append(h)
        c_n.append(c)
    return x, torch.stack(h_n), None if c0 is None else torch.stack(c_n)


def handover(x: Tensor) -> str:
    """The engine that takes the calls this one cannot: the CPU engine, or the reference engine without Numba."""
    from . import cpu
    return "cpu" if cpu.why_not(x) is None else "reference"
