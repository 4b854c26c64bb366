"""English -> Spanish verse pairs from two SWORD Bible modules, read without libsword.

Debian's sword-text-kjv (engKJV2006eb, King James) and sword-text-sparv (spaRV1909eb, Reina-Valera
1909) both use the KJV versification, so verse i of one module is verse i of the other: zipping
the two indexes aligns them. Entries that are empty in either module (the index's heading slots,
a few missing verses) are skipped, which leaves about 31k pairs.

The zText format, per testament (ot, nt), three files:
    bzv   the verse index, 10 bytes per entry: block u32, offset u32, size u16 (little endian)
    bzs   the block index, 12 bytes per block: offset u32, size u32, uncompressed size u32
    bzz   the zlib-compressed blocks, concatenated
A verse is bytes [offset, offset + size) of its decompressed block: OSIS/ThML markup, from which
notes and titles are dropped with their text, other tags (Strong's numbers, ...) only as tags.

The split is by verse index: h = int(md5("ot:INDEX")) mod 100; test if h < 5, valid if h < 10,
train otherwise (90/5/5). Neighbouring verses then fall on both sides, as they do in any split
that is not by book; a verse is never on two sides.

>>> clean('<w lemma="strong:H07225">In the beginning</w> God<note>a note</note>  created')
'In the beginning God created'
"""

from __future__ import annotations

import hashlib
import re
import struct
import zlib
from pathlib import Path

from .errors import DataError
from .sources import BIBLE_MODULES, source

TESTAMENTS = ("ot", "nt")
SPLIT_PERCENT = {"test": 5, "valid": 5}     # the rest, 90, is train

_DROPPED = re.compile(r"<(note|title)\b.*?</\1>", re.DOTALL)      # footnotes and headings, with their text
_TAG = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")


def clean(markup: str) -> str:
    """The plain text of one verse's markup."""
    return _SPACE.sub(" ", _TAG.sub("", _DROPPED.sub("", markup))).strip()


def _read(folder: Path, name: str) -> bytes:
    try:
        return (folder / name).read_bytes()
    except OSError as e:
        raise DataError(f"cannot read the SWORD file {folder / name} ({e}); reinstall the module's package") from e


def verses(folder: Path, testament: str) -> list[str]:
    """The cleaned text of every index entry of one testament of a zText module ('' when empty)."""
    bzs, bzv, bzz = (_read(folder, f"{testament}.{ext}") for ext in ("bzs", "bzv", "bzz"))
    blocks: dict[int, bytes] = {}

    def block(b: int) -> bytes:
        if b not in blocks:
            start, size = struct.unpack_from("<II", bzs, 12 * b)
            try:
                blocks[b] = zlib.decompress(bzz[start:start + size])
            except zlib.error as e:
                raise DataError(f"block {b} of {folder / testament}.bzz is corrupt ({e}); reinstall the module") from e
        return blocks[b]

    out = []
    for entry in range(0, len(bzv) - 9, 10):
        b, offset, size = struct.unpack_from("<IIH", bzv, entry)
        out.append(clean(block(b)[offset:offset + size].decode("utf-8", errors="replace")) if size else "")
    return out


def split_of(testament: str, index: int) -> str:
    """'train', 'valid' or 'test' for the verse at `index` of a testament (see the module docstring)."""
    h = int(hashlib.md5(f"{testament}:{index}".encode()).hexdigest(), 16) % 100
    if h < SPLIT_PERCENT["test"]:
        return "test"
    if h < SPLIT_PERCENT["test"] + SPLIT_PERCENT["valid"]:
        return "valid"
    return "train"


def indexed_pairs() -> list[tuple[str, int, str, str]]:
    """(testament, index, English, Spanish) for every index entry filled in both modules."""
    root = source("bible").require()
    english, spanish = (root / m for m in BIBLE_MODULES)
    out = []
    for t in TESTAMENTS:
        en, es = verses(english, t), verses(spanish, t)
        if len(en) != len(es):
            raise DataError(f"{english} and {spanish} index {len(en)} and {len(es)} {t} entries; "
                            "they need the same versification (reinstall sword-text-kjv and sword-text-sparv)")
        out += [(t, i, e, s) for i, (e, s) in enumerate(zip(en, es)) if e and s]
    return out


def verse_splits() -> dict[str, list[tuple[str, str]]]:
    """{'train', 'valid', 'test'} -> (English, Spanish) verse pairs in Bible order."""
    splits = {"train": [], "valid": [], "test": []}
    for t, i, e, s in indexed_pairs():
        splits[split_of(t, i)].append((e, s))
    return splits


def verse_pairs() -> list[tuple[str, str]]:
    """Every (English, Spanish) verse pair in Bible order."""
    return [(e, s) for _, _, e, s in indexed_pairs()]
