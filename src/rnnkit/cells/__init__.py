"""Cell math: one time step forward and its hand-derived backward, one module per family.

Every family has the same two functions, so the engines can run any of them:

    forward(xp, state, w_hh, b_hh, **kw) -> (new_state, cache)
    backward(d_new_state, new_state, prev_state, cache, w_hh, **kw) -> (dxp, dhp, d_prev_state)

xp = W_ih x + b_ih is one step's block of the input projection, computed for all steps
before the time loop; hp = W_hh h + b_hh is the recurrent product; states are tuples,
(h,) for RNN and GRU and (h, c) for LSTM. Weight gradients are sums over time steps and
are formed by the engines, not here.
"""

from . import gru, lstm, rnn

__all__ = ["rnn", "lstm", "gru"]
