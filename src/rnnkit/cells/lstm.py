r"""LSTM cell: one time step forward and its hand-derived backward.

Equations (torch.nn.LSTM, gate order i, f, g, o in the rows of W_ih and W_hh):

    [a_i, a_f, a_g, a_o] = xp + hp,   xp = W_ih x + b_ih,   hp = W_hh h + b_hh
    i = sigmoid(a_i)   f = sigmoid(a_f)   g = tanh(a_g)   o = sigmoid(a_o)
    c' = f * c + i * g
    m  = o * tanh(c')
    h' = m                  (proj_size = 0)
    h' = W_hr m             (proj_size > 0: h has proj_size features, c keeps hidden_size)

xp is computed for all steps at once by the engine; the cell sees one step of it.

Backward, given dh' and dc' (each the sum of the gradient from this step's output and
the gradient flowing back from step t+1):

    dm  = dh'                  (or dh' W_hr with a projection)
    do  = dm * tanh(c')
    dc  = dc' + dm * o * (1 - tanh(c')^2)      # c' reaches the loss through h' and through c''
    di  = dc * g      df = dc * c      dg = dc * i
    da_i = di * i(1-i)   da_f = df * f(1-f)   da_g = dg * (1-g^2)   da_o = do * o(1-o)
    dxp = dhp = [da_i, da_f, da_g, da_o]
    dh  = dhp W_hh          dc_prev = dc * f

The forward keeps the four activated gates and c' (c is the previous step's c'), so
tanh(c') and m are recomputed in the backward instead of stored.

Example:
    >>> import torch
    >>> from rnnkit.cells import lstm
    >>> B, H = 2, 3
    >>> w_hh, b_hh = torch.randn(4 * H, H), torch.randn(4 * H)
    >>> state = (torch.zeros(B, H), torch.zeros(B, H))
    >>> (h1, c1), gates = lstm.forward(torch.randn(B, 4 * H), state, w_hh, b_hh)
    >>> d = (torch.ones(B, H), torch.zeros(B, H))
    >>> dxp, dhp, (dh, dc) = lstm.backward(d, (h1, c1), state, gates, w_hh)
    >>> dxp.shape
    torch.Size([2, 12])
"""

from __future__ import annotations

import torch
from torch import Tensor

from .common import preactivation


def forward(xp: Tensor, state: tuple[Tensor, Tensor], w_hh: Tensor, b_hh: Tensor | None,
            *, w_hr: Tensor | None = None, keep: bool = True):
    """One step. xp: (B, 4H), state: (h (B, P or H), c (B, H)). Returns ((h', c'), gates (B, 4H)).

    keep=False returns None for the gates: a caller that lets autograd differentiate the step
    (rnnkit.nn's cells) needs no cache, and building it would be one more op per step."""
    h, c = state
    a = preactivation(xp, h, w_hh, b_hh)  # (B, 4H), a new tensor nothing else holds
    # Activated in place, as torch's own lstm_cell does: no new tensors. unsafe_chunk's parts are not
    # views to autograd, and no backward reads the pre-activations a, so writing over them is safe.
    a_i, a_f, a_g, a_o = a.unsafe_chunk(4, dim=1)
    i, f, g, o = a_i.sigmoid_(), a_f.sigmoid_(), a_g.tanh_(), a_o.sigmoid_()
    c_new = (f * c).addcmul_(i, g)  # f * c + i * g
    m = o * torch.tanh(c_new)  # (B, H)
    h_new = m if w_hr is None else m @ w_hr.t()  # (B, P) with a projection
    return (h_new, c_new), torch.cat([i, f, g, o], dim=1) if keep else None


def projection_input(new: tuple[Tensor, Tensor], gates: Tensor) -> Tensor:
    """m = o * tanh(c'), the input of the projection, recomputed from what the forward kept. (B, H)"""
    o = gates.chunk(4, dim=1)[3]
    return o * torch.tanh(new[1])


def backward(d_new: tuple[Tensor, Tensor], new: tuple[Tensor, Tensor], prev: tuple[Tensor, Tensor],
             gates: Tensor, w_hh: Tensor, *, w_hr: Tensor | None = None):
    """Gradient of one step. d_new: (dh', dc'). Returns (dxp, dhp, (dh, dc)), dxp = dhp (B, 4H)."""
    (dh_new, dc_new), (_, c_new), (_, c) = d_new, new, prev
    i, f, g, o = gates.chunk(4, dim=1)
    dm = dh_new if w_hr is None else dh_new @ w_hr  # (B, H)
    tc = torch.tanh(c_new)
    do = dm * tc
    dc = dc_new + dm * o * (1 - tc * tc)  # direct path through c'' plus the path through h'
    di, df, dg = dc * g, dc * c, dc * i
    da = torch.cat([di * i * (1 - i), df * f * (1 - f), dg * (1 - g * g), do * o * (1 - o)], dim=1)
    dh = da @ w_hh  # (B, P or H)
    dc_prev = dc * f
    return da, da, (dh, dc_prev)
