r"""sLSTM cell (xLSTM, Beck et al. 2024): one time step forward and its hand-derived backward.

The scalar-memory LSTM of xLSTM: an exponential input gate, a sigmoid forget gate taken in log
space, a normaliser state n and a stabiliser state m, and block-diagonal recurrent weights (heads).
The state is (h, c, n, m), each (B, H). H = K * dh for K heads of dh units.

Recurrent weights. r is (4H, dh): gate block q (0..3 = i, f, z, o) holds rows q*H .. q*H + H - 1,
and within it head k holds rows q*H + k*dh .. q*H + k*dh + dh - 1. Row q*H + k*dh + u multiplies
only head k's slice of h:

    hr[b, q*H + k*dh + u] = sum_v r[q*H + k*dh + u, v] * h[b, k*dh + v]

i.e. r viewed as (4, K, dh, dh) is R[q, k, u, v], one dense dh x dh block per gate and head.

One step (the official implementation's sigmoid forget gate in log form):

    a = xp + hr = [i~, f~, z~, o~]            xp = W_ih x + b_ih for all steps, gate order i, f, z, o
    lf = logsigmoid(f~)
    m' = max(lf + m, i~)                      the stabiliser: the largest log-gate seen
    i' = exp(i~ - m')      f' = exp(lf + m - m')        both <= 1: never overflow
    c' = f' * c + i' * tanh(z~)
    n' = f' * n + i'
    h' = sigmoid(o~) * c' / n'

Exact arithmetic: m cancels in c'/n' (c and n both carry a factor exp(-m)), so h' does not depend
on m, only c', n' and m' do. The first step from n = 0 with m' = lf + m > i~ divides two tiny
numbers (i' = exp(i~ - m')); the official code takes m' = i~ when every n is 0 to avoid that, this
cell follows the contract (the max) and so underflows to 0/0 only when i~ < lf + m - 87 (float32).

Backward, given the upstream gradients dh', dc', dn', dm' (each the sum of the gradient from this
step's output, for h', and the gradient flowing back from step t+1). With o = sigmoid(o~),
g = tanh(z~):

    dc'_  = dc' + dh' * o / n'                c' reaches the loss through h' and through step t+1
    dn'_  = dn' - dh' * h' / n'               n' likewise (d(c'/n')/dn' = -c'/n'^2)
    do~   = dh' * c' / n' * o (1 - o)
    dz~   = dc'_ * i' * (1 - g^2)
    di'   = dc'_ * g + dn'_                   di' and df' are gradients w.r.t. the gates i', f'
    df'   = dc'_ * c + dn'_ * n
    dc    = dc'_ * f'          dn = dn'_ * f'
    dm'_  = dm' - di' i' - df' f'             i' and f' depend on m' through exp(. - m')
    split dm'_ between the two arguments of the max: all to the larger; where lf + m == i~
    (a tie) half to each, as torch.maximum's derivative does:
        dA  = df' f' + wA dm'_                A = lf + m;  wA = 1, 1/2 or 0
        di~ = di' i' + (1 - wA) dm'_
    dm    = dA                                m enters only through A
    df~   = dA * sigmoid(-f~)                 d logsigmoid(x)/dx = 1 - sigmoid(x)
    dxp = dhr = [di~, df~, dz~, do~]
    dh[b, k*dh + v] = sum_{q,u} dhr[b, q*H + k*dh + u] r[q*H + k*dh + u, v]

The engine forms the weight gradient, summed over steps as one batched product over heads:
dR[q, k, u, v] = sum_rows dhr[row, q, k, u] h_prev[row, k, v].

The forward keeps the pre-activations a (4H) beside the new state; the backward recomputes the
gates from them and from m, m' (cheap), so exactly the same branch of the max is taken.

Example:
    >>> import torch
    >>> from rnnkit.cells import slstm
    >>> B, H, K = 2, 4, 2
    >>> r = torch.randn(4 * H, H // K)
    >>> state = tuple(torch.zeros(B, H) for _ in range(4))
    >>> new, pre = slstm.forward(torch.randn(B, 4 * H), state, r, K)
    >>> d = tuple(torch.ones(B, H) for _ in range(4))
    >>> dxp, dhp, d_prev = slstm.backward(d, new, state, pre, r, K)
    >>> dxp.shape, len(d_prev), d_prev[0].shape
    (torch.Size([2, 16]), 4, torch.Size([2, 4]))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def heads_of(config: str) -> int:
    """K from a config string "heads=K" (1 when absent)."""
    for word in filter(None, (w.strip() for w in config.split(","))):
        key, _, value = word.partition("=")
        if key == "heads":
            return int(value)
        raise ValueError(f"unknown sLSTM option {word!r}: expected heads=K")
    return 1


def blocks(r: Tensor, heads: int) -> Tensor:
    """r (4H, dh) as R[q, k, u, v] (4, K, dh, dh)."""
    dh = r.shape[1]
    return r.view(4, heads, dh, dh)


def recurrent_product(h: Tensor, r: Tensor, heads: int) -> Tensor:
    """hr = R h per head, (B, 4H) in gate order: the one product that waits for the previous state."""
    b, hidden = h.shape
    hr = torch.einsum("bkv,qkuv->bqku", h.reshape(b, heads, hidden // heads), blocks(r, heads))
    return hr.reshape(b, 4 * hidden)


def product_to_prev(dhr: Tensor, r: Tensor, heads: int) -> Tensor:
    """dh = dhr R per head: the gradient the step sends to h. (B, H)"""
    b, hidden = dhr.shape[0], dhr.shape[1] // 4
    dh = torch.einsum("bqku,qkuv->bkv", dhr.reshape(b, 4, heads, hidden // heads), blocks(r, heads))
    return dh.reshape(b, hidden)


def weight_grad(dhr: Tensor, h_prev: Tensor, heads: int) -> Tensor:
    """dR = sum over rows (steps and sequences) of dhr^T h_prev, per head: one batched product. (4H, dh)"""
    n, hidden = h_prev.shape
    dh = hidden // heads
    d = torch.einsum("nqku,nkv->qkuv", dhr.reshape(n, 4, heads, dh), h_prev.reshape(n, heads, dh))
    return d.reshape(4 * hidden, dh)


def gates(pre: Tensor, m: Tensor, m_new: Tensor | None = None):
    """(i', f', lf, m') from the pre-activations and the previous stabiliser (m' given: recompute)."""
    a_i, a_f = pre[:, :pre.shape[1] // 4], pre[:, pre.shape[1] // 4:pre.shape[1] // 2]
    lf = F.logsigmoid(a_f)
    lfm = lf + m
    if m_new is None:
        m_new = torch.maximum(lfm, a_i)
    return torch.exp(a_i - m_new), torch.exp(lfm - m_new), lfm, m_new


def forward(xp: Tensor, state: tuple[Tensor, Tensor, Tensor, Tensor], r: Tensor, heads: int):
    """One step. xp (B, 4H); state (h, c, n, m) each (B, H). Returns ((h', c', n', m'), pre (B, 4H))."""
    h, c, n, m = state
    pre = xp + recurrent_product(h, r, heads)  # (B, 4H) = [i~, f~, z~, o~]
    i, f, _, m_new = gates(pre, m)
    _, _, a_z, a_o = pre.chunk(4, dim=1)
    c_new = f * c + i * torch.tanh(a_z)
    n_new = f * n + i
    h_new = torch.sigmoid(a_o) * c_new / n_new
    return (h_new, c_new, n_new, m_new), pre


def backward(d_new, new, prev, pre: Tensor, r: Tensor, heads: int):
    """Gradient of one step. d_new: (dh', dc', dn', dm'). Returns (dxp, dhp, (dh, dc, dn, dm)), dxp = dhp (B, 4H)."""
    dh_new, dc_new, dn_new, dm_new = d_new
    h_new, c_new, n_new, m_new = new
    _, c, n, m = prev
    i, f, lfm, _ = gates(pre, m, m_new)
    a_i, a_f, a_z, a_o = pre.chunk(4, dim=1)
    o, g = torch.sigmoid(a_o), torch.tanh(a_z)
    dc = dc_new + dh_new * o / n_new  # through h' and through step t+1
    dn = dn_new - dh_new * h_new / n_new
    da_o = dh_new * (c_new / n_new) * o * (1 - o)
    da_z = dc * i * (1 - g * g)
    di, df = dc * g + dn, dc * c + dn * n  # w.r.t. the gates i', f'
    di_e, df_e = di * i, df * f  # w.r.t. their exponents i~ - m' and lf + m - m'
    dm_total = dm_new - di_e - df_e  # m' = max(lf + m, i~)
    w_a = torch.where(lfm > a_i, 1.0, torch.where(lfm == a_i, 0.5, 0.0)).to(pre.dtype)  # torch.maximum's split
    d_lfm = df_e + w_a * dm_total
    da_i = di_e + (1 - w_a) * dm_total
    da_f = d_lfm * torch.sigmoid(-a_f)
    da = torch.cat([da_i, da_f, da_z, da_o], dim=1)
    dh = product_to_prev(da, r, heads)
    return da, da, (dh, dc * f, dn * f, d_lfm)
