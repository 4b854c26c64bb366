"""English -> Spanish translation of Bible verses (King James -> Reina-Valera 1909), word level.

Text is lowercased and split into words and punctuation (rnnkit.data.tokenize). Each language's
vocabulary holds the training words seen at least twice, or the --vocab-size most frequent;
the rest read (and are written) as <unk>. With --max-len N only verse pairs of at most N
tokens on both sides are kept, in every split (short verses train much faster on a CPU).

BLEU (sacrebleu, corpus BLEU-4) compares the decoded tokens with the reference's real tokens,
unknown words included, both lowercased and tokenised the same way (tokenize="none"). Beside
it, `copy_bleu` is the BLEU of copying the English source unchanged: names, numbers and
punctuation already match, so a model has to beat that number to have learnt anything.
Early stopping watches valid BLEU.
"""

from __future__ import annotations

from collections import Counter

from ..data import Vocab, detokenize, tokenize
from ..data.bible import verse_splits
from ..train.config import RunConfig
from .common import SPECIALS
from .seq2seq import Pairs, Seq2SeqTask, encode_sources, encode_targets
from .metrics import bleu, sacrebleu_module

MIN_WORD_COUNT = 2   # words seen once in training read as <unk>, so <unk> is trained too

Verses = list[tuple[list[str], list[str]]]   # (English tokens, Spanish tokens)


class TranslateTask(Seq2SeqTask):
    metric, higher_is_better = "bleu", True

    @staticmethod
    def source_tokens(text: str) -> list[str]:
        return tokenize(text.lower(), "word")

    @staticmethod
    def target_text(tokens: list[str]) -> str:
        return detokenize(tokens, "word")

    def score(self, split: str, hypotheses: list[list[str]]) -> dict[str, float]:
        refs = [" ".join(r) for r in self.references[split]]
        copy = [" ".join(s) for s in self.eval_sources[split]]
        return {"bleu": bleu([" ".join(h) for h in hypotheses], refs), "copy_bleu": bleu(copy, refs)}


def word_vocab(sentences, size: int) -> Vocab:
    """The words seen MIN_WORD_COUNT times (all, on tiny data), at most `size` of them (0: no limit)."""
    counts = Counter(w for s in sentences for w in s)
    min_count = MIN_WORD_COUNT if max(counts.values(), default=0) >= MIN_WORD_COUNT else 1
    return Vocab.build(counts.elements(), min_count=min_count, max_size=size + len(SPECIALS) if size else None,
                       specials=SPECIALS)


def translate_task(config: RunConfig, verses: dict[str, Verses]) -> TranslateTask:
    """A task over {split: [(English tokens, Spanish tokens), ...]}; vocabularies from train."""
    limit = config.task.max_len
    if limit:
        verses = {s: [(e, t) for e, t in v if len(e) <= limit and len(t) <= limit] for s, v in verses.items()}
    src_vocab = word_vocab((e for e, _ in verses["train"]), config.task.vocab_size)
    tgt_vocab = word_vocab((t for _, t in verses["train"]), config.task.vocab_size)
    splits = {s: Pairs(encode_sources(src_vocab, [e for e, _ in v]), encode_targets(tgt_vocab, [t for _, t in v]))
              for s, v in verses.items()}
    task = TranslateTask(config, src_vocab, tgt_vocab, splits, {s: [e for e, _ in v] for s, v in verses.items()})
    task.references = {s: [t for _, t in v] for s, v in verses.items()}
    return task


def translate(config: RunConfig) -> TranslateTask:
    """The aligned KJV / RV1909 verses from the SWORD modules (rnnkit.data.bible), split by verse."""
    sacrebleu_module()          # fail before reading the data when BLEU cannot be computed
    tok = TranslateTask.source_tokens
    return translate_task(config, {s: [(tok(e), tok(t)) for e, t in pairs] for s, pairs in verse_splits().items()})
