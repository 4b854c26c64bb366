r"""Reference engine of minGRU / minLSTM: the parallel scan in log space, and its backward by hand.

Forward. h_t = a_t h_{t-1} + b_t unrolls to

    h_t = A_t h_0 + sum_{s<=t} (A_t / A_s) b_s          A_t = a_1 ... a_t

With S_t = log A_t = cumsum_{r<=t} log a_r, the sum is a log-cumsum-exp (every b_s > 0):

    h_t = exp(S_t) h_0 + exp(S_t + logcumsumexp_{s<=t}(log b_s - S_s))

h_0 may have any sign, so it stays out of the log: exp(S_t) h_0 is added on its own.
log a and log b come from cells.minimal.log_gates (softplus forms: no log of a rounded 0 or 1).

Backward. The total gradient reaching h_t, from out_t and from step t+1, is

    G_t = dout_t + a_{t+1} G_{t+1}          (G_T also gets dh_n)

a linear recurrence backwards in time with the same coefficients: the same scan, reversed,

    G_t = sum_{s>=t} exp(S_s - S_t) c_s     c_s = dout_s (+ dh_n at s = T)

c has any sign, so it is split, c = c+ - c- with c+- >= 0, and each part scanned in log space
(log 0 = -inf is an exact "nothing here"). Then da_t = G_t h_{t-1}, db_t = G_t, dh_0 = a_1 G_1,
and cells.minimal.gate_backward chains da, db to dxp.

Precision: S_t + (log b_s - S_s) takes the difference of two cumulative sums that grow like t,
and loses the low bits of |S_t| (at T = 2000 and |log a| ~ 1, ~1e-4 relative in float32). The
scan therefore runs in float64 whatever the input dtype (this is the ground truth; the fast
engines avoid the issue by scanning (a, b) pairs in linear space, where nothing cancels).

Layout. Packed rows (N, .) are scattered into a padded (T, B, .) grid in *processing order*:
position p of sequence j is its p-th step processed (time p forward; time L_j - 1 - p in reverse,
so a sequence of length L_j starts at its own last step). Positions p >= L_j are padding with
a = 1 (log a = 0), b = 0 (log b = -inf): the state is kept, so the last position holds h_n.
Saves nothing beyond out: a and b are recomputed from xp, and h_{t-1} is the previous out row.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...cells import minimal as cell


def layout(batch_sizes: tuple[int, ...], reverse: bool, device) -> tuple[Tensor, int, int]:
    """(flat (N,), T, B): index of each packed row in the padded (T*B) grid of processing order."""
    sizes = torch.tensor(batch_sizes, dtype=torch.int64)
    num_steps, batch = len(batch_sizes), batch_sizes[0]
    t = torch.repeat_interleave(torch.arange(num_steps), sizes)  # (N,) time of each row
    b = torch.cat([torch.arange(bs) for bs in batch_sizes])  # (N,) sequence of each row
    if reverse:
        lengths = (sizes[None, :] > torch.arange(batch)[:, None]).sum(1)  # (B,)
        t = lengths[b] - 1 - t
    return (t * batch + b).to(device), num_steps, batch


def to_grid(rows: Tensor, flat: Tensor, num_steps: int, batch: int, fill: float) -> Tensor:
    """Packed rows (N, H) -> (T, B, H) in processing order, padding filled with `fill`."""
    grid = rows.new_full((num_steps * batch, rows.shape[1]), fill)
    grid[flat] = rows
    return grid.view(num_steps, batch, -1)


def reverse_logcumsumexp(x: Tensor) -> Tensor:
    return x.flip(0).logcumsumexp(0).flip(0)


def forward(config, xp, batch_sizes, states, params, masks, reverse):
    (h0,) = states
    flat, num_steps, batch = layout(batch_sizes, reverse, xp.device)
    log_a, log_b = cell.log_gates(config, xp.double())  # (N, H) each
    s = to_grid(log_a, flat, num_steps, batch, 0.0).cumsum(0)  # S_t (T, B, H); padding: a = 1
    log_b = to_grid(log_b, flat, num_steps, batch, float("-inf"))  # padding: b = 0
    h = torch.exp(s) * h0.double() + torch.exp(s + (log_b - s).logcumsumexp(0))  # (T, B, H)
    out = h.view(num_steps * batch, -1)[flat]
    return out.to(xp.dtype), [h[-1].to(h0.dtype)], []


def backward(config, xp, batch_sizes, states, params, masks, reverse, out, saved, d_out, d_states_n):
    (h0,), (dh_n,) = states, d_states_n
    flat, num_steps, batch = layout(batch_sizes, reverse, xp.device)
    xp64 = xp.double()
    log_a, _ = cell.log_gates(config, xp64)
    s = to_grid(log_a, flat, num_steps, batch, 0.0).cumsum(0)  # (T, B, H)
    c = to_grid(d_out.double(), flat, num_steps, batch, 0.0)  # dout_t; 0 on padding
    c[-1] += dh_n.double()  # h_n is the last position's state (padding keeps it)
    # G_t = exp(-S_t) sum_{s>=t} exp(S_s) c_s, on the positive and negative parts of c separately
    parts = [torch.exp(reverse_logcumsumexp(s + torch.log(part)) - s) for part in (c.clamp(min=0), (-c).clamp(min=0))]
    grad = (parts[0] - parts[1]).view(num_steps * batch, -1)  # (T*B, H) G_t
    h = to_grid(out.double(), flat, num_steps, batch, 0.0)
    h_prev = torch.cat([h0.double()[None], h[:-1]]).view(num_steps * batch, -1)[flat]  # (N, H) h_{t-1}
    g_rows = grad[flat]  # (N, H)
    dxp = cell.gate_backward(config, xp64, g_rows * h_prev, g_rows)  # da = G h_{t-1}, db = G
    dh0 = torch.exp(s[0]) * grad[:batch]  # dh_0 = a_1 G_1: position 0 is every sequence's first step
    return dxp.to(xp.dtype), [dh0.to(h0.dtype)], []


def saved_shapes(config, n, states, params, dtype):
    return []


def why_not(x: Tensor) -> str | None:
    return None
