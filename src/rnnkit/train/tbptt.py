"""Truncated backpropagation through time, TBPTT(k1, k2), over a long stream.

Full BPTT over a stream of millions of steps is impossible, so stateful training (the way
language models are trained) cuts it into windows. Every k1 steps there is one update; its
loss covers those k1 new steps, and its gradient flows back k2 >= k1 steps (Williams & Peng
1990; Sutskever 2013). The forward state is carried from window to window but detached, so
the gradient stops at the window's start:

    stream:  ... | k2 - k1 steps of context | k1 scored steps | ...
                 ^ start (carried state)     ^ loss_start      ^ end

With k2 = k1 the windows tile the stream and the state at each window's end starts the next.
With k2 > k1 the windows overlap: the next window starts k2 - k1 steps before this one's
end, so the state there is the one carried (detached) to it.

>>> [(w.start, w.loss_start, w.end, w.carry_at) for w in windows(10, 4, 6)]
[(0, 0, 4, 2), (2, 4, 8, 6), (6, 8, 10, 8)]
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Window(NamedTuple):
    start: int  # first step the forward runs; the carried state is the state before it
    loss_start: int  # first scored step; steps before it only pass gradient back
    end: int  # one past the last step
    carry_at: int  # the state before this step is detached and carried to the next window


def windows(length: int, k1: int, k2: int) -> list[Window]:
    """The TBPTT windows over a stream of `length` steps."""
    if k1 < 1 or k2 < k1:
        raise ValueError(f"truncated BPTT needs 1 <= k1 <= k2, got k1={k1}, k2={k2}")
    out = []
    for p in range(0, length, k1):
        end = min(p + k1, length)
        out.append(Window(max(0, p - (k2 - k1)), p, end, max(0, end - (k2 - k1))))
    return out


def detach(state):
    """The state with every tensor detached (nested tuples, lists, None)."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.detach()
    return type(state)(detach(s) for s in state)


def run_window(forward, x: torch.Tensor, window: Window, state):
    """Run forward over x[:, start:end] from `state`; return the outputs of the scored steps and the carried state.

    forward(x_segment (B, S), state) -> (out (B, S, ...), state). The window runs in segments
    split at carry_at and loss_start; gradient flows through the state between segments.
    """
    cuts = sorted({window.start, window.carry_at, window.loss_start, window.end})
    scored, carried = [], None
    for a, b in zip(cuts, cuts[1:]):
        if a == window.carry_at:
            carried = detach(state)
        out, state = forward(x[:, a:b], state)  # (B, b - a, ...)
        if a >= window.loss_start:
            scored.append(out)
    if window.carry_at == window.end:
        carried = detach(state)
    return torch.cat(scored, dim=1), carried
