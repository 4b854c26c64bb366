"""Text corpora for language models, and tokenization.

The corpora need no download: the interpreter's own standard library, Debian's
fortunes, or any UTF-8 file the user names.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

from ._files import existing_file, read_text
from .errors import DataError
from .sources import SOURCES, fortune_files

# Folders of the stdlib that are not "the standard library's source" for our
# purpose: test suites (huge, repetitive), third-party installs, and the codec
# tables of encodings/ (generated character maps, not code a model should learn).
SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "encodings"})

# Between files, so the model sees a boundary and sizes are easy to account for.
FILE_SEPARATOR = "\n"


def stdlib_files(root: str | os.PathLike | None = None) -> list[Path]:
    """The standard library's .py files in sorted order (test folders and site-packages skipped).

    >>> files = stdlib_files()
    >>> any(f.name == "json" or f.parent.name == "json" for f in files)
    True
    """
    root = Path(root) if root is not None else SOURCES["stdlib"].require()
    out = []
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if x not in SKIP_DIRS]
        out.extend(Path(d) / f for f in files if f.endswith(".py"))
    # Sort by the path relative to root so the order does not depend on os.walk.
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def _choose_files(files: list[Path], max_chars: int, seed: int) -> list[Path]:
    """A seeded subset of whole files whose texts fit in max_chars (with separators).

    The byte size bounds the decoded length from above (UTF-8 never decodes to
    more characters than bytes), so no file needs reading to decide.
    """
    order = list(files)
    random.Random(seed).shuffle(order)
    chosen, room = [], max_chars
    for f in order:
        size = f.stat().st_size + len(FILE_SEPARATOR)
        if 0 < f.stat().st_size and size <= room:
            chosen.append(f)
            room -= size
    return chosen


def stdlib_text(max_chars: int | None = None, seed: int = 0, root: str | os.PathLike | None = None) -> str:
    """The standard library's .py files concatenated, in sorted path order.

    With max_chars, a seeded, deterministic subset of whole files that fits in
    max_chars characters. Bytes that are not UTF-8 are skipped.

    >>> t = stdlib_text(max_chars=20_000, seed=1)
    >>> 0 < len(t) <= 20_000 and t == stdlib_text(max_chars=20_000, seed=1)
    True
    """
    files = stdlib_files(root)
    if max_chars is not None:
        if max_chars < 1:
            raise DataError(f"max_chars must be positive, got {max_chars}; pass a size such as 1000000")
        files = sorted(_choose_files(files, max_chars, seed), key=files.index)
        if not files:
            raise DataError(f"no standard-library file fits in {max_chars} characters; pass a larger max_chars")
    text = "".join(f.read_bytes().decode("utf-8", errors="ignore") + FILE_SEPARATOR for f in files)
    if not text.strip():
        raise DataError(f"found no .py files under {root or SOURCES['stdlib'].location()}; check the Python install")
    return text


def split_fortunes(raw: str) -> list[str]:
    r"""The quotes of one fortune file: a line holding only '%' ends a quote.

    Split by lines, not by "\n%\n": files contain empty quotes ('%' twice in a
    row), whose separators overlap.

    >>> split_fortunes("%\nOne.\n%\n%\nTwo,\n  lines.\n%\n")
    ['One.', 'Two,\n  lines.']
    """
    quotes, current = [], []
    for line in raw.splitlines():
        if line.rstrip() == "%":
            quotes.append("\n".join(current).strip())
            current = []
        else:
            current.append(line)
    quotes.append("\n".join(current).strip())
    return [q for q in quotes if q]


def fortunes_text(root: str | os.PathLike | None = None) -> str:
    """Every fortune quote, stripped, joined by blank lines (files in sorted order)."""
    folder = Path(root) if root is not None else SOURCES["fortunes"].require()
    quotes = [
        q for f in fortune_files(folder) for q in split_fortunes(f.read_bytes().decode("utf-8", errors="replace"))
    ]
    if not quotes:
        raise DataError(f"found no fortune quotes in {folder}; reinstall with: apt-get install fortunes")
    return "\n\n".join(quotes)


def file_text(path: str | os.PathLike) -> str:
    """A user's text file (UTF-8, .gz allowed); DataError if missing, empty or not UTF-8."""
    p = existing_file(path, "text file")
    text = read_text(p)
    if not text.strip():
        raise DataError(f"the text file {p} holds only whitespace; pass a file with text in it")
    return text


# Word level: words (with inner apostrophes, "don't"), single punctuation
# marks, and newlines, which carry the layout of code and verse.
_WORD = re.compile(r"\n|\w+(?:'\w+)*|[^\w\s]")
LEVELS = ("char", "word")


def tokenize(text: str, level: str) -> list[str]:
    """Split text into characters or into words, punctuation and newlines.

    >>> tokenize("Hi, you!\\nok", "word")
    ['Hi', ',', 'you', '!', '\\n', 'ok']
    >>> tokenize("ab\\n", "char")
    ['a', 'b', '\\n']
    """
    if level == "char":
        return list(text)
    if level == "word":
        return _WORD.findall(text)
    raise DataError(f"unknown tokenization level {level!r}; use 'char' or 'word'")


_NO_SPACE_BEFORE = set(".,;:!?)]}'\"")
_NO_SPACE_AFTER = set("([{")


def detokenize(tokens: list[str], level: str) -> str:
    """Join tokens back into text (inverse of tokenize up to spacing).

    >>> detokenize(['Hi', ',', 'you', '!', '\\n', 'ok'], "word")
    'Hi, you!\\nok'
    """
    if level == "char":
        return "".join(tokens)
    if level != "word":
        raise DataError(f"unknown tokenization level {level!r}; use 'char' or 'word'")
    out: list[str] = []
    for tok in tokens:
        glue = not out or tok == "\n" or out[-1] == "\n" or tok in _NO_SPACE_BEFORE or out[-1] in _NO_SPACE_AFTER
        out.append(tok if glue else " " + tok)
    return "".join(out)
