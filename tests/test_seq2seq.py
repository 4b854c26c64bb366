"""The encoder-decoder: attention masking, beam search against greedy, teacher forcing, and the metrics.

The end-to-end runs of the g2p and translate tasks are in tests/test_seq2seq_tasks.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from rnnkit.tasks import decoding as decode
from rnnkit.tasks.common import length_mask as source_mask
from rnnkit.tasks.metrics import bleu, edit_distance, error_rates
from rnnkit.tasks.models.attention import AdditiveAttention, MultiplicativeAttention, masked_softmax
from rnnkit.tasks.models.seq2seq import Seq2Seq, reorder
from rnnkit.tasks.seq2seq import gold_probability, teacher_forcing
from rnnkit.train.config import ModelConfig

ATTENTION = (AdditiveAttention, MultiplicativeAttention)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ---------------------------------------------------------------- attention


@pytest.mark.parametrize("kind", ATTENTION)
def test_attention_weights_sum_to_one_over_valid_positions_and_are_zero_on_padding(kind):
    torch.manual_seed(0)
    attn = kind(query_size=5, key_size=7)
    lengths = torch.tensor([1, 4, 6, 3])
    keys = torch.randn(4, 6, 7) * 10                 # large scores: a soft mask would leak
    mask = source_mask(lengths, 6)
    context, weights = attn(torch.randn(4, 5), keys, mask)
    assert weights.shape == (4, 6) and context.shape == (4, 7)
    assert (weights[~mask] == 0).all()               # exactly zero, not merely small
    assert torch.allclose(weights.sum(1), torch.ones(4), atol=1e-6)
    assert torch.allclose(context, torch.einsum("bs,bsk->bk", weights, keys), atol=1e-5)
    assert weights[0, 0] == 1                        # one valid position takes all the weight


@pytest.mark.parametrize("kind", ATTENTION)
def test_attention_ignores_what_lies_in_the_padding(kind):
    torch.manual_seed(1)
    attn = kind(query_size=3, key_size=4)
    query, keys = torch.randn(2, 3), torch.randn(2, 5, 4)
    mask = source_mask(torch.tensor([2, 5]), 5)
    noisy = keys.clone()
    noisy[0, 2:] = 1e4                               # garbage past the first sequence's end
    a, b = attn(query, keys, mask), attn(query, noisy, mask)
    assert torch.equal(a[1], b[1]) and torch.equal(a[0], b[0])


def test_a_row_without_valid_positions_gets_zero_weights_and_finite_gradients():
    scores = torch.randn(2, 3, requires_grad=True)
    mask = torch.tensor([[False, False, False], [True, False, True]])
    weights = masked_softmax(scores, mask)
    assert weights[0].tolist() == [0.0, 0.0, 0.0]
    assert math.isclose(float(weights[1].detach().sum()), 1.0, rel_tol=1e-6)
    weights.sum().backward()
    assert torch.isfinite(scores.grad).all()


def test_additive_attention_matches_its_equation():
    torch.manual_seed(2)
    attn = AdditiveAttention(3, 4, size=5)
    q, keys = torch.randn(1, 3), torch.randn(1, 2, 4)
    e = torch.stack([attn.v.weight[0] @ torch.tanh(attn.query_proj.weight @ q[0] + attn.key_proj(keys[0, s]))
                     for s in range(2)])
    _, weights = attn(q, keys, torch.ones(1, 2, dtype=torch.bool))
    assert torch.allclose(weights[0], e.softmax(0), atol=1e-6)


def test_multiplicative_attention_matches_its_equation():
    torch.manual_seed(3)
    attn = MultiplicativeAttention(3, 4)
    q, keys = torch.randn(1, 3), torch.randn(1, 2, 4)
    W = attn.query_proj.weight.T                                 # (Hq, Hk): e_s = q^T W k_s
    e = torch.stack([q[0] @ W @ keys[0, s] for s in range(2)])
    _, weights = attn(q, keys, torch.ones(1, 2, dtype=torch.bool))
    assert torch.allclose(weights[0], e.softmax(0), atol=1e-6)


# ---------------------------------------------------------------- the model and decoding


def model_for(cell: str, attention: str, bidirectional: bool = True, layers: int = 1) -> Seq2Seq:
    torch.manual_seed(4)
    cfg = ModelConfig(cell=cell, hidden=12, embed=6, layers=layers, attention=attention, bidirectional=bidirectional)
    return Seq2Seq(cfg, src_vocab=9, tgt_vocab=11).eval()


SRC = torch.tensor([[4, 5, 6, 7, 8], [5, 6, 0, 0, 0], [8, 7, 6, 0, 0]])
LENGTHS = torch.tensor([5, 2, 3])


@pytest.mark.parametrize("cell,attention", [("lstm", "additive"), ("gru", "multiplicative"), ("rnn", "none"),
                                            ("lstm", "none")])
def test_beam_search_with_beam_one_equals_greedy(cell, attention):
    model = model_for(cell, attention, layers=2 if cell == "lstm" else 1)
    start = torch.full((3,), 2)
    greedy = decode.greedy(model.step, model.start(SRC, LENGTHS), start, max_len=12, eos=3)
    beam, _ = decode.beam_search(model.step, model.start(SRC, LENGTHS), start, beam=1, max_len=12, eos=3,
                                 reorder=reorder)
    width = max(greedy.shape[1], beam.shape[1])
    pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]), value=3)
    assert torch.equal(pad(greedy), pad(beam))


def test_batched_beam_search_equals_one_example_at_a_time():
    model = model_for("gru", "additive")
    together = model.decode(SRC, LENGTHS, bos=2, eos=3, max_len=10, beam=3)
    for b in range(3):
        alone = model.decode(SRC[b:b + 1, :LENGTHS[b]], LENGTHS[b:b + 1], bos=2, eos=3, max_len=10, beam=3)
        n = alone.shape[1]
        assert torch.equal(together[b, :n], alone[0])
        assert (together[b, n:] == 3).all()


def test_beam_search_finds_a_sequence_at_least_as_likely_as_greedy():
    model = model_for("lstm", "additive")
    start = torch.full((3,), 2)
    greedy = model.decode(SRC, LENGTHS, bos=2, eos=3, max_len=10, beam=1)
    beam = model.decode(SRC, LENGTHS, bos=2, eos=3, max_len=10, beam=4, length_penalty=0)   # raw log-prob
    score = lambda tokens: decode.sequence_log_prob(model.step, model.start(SRC, LENGTHS), start, tokens, eos=3)
    assert (score(beam) >= score(greedy) - 1e-9).all()


def test_decoder_attention_is_zero_on_source_padding_and_sums_to_one():
    model = model_for("lstm", "multiplicative")
    _, weights = model(SRC, LENGTHS, torch.tensor([[2, 5, 6, 7]] * 3))          # (B, T, S)
    mask = source_mask(LENGTHS, SRC.shape[1])
    assert (weights.masked_select(~mask[:, None, :].expand_as(weights)) == 0).all()
    assert torch.allclose(weights.sum(-1), torch.ones(3, 4), atol=1e-6)


def test_the_encoder_output_does_not_depend_on_padding():
    model = model_for("gru", "additive")
    padded = torch.cat([SRC, torch.zeros(3, 4, dtype=torch.long)], 1)           # more padding columns
    a = model.decode(SRC, LENGTHS, bos=2, eos=3, max_len=8)
    b = model.decode(padded, LENGTHS, bos=2, eos=3, max_len=8)
    assert torch.equal(a, b)


def test_teacher_forcing_probability_one_is_plain_teacher_forcing_and_zero_is_not():
    model = model_for("gru", "additive").train()
    inputs = torch.tensor([[2, 5, 6, 7, 8]] * 3)
    plain, _ = model(SRC, LENGTHS, inputs)
    forced, _ = model(SRC, LENGTHS, inputs, torch.ones(3))
    torch.manual_seed(0)
    own, _ = model(SRC, LENGTHS, inputs, torch.zeros(3))
    assert torch.allclose(plain, forced, atol=1e-6)
    assert torch.allclose(plain[:, 0], own[:, 0], atol=1e-6)       # the first step always reads <s>
    assert not torch.allclose(plain[:, 1:], own[:, 1:])


def test_gradients_reach_every_parameter():
    model = model_for("lstm", "additive").train()
    logits, _ = model(SRC, LENGTHS, torch.tensor([[2, 5, 6]] * 3), torch.full((3,), 0.5))
    logits.logsumexp(-1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_teacher_forcing_schedule():
    assert teacher_forcing("0.75") == (0.75, 0.75)
    assert teacher_forcing("1:0") == (1.0, 0.0)
    assert [gold_probability(1.0, 0.0, s, 5) for s in range(6)] == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    for bad in ("1.5", "a", "1:0.5:0", "-0.1", ""):
        with pytest.raises(ValueError, match="--teacher-forcing"):
            teacher_forcing(bad)


# ---------------------------------------------------------------- metrics against hand-computed values


def test_edit_distance_hand_examples():
    assert edit_distance("", "") == 0
    assert edit_distance("abc", "") == 3
    assert edit_distance("", "ab") == 2
    assert edit_distance("flaw", "lawn") == 2                      # delete f, insert n
    assert edit_distance("intention", "execution") == 5
    assert edit_distance(["K", "AE", "T"], ["K", "AE", "T"]) == 0
    assert edit_distance(["K", "AE", "T"], ["B", "AE", "T", "S"]) == 2


def test_error_rates_hand_example_with_several_references():
    hyps = [["T", "AH", "M", "EY", "T", "OW"],       # matches the second reference: 0 errors
            ["K", "AE", "T"],                        # one substitution against B AE T (3)
            ["D", "AO", "G", "Z"]]                   # one insertion against D AO G (3)
    refs = [[("T", "AH", "M", "AA", "T", "OW"), ("T", "AH", "M", "EY", "T", "OW")],
            [("B", "AE", "T")],
            [("D", "AO", "G"), ("D", "AA", "G", "Z", "IH")]]
    per, wer = error_rates(hyps, refs)
    assert per == pytest.approx(2 / 12)              # 0 + 1 + 1 edits over 6 + 3 + 3 reference phonemes
    assert wer == pytest.approx(2 / 3)


def test_bleu_hand_example():
    # precisions 4/5, 3/4, 2/3, 1/2 and no brevity penalty: BLEU = (0.8 * 0.75 * 2/3 * 0.5) ** (1/4)
    assert bleu(["a b c d e"], ["a b c d f"]) == pytest.approx(100 * 0.2 ** 0.25, abs=1e-3)
    assert bleu(["x y z w"], ["a b c d"]) == pytest.approx(0.0)
