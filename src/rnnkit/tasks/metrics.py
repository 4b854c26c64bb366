"""Metrics of output sequences: edit distance, phoneme/word error rate, BLEU (sacrebleu, lazily).

Phoneme error rate and word error rate as G2P reports them, with several references per word
(CMUdict lists up to 4 pronunciations; a hypothesis is judged against the nearest one):

    PER = sum_w min_r d(hyp_w, r) / sum_w len(r*_w)     r*_w: the reference reaching that minimum
    WER = (number of words whose hypothesis equals none of its references) / (number of words)

with d the Levenshtein distance (insertions, deletions, substitutions all cost 1). Among
references at the same distance the shortest is r*, which gives the larger (more cautious) PER.

>>> edit_distance("kitten", "sitting")
3
>>> error_rates([["K", "AE", "T"]], [[("K", "AE", "T")]])
(0.0, 0.0)
>>> error_rates([["K", "AA", "T", "S"]], [[("K", "AE", "T")]])   # one substitution, one insertion
(0.6666666666666666, 1.0)
"""

from __future__ import annotations

from collections.abc import Sequence

from ..data import DataError


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance between two sequences (one row of the table at a time)."""
    if len(a) < len(b):
        a, b = b, a                                   # the row is over the shorter one
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1,           # delete x
                               current[j - 1] + 1,        # insert y
                               previous[j - 1] + (x != y)))   # substitute (free when equal)
        previous = current
    return previous[-1]


def error_rates(hypotheses: Sequence[Sequence], references: Sequence[Sequence[Sequence]]) -> tuple[float, float]:
    """(PER, WER) of hypotheses against lists of references, one list per hypothesis."""
    if len(hypotheses) != len(references) or not hypotheses:
        raise ValueError(f"error_rates: {len(hypotheses)} hypotheses for {len(references)} reference lists")
    errors = length = wrong = 0
    for hyp, refs in zip(hypotheses, references):
        hyp = tuple(hyp)
        distance, ref_len = min((edit_distance(hyp, r), len(r)) for r in refs)
        errors, length = errors + distance, length + ref_len
        wrong += distance > 0
    return errors / max(length, 1), wrong / len(hypotheses)


def sacrebleu_module():
    """sacrebleu, or a DataError naming the install command (it is an optional dependency)."""
    try:
        import sacrebleu
    except ImportError:
        raise DataError("BLEU needs the PyPI package sacrebleu: pip install sacrebleu") from None
    return sacrebleu


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU-4 (0-100) of already tokenised, space-joined strings, one reference each.

    sacrebleu's own tokeniser is off (tokenize="none"): the score counts exactly the tokens the
    model reads and writes, so it is a tokenised BLEU, not the detokenised sacreBLEU of papers.

    >>> round(bleu(["the cat sat on the mat"], ["the cat sat on the mat"]), 1)
    100.0
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"bleu: {len(hypotheses)} hypotheses for {len(references)} references")
    # force: the text is tokenised on purpose, which sacrebleu would otherwise warn about on stderr
    score = sacrebleu_module().corpus_bleu(list(hypotheses), [list(references)], tokenize="none", force=True)
    return float(score.score)
