"""Task models: an embedding or feature input in front of rnnkit's recurrent layers, an output layer behind.

    SequenceClassifier   many-to-one: a whole sequence -> class scores (or one regression value)
    LanguageModel        many-to-many, aligned: tokens -> next-token scores at every step; stateful

Example, a GRU sentiment classifier over token ids:

>>> from rnnkit.train.config import ModelConfig
>>> model = SequenceClassifier(ModelConfig(cell="gru", hidden=8), num_inputs=100, num_outputs=2, tokens=True)
>>> model(torch.randint(1, 100, (3, 5)), torch.tensor([5, 2, 4])).shape
torch.Size([3, 2])
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import nn as rnn_layers
from ..train.config import ModelConfig

# cell name -> (layer class, extra keyword arguments)
CELLS = {
    "lstm": (rnn_layers.LSTM, {}),
    "gru": (rnn_layers.GRU, {}),
    "rnn": (rnn_layers.RNN, {"nonlinearity": "tanh"}),
    "rnn-relu": (rnn_layers.RNN, {"nonlinearity": "relu"}),
}


def check_cell(name: str) -> None:
    if name not in CELLS:
        raise ValueError(f"unknown cell {name!r}: expected one of {', '.join(CELLS)}")


FORGET_BIAS = 1.0  # LSTM forget gates start open (Gers et al. 2000, Jozefowicz et al. 2015; Keras's default)


def recurrent(cfg: ModelConfig, input_size: int, bidirectional: bool) -> nn.Module:
    """A batch_first rnnkit layer stack as the config describes; an LSTM's forget gates start open."""
    check_cell(cfg.cell)
    cls, kw = CELLS[cfg.cell]
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


class SequenceClassifier(nn.Module):
    """Read a (padded) sequence and emit num_outputs scores: the many-to-one shape.

    Inputs are token ids (B, T) when `tokens` (id 0 is padding) or feature vectors (B, T, F).
    The sequence is summarised by the top layer's final state ("last"; for a bidirectional
    layer the backward direction's final state is at t = 0) or by the mean or max of the
    outputs over each sequence's own steps.
    """

    def __init__(self, cfg: ModelConfig, num_inputs: int, num_outputs: int, tokens: bool):
        super().__init__()
        self.pooling, self.directions = cfg.pooling, 2 if cfg.bidirectional else 1
        self.embed = nn.Embedding(num_inputs, cfg.embed, padding_idx=0) if tokens else None
        self.rnn = recurrent(cfg, cfg.embed if tokens else num_inputs, cfg.bidirectional)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.hidden * self.directions, num_outputs)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        inputs = self.drop(self.embed(x)) if self.embed is not None else x  # (B, T, E or F)
        out, h_n = self.rnn(inputs, lengths=lengths.cpu())  # (B, T, D*H), zero beyond each length
        if self.pooling == "last":
            summary = last_layer_state(h_n, self.directions)
        elif self.pooling == "mean":
            summary = out.sum(1) / lengths.to(out.dtype).unsqueeze(1)
        else:
            valid = torch.arange(out.shape[1], device=out.device)[None, :] < lengths.to(out.device)[:, None]  # (B, T)
            summary = out.masked_fill(~valid.unsqueeze(-1), float("-inf")).amax(1)
        return self.head(self.drop(summary))  # (B, num_outputs)


class LanguageModel(nn.Module):
    """Embedding -> stacked recurrent layers -> dropout -> scores over the vocabulary, at every step.

    forward(x (B, T), state) -> (logits (B, T, V), state): the state is the layers' (h_n[, c_n]),
    carried from batch to batch in stateful training. With tie_weights the output matrix is the
    embedding matrix (Press & Wolf 2017), which needs embed == hidden.
    """

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        if cfg.bidirectional:  # reading ahead would see the very tokens it must predict
            raise ValueError("--bidirectional does not apply to a language model (it reads left to right); drop it")
        if cfg.tie_weights and cfg.embed != cfg.hidden:
            raise ValueError(f"--tie-weights needs --embed equal to --hidden, got {cfg.embed} and {cfg.hidden}")
        self.embed = nn.Embedding(vocab_size, cfg.embed)
        self.rnn = recurrent(cfg, cfg.embed, bidirectional=False)  # a language model reads left to right only
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.hidden, vocab_size)
        if cfg.tie_weights:
            self.head.weight = self.embed.weight

    def forward(self, x: Tensor, state=None):
        out, state = self.rnn(self.drop(self.embed(x)), state)  # (B, T, H)
        return self.head(self.drop(out)), state  # (B, T, V)

    def step(self, tokens: Tensor, state=None):
        """One token per sequence (B,) -> (logits (B, V), state): the decoder interface of rnnkit.tasks.decode."""
        logits, state = self(tokens[:, None], state)
        return logits[:, 0], state
