"""The recurrent stack every task model is built on: rnnkit's layers (or cells) as the config describes.

    recurrent(cfg, input_size, bidirectional)   a batch_first layer stack, LSTM forget gates open
    CELLS[name]                                  (layer class, step-cell class, keyword arguments)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ... import nn as rnn_layers
from ...train.config import ModelConfig

# cell name -> (layer class, single-step cell class, extra keyword arguments of both)
CELLS = {
    "lstm": (rnn_layers.LSTM, rnn_layers.LSTMCell, {}),
    "gru": (rnn_layers.GRU, rnn_layers.GRUCell, {}),
    "rnn": (rnn_layers.RNN, rnn_layers.RNNCell, {"nonlinearity": "tanh"}),
    "rnn-relu": (rnn_layers.RNN, rnn_layers.RNNCell, {"nonlinearity": "relu"}),
    # cells torch.nn lacks: whole-sequence layers only (no step cell; step decoders refuse them in the config)
    "mingru": (rnn_layers.MinGRU, None, {}),
    "minlstm": (rnn_layers.MinLSTM, None, {}),
    "slstm": (rnn_layers.SLSTM, None, {}),
}


# the layer options beyond torch.nn that each cell takes from the config (rnnkit.nn.options)
OPTION_OF = {"lstm": ("layer_norm", "peephole", "zoneout", "recurrent_dropout", "weight_drop"),
             "gru": ("layer_norm", "zoneout", "recurrent_dropout", "weight_drop"),
             "rnn": ("weight_drop",), "rnn-relu": ("weight_drop",)}


def check_cell(name: str) -> None:
    if name not in CELLS:
        raise ValueError(f"unknown cell {name!r}: expected one of {', '.join(CELLS)}")


FORGET_BIAS = 1.0  # LSTM forget gates start open (Gers et al. 2000, Jozefowicz et al. 2015; Keras's default)


def recurrent(cfg: ModelConfig, input_size: int, bidirectional: bool) -> nn.Module:
    """A batch_first rnnkit layer stack as the config describes; an LSTM's forget gates start open."""
    check_cell(cfg.cell)
    cls, _, kw = CELLS[cfg.cell]
    kw = dict(kw, **{name: getattr(cfg, name) for name in OPTION_OF.get(cfg.cell, ()) if getattr(cfg, name)})
    if cfg.cell == "slstm":
        kw["num_heads"] = cfg.heads
    layer = cls(input_size, cfg.hidden, num_layers=cfg.layers, batch_first=True, bidirectional=bidirectional,
                dropout=cfg.dropout if cfg.layers > 1 else 0.0, engine=cfg.engine, **kw)
    if cfg.cell == "lstm":
        open_forget_gates(layer, FORGET_BIAS)
    return layer


def open_forget_gates(lstm: nn.Module, value: float) -> None:
    """Make every forget-gate bias (gate order i, f, g, o) `value` in total: b_ih = value, b_hh = 0.

    torch's initialisation draws it near 0, so the cell state halves every step at first and
    the gradient from a loss 100 steps away is about 2^-100: on long-range tasks such as the
    adding problem at T=200 an LSTM then sits at the trivial solution for thousands of steps.
    """
    h = lstm.hidden_size
    with torch.no_grad():
        for name, p in lstm.named_parameters():
            if name.startswith("bias_ih"):
                p[h:2 * h].fill_(value)
            elif name.startswith("bias_hh"):
                p[h:2 * h].zero_()


def last_layer_state(h_n, directions: int) -> Tensor:
    """The final hidden state of the top layer, directions concatenated. (B, D*H)"""
    h = h_n[0] if isinstance(h_n, tuple) else h_n  # LSTM: (h_n, c_n)
    return torch.cat(list(h[-directions:]), dim=-1)
