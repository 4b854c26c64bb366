"""Attention over a padded memory: additive (Bahdanau) and multiplicative (Luong "general").

Both modules share one interface,

    forward(query (B, Hq), keys (B, S, Hk), mask (B, S) bool, True = valid)
        -> (context (B, Hk), weights (B, S))

with scores e_s turned into weights by a softmax over the valid positions only:

    a_s = exp(e_s) / sum_{s' valid} exp(e_s')     (a_s = 0 exactly where mask is False)
    context = sum_s a_s * k_s

Additive (Bahdanau, Cho & Bengio 2015, eq. 6 of "Neural machine translation by jointly learning
to align and translate"):    e_s = v^T tanh(W_q q + W_k k_s)
Multiplicative (Luong, Pham & Manning 2015, the "general" score):    e_s = q^T W k_s

Masked positions get exactly 0 weight because their score is -inf before the softmax (exp(-inf)
is 0, not a small number). A row with no valid position at all gets zero weights and a zero
context instead of NaN, so a batch padded to a fixed size never poisons the gradient.

The keys' projection does not depend on the query, so a decoder that attends over the same
memory at every step computes it once: `prepare(keys)` and pass the result as `prepared=`.

>>> import torch
>>> torch.manual_seed(0) and None
>>> attn = AdditiveAttention(query_size=4, key_size=6)
>>> keys = torch.randn(2, 3, 6)                              # (B, S, Hk)
>>> mask = torch.tensor([[True, True, False], [True, True, True]])
>>> context, weights = attn(torch.randn(2, 4), keys, mask)
>>> context.shape, weights.shape
(torch.Size([2, 6]), torch.Size([2, 3]))
>>> weights[0, 2].item(), round(weights.sum(1)[0].item(), 6)
(0.0, 1.0)
>>> mult = MultiplicativeAttention(query_size=4, key_size=6)
>>> torch.allclose(mult(torch.randn(2, 4), keys, mask)[1].sum(1), torch.ones(2))
True
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax of scores (B, S) over positions where mask (B, S) is True; exactly 0 elsewhere.

    Rows without any valid position come out all zero (not NaN, and with a finite gradient).
    """
    mask = mask.to(torch.bool)
    empty = ~mask.any(-1, keepdim=True)                           # (B, 1)
    # Empty rows soften over every position (finite), then the multiplication below zeroes them.
    usable = mask | empty
    weights = scores.masked_fill(~usable, float("-inf")).softmax(-1)     # (B, S)
    return weights * mask.to(weights.dtype)


def _check(query: Tensor, keys: Tensor, mask: Tensor) -> None:
    B, S = keys.shape[:2]
    if query.dim() != 2 or keys.dim() != 3 or query.shape[0] != B or tuple(mask.shape) != (B, S):
        raise ValueError(f"attention: expected query (B, Hq), keys (B, S, Hk), mask (B, S); got "
                         f"{tuple(query.shape)}, {tuple(keys.shape)}, {tuple(mask.shape)}")


class AdditiveAttention(nn.Module):
    """Bahdanau attention: e_s = v^T tanh(W_q q + W_k k_s); W_k has the bias, v none.

    query_size Hq, key_size Hk, size A of the hidden layer of the score (default Hq).
    """

    def __init__(self, query_size: int, key_size: int, size: int | None = None):
        super().__init__()
        size = size or query_size
        self.query_proj = nn.Linear(query_size, size, bias=False)
        self.key_proj = nn.Linear(key_size, size)
        self.v = nn.Linear(size, 1, bias=False)

    def prepare(self, keys: Tensor) -> Tensor:
        """W_k k_s + b for every key: (B, S, Hk) -> (B, S, A). Independent of the query."""
        return self.key_proj(keys)

    def scores(self, query: Tensor, keys: Tensor, prepared: Tensor | None = None) -> Tensor:
        """Unnormalised e (B, S)."""
        prepared = self.prepare(keys) if prepared is None else prepared         # (B, S, A)
        hidden = torch.tanh(prepared + self.query_proj(query).unsqueeze(1))     # (B, S, A)
        return self.v(hidden).squeeze(-1)                                       # (B, S)

    def forward(self, query: Tensor, keys: Tensor, mask: Tensor,
                prepared: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check(query, keys, mask)
        weights = masked_softmax(self.scores(query, keys, prepared), mask)     # (B, S)
        return torch.bmm(weights.unsqueeze(1), keys).squeeze(1), weights       # (B, Hk), (B, S)


class MultiplicativeAttention(nn.Module):
    """Luong's "general" score: e_s = q^T W k_s, W of shape (Hq, Hk), no bias.

    Computed as (W^T q) . k_s: one projection of the query per step, none of the keys, so
    `prepare` is the identity (kept for the shared interface).
    """

    def __init__(self, query_size: int, key_size: int):
        super().__init__()
        self.query_proj = nn.Linear(query_size, key_size, bias=False)     # weight (Hk, Hq) = W^T

    def prepare(self, keys: Tensor) -> Tensor:
        return keys

    def scores(self, query: Tensor, keys: Tensor, prepared: Tensor | None = None) -> Tensor:
        return torch.bmm(keys, self.query_proj(query).unsqueeze(-1)).squeeze(-1)   # (B, S)

    def forward(self, query: Tensor, keys: Tensor, mask: Tensor,
                prepared: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check(query, keys, mask)
        weights = masked_softmax(self.scores(query, keys), mask)               # (B, S)
        return torch.bmm(weights.unsqueeze(1), keys).squeeze(1), weights       # (B, Hk), (B, S)


ATTENTION = {"additive": AdditiveAttention, "multiplicative": MultiplicativeAttention}


def make_attention(kind: str, query_size: int, key_size: int) -> nn.Module | None:
    """An attention module by name ("none" gives None: the decoder then sees no context)."""
    if kind == "none":
        return None
    if kind not in ATTENTION:
        raise ValueError(f"unknown attention {kind!r}: expected additive, multiplicative or none")
    return ATTENTION[kind](query_size, key_size)
