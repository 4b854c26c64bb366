r"""minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?"): gates that do not read the state.

Both cells are a first-order linear recurrence whose coefficients come from the input alone:

    h_t = a_t * h_{t-1} + b_t          a_t in (0, 1), b_t > 0, elementwise over H units

minGRU, xp = [k_z, k_h] (N, 2H):
    z = sigmoid(k_z)                   a = 1 - z = sigmoid(u)  with u = -k_z
    h~ = g(k_h)                        b = z * h~ = (1 - a) * g(k_h)

minLSTM, xp = [k_f, k_i, k_h] (N, 3H):
    f = sigmoid(k_f), i = sigmoid(k_i)
    f' = f / (f + i)                   a = f' = sigmoid(u)  with u = log f - log i
    i' = i / (f + i) = 1 - f'          b = i' * g(k_h) = (1 - a) * g(k_h)
                                       (log f = logsigmoid(k_f) = -softplus(-k_f))

g is the paper's positive activation, used in every mode so that the log-space scan and the
sequential loop compute the same function:

    g(x) = x + 1/2 (x >= 0),   sigmoid(x) (x < 0)        continuous, increasing, > 0

So both cells are one pattern, a = sigmoid(u), b = (1 - a) g(k_h), and differ only in u.
In log space (what the parallel scan uses; every term is stable for any input):

    log a = -softplus(-u)      log(1 - a) = -softplus(u)
    log g(x) = log(x + 1/2) (x >= 0),  -softplus(-x) (x < 0)
    log b = log(1 - a) + log g(k_h)

Backward of the gates, given da = dL/da and db = dL/db of one step:

    dk_h = db * (1 - a) * g'(k_h)          g'(x) = 1 (x >= 0), s (1 - s) with s = sigmoid(x) (x < 0)
    da_total = da - db * g(k_h)            b depends on a through (1 - a)
    du = da_total * a * (1 - a)
    minGRU:  dk_z = -du
    minLSTM: dk_f = du * sigmoid(-k_f)     d logsigmoid(x)/dx = 1 - sigmoid(x) = sigmoid(-x)
             dk_i = -du * sigmoid(-k_i)

and of the recurrence, with G_t the total gradient reaching h_t (from out_t and from step t+1):

    da_t = G_t * h_{t-1}       db_t = G_t       dh_{t-1} (from step t) = a_t * G_t

Example:
    >>> import torch
    >>> from rnnkit.cells import minimal
    >>> B, H = 2, 3
    >>> xp, h = torch.randn(B, 2 * H), torch.randn(B, H)
    >>> h1 = minimal.forward("mingru", xp, h)
    >>> a, b = minimal.gates("mingru", xp)
    >>> torch.allclose(h1, (1 - torch.sigmoid(xp[:, :H])) * h + torch.sigmoid(xp[:, :H]) * minimal.g(xp[:, H:]))
    True
    >>> dxp, dh = minimal.backward("mingru", xp, h, torch.ones(B, H))
    >>> dxp.shape, dh.shape
    (torch.Size([2, 6]), torch.Size([2, 3]))
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.functional import softplus

CONFIGS = {"mingru": 2, "minlstm": 3}  # config -> gate blocks G in xp (N, G*H)


def blocks(config: str) -> int:
    if config not in CONFIGS:
        raise ValueError(f"unknown minimal cell {config!r}: expected 'mingru' or 'minlstm'")
    return CONFIGS[config]


def g(x: Tensor) -> Tensor:
    """The paper's positive activation: x + 1/2 for x >= 0, sigmoid(x) below (both 1/2 at 0)."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def log_g(x: Tensor) -> Tensor:
    # clamp: the unselected branch must not make NaN (log of a negative) for where() to pick from
    return torch.where(x >= 0, torch.log(x.clamp(min=0) + 0.5), -softplus(-x))


def g_prime(x: Tensor) -> Tensor:
    s = torch.sigmoid(x)
    return torch.where(x >= 0, torch.ones_like(x), s * (1 - s))


def split(config: str, xp: Tensor):
    """(u, k_h): the logit of a, and the candidate's pre-activation. (N, H) each."""
    if blocks(config) == 2:
        k_z, k_h = xp.chunk(2, dim=-1)
        return -k_z, k_h
    k_f, k_i, k_h = xp.chunk(3, dim=-1)
    return softplus(-k_i) - softplus(-k_f), k_h  # log sigmoid(k_f) - log sigmoid(k_i)


def gates(config: str, xp: Tensor) -> tuple[Tensor, Tensor]:
    """(a, b) of h_t = a h_{t-1} + b, in linear space. (N, H) each."""
    u, k_h = split(config, xp)
    a = torch.sigmoid(u)
    return a, torch.sigmoid(-u) * g(k_h)  # sigmoid(-u) = 1 - a without the rounding of 1 - a near a = 1


def log_gates(config: str, xp: Tensor) -> tuple[Tensor, Tensor]:
    """(log a, log b), each computed without forming a or b (no log of a rounded 0 or 1). (N, H) each."""
    u, k_h = split(config, xp)
    return -softplus(-u), -softplus(u) + log_g(k_h)


def forward(config: str, xp: Tensor, h: Tensor) -> Tensor:
    """One step h' = a h + b, plain differentiable torch ops (step mode, autograd_forward). (B, H)"""
    a, b = gates(config, xp)
    return torch.addcmul(b, a, h)


def gate_backward(config: str, xp: Tensor, da: Tensor, db: Tensor) -> Tensor:
    """dxp (N, G*H) from the gradients of a and b (N, H) (equations in the module docstring)."""
    u, k_h = split(config, xp)
    a, one_minus_a = torch.sigmoid(u), torch.sigmoid(-u)
    dk_h = db * one_minus_a * g_prime(k_h)
    du = (da - db * g(k_h)) * a * one_minus_a  # through a directly, and through b = (1 - a) g
    if blocks(config) == 2:
        return torch.cat([-du, dk_h], dim=-1)
    k_f, k_i, _ = xp.chunk(3, dim=-1)
    return torch.cat([du * torch.sigmoid(-k_f), -du * torch.sigmoid(-k_i), dk_h], dim=-1)


def backward(config: str, xp: Tensor, h_prev: Tensor, d_new: Tensor) -> tuple[Tensor, Tensor]:
    """Gradient of one step, given d_new = the total gradient reaching h'. Returns (dxp (B, G*H), dh (B, H))."""
    a, _ = gates(config, xp)
    dxp = gate_backward(config, xp, d_new * h_prev, d_new)  # da = G h_{t-1}, db = G
    return dxp, a * d_new  # h' = a h + b
