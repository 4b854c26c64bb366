r"""GRU+ cell: a GRU with layer normalisation, variational recurrent dropout and zoneout, one step
forward and its hand-derived backward.

Each addition is optional (rnnkit.engines.gru_plus's config words "ln", "rdrop", "zoneout_h", "bias");
without them the step is torch.nn.GRU's (rnnkit.cells.gru). With gate order (r, z, n) as torch.nn.GRU:

    xp = [x_r, x_z, x_n]                     the input side, W_ih x + b_ih (or LN(W_ih x) + b_ih), given
    hm = h * d                               d (B, H): the recurrent dropout mask of each sequence, already
                                             scaled by 1/(1-p), the same at every step (Gal & Ghahramani 2016)
    g  = hm W_hh^T                           (B, 3H)
    ĝ  = (g - mean(g)) * rstd,  rstd = 1 / sqrt(var(g) + 1e-5)        over the 3H features, biased variance
    hp = ĝ * gamma + beta + b_hh = [h_r, h_z, h_n]                     (Ba et al. 2016; haste's LayerNormGRU
                                             normalises the input and recurrent halves separately: the input
                                             half is in xp already)
    r = sigmoid(x_r + h_r),  z = sigmoid(x_z + h_z),  n = tanh(x_n + r * h_n)
    h~ = (1 - z) * n + z * h                 the previous state h, not the dropped-out hm
    h' = zh * h + (1 - zh) * h~              zh (B, H) in {0, 1}: 1 keeps the previous value (zoneout,
                                             Krueger et al. 2016), drawn per step and unit

Without "ln": ĝ is g, gamma 1, beta 0; without "bias": b_hh = 0; without "rdrop": d = 1; without
"zoneout_h": zh = 0.

Backward, given dh' (gradient from this step's output plus from step t+1):

    dh~ = dh' * (1 - zh)             dh_direct = dh' * zh + dh~ * z          (the paths that skip W_hh)
    dn = dh~ * (1 - z)               dz = dh~ * (h - n)
    da_n = dn * (1 - n^2)            da_r = da_n * h_n * r(1-r)              da_z = dz * z(1-z)
    dxp = [da_r, da_z, da_n]         dhp = [da_r, da_z, da_n * r]            (as the plain GRU)
    layer norm: dĝ = dhp * gamma
                dg = rstd * (dĝ - mean(dĝ) - ĝ * mean(dĝ * ĝ))                (means over the 3H features)
    dh = (dg W_hh) * d + dh_direct

The weights every step shares get sums over steps (the engine forms them as one product each):

    dW_hh = sum_t dg_t^T hm_t       db_hh = sum_t dhp_t       dgamma = sum_t dhp_t * ĝ_t     dbeta = sum_t dhp_t

The forward keeps [r, z, n, h_n] (4H values per row), and with layer norm ĝ (3H) and rstd (1).

Example:
    >>> import torch
    >>> from rnnkit.cells import gru_plus
    >>> B, H = 2, 3
    >>> w_hh, b_hh = torch.randn(3 * H, H), torch.randn(3 * H)
    >>> ln = (torch.ones(3 * H), torch.zeros(3 * H))
    >>> h = torch.zeros(B, H)
    >>> rdrop, zoneout = torch.full((B, H), 2.0), torch.tensor([[1.0, 0, 0], [0, 1, 0]])
    >>> (h1,), cache = gru_plus.forward(torch.randn(B, 3 * H), (h,), w_hh, b_hh, ln=ln, rdrop=rdrop, zoneout=zoneout)
    >>> dxp, dhp, dg, (dh,) = gru_plus.backward((torch.ones(B, H),), (h1,), (h,), cache, w_hh, ln_weight=ln[0],
    ...                                         rdrop=rdrop, zoneout=zoneout)
    >>> dg.shape, float(h1[0, 0])   # zoneout kept unit 0 of sequence 0 at its previous value
    (torch.Size([2, 9]), 0.0)
"""

from __future__ import annotations

import torch
from torch import Tensor

EPS = 1e-5  # torch.nn.functional.layer_norm's default


def layer_norm_stats(g: Tensor) -> tuple[Tensor, Tensor]:
    """ĝ = (g - mean) * rstd over the last dimension (biased variance) and rstd (B, 1)."""
    centred = g - g.mean(1, keepdim=True)
    rstd = torch.rsqrt(centred.pow(2).mean(1, keepdim=True) + EPS)
    return centred * rstd, rstd


def forward(xp: Tensor, state: tuple[Tensor], w_hh: Tensor, b_hh: Tensor | None, *,
            ln: tuple[Tensor | None, Tensor | None] | None = None, rdrop: Tensor | None = None,
            zoneout: Tensor | None = None, keep: bool = True):
    """One step. xp: (B, 3H), state: (h (B, H),); ln: (gamma, beta) (3H) each (None: 1, 0), or None for no
    layer norm; rdrop, zoneout: (B, H) masks or None. Returns ((h',), cache) with
    cache = ([r, z, n, h_n] (B, 4H), ĝ (B, 3H) or None, rstd (B, 1) or None); keep=False: cache None.

    Plain differentiable torch ops: rnnkit.engines.gru_plus.autograd_forward runs this under autograd."""
    (h,) = state
    hm = h if rdrop is None else h * rdrop
    hp = hm @ w_hh.t()  # (B, 3H)
    g_hat = rstd = None
    if ln is not None:
        g_hat, rstd = layer_norm_stats(hp)
        gamma, beta = ln
        hp = g_hat if gamma is None else g_hat * gamma
        if beta is not None:
            hp = hp + beta
    if b_hh is not None:
        hp = hp + b_hh
    x_r, x_z, x_n = xp.chunk(3, dim=1)
    h_r, h_z, h_n = hp.chunk(3, dim=1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    h_new = (1 - z) * n + z * h
    if zoneout is not None:
        h_new = zoneout * h + (1 - zoneout) * h_new  # zh in {0, 1}: exactly h or h~
    return (h_new,), (torch.cat([r, z, n, h_n], dim=1), g_hat, rstd) if keep else None


def backward(d_new: tuple[Tensor], new: tuple[Tensor], prev: tuple[Tensor], cache, w_hh: Tensor, *,
             ln_weight: Tensor | None = None, rdrop: Tensor | None = None, zoneout: Tensor | None = None):
    """Gradient of one step. d_new: (dh',); cache as forward returns it (layer norm when its ĝ is not None).

    Returns (dxp (B, 3H), dhp (B, 3H), dg (B, 3H), (dh,)): dhp is the gradient at hp (for b_hh, gamma,
    beta), dg the gradient at g = hm W_hh^T (for W_hh; dg is dhp without layer norm)."""
    (dh_new,), (h,) = d_new, prev
    gates, g_hat, rstd = cache
    r, z, n, h_n = gates.chunk(4, dim=1)
    dh_tilde = dh_new if zoneout is None else dh_new * (1 - zoneout)
    dh_direct = dh_tilde * z if zoneout is None else dh_new * zoneout + dh_tilde * z  # z * h, and zh * h
    dn = dh_tilde * (1 - z)
    dz = dh_tilde * (h - n)
    da_n = dn * (1 - n * n)  # through tanh
    da_r = da_n * h_n * r * (1 - r)  # n = tanh(x_n + r * h_n): r multiplies h_n
    da_z = dz * z * (1 - z)
    dxp = torch.cat([da_r, da_z, da_n], dim=1)
    dhp = torch.cat([da_r, da_z, da_n * r], dim=1)
    dg = dhp
    if g_hat is not None:  # back through ĝ * gamma and the normalisation, a function of the whole row
        d_hat = dhp if ln_weight is None else dhp * ln_weight
        dg = rstd * (d_hat - d_hat.mean(1, keepdim=True) - g_hat * (d_hat * g_hat).mean(1, keepdim=True))
    dhm = dg @ w_hh  # (B, H)
    dh = dh_direct + (dhm if rdrop is None else dhm * rdrop)
    return dxp, dhp, dg, (dh,)
