"""Pieces every cell family shares."""

from __future__ import annotations

import torch
from torch import Tensor


def recurrent_product(h: Tensor, w_hh: Tensor, b_hh: Tensor | None) -> Tensor:
    """hp = h W_hh^T + b_hh: the one product per step that must wait for the previous state. (B, G*H)"""
    return torch.addmm(b_hh, h, w_hh.t()) if b_hh is not None else h @ w_hh.t()
