"""Pieces every cell family shares."""

from __future__ import annotations

import torch
from torch import Tensor


def recurrent_product(h: Tensor, w_hh: Tensor, b_hh: Tensor | None) -> Tensor:
    """hp = h W_hh^T + b_hh: the one product per step that must wait for the previous state. (B, G*H)"""
    return torch.nn.functional.linear(h, w_hh, b_hh)  # addmm inside, with no transposed view made in Python
