"""Many-to-one: a whole (padded) sequence -> class scores, or one regression value.

Example, a GRU sentiment classifier over token ids:

>>> from rnnkit.train.config import ModelConfig
>>> model = SequenceClassifier(ModelConfig(cell="gru", hidden=8), num_inputs=100, num_outputs=2, tokens=True)
>>> model(torch.randint(1, 100, (3, 5)), torch.tensor([5, 2, 4])).shape
torch.Size([3, 2])
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...train.config import ModelConfig
from ..common import length_mask
from .recurrent import last_layer_state, recurrent


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
            valid = length_mask(lengths.to(out.device), out.shape[1])  # (B, T)
            summary = out.masked_fill(~valid.unsqueeze(-1), float("-inf")).amax(1)
        return self.head(self.drop(summary))  # (B, num_outputs)
