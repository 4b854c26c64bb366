r"""LSTM+ cell: an LSTM with layer normalisation, peephole connections, variational recurrent dropout
and zoneout, any combination, one time step forward and its hand-derived backward.

The options are the words of `config` (a comma-separated string, read as a set):

    bias        b_hh is given                          ln          layer normalisation (Ba et al. 2016)
    peephole    peephole weights (Gers & Schmidhuber)  rdrop       variational recurrent dropout (Gal & Ghahramani)
    zoneout_h   zoneout on h (Krueger et al. 2016)     zoneout_c   zoneout on c

Equations of one step (h, c: the state the step starts from; xp: this step's x part, which the
layer formed already: W_ih x + b_ih, or LN(W_ih x) + b_ih with "ln"):

    hm = h * r                                  r: the rdrop mask (B, H), already scaled by 1/(1-p)
    z  = hm W_hh^T                              (B, 4H), the recurrent product
    hp = LN(z; w_hh_ln, b_hh_ln)                with "ln": over the 4H features, eps 1e-5, biased variance
       = zn * w_hh_ln + b_hh_ln,  zn = (z - mean z) * rstd_z,  rstd_z = 1 / sqrt(var z + eps)
    a  = xp + hp + b_hh = [a_i, a_f, a_g, a_o]
    a_i += p_i * c;  a_f += p_f * c             with "peephole": the previous cell state
    i = sigmoid(a_i)   f = sigmoid(a_f)   g = tanh(a_g)
    c~ = f * c + i * g
    a_o += p_o * c~                             with "peephole": the new cell state, before zoneout
    o = sigmoid(a_o)
    y  = LN(c~; w_c_ln, b_c_ln) = cn * w_c_ln + b_c_ln,  cn = (c~ - mean c~) * rstd_c   (with "ln"; else y = c~)
    h~ = o * tanh(y)
    c' = zc * c + (1 - zc) * c~                 with "zoneout_c" (zc in {0, 1}: 1 keeps the old value)
    h' = zh * h + (1 - zh) * h~                 with "zoneout_h" (the previous h, not hm)

Backward, given dh' and dc' (each the sum of the gradient from this step's output and the one
flowing back from the step after):

    dh~ = (1 - zh) dh'                         dh  <- zh dh'             (the zoneout path keeps h)
    dc~ = (1 - zc) dc'                         dc  <- zc dc'
    do  = dh~ * tanh(y)                        dy  = dh~ * o * (1 - tanh(y)^2)
    with "ln": dcn = dy * w_c_ln;  dc~ += rstd_c (dcn - mean(dcn) - cn mean(dcn * cn))   else dc~ += dy
    da_o = do * o(1 - o);                      dc~ += p_o da_o           (a_o reads c~)
    da_i = dc~ g i(1 - i);  da_f = dc~ c f(1 - f);  da_g = dc~ i (1 - g^2)
    dc  += dc~ f + p_i da_i + p_f da_f          (c reaches c~ and, with peepholes, a_i and a_f)
    dxp = da = [da_i, da_f, da_g, da_o];  dhp = da
    with "ln": dzn = da * w_hh_ln;  dz = rstd_z (dzn - mean(dzn) - zn mean(dzn * zn))      else dz = da
    dh  += (dz W_hh) * r

The parameters' gradients are sums over steps, which the engines form over all rows at once:

    dW_hh = sum dz^T hm     db_hh = sum da      dw_hh_ln = sum da * zn     db_hh_ln = sum da
    dw_c_ln = sum dy * cn   db_c_ln = sum dy    dp_i = sum da_i c   dp_f = sum da_f c   dp_o = sum da_o c~

The forward keeps the gates [i, f, g, o], c~ and, with "ln", zn and the statistics [rstd_z, mean c~,
rstd_c]; tanh(y) is recomputed in the backward.

Example:
    >>> import torch
    >>> from rnnkit.cells import lstm_plus
    >>> B, H = 2, 3
    >>> flags = lstm_plus.parse("bias,ln,peephole,zoneout_h")
    >>> none = torch.empty(0)
    >>> params = (torch.randn(4 * H, H), torch.randn(4 * H), torch.ones(4 * H), torch.zeros(4 * H), torch.ones(H),
    ...           torch.zeros(H), torch.randn(3 * H))
    >>> masks = (none, torch.bernoulli(torch.full((B, H), 0.5)), none)
    >>> state = (torch.zeros(B, H), torch.zeros(B, H))
    >>> (h1, c1), cache = lstm_plus.forward(torch.randn(B, 4 * H), state, params, masks, flags)
    >>> d = (torch.ones(B, H), torch.zeros(B, H))
    >>> da, (dz, dy), (dh, dc) = lstm_plus.backward(d, (h1, c1), state, cache, params, masks, flags)
    >>> da.shape, dz.shape, dh.shape
    (torch.Size([2, 12]), torch.Size([2, 12]), torch.Size([2, 3]))
"""

from __future__ import annotations

import torch
from torch import Tensor

WORDS = frozenset({"bias", "ln", "peephole", "rdrop", "zoneout_h", "zoneout_c"})
EPS = 1e-5  # torch.nn.functional.layer_norm's default


def parse(config: str) -> frozenset[str]:
    """The option words of a config string, checked."""
    flags = frozenset(w.strip() for w in config.split(",") if w.strip())
    if unknown := flags - WORDS:
        raise ValueError(f"lstm_plus: unknown config words {sorted(unknown)}; expected a subset of {sorted(WORDS)}")
    return flags


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor):
    """LN over the last dimension (biased variance, eps 1e-5) as plain ops: (y, xn, mean, rstd)."""
    mean = x.mean(-1, keepdim=True)
    xc = x - mean
    rstd = torch.rsqrt((xc * xc).mean(-1, keepdim=True) + EPS)
    xn = xc * rstd
    return xn * weight + bias, xn, mean, rstd


def layer_norm_backward(dy_scaled: Tensor, xn: Tensor, rstd: Tensor) -> Tensor:
    """dx of xn = (x - mean) * rstd given dxn: rstd (dxn - mean(dxn) - xn mean(dxn * xn))."""
    return rstd * (dy_scaled - dy_scaled.mean(-1, keepdim=True) - xn * (dy_scaled * xn).mean(-1, keepdim=True))


def forward(xp: Tensor, state: tuple[Tensor, Tensor], params, masks, flags: frozenset[str], *, keep: bool = True):
    """One step for the B rows of xp (B, 4H). state: (h, c) (B, H) each.

    params: (w_hh (4H, H), b_hh (4H), w_hh_ln (4H), b_hh_ln (4H), w_c_ln (H), b_c_ln (H), peephole (3H));
    masks: (r (B, H), zh (B, H), zc (B, H)), this step's rows; entries not in flags are ignored.
    Returns ((h', c'), cache), cache = (gates (B, 4H), c~ (B, H), zn (B, 4H) or None, stats (B, 3) or None);
    keep=False returns None for the cache (autograd differentiates the step itself).
    """
    h, c = state
    w_hh, b_hh, w_hh_ln, b_hh_ln, w_c_ln, b_c_ln, peep = params
    r, zh, zc = masks
    hm = h * r if "rdrop" in flags else h
    z = hm @ w_hh.t()  # (B, 4H)
    zn = rstd_z = None
    if "ln" in flags:
        z, zn, _, rstd_z = layer_norm(z, w_hh_ln, b_hh_ln)
    a = xp + z
    if "bias" in flags:
        a = a + b_hh
    a_i, a_f, a_g, a_o = a.chunk(4, dim=1)
    if "peephole" in flags:
        p_i, p_f, p_o = peep.chunk(3)
        a_i, a_f = a_i + p_i * c, a_f + p_f * c
    i, f, g = torch.sigmoid(a_i), torch.sigmoid(a_f), torch.tanh(a_g)
    c_t = f * c + i * g  # (B, H) c~
    if "peephole" in flags:
        a_o = a_o + p_o * c_t
    o = torch.sigmoid(a_o)
    y, mean_c, rstd_c = c_t, None, None
    if "ln" in flags:
        y, _, mean_c, rstd_c = layer_norm(c_t, w_c_ln, b_c_ln)
    h_t = o * torch.tanh(y)  # h~
    c_new = zc * c + (1 - zc) * c_t if "zoneout_c" in flags else c_t
    h_new = zh * h + (1 - zh) * h_t if "zoneout_h" in flags else h_t
    if not keep:
        return (h_new, c_new), None
    stats = torch.cat([rstd_z, mean_c, rstd_c], dim=1) if "ln" in flags else None
    return (h_new, c_new), (torch.cat([i, f, g, o], dim=1), c_t, zn, stats)


def backward(d_new: tuple[Tensor, Tensor], new: tuple[Tensor, Tensor], prev: tuple[Tensor, Tensor], cache, params,
             masks, flags: frozenset[str]):
    """Gradient of one step. d_new: (dh', dc'). Returns (da, (dz, dy), (dh, dc)):

    da (B, 4H) = dxp = the gradient of b_hh and of LN's output hp; dz (B, 4H) the gradient of the recurrent
    product z = hm W_hh^T (da without "ln"); dy (B, H) the gradient of LN(c~)'s output (None without "ln");
    dh, dc the gradients of the state the step started from."""
    (dh_new, dc_new), (_, c) = d_new, prev
    gates, c_t, zn, stats = cache
    w_hh, _, w_hh_ln, _, w_c_ln, _, peep = params
    r, zh, zc = masks
    i, f, g, o = gates.chunk(4, dim=1)
    # the zoneout paths: a kept unit passes its gradient straight to the previous state
    dh_t = (1 - zh) * dh_new if "zoneout_h" in flags else dh_new
    dc_t = (1 - zc) * dc_new if "zoneout_c" in flags else dc_new
    if "ln" in flags:
        rstd_z, mean_c, rstd_c = stats.split(1, dim=1)
        cn = (c_t - mean_c) * rstd_c
        y = cn * w_c_ln + params[5]
    else:
        y = c_t
    ty = torch.tanh(y)
    do = dh_t * ty
    dy = dh_t * o * (1 - ty * ty)
    # c~ reaches the loss through c' (and the next step), through y = LN(c~) and, with peepholes, through a_o
    dc_t = dc_t + (layer_norm_backward(dy * w_c_ln, cn, rstd_c) if "ln" in flags else dy)
    da_o = do * o * (1 - o)
    if "peephole" in flags:
        p_i, p_f, p_o = peep.chunk(3)
        dc_t = dc_t + p_o * da_o
    da_i, da_f, da_g = dc_t * g * i * (1 - i), dc_t * c * f * (1 - f), dc_t * i * (1 - g * g)
    dc = dc_t * f  # c~ = f * c + ...
    if "peephole" in flags:
        dc = dc + p_i * da_i + p_f * da_f  # a_i and a_f read c
    if "zoneout_c" in flags:
        dc = dc + zc * dc_new
    da = torch.cat([da_i, da_f, da_g, da_o], dim=1)  # (B, 4H)
    dz = layer_norm_backward(da * w_hh_ln, zn, rstd_z) if "ln" in flags else da  # through hp = LN(z)
    dh = dz @ w_hh  # (B, H) the gradient of hm
    if "rdrop" in flags:
        dh = dh * r
    if "zoneout_h" in flags:
        dh = dh + zh * dh_new
    return da, (dz, dy if "ln" in flags else None), (dh, dc)
