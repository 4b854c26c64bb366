r"""Reference engine: a readable loop over time, and backpropagation through time by hand.

This is the engine to learn BPTT from and the ground truth every fast engine is tested
against. One layer, one direction per call; the layers in rnnkit.nn stack them.

Layout: the input is time-major packed rows, the layout of torch's PackedSequence.
x is (N, I) and batch_sizes[t] says how many sequences are still running at step t
(non-increasing, so the running ones are always the first rows). Step t owns the rows
x[offset_t : offset_t + batch_sizes[t]]. A padded (T, B, I) batch is the special case
batch_sizes = (B,) * T with x = input.reshape(T * B, I). Padding therefore costs no work.

Forward, for one direction (t runs backwards when reverse=True):

    xp = x W_ih^T + b_ih                         one product for all steps    (N, G*H)
    for t: state[:bs_t] = cell.forward(xp_t, state[:bs_t])
                                                 rows beyond bs_t keep their state: a finished
                                                 sequence keeps its last state (forward), one
                                                 not yet started keeps h_0 (reverse)

Backward: the gradient reaching h_t has two sources, the loss on the output at t and the
step after t, which read h_t as its previous state:

    dh_t = dL/dout_t + dh_{t}^{(from t+1)}
    dxp_t, dhp_t, dh_{t-1}^{(from t)} = cell.backward(dh_t, ...)

Every step uses the same W_ih, W_hh and biases, so their gradient is the sum over steps,
formed as one product over the stacked steps:

    dW_ih = sum_t dxp_t^T x_t = dXP^T X        dW_hh = sum_t dhp_t^T h_{t-1} = dHP^T H_prev
    db_ih = sum_t dxp_t                         db_hh = sum_t dhp_t
    dx    = dXP W_ih

No autograd runs through the time loop.

Memory kept for the backward, per time step and per sequence running at that step
(E = bytes per element: 4 in float32, 8 in float64; the input x is the caller's tensor
and kept by reference):

    RNN:   h_t                               H values         (4H bytes in float32)
    LSTM:  h_t, c_t, gates i, f, g, o        P + 5H values    (P = proj_size or H)
    GRU:   h_t, r, z, n, W_hn h + b_hn       5H values
"""

from __future__ import annotations

import contextlib
from functools import partial

import torch
from torch import Tensor

from ..cells import gru, lstm, rnn


# ---------------------------------------------------------------- the loop over time


def time_order(num_steps: int, reverse: bool) -> range:
    return range(num_steps - 1, -1, -1) if reverse else range(num_steps)


def merge_rows(active: Tensor, full: Tensor) -> Tensor:
    """Rows [:len(active)] take the new values; the rest (sequences not running) keep theirs."""
    if active.shape[0] == full.shape[0]:
        return active
    return torch.cat([active, full[active.shape[0]:]])


def bptt_forward(step, xp_steps, state0: tuple[Tensor, ...], batch_sizes, reverse: bool):
    """Run cell `step` over time. Returns per-step new states and caches (indexed by t) and the final state."""
    state = state0
    new_steps, caches = [None] * len(batch_sizes), [None] * len(batch_sizes)
    for t in time_order(len(batch_sizes), reverse):
        bs = batch_sizes[t]
        new, cache = step(xp_steps[t], tuple(s[:bs] for s in state))
        state = tuple(merge_rows(n, s) for n, s in zip(new, state, strict=True))
        new_steps[t], caches[t] = new, cache
    return new_steps, caches, state


def previous_states(new_steps, state0: tuple[Tensor, ...], batch_sizes, reverse: bool):
    """The state each step started from, rebuilt from the saved new states and the initial state.

    The step before t is t-1 (t+1 when reverse). Going forward, fewer sequences run at t than
    at t-1, so its rows suffice; in reverse, sequences that start at t take their rows from state0.
    """
    num_steps, prev = len(batch_sizes), []
    for t in range(num_steps):
        bs, before = batch_sizes[t], t + 1 if reverse else t - 1
        parts = []
        for k, s0 in enumerate(state0):
            p = new_steps[before][k][:bs] if 0 <= before < num_steps else s0[:0]
            parts.append(p if p.shape[0] == bs else torch.cat([p, s0[p.shape[0]:bs]]))
        prev.append(tuple(parts))
    return prev


def bptt_backward(step_backward, d_out_steps, d_final: tuple[Tensor, ...], new_steps, prev_steps, caches,
                  batch_sizes, reverse: bool):
    """Backpropagate through time.

    Returns per-step dxp, dhp, the total gradient reaching each step's output h_t (the
    diagnostic ||dL/dh_t|| and the input of the projection's weight gradient), and the
    gradient of the initial state.
    """
    num_steps = len(batch_sizes)
    dxp, dhp, dh_total = [None] * num_steps, [None] * num_steps, [None] * num_steps
    d_state = d_final  # gradient flowing back from later steps, (B, .) per state tensor
    for t in reversed(time_order(num_steps, reverse)):
        bs = batch_sizes[t]
        d_new = (d_state[0][:bs] + d_out_steps[t],) + tuple(d[:bs] for d in d_state[1:])
        dxp[t], dhp[t], d_prev = step_backward(d_new, new_steps[t], prev_steps[t], caches[t])
        dh_total[t] = d_new[0]
        d_state = tuple(merge_rows(d, s) for d, s in zip(d_prev, d_state, strict=True))
    if _step_grad_log is not None:
        _step_grad_log.append({"reverse": reverse, "norms": torch.stack([d.norm(dim=1).mean() for d in dh_total])})
    return dxp, dhp, dh_total, d_state


# While record_step_grads() is active, every BPTT run appends here. A plain global, not a
# context variable: autograd may run the backward outside the caller's context.
_step_grad_log: list | None = None


@contextlib.contextmanager
def record_step_grads():
    """Collect ||dL/dh_t|| for every time step of every backward run by this engine inside the block.

    Yields a list that fills with one dict per layer and direction, in the order the backward
    visits them (top layer first): {"reverse": bool, "norms": (T,) tensor}, where norms[t] is
    the mean over the sequences running at step t of the norm of the total gradient reaching
    h_t: from the loss at t plus from step t+1. This is the diagnostic torch.nn cannot give,
    and the vanishing gradient of a tanh RNN shows in it directly.

    >>> layer = torch.nn.RNN(3, 4)
    >>> out, _, _ = run_layer("RNN_TANH", torch.randn(10, 3), (2,) * 5, torch.zeros(2, 4), None, *layer.all_weights[0],
    ...                       None, False)
    >>> with record_step_grads() as log:
    ...     out.backward(torch.randn_like(out))
    >>> log[0]["norms"].shape
    torch.Size([5])
    """
    global _step_grad_log
    outer, _step_grad_log = _step_grad_log, []
    try:
        yield _step_grad_log
    finally:
        _step_grad_log = outer


# ---------------------------------------------------------------- products over all steps


def input_projection(x: Tensor, w_ih: Tensor, b_ih: Tensor | None) -> Tensor:
    """xp = x W_ih^T + b_ih for every step at once. (N, G*H)"""
    return torch.addmm(b_ih, x, w_ih.t()) if b_ih is not None else x @ w_ih.t()


def shared_weight_grads(x, w_ih, dxp: Tensor, dhp: Tensor, h_prev: Tensor, has_bias: bool, need_dx: bool):
    """Gradients of the weights every step shares, summed over steps as one product each.

    dxp, dhp: (N, G*H) stacked over steps; h_prev: (N, P) the state each step started from.
    Returns dx, dW_ih, dW_hh, db_ih, db_hh (None where not needed).
    """
    dx = dxp @ w_ih if need_dx else None  # (N, I)
    dw_ih = dxp.t() @ x  # (G*H, I)
    dw_hh = dhp.t() @ h_prev  # (G*H, P)
    db_ih = dxp.sum(0) if has_bias else None
    db_hh = dhp.sum(0) if has_bias else None
    return dx, dw_ih, dw_hh, db_ih, db_hh


def stack(steps, k: int) -> Tensor:
    """Component k of per-step tuples, stacked in packed row order. (N, .)"""
    return torch.cat([s[k] for s in steps])


# ---------------------------------------------------------------- forward and backward per family
#
# Each family has a forward that returns (out, h_n, c_n, saved) and a backward that takes saved
# back; rnnkit.engines.ops registers them as one PyTorch operator with its autograd formula.
# saved holds what the backward needs beyond the inputs and out (listed in the module docstring).


def rnn_forward(x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, nonlinearity):
    """Elman RNN over a whole sequence; see rnnkit.cells.rnn for the step math. Saves nothing beyond out."""
    step = partial(rnn.forward, w_hh=w_hh, b_hh=b_hh, nonlinearity=nonlinearity)
    xp = input_projection(x, w_ih, b_ih)  # (N, H)
    new, _, (h_n,) = bptt_forward(step, xp.split(batch_sizes), (h0,), batch_sizes, reverse)
    return stack(new, 0), h_n, None, ()  # out (N, H)


def rnn_backward(x, h0, w_ih, w_hh, has_bias, batch_sizes, reverse, nonlinearity, out, saved, d_out, d_h_n,
                 need_dx):
    new = [(h,) for h in out.split(batch_sizes)]
    prev = previous_states(new, (h0,), batch_sizes, reverse)
    step_backward = partial(rnn.backward, w_hh=w_hh, nonlinearity=nonlinearity)
    dxp, dhp, _, (dh0,) = bptt_backward(step_backward, d_out.split(batch_sizes), (d_h_n,), new, prev,
                                        [()] * len(new), batch_sizes, reverse)
    dx, dw_ih, dw_hh, db_ih, db_hh = shared_weight_grads(
        x, w_ih, torch.cat(dxp), torch.cat(dhp), stack(prev, 0), has_bias, need_dx)
    return dx, dh0, None, dw_ih, dw_hh, db_ih, db_hh, None


def lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse):
    """LSTM (optionally with projection) over a whole sequence; see rnnkit.cells.lstm. Saves c_t and the gates."""
    step = partial(lstm.forward, w_hh=w_hh, b_hh=b_hh, w_hr=w_hr)
    xp = input_projection(x, w_ih, b_ih)  # (N, 4H)
    new, gates, (h_n, c_n) = bptt_forward(step, xp.split(batch_sizes), (h0, c0), batch_sizes, reverse)
    return stack(new, 0), h_n, c_n, (stack(new, 1), torch.cat(gates))  # out (N, P); cs (N, H), gates (N, 4H)


def lstm_backward(x, h0, c0, w_ih, w_hh, has_bias, w_hr, batch_sizes, reverse, out, saved, d_out, d_h_n, d_c_n,
                  need_dx):
    cs, gates = saved
    new = list(zip(out.split(batch_sizes), cs.split(batch_sizes), strict=True))
    gates = gates.split(batch_sizes)
    prev = previous_states(new, (h0, c0), batch_sizes, reverse)
    step_backward = partial(lstm.backward, w_hh=w_hh, w_hr=w_hr)
    dxp, dhp, dh_total, (dh0, dc0) = bptt_backward(step_backward, d_out.split(batch_sizes), (d_h_n, d_c_n),
                                                   new, prev, gates, batch_sizes, reverse)
    dx, dw_ih, dw_hh, db_ih, db_hh = shared_weight_grads(
        x, w_ih, torch.cat(dxp), torch.cat(dhp), stack(prev, 0), has_bias, need_dx)
    dw_hr = None
    if w_hr is not None:  # h'_t = W_hr m_t at every step: dW_hr = sum_t dh'_t^T m_t
        m = torch.cat([lstm.projection_input(n, g) for n, g in zip(new, gates, strict=True)])  # (N, H)
        dw_hr = torch.cat(dh_total).t() @ m  # (P, H)
    return dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr


def gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse):
    """GRU over a whole sequence; see rnnkit.cells.gru. Saves [r, z, n, W_hn h + b_hn] per step."""
    step = partial(gru.forward, w_hh=w_hh, b_hh=b_hh)
    xp = input_projection(x, w_ih, b_ih)  # (N, 3H)
    new, caches, (h_n,) = bptt_forward(step, xp.split(batch_sizes), (h0,), batch_sizes, reverse)
    return stack(new, 0), h_n, None, (torch.cat(caches),)  # out (N, H); cache (N, 4H)


def gru_backward(x, h0, w_ih, w_hh, has_bias, batch_sizes, reverse, out, saved, d_out, d_h_n, need_dx):
    (caches,) = saved
    new = [(h,) for h in out.split(batch_sizes)]
    prev = previous_states(new, (h0,), batch_sizes, reverse)
    step_backward = partial(gru.backward, w_hh=w_hh)
    dxp, dhp, _, (dh0,) = bptt_backward(step_backward, d_out.split(batch_sizes), (d_h_n,), new, prev,
                                        caches.split(batch_sizes), batch_sizes, reverse)
    dx, dw_ih, dw_hh, db_ih, db_hh = shared_weight_grads(
        x, w_ih, torch.cat(dxp), torch.cat(dhp), stack(prev, 0), has_bias, need_dx)
    return dx, dh0, None, dw_ih, dw_hh, db_ih, db_hh, None


# ---------------------------------------------------------------- the engine interface

NONLINEARITY = {"RNN_TANH": "tanh", "RNN_RELU": "relu"}


def forward(mode: str, x: Tensor, batch_sizes: tuple[int, ...], h0: Tensor, c0: Tensor | None, w_ih: Tensor,
            w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None, w_hr: Tensor | None, reverse: bool):
    """One layer, one direction, no autograd. Every engine has this signature.

    mode: "RNN_TANH", "RNN_RELU", "LSTM" or "GRU" (torch's names).
    x: (N, I) packed time-major rows; batch_sizes: T python ints, non-increasing, summing to N.
    h0: (B, P or H), c0: (B, H) for LSTM else None, B = batch_sizes[0].
    Returns out (N, P or H), h_n (B, P or H), c_n (B, H) or None, and `saved`, the tuple of tensors
    `backward` needs beyond the inputs and out (shapes: saved_shapes).
    """
    if mode == "LSTM":
        return lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse)
    if mode == "GRU":
        return gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse)
    return rnn_forward(x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, NONLINEARITY[mode])


def backward(mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, out, saved, d_out, d_h_n, d_c_n,
             need_dx: bool):
    """BPTT for `forward`. Returns dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh, dW_hr (None where absent or not needed)."""
    return backward_by_mode((rnn_backward, lstm_backward, gru_backward), mode, x, batch_sizes, h0, c0, w_ih, w_hh,
                            b_ih, w_hr, reverse, out, saved, d_out, d_h_n, d_c_n, need_dx)


def backward_by_mode(families, mode, x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, w_hr, reverse, out, saved, d_out,
                     d_h_n, d_c_n, need_dx: bool):
    """An engine's `backward`: the family's backward of `families` = (rnn, lstm, gru), which every engine
    writes with these arguments, `saved` being the tuple its forward saved."""
    rnn_bw, lstm_bw, gru_bw = families
    has_bias = b_ih is not None
    if mode == "LSTM":
        return lstm_bw(x, h0, c0, w_ih, w_hh, has_bias, w_hr, batch_sizes, reverse, out, saved, d_out, d_h_n, d_c_n,
                       need_dx)
    if mode == "GRU":
        return gru_bw(x, h0, w_ih, w_hh, has_bias, batch_sizes, reverse, out, saved, d_out, d_h_n, need_dx)
    return rnn_bw(x, h0, w_ih, w_hh, has_bias, batch_sizes, reverse, NONLINEARITY[mode], out, saved, d_out, d_h_n,
                  need_dx)


def saved_shapes(mode: str, n: int, hidden: int, dtype: torch.dtype, has_proj: bool,
                 batch: int = 0) -> list[tuple[tuple, torch.dtype]]:
    """Shape and dtype of each tensor `forward` saves, for N rows (B = batch): what the operator's fake kernel
    returns. A None in a shape is a size only the engine knows (a dynamic size in the fake kernel)."""
    return {"LSTM": [((n, hidden), dtype), ((n, 4 * hidden), dtype)], "GRU": [((n, 4 * hidden), dtype)]}.get(mode, [])


def autograd_forward(mode: str, x: Tensor, batch_sizes: tuple[int, ...], h0: Tensor, c0: Tensor | None,
                     w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None, w_hr: Tensor | None,
                     reverse: bool):
    """The same loop as `forward` in plain torch ops, for autograd to differentiate: (out, h_n, c_n).

    What the hand-derived backward cannot give, this can: derivatives of any order (double backward
    runs this loop again and differentiates it) and every torch.func transform (grad, vmap, jacrev).
    """
    cell = {"LSTM": partial(lstm.forward, w_hr=w_hr), "GRU": gru.forward}.get(mode)
    if cell is None:
        cell = partial(rnn.forward, nonlinearity=NONLINEARITY[mode])
    xp = input_projection(x, w_ih, b_ih)
    new, _, final = bptt_forward(partial(cell, w_hh=w_hh, b_hh=b_hh), xp.split(batch_sizes),
                                 (h0,) if c0 is None else (h0, c0), batch_sizes, reverse)
    return stack(new, 0), final[0], final[1] if c0 is not None else None


def scan_forward(mode: str, x: Tensor, h0: Tensor, c0: Tensor | None, w_ih: Tensor, w_hh: Tensor,
                 b_ih: Tensor | None, b_hh: Tensor | None, w_hr: Tensor | None, reverse: bool,
                 lengths: Tensor | None = None):
    """`autograd_forward` for a padded batch as torch's scan operator: (out, h_n, c_n).

    The ONNX exporter turns it into ONNX's Scan, whatever the number of steps (the time dimension
    stays dynamic). Used for what has no ONNX operator to translate to (an LSTM with proj_size), and
    for padded batches with lengths (B,) under torch.export: step t then updates only the sequences
    with t < length, the others keep their state (a finished one its last, in reverse one not yet
    started its h_0) and output zeros there: the packed result, without shapes that depend on lengths.
    """
    from torch._higher_order_ops.scan import scan

    cell = {"LSTM": partial(lstm.forward, w_hr=w_hr), "GRU": gru.forward}.get(mode)
    if cell is None:
        cell = partial(rnn.forward, nonlinearity=NONLINEARITY[mode])
    xp = input_projection(x, w_ih, b_ih)
    xp = xp.reshape(-1, h0.shape[0], xp.shape[1])  # (T, B, G*H)
    steps = torch.arange(xp.shape[0], device=x.device)  # (T,)

    def step(state, inputs):
        xp_t, t = inputs
        new, _ = cell(xp_t, state, w_hh=w_hh, b_hh=b_hh)
        if lengths is None:
            return new, new[0].clone()  # the carried state and this step's output may not share memory
        running = (t < lengths).unsqueeze(1)  # (B, 1)
        kept = tuple(torch.where(running, n, s) for n, s in zip(new, state, strict=True))
        # (B*P,): a 2-D step output leaves torch.export's shape solver with a guard it cannot prove
        return kept, torch.where(running, new[0], torch.zeros_like(new[0])).flatten()

    final, out = scan(step, (h0,) if c0 is None else (h0, c0), (xp, steps), reverse=reverse)
    return out.reshape(-1, h0.shape[1]), final[0], final[1] if c0 is not None else None  # (T*B, P)


def run_layer(*args, **kwargs):
    """rnnkit.engines.ops.run_layer on this engine (its registered operator): out, h_n, c_n."""
    from .ops import run_layer
    return run_layer("reference", *args, **kwargs)
