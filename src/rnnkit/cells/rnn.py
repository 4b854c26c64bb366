r"""Elman RNN cell: one time step forward and its hand-derived backward.

Equations (torch.nn.RNN), with act = tanh or relu:

    h' = act(W_ih x + b_ih + W_hh h + b_hh)

Engines split the pre-activation into an input part and a recurrent part,

    xp = W_ih x + b_ih      # (B, H) one row block of a product over all steps
    hp = W_hh h + b_hh      # (B, H) the only product that must wait for h

because xp does not depend on the previous step: it is computed for every time step in
one large matrix product before the loop. The cell sees one step's xp and the state.

Backward, with dh' the total gradient reaching h' (from the output at this step and
from the next step):

    d(pre) = dh' * act'(pre)       act'(pre) = 1 - h'^2 (tanh), [h' > 0] (relu)
    dxp = dhp = d(pre)
    dh = d(pre) W_hh

Both derivatives are read off h' itself, so the forward keeps nothing but h'.
The weight gradients dW_ih = sum_t dxp_t^T x_t and dW_hh = sum_t dhp_t^T h_{t-1} are
sums over all steps and belong to the engine, which forms them as one product each.

Example:
    >>> import torch
    >>> from rnnkit.cells import rnn
    >>> B, H = 2, 3
    >>> w_hh, b_hh = torch.randn(H, H), torch.randn(H)
    >>> xp, h = torch.randn(B, H), torch.zeros(B, H)
    >>> (h1,), cache = rnn.forward(xp, (h,), w_hh, b_hh, nonlinearity="tanh")
    >>> dxp, dhp, (dh,) = rnn.backward((torch.ones(B, H),), (h1,), (h,), cache, w_hh, nonlinearity="tanh")
    >>> dh.shape
    torch.Size([2, 3])
"""

from __future__ import annotations

import torch
from torch import Tensor

from .common import preactivation

NONLINEARITIES = ("tanh", "relu")


def forward(xp: Tensor, state: tuple[Tensor], w_hh: Tensor, b_hh: Tensor | None, *, nonlinearity: str,
            keep: bool = True):
    """One step. xp: (B, H), state: (h,) with h (B, H). Returns ((h',), cache=()).

    The cache is empty either way; keep is accepted so every family's forward takes it."""
    (h,) = state
    pre = preactivation(xp, h, w_hh, b_hh)  # (B, H), a new tensor
    h_new = pre.tanh_() if nonlinearity == "tanh" else pre.relu_()  # in place on the new sum
    return (h_new,), ()


def backward(d_new: tuple[Tensor], new: tuple[Tensor], prev: tuple[Tensor], cache: tuple,
             w_hh: Tensor, *, nonlinearity: str):
    """Gradient of one step. d_new: (dh',) total gradient at h'. Returns (dxp, dhp, (dh,))."""
    (dh_new,), (h_new,) = d_new, new
    if nonlinearity == "tanh":
        dpre = dh_new * (1 - h_new * h_new)  # tanh'(pre) = 1 - tanh(pre)^2 = 1 - h'^2
    else:
        dpre = dh_new * (h_new > 0).to(dh_new.dtype)  # relu'(pre) = [pre > 0] = [h' > 0]
    dh = dpre @ w_hh  # (B, H): the gradient that flows back to the previous step
    return dpre, dpre, (dh,)
