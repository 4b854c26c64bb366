"""Decoding for recurrent language models and decoders: sampling, greedy, beam search, scoring.

Every function takes the model as one step function,

    step(tokens, state) -> (logits, new_state)      # tokens (B,) long, logits (B, V)

so it works for any model: a language model, or a seq2seq decoder whose encoder output lives
in `state` or in the closure. `state` is whatever the model carries (a Tensor, a nested
tuple/list of Tensors such as LSTM's (h, c), or None); only `reorder_state` looks inside it.

Conventions:
- `start` is the token the first step is fed (B,); its logits predict the first output token.
  The outputs never include it.
- All functions run under torch.no_grad() and never write into the caller's tensors.
- Beam search and `sequence_log_prob` accumulate log-probabilities in float64: adding a beam's
  score then never reorders two distinct logits, which keeps beam=1 equal to greedy.

A hand-made Markov model where greedy is not the most probable sequence (rows: previous token):

>>> import torch
>>> table = torch.tensor([[0.10, 0.50, 0.40],
...                       [0.30, 0.30, 0.40],
...                       [0.05, 0.05, 0.90]]).log()
>>> step = lambda tokens, state: (table[tokens], state)
>>> start = torch.tensor([0])
>>> greedy(step, None, start, max_len=2)               # p = 0.5 * 0.4
tensor([[1, 2]])
>>> tokens, score = beam_search(step, None, start, beam=2, max_len=2)
>>> tokens, round(score.exp().item(), 4)               # p = 0.4 * 0.9
(tensor([[2, 2]]), 0.36)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

Step = Callable[[Tensor, Any], tuple[Tensor, Any]]     # (tokens (B,), state) -> (logits (B, V), state)


# ---------------------------------------------------------------- state and checks


def reorder_state(state, index: Tensor, dim: int = 1):
    """index_select every tensor of a (nested tuple/list/dict) state along its batch dimension.

    The batch dimension is `dim` (1 for torch-style (num_layers, B, H) states); a tensor with
    fewer than dim + 1 dimensions uses 0 (a (B,) state). A 0-d tensor has no batch and stays as
    it is, so does None, and tuples keep their type (named tuples included). Beam search calls
    this to follow surviving beams.

    >>> h, c = torch.arange(6.).view(1, 3, 2), torch.arange(3.)
    >>> new_h, (new_c, nothing) = reorder_state((h, (c, None)), torch.tensor([2, 2, 0]))
    >>> new_h[0], new_c, nothing
    (tensor([[4., 5.],
            [4., 5.],
            [0., 1.]]), tensor([2., 2., 0.]), None)
    """
    if state is None or isinstance(state, Tensor) and state.dim() == 0:
        return state
    if isinstance(state, Tensor):
        return state.index_select(dim if state.dim() > dim else 0, index)
    if isinstance(state, (tuple, list)):
        items = [reorder_state(s, index, dim) for s in state]
        if hasattr(state, "_fields"):                 # named tuple: positional constructor
            return type(state)(*items)
        return type(state)(items)
    if isinstance(state, dict):
        return {k: reorder_state(v, index, dim) for k, v in state.items()}
    raise TypeError(f"reorder_state: state must be a Tensor, None, or a tuple/list/dict of them, "
                    f"got {type(state).__name__}")


def _check_int(who: str, name: str, value, minimum: int) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{who}: {name} must be an integer >= {minimum}, got {value!r}")


def _check_tokens(who: str, name: str, tokens, ndim: int) -> None:
    if not isinstance(tokens, Tensor) or tokens.dim() != ndim or tokens.is_floating_point() \
            or tokens.is_complex() or tokens.dtype == torch.bool:
        what = "(B,)" if ndim == 1 else "(B, T)"
        got = f"{tokens.dtype} tensor of shape {tuple(tokens.shape)}" if isinstance(tokens, Tensor) \
            else type(tokens).__name__
        raise ValueError(f"{who}: {name} must be an integer tensor of shape {what}, got {got}")


def _call(who: str, step: Step, tokens: Tensor, state) -> tuple[Tensor, Any]:
    """One step, checking that the logits are (B, V): a wrong shape would otherwise decode garbage."""
    logits, state = step(tokens, state)
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != tokens.shape[0]:
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"{who}: step must return logits of shape (B, V) = ({tokens.shape[0]}, V), got {got}")
    # -inf is a probability of 0 and fine; NaN or +inf would make every choice below meaningless
    if bool(torch.isnan(logits).any()) or bool(torch.isposinf(logits).any()):
        raise ValueError(f"{who}: the model's scores are NaN or infinite (the model has diverged, or its "
                         "numbers overflow); train it again with a lower --lr")
    return logits, state


# ---------------------------------------------------------------- sampling and greedy


@torch.no_grad()
def sample(step: Step, state, prompt: Tensor, steps: int, temperature: float = 1.0,
           top_k: int | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Feed `prompt` (B, P) token by token, then sample `steps` tokens; returns (B, steps).

    temperature 0 is greedy (argmax); top_k keeps the k largest logits (k >= V keeps all).
    The result is a function of the generator's seed.

    >>> table = torch.tensor([[0.1, 0.9], [0.8, 0.2]]).log()
    >>> step = lambda tokens, state: (table[tokens], state)
    >>> sample(step, None, torch.tensor([[0, 1, 0]]), steps=4, temperature=0)
    tensor([[1, 0, 1, 0]])
    >>> g = torch.Generator().manual_seed(0)
    >>> sample(step, None, torch.tensor([[0]]), steps=6, generator=g).shape
    torch.Size([1, 6])
    """
    _check_tokens("sample", "prompt", prompt, 2)
    if prompt.shape[1] < 1:
        raise ValueError(f"sample: prompt must hold at least one token per sequence, got shape {tuple(prompt.shape)}")
    _check_int("sample", "steps", steps, 0)
    if not isinstance(temperature, numbers.Real) or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"sample: temperature must be a finite number >= 0 (0 means greedy), got {temperature!r}")
    if top_k is not None:
        _check_int("sample", "top_k", top_k, 1)

    for t in range(prompt.shape[1]):                  # warm the state; the last logits predict token 1
        logits, state = _call("sample", step, prompt[:, t], state)          # (B, V)
    out = []
    for t in range(steps):
        token = _pick(logits, temperature, top_k, generator)                # (B,)
        out.append(token)
        if t + 1 < steps:                             # the last token needs no logits after it
            logits, state = _call("sample", step, token, state)
    return torch.stack(out, 1) if out else prompt.new_zeros((prompt.shape[0], 0), dtype=torch.long)


def _pick(logits: Tensor, temperature: float, top_k: int | None, generator) -> Tensor:
    """One token per row of logits (B, V)."""
    if temperature == 0:
        return logits.argmax(-1)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()                       # multinomial wants full-precision weights
    if top_k is not None and top_k < logits.shape[-1]:
        values, index = logits.topk(top_k, dim=-1)                            # (B, k)
        choice = torch.multinomial((values / temperature).softmax(-1), 1, generator=generator)
        return index.gather(-1, choice).squeeze(-1)
    return torch.multinomial((logits / temperature).softmax(-1), 1, generator=generator).squeeze(-1)


@torch.no_grad()
def greedy(step: Step, state, start: Tensor, max_len: int, eos: int | None = None) -> Tensor:
    """Argmax decoding from `start` (B,); returns (B, L), L <= max_len.

    A sequence that emitted eos keeps emitting eos (padding); decoding stops once all have.

    >>> table = torch.tensor([[0.1, 0.9, 0.0], [0.1, 0.2, 0.7], [0.9, 0.1, 0.0]]).log()
    >>> step = lambda tokens, state: (table[tokens], state)
    >>> greedy(step, None, torch.tensor([0, 1]), max_len=5, eos=2)
    tensor([[1, 2],
            [2, 2]])
    """
    _check_tokens("greedy", "start", start, 1)
    _check_int("greedy", "max_len", max_len, 1)
    tokens, out = start, []
    finished = torch.zeros(start.shape, dtype=torch.bool, device=start.device)   # (B,)
    for _ in range(max_len):
        logits, state = _call("greedy", step, tokens, state)                # (B, V)
        tokens = logits.argmax(-1)
        if eos is not None:
            tokens = tokens.masked_fill(finished, eos)
            finished = finished | (tokens == eos)
        out.append(tokens)
        if eos is not None and bool(finished.all()):
            break
    return torch.stack(out, 1)


# ---------------------------------------------------------------- beam search


@torch.no_grad()
def beam_search(step: Step, state, start: Tensor, beam: int, max_len: int, eos: int | None = None,
                length_penalty: float = 1.0, reorder=reorder_state) -> tuple[Tensor, Tensor]:
    """Batched beam search from `start` (B,); returns (tokens (B, L), scores (B,)).

    All B * beam hypotheses advance in one step call (batch B * beam, example-major: rows
    b * beam ... b * beam + beam - 1 belong to example b), and `reorder(state, index)` makes
    the state follow the surviving beams. Each step ranks the beam * V continuations by total
    log-probability and keeps the best `beam` that do not end in eos. A continuation ending in
    eos that ranks within the first `beam` goes to its example's pool of finished hypotheses
    (the best `beam` are kept). An example stops once its pool is full and no running
    hypothesis, ranked at its current length, beats the worst one in it (Hugging Face's rule
    with early_stopping=False); with length_penalty 0 the rule never changes the answer, since
    log-probs only fall as a hypothesis grows. With eos=None every hypothesis runs to max_len.

    The answer is the best of the pool and the hypotheses still running at the end, ranked by
    simple length normalisation: total log-prob / length ** length_penalty, where length counts
    the generated tokens including eos. length_penalty 0 ranks by raw log-prob, 1 by mean
    log-prob per token. Tokens are padded with eos (0 if eos is None) to the longest answer.
    `scores` is the answer's total log-prob (float64, not normalised): the value
    `sequence_log_prob(..., eos=eos)` gives for it. beam=1 gives greedy's tokens.

    >>> table = torch.tensor([[0.1, 0.5, 0.4], [0.3, 0.3, 0.4], [0.05, 0.05, 0.9]]).log()
    >>> step = lambda tokens, state: (table[tokens], state)
    >>> start = torch.tensor([1])         # eos = 0: stop now (p 0.3) or go on (p 0.4 * 0.9 ** 3)?
    >>> beam_search(step, None, start, beam=2, max_len=4, eos=0, length_penalty=0)[0]
    tensor([[0]])
    >>> beam_search(step, None, start, beam=2, max_len=4, eos=0, length_penalty=1)[0]
    tensor([[2, 2, 2, 2]])
    """
    _check_tokens("beam_search", "start", start, 1)
    _check_int("beam_search", "beam", beam, 1)
    _check_int("beam_search", "max_len", max_len, 1)
    if not isinstance(length_penalty, numbers.Real) or not math.isfinite(length_penalty):
        raise ValueError(f"beam_search: length_penalty must be a finite number, got {length_penalty!r}")

    B, K, dev = start.shape[0], beam, start.device
    rows = torch.arange(B, device=dev)
    state = reorder(state, rows.repeat_interleave(K))               # every tensor now has batch B*K
    tokens = start.repeat_interleave(K)                               # (B*K,)
    # Only beam 0 is live at first: the K copies are identical and would fill the beam with duplicates.
    scores = torch.full((B, K), -math.inf, dtype=torch.float64, device=dev)
    scores[:, 0] = 0.0
    history = torch.empty((B, K, 0), dtype=torch.long, device=dev)  # generated tokens per hypothesis
    pools: list[list[tuple[float, float, Tensor]]] = [[] for _ in range(B)]   # (rank key, log-prob, tokens)
    done = [False] * B

    def key(logp: float, length: int) -> float:
        return logp / length ** length_penalty

    for t in range(max_len):
        logits, state = _call("beam_search", step, tokens, state)           # (B*K, V)
        V = logits.shape[-1]
        logp = logits.double().log_softmax(-1).view(B, K, V)
        total = (scores.unsqueeze(-1) + logp).view(B, K * V)
        # A stable sort breaks ties towards the lower index, as argmax does (beam=1 == greedy).
        n = min(2 * K, K * V)                         # each beam has one eos child: 2K hold K others
        cand, flat = total.sort(dim=1, descending=True, stable=True)
        cand, flat = cand[:, :n], flat[:, :n]                                  # (B, n)
        parent, token = flat // V, flat % V
        seqs = torch.cat([history.gather(1, parent.unsqueeze(-1).expand(-1, -1, t)),
                          token.unsqueeze(-1)], -1)                            # (B, n, t+1)

        keep = torch.arange(n, device=dev).expand(B, n)
        ends = token == eos if eos is not None else torch.zeros_like(token, dtype=torch.bool)
        if eos is not None:
            keep = (keep + n * ends).argsort(dim=1, stable=True)            # non-eos first, in rank order
        keep = keep[:, :K]                                                  # (B, K)
        # -inf only when fewer than K non-eos continuations exist (tiny V)
        scores = cand.gather(1, keep).masked_fill(ends.gather(1, keep), -math.inf)
        parent, token = parent.gather(1, keep), token.gather(1, keep)

        for b, r in (ends[:, :K] & (cand[:, :K] > -math.inf)).nonzero().tolist():
            if not done[b]:
                pools[b].append((key(cand[b, r].item(), t + 1), cand[b, r].item(), seqs[b, r]))
        for b in range(B):
            if not done[b] and len(pools[b]) >= K:
                pools[b] = sorted(pools[b], key=lambda p: -p[0])[:K]
                live_best = scores[b].max().item() / (t + 1) ** length_penalty
                done[b] = live_best <= pools[b][-1][0]
        history = seqs.gather(1, keep.unsqueeze(-1).expand(-1, -1, t + 1))
        if all(done) or t + 1 == max_len:             # no step follows: skip the reorder
            break
        tokens = token.reshape(B * K)
        state = reorder(state, (rows.unsqueeze(1) * K + parent).reshape(B * K))

    best = []
    for b in range(B):
        pool = list(pools[b])
        if not done[b]:                               # ran to max_len: the live beams compete too
            pool += [(key(s, history.shape[2]), s, history[b, k])
                     for k, s in enumerate(scores[b].tolist()) if s > -math.inf]
        if not pool:                                  # every continuation had probability 0
            pool = [(0.0, -math.inf, history[b, 0])]
        best.append(max(pool, key=lambda p: p[0]))
    L = max(p[2].numel() for p in best)
    out = torch.full((B, L), 0 if eos is None else eos, dtype=torch.long, device=dev)
    for b, (_, _, seq) in enumerate(best):
        out[b, :seq.numel()] = seq
    return out, torch.tensor([p[1] for p in best], dtype=torch.float64, device=dev)


# ---------------------------------------------------------------- scoring


@torch.no_grad()
def sequence_log_prob(step: Step, state, start: Tensor, tokens: Tensor, eos: int | None = None) -> Tensor:
    """Teacher-forced total log-probability (B,) float64 of `tokens` (B, T) following `start` (B,).

    With eos given, tokens after a sequence's first eos are padding and do not count.

    >>> table = torch.tensor([[0.1, 0.5, 0.4], [0.3, 0.3, 0.4], [0.05, 0.05, 0.9]]).log()
    >>> step = lambda tokens, state: (table[tokens], state)
    >>> sequence_log_prob(step, None, torch.tensor([0]), torch.tensor([[2, 2]])).exp()
    tensor([0.3600], dtype=torch.float64)
    """
    _check_tokens("sequence_log_prob", "start", start, 1)
    _check_tokens("sequence_log_prob", "tokens", tokens, 2)
    if tokens.shape[0] != start.shape[0]:
        raise ValueError(f"sequence_log_prob: tokens must have batch {start.shape[0]} like start, "
                         f"got shape {tuple(tokens.shape)}")
    total = torch.zeros(start.shape, dtype=torch.float64, device=start.device)      # (B,)
    counting = torch.ones(start.shape, dtype=torch.bool, device=start.device)       # before first eos
    inputs = start
    for t in range(tokens.shape[1]):
        logits, state = _call("sequence_log_prob", step, inputs, state)            # (B, V)
        target = tokens[:, t]
        lp = logits.double().log_softmax(-1).gather(1, target.long().unsqueeze(1)).squeeze(1)
        total = total + torch.where(counting, lp, torch.zeros_like(lp))
        if eos is not None:
            counting = counting & (target != eos)
        inputs = target
    return total
