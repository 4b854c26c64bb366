r"""GRU cell: one time step forward and its hand-derived backward.

Equations (torch.nn.GRU, gate order r, z, n in the rows of W_ih and W_hh):

    [x_r, x_z, x_n] = xp = W_ih x + b_ih        [h_r, h_z, h_n] = hp = W_hh h + b_hh
    r = sigmoid(x_r + h_r)
    z = sigmoid(x_z + h_z)
    n = tanh(x_n + r * h_n)          # r gates the recurrent term *with* its bias b_hn
    h' = (1 - z) * n + z * h

Because r multiplies h_n, the input and recurrent halves of the n gate get different
gradients, so unlike RNN and LSTM the cell returns dxp and dhp separately.

Backward, given dh' (gradient from this step's output plus from step t+1):

    dn = dh' * (1 - z)        dz = dh' * (h - n)        dh_direct = dh' * z
    da_n = dn * (1 - n^2)     # pre-activation of n
    dr = da_n * h_n
    da_r = dr * r(1-r)        da_z = dz * z(1-z)
    dxp = [da_r, da_z, da_n]
    dhp = [da_r, da_z, da_n * r]
    dh  = dhp W_hh + dh_direct

The forward keeps r, z, n and h_n (4H values per row); h comes from the previous output.

Example:
    >>> import torch
    >>> from rnnkit.cells import gru
    >>> B, H = 2, 3
    >>> w_hh, b_hh = torch.randn(3 * H, H), torch.randn(3 * H)
    >>> h = torch.zeros(B, H)
    >>> (h1,), cache = gru.forward(torch.randn(B, 3 * H), (h,), w_hh, b_hh)
    >>> dxp, dhp, (dh,) = gru.backward((torch.ones(B, H),), (h1,), (h,), cache, w_hh)
    >>> dhp.shape
    torch.Size([2, 9])
"""

from __future__ import annotations

import torch
from torch import Tensor

from .common import recurrent_product


def forward(xp: Tensor, state: tuple[Tensor], w_hh: Tensor, b_hh: Tensor | None, *, keep: bool = True):
    """One step. xp: (B, 3H), state: (h (B, H),). Returns ((h',), cache (B, 4H) = [r, z, n, h_n]).

    keep=False returns None for the cache (for callers that let autograd differentiate the step)."""
    (h,) = state
    hp = recurrent_product(h, w_hh, b_hh)  # (B, 3H)
    x_r, x_z, x_n = xp.unsafe_chunk(3, dim=1)  # unsafe: the parts are only read; skips view bookkeeping
    h_r, h_z, h_n = hp.unsafe_chunk(3, dim=1)
    r = (x_r + h_r).sigmoid_()  # in place on the new sums, as torch's gru_cell does
    z = (x_z + h_z).sigmoid_()
    n = torch.addcmul(x_n, r, h_n).tanh_()  # tanh(x_n + r * h_n)
    h_new = torch.lerp(n, h, z)  # n + z * (h - n) = (1 - z) * n + z * h, one op
    return (h_new,), torch.cat([r, z, n, h_n], dim=1) if keep else None


def backward(d_new: tuple[Tensor], new: tuple[Tensor], prev: tuple[Tensor], cache: Tensor, w_hh: Tensor):
    """Gradient of one step. d_new: (dh',). Returns (dxp (B, 3H), dhp (B, 3H), (dh,))."""
    (dh_new,), (h,) = d_new, prev
    r, z, n, h_n = cache.chunk(4, dim=1)
    dn = dh_new * (1 - z)
    dz = dh_new * (h - n)
    da_n = dn * (1 - n * n)
    da_r = da_n * h_n * r * (1 - r)
    da_z = dz * z * (1 - z)
    dxp = torch.cat([da_r, da_z, da_n], dim=1)
    dhp = torch.cat([da_r, da_z, da_n * r], dim=1)
    dh = dhp @ w_hh + dh_new * z  # through the recurrent product, and directly through z * h
    return dxp, dhp, (dh,)
