"""Decoding: beam search against brute-force enumeration, beam=1 and sampling against greedy,
sampling statistics, state handling, and argument checks. Tiny models only: all of it runs in seconds."""

from __future__ import annotations

import collections
import itertools
import math

import pytest
import torch

from rnnkit.tasks.decoding import beam_search, greedy, reorder_state, sample, sequence_log_prob

V = 4
# A table where, for every eos and length_penalty tested, greedy loses for some start token and the
# length penalty changes some answer: the exhaustive tests assert both, so they cannot pass vacuously.
SEED = 25


def markov(seed: int, v: int = V) -> torch.Tensor:
    """A random transition table of log-probs (v, v), rows = previous token, peaked enough that
    greedy and the best sequence often disagree."""
    g = torch.Generator().manual_seed(seed)
    return (2.0 * torch.randn(v, v, generator=g, dtype=torch.float64)).log_softmax(-1)


def table_step(table):
    return lambda tokens, state: (table[tokens], state)


def candidates(max_len: int, eos: int | None):
    """Every sequence beam search can return: eos only as the last token, and shorter than max_len
    only if it ends in eos."""
    for length in range(1, max_len + 1):
        for seq in itertools.product(range(V), repeat=length):
            if eos is None:
                if length == max_len:
                    yield seq
            elif eos not in seq[:-1] and (seq[-1] == eos or length == max_len):
                yield seq


def brute_force(log_prob_of, max_len, eos, length_penalty):
    """The (sequence, raw log-prob) with the best length-normalised score; asserts the best is unique."""
    scored = sorted(((lp / len(seq) ** length_penalty, lp, seq)
                     for seq, lp in log_prob_of(list(candidates(max_len, eos)))), reverse=True)
    assert scored[0][0] - scored[1][0] > 1e-9, "a tie would make the expected answer ambiguous"
    return scored[0][2], scored[0][1]


def padded(seq, length, fill):
    return list(seq) + [fill] * (length - len(seq))


# ---------------------------------------------------------------- beam search, exhaustive


@pytest.mark.parametrize("eos", [None, 0, 2])
@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_exhaustive_beam_finds_the_best_markov_sequence(eos, length_penalty):
    table, max_len = markov(SEED), 3
    start = torch.arange(V)
    tokens, scores = beam_search(table_step(table), None, start, beam=V ** max_len, max_len=max_len,
                                 eos=eos, length_penalty=length_penalty)
    greedy_tokens = greedy(table_step(table), None, start, max_len, eos=eos)
    greedy_is_beaten = False
    for b in range(V):
        def log_prob_of(seqs, b=b):
            out = []
            for seq in seqs:
                prev, lp = b, 0.0
                for tok in seq:
                    lp, prev = lp + table[prev, tok].item(), tok
                out.append((seq, lp))
            return out
        best, best_lp = brute_force(log_prob_of, max_len, eos, length_penalty)
        expected = padded(best, tokens.shape[1], 0 if eos is None else eos)
        assert tokens[b].tolist() == expected, (b, tokens[b].tolist(), best)
        assert math.isclose(scores[b].item(), best_lp, rel_tol=1e-12, abs_tol=1e-12)
        greedy_is_beaten |= padded(greedy_tokens[b].tolist(), tokens.shape[1], eos or 0) != expected
    assert greedy_is_beaten, "the table should make greedy lose somewhere, or this test proves little"


def test_length_penalty_changes_the_answer_on_the_markov_table():
    """Guards the test above: its eos cases must distinguish raw from normalised ranking."""
    table, start = markov(SEED), torch.arange(V)
    for eos in (0, 2):
        raw, _ = beam_search(table_step(table), None, start, beam=64, max_len=3, eos=eos, length_penalty=0.0)
        mean, _ = beam_search(table_step(table), None, start, beam=64, max_len=3, eos=eos, length_penalty=1.0)
        assert raw.shape != mean.shape or (raw != mean).any(), eos


def lstm_step(seed=0, v=V, emb=3, hidden=5):
    torch.manual_seed(seed)
    embed = torch.nn.Embedding(v, emb).double()
    lstm = torch.nn.LSTM(emb, hidden).double()
    out = torch.nn.Linear(hidden, v).double()
    for p in out.parameters():
        p.data *= 4                                   # peakier logits: clearer winners

    def step(tokens, state):
        y, state = lstm(embed(tokens)[None], state)   # (1, B, H)
        return out(y[0]), state                       # (B, V)
    return step, hidden


@pytest.mark.parametrize("eos,length_penalty", [(None, 1.0), (1, 0.0), (1, 1.0)])
def test_exhaustive_beam_on_a_stateful_lstm_equals_brute_force(eos, length_penalty):
    """The state has to follow the surviving beams here: the Markov tables above ignore it."""
    step, hidden = lstm_step()
    g = torch.Generator().manual_seed(1)
    h0, c0 = (torch.randn(1, 2, hidden, generator=g, dtype=torch.float64) for _ in range(2))
    kept = h0.clone(), c0.clone()
    start, max_len = torch.tensor([0, 3]), 3
    tokens, scores = beam_search(step, (h0, c0), start, beam=V ** max_len, max_len=max_len, eos=eos,
                                 length_penalty=length_penalty)
    assert torch.equal(h0, kept[0]) and torch.equal(c0, kept[1]), "the caller's state was modified"
    for b in range(2):
        def log_prob_of(seqs, b=b):
            batch = torch.tensor([padded(s, max_len, eos or 0) for s in seqs])
            n = len(seqs)
            state = (h0[:, b:b + 1].expand(-1, n, -1), c0[:, b:b + 1].expand(-1, n, -1))
            lp = sequence_log_prob(step, state, start[b].repeat(n), batch, eos=eos)
            return zip(seqs, lp.tolist())
        best, best_lp = brute_force(log_prob_of, max_len, eos, length_penalty)
        assert tokens[b].tolist() == padded(best, tokens.shape[1], eos or 0)
        assert math.isclose(scores[b].item(), best_lp, rel_tol=1e-9)


def test_beam_two_beats_greedy_on_a_hand_made_table():
    # From 0: token 1 is likelier (0.5) than 2 (0.4), but 2 is followed by 2 with 0.9 while 1 has no
    # good follower (0.4 at best): greedy finds 1 2 (p 0.20), beam 2 finds 2 2 (p 0.36).
    table = torch.tensor([[0.10, 0.50, 0.40],
                          [0.30, 0.30, 0.40],
                          [0.05, 0.05, 0.90]], dtype=torch.float64).log()
    step, start = table_step(table), torch.tensor([0])
    assert greedy(step, None, start, 2).tolist() == [[1, 2]]
    assert beam_search(step, None, start, beam=1, max_len=2)[0].tolist() == [[1, 2]]
    tokens, scores = beam_search(step, None, start, beam=2, max_len=2)
    assert tokens.tolist() == [[2, 2]]
    assert math.isclose(scores.item(), math.log(0.36), rel_tol=1e-12)


# ---------------------------------------------------------------- beam 1, sampling: against greedy


def gru_step(seed=1, v=6, emb=4, hidden=8):
    torch.manual_seed(seed)
    embed, gru, out = torch.nn.Embedding(v, emb), torch.nn.GRU(emb, hidden), torch.nn.Linear(hidden, v)
    for p in gru.parameters():
        p.data *= 3                                   # default init is nearly linear: greedy would repeat one token

    def step(tokens, state):
        y, state = gru(embed(tokens)[None], state)    # (1, B, H)
        return 3 * out(y[0]), state                   # (B, V)
    return step


START = torch.tensor([0, 3, 5])


def test_beam_one_is_greedy_on_a_gru():
    step, max_len = gru_step(), 10
    plain = greedy(step, None, START, max_len)
    assert len(set(plain.flatten().tolist())) >= 3, "a model that repeats one token proves little"
    eos = plain[2, 0].item()                          # example 2 stops at once, example 0 runs on
    assert eos not in plain[0].tolist()
    stopped = greedy(step, None, START, max_len, eos=eos)
    for eos_, expected in ((None, plain), (eos, stopped)):
        for length_penalty in (0.0, 1.0, 2.0):
            tokens, scores = beam_search(step, None, START, beam=1, max_len=max_len, eos=eos_,
                                         length_penalty=length_penalty)
            assert torch.equal(tokens, expected), (eos_, length_penalty)
            assert torch.allclose(scores, sequence_log_prob(step, None, START, tokens, eos=eos_))


def test_beam_one_is_greedy_when_eos_is_a_close_second():
    # eos = 0 is second (0.4) after token 1 (0.5), and the greedy path then loses probability fast:
    # a finished hypothesis outside the top `beam` must not enter the pool, or [0] would win.
    table = torch.tensor([[0.90, 0.05, 0.05],
                          [0.40, 0.50, 0.10],
                          [0.10, 0.45, 0.45]], dtype=torch.float64).log()
    step, start = table_step(table), torch.tensor([2])
    expected = greedy(step, None, start, 4, eos=0)
    assert expected.tolist() == [[1, 1, 1, 1]]
    for length_penalty in (0.0, 1.0):
        assert beam_search(step, None, start, beam=1, max_len=4, eos=0,
                           length_penalty=length_penalty)[0].tolist() == [[1, 1, 1, 1]]


def test_a_full_pool_does_not_stop_a_better_running_beam():
    # From 2, both other tokens end (eos 0) or lead to eos quickly, so the pool fills with poor
    # finished hypotheses while 2 2 2 2 (p 0.66) is still running; stopping on a full pool alone
    # would answer [0] (p 0.05).
    table = torch.tensor([[0.10, 0.50, 0.40],
                          [0.30, 0.30, 0.40],
                          [0.05, 0.05, 0.90]], dtype=torch.float64).log()
    tokens, scores = beam_search(table_step(table), None, torch.tensor([2]), beam=3, max_len=4, eos=0,
                                 length_penalty=0.0)
    assert tokens.tolist() == [[2, 2, 2, 2]]
    assert math.isclose(scores.item(), 4 * math.log(0.9), rel_tol=1e-12)


def test_ties_go_to_the_lowest_token_as_in_argmax():
    # Tied maxima at 5, 20 and 40 of 64: an unstable sort may rank any of them first.
    logits = torch.zeros(64)
    logits[[5, 20, 40]] = 1.0
    step = lambda tokens, state: (logits.expand(tokens.shape[0], -1), state)
    start = torch.tensor([0, 1])
    assert greedy(step, None, start, 3).tolist() == [[5, 5, 5]] * 2
    assert beam_search(step, None, start, beam=1, max_len=3)[0].tolist() == [[5, 5, 5]] * 2


def test_greedy_pads_with_eos_and_stops_when_all_finished():
    table = torch.tensor([[0.1, 0.8, 0.1],           # after eos = 0 the model would go on with 1
                          [0.2, 0.1, 0.7],
                          [0.6, 0.3, 0.1]]).log()
    step, start = table_step(table), torch.tensor([1, 2])
    assert greedy(step, None, start, 5).tolist() == [[2, 0, 1, 2, 0], [0, 1, 2, 0, 1]]
    assert greedy(step, None, start, 5, eos=0).tolist() == [[2, 0], [0, 0]]
    assert greedy(step, None, torch.tensor([1]), 1, eos=0).tolist() == [[2]]


def test_beam_search_with_a_batch_first_state_and_custom_reorder():
    """A GRUCell state is (B, H): the default dim 1 would shuffle hidden units, so the caller passes reorder."""
    torch.manual_seed(0)
    embed, cell, out = torch.nn.Embedding(6, 4), torch.nn.GRUCell(4, 8), torch.nn.Linear(8, 6)
    calls = []

    def reorder(state, index):
        calls.append(index)
        return reorder_state(state, index, dim=0)

    def step(tokens, h):
        h = cell(embed(tokens), h)                    # (B, H)
        return 3 * out(h), h
    h0 = torch.randn(3, 8)
    tokens, scores = beam_search(step, h0, START, beam=3, max_len=6, reorder=reorder)
    assert len(calls) == 6                            # the initial expansion, then after each step but the last
    assert torch.allclose(scores, sequence_log_prob(step, h0, START, tokens), atol=1e-5)
    assert torch.equal(beam_search(step, h0, START, beam=1, max_len=6, reorder=reorder)[0],
                       greedy(step, h0, START, 6))


def test_sample_at_temperature_zero_or_top_one_is_greedy():
    step = gru_step()
    expected = greedy(step, None, START, 8)
    prompt = START[:, None]
    assert torch.equal(sample(step, None, prompt, 8, temperature=0), expected)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(sample(step, None, prompt, 8, top_k=1, generator=g), expected)


def test_sample_is_reproducible_given_the_generator():
    step, prompt = gru_step(), START[:, None]

    def draw(seed, **kw):
        return sample(step, None, prompt, 12, generator=torch.Generator().manual_seed(seed), **kw)
    assert torch.equal(draw(7), draw(7))
    assert not torch.equal(draw(7), draw(8))
    assert torch.equal(draw(7, top_k=100), draw(7))   # k >= V keeps every token: the same draw


def test_sample_uses_only_the_top_k_tokens():
    table = markov(5, v=5)
    step = table_step(table)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(5, (400, 2), generator=g)
    allowed = table.topk(2, dim=-1).indices                                  # (5, 2)

    def outside_top_two(out):
        prev = torch.cat([prompt[:, -1:], out[:, :-1]], 1)                   # the token before each draw
        return (allowed[prev] != out.unsqueeze(-1)).all(-1).sum().item()
    assert outside_top_two(sample(step, None, prompt, 5, top_k=2, generator=g)) == 0
    assert outside_top_two(sample(step, None, prompt, 5, generator=g)) > 50  # the check can see a leak


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_sample_frequencies_follow_the_tempered_softmax(temperature):
    logits = torch.tensor([1.0, 0.0, -1.0])
    step = lambda tokens, state: (logits.expand(tokens.shape[0], -1), state)
    n = 20000
    out = sample(step, None, torch.zeros(n, 1, dtype=torch.long), 1, temperature=temperature,
                 generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(out[:, 0], minlength=3).double() / n
    expected = (logits.double() / temperature).softmax(-1)
    assert (freq - expected).abs().max() < 0.015, (freq, expected)     # about 4 standard errors


def test_sample_feeds_the_prompt_to_warm_the_state():
    inner = gru_step()
    calls = []

    def step(tokens, state):
        calls.append((tokens.clone(), None if state is None else state.clone()))
        return inner(tokens, state)
    prompt = torch.tensor([[1, 2, 3], [4, 0, 2]])
    out = sample(step, None, prompt, 4, temperature=0)
    state, logits = None, None
    for t in range(3):
        logits, state = inner(prompt[:, t], state)
    assert [c[0].tolist() for c in calls[:3]] == prompt.T.tolist()
    assert torch.equal(calls[3][0], out[:, 0]) and torch.equal(out[:, 0], logits.argmax(-1))
    assert torch.allclose(calls[3][1], state)         # the state after the prompt, fed with token 1
    assert len(calls) == 3 + 4 - 1                    # no step after the last token


# ---------------------------------------------------------------- state, scoring, arguments


def test_reorder_state_follows_the_index_through_nested_states():
    Pair = collections.namedtuple("Pair", "h c")
    h = torch.arange(24.).view(2, 3, 4)               # (L, B, H)
    c = torch.arange(12.).view(3, 4)                  # (B, H): needs dim=0 from the caller
    x = torch.arange(3.)                              # (B,): falls back to dim 0
    index = torch.tensor([2, 0, 0])
    state = (Pair(h, None), [x, None], None)
    out = reorder_state(state, index)
    assert isinstance(out, tuple) and isinstance(out[0], Pair) and isinstance(out[1], list)
    assert torch.equal(out[0].h, h[:, index]) and out[0].c is None
    assert torch.equal(out[1][0], x[index]) and out[1][1] is None and out[2] is None
    assert torch.equal(reorder_state(c, index, dim=0), c[index])
    assert torch.equal(reorder_state(c, index), c[:, index])   # dim 1 exists: the caller asked for it
    assert torch.equal(h, torch.arange(24.).view(2, 3, 4))     # nothing written in place
    assert reorder_state(None, index) is None
    scalar = torch.tensor(3.0)                        # shared by the whole batch
    assert reorder_state((scalar,), index)[0] is scalar
    with pytest.raises(TypeError, match="reorder_state"):
        reorder_state("h", index)


def test_sequence_log_prob_counts_up_to_the_first_eos():
    table = markov(3)
    step, start = table_step(table), torch.tensor([1])
    full = sequence_log_prob(step, None, start, torch.tensor([[2, 0, 3]]))
    stopped = sequence_log_prob(step, None, start, torch.tensor([[2, 0, 3]]), eos=0)
    assert math.isclose(full.item(), (table[1, 2] + table[2, 0] + table[0, 3]).item(), rel_tol=1e-12)
    assert math.isclose(stopped.item(), (table[1, 2] + table[2, 0]).item(), rel_tol=1e-12)


STEP = table_step(markov(3))
S1, S2 = torch.tensor([0, 1]), torch.tensor([[0], [1]])
BAD = [
    ("temperature", lambda: sample(STEP, None, S2, 3, temperature=-1.0)),
    ("temperature", lambda: sample(STEP, None, S2, 3, temperature=float("nan"))),
    ("top_k", lambda: sample(STEP, None, S2, 3, top_k=0)),
    ("steps", lambda: sample(STEP, None, S2, -1)),
    ("prompt", lambda: sample(STEP, None, S2[:, :0], 3)),
    ("prompt", lambda: sample(STEP, None, S1, 3)),
    ("max_len", lambda: greedy(STEP, None, S1, 0)),
    ("start", lambda: greedy(STEP, None, S1.double(), 3)),
    ("beam", lambda: beam_search(STEP, None, S1, beam=0, max_len=3)),
    ("beam", lambda: beam_search(STEP, None, S1, beam=True, max_len=3)),
    ("max_len", lambda: beam_search(STEP, None, S1, beam=2, max_len=0)),
    ("length_penalty", lambda: beam_search(STEP, None, S1, beam=2, max_len=3, length_penalty=math.inf)),
    ("start", lambda: beam_search(STEP, None, S2, beam=2, max_len=3)),
    ("tokens", lambda: sequence_log_prob(STEP, None, S1, S1)),
    ("step", lambda: greedy(lambda t, s: (torch.zeros(5), s), None, S1, 3)),
]


@pytest.mark.parametrize("name,call", BAD, ids=[f"{i}-{name}" for i, (name, _) in enumerate(BAD)])
def test_bad_arguments_raise_value_errors_that_name_them(name, call):
    with pytest.raises(ValueError, match=rf"\b{name} must"):
        call()
