"""Pieces every cell family shares."""

from __future__ import annotations

import torch
from torch import Tensor


def recurrent_product(h: Tensor, w_hh: Tensor, b_hh: Tensor | None) -> Tensor:
    """hp = h W_hh^T + b_hh: the one product per step that must wait for the previous state. (B, G*H)"""
    return torch.nn.functional.linear(h, w_hh, b_hh)  # addmm inside, with no transposed view made in Python


def preactivation(xp: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None) -> Tensor:
    """xp + h W_hh^T + b_hh as one new tensor (B, G*H), for RNN and LSTM, whose gates add the two halves.

    addmm adds the product onto xp as it writes a new tensor, and the bias goes in place: no second
    (B, G*H) tensor and no extra pass over memory per step, which at mid sizes is measurable
    (the time-series benchmark of benchmarks/cells.py). xp itself is never written."""
    a = torch.addmm(xp, h, w_hh.t())
    return a if b_hh is None else a.add_(b_hh)
