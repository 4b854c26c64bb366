"""UCR/UEA time-series classification sets in the sktime/aeon .ts format.

A .ts file is a header of `@key value` lines (keys are case-insensitive in
practice: aeon's own files mix @timeStamps and @timestamps), then `@data`,
then one example per line: channels separated by ':', each a comma-separated
series, the class label last. '?' is a missing value. Lines starting with '#'
are comments, and so are lines starting with '%' (ARFF style: aeon's UnitTest
files use them).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ._files import existing_file, read_text
from .errors import DataError
from .sources import SOURCES

SPLITS = ("train", "test")


def _is_true(value: str) -> bool:
    return value.split()[0].lower() == "true" if value.split() else False


def _parse_header(line: str, header: dict) -> None:
    """Record one `@key value` line in header (key lower-cased)."""
    key, _, value = line[1:].partition(" ")
    header[key.lower()] = value.strip()


def _label_set(header: dict) -> set[str] | None:
    """The declared class labels, or None when the header does not list them."""
    value = header.get("classlabel", "")
    words = value.split()
    return set(words[1:]) if words and words[0].lower() == "true" and len(words) > 1 else None


def _parse_channel(field: str, where: str) -> np.ndarray:
    try:
        # numpy parses a list of decimal strings directly; '?' marks a missing value.
        return np.array(field.replace("?", "nan").split(","), dtype=np.float32)
    except ValueError:
        bad = next(v for v in field.split(",") if v.strip() != "?" and not _is_float(v))
        raise DataError(f"{where}: {bad!r} is not a number or '?'; fix the value") from None


def _is_float(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def _parse_example(line: str, has_label: bool, where: str) -> tuple[np.ndarray, str]:
    """One data line as a (T, C) float32 array and its label ('' when the file has none)."""
    fields = line.split(":")
    label = fields.pop().strip() if has_label else ""
    if has_label and not fields:
        raise DataError(f"{where}: expected channels then a label separated by ':', found only {line[:40]!r}")
    channels = [_parse_channel(f.strip(), where) for f in fields]
    lengths = {len(c) for c in channels}
    if len(lengths) != 1:
        raise DataError(
            f"{where}: the channels have different lengths {sorted(lengths)}; "
            "every channel of one example must have the same length"
        )
    return np.stack(channels, axis=1), label


def read_ts(path: str | os.PathLike) -> tuple[list[np.ndarray], list[str]]:
    """Examples as (T_i, C) float32 arrays (lengths may differ) and their labels as strings.

    A file whose header says `@classLabel false` (and has no `@targetLabel true`)
    has no label column; its labels are empty strings. A regression file
    (`@targetLabel true`) gives the target as a string.
    """
    p = existing_file(path, ".ts file")
    header: dict[str, str] = {}
    seqs: list[np.ndarray] = []
    labels: list[str] = []
    in_data = False
    for n, raw in enumerate(read_text(p).splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", "%")):
            continue
        where = f"{p}, line {n}"
        if not in_data:
            if not line.startswith("@"):
                raise DataError(f"{where}: expected a header line starting with '@' before @data; is this a .ts file?")
            _parse_header(line, header)
            if line.lower() == "@data":
                in_data = True
                if _is_true(header.get("timestamps", "false")):
                    raise DataError(f"{p} uses timestamps (@timeStamps true), which this reader does not support")
                has_label = _is_true(header.get("classlabel", "false")) or _is_true(header.get("targetlabel", "false"))
                allowed = _label_set(header)
                dims = int(header["dimensions"]) if header.get("dimensions", "").isdigit() else None
            continue
        x, label = _parse_example(line, has_label, where)
        channels = dims or (seqs[0].shape[1] if seqs else x.shape[1])
        if x.shape[1] != channels:
            raise DataError(
                f"{where}: expected {channels} channels, found {x.shape[1]}; every example needs the same channels"
            )
        if allowed is not None and label not in allowed:
            raise DataError(
                f"{where}: label {label!r} is not among the declared classes {sorted(allowed)}; "
                "fix the label or the @classLabel line"
            )
        seqs.append(x)
        labels.append(label)
    if not in_data:
        raise DataError(f"{p} has no @data line; is this a .ts file?")
    if not seqs:
        raise DataError(f"{p} has a header but no examples after @data; re-create the file")
    return seqs, labels


def ucr_names(root: str | os.PathLike | None = None) -> list[str]:
    """The data sets under root (default: the installed aeon/sktime data) with both a TRAIN and a TEST file.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()); (d / "Toy").mkdir()
    >>> for s in ("TRAIN", "TEST"): _ = (d / "Toy" / f"Toy_{s}.ts").write_text("@data\\n1,2:a\\n")
    >>> ucr_names(d)
    ['Toy']
    """
    folder = Path(root) if root is not None else SOURCES["ucr"].require()
    return sorted(
        d.name
        for d in folder.iterdir()
        if d.is_dir() and all((d / f"{d.name}_{s}.ts").is_file() for s in ("TRAIN", "TEST"))
    )


def ucr_dataset(name: str, split: str, root: str | os.PathLike | None = None) -> tuple[list[np.ndarray], list[str]]:
    """`<name>/<name>_TRAIN.ts` or `_TEST.ts` from the UCR source (name matched case-insensitively)."""
    if split.lower() not in SPLITS:
        raise DataError(f"unknown split {split!r} for a UCR data set; use 'train' or 'test'")
    folder = Path(root) if root is not None else SOURCES["ucr"].require()
    names = ucr_names(folder)
    match = next((n for n in names if n.lower() == name.lower()), None)
    if match is None:
        raise DataError(f"no UCR data set {name!r} in {folder}; available: {', '.join(names)}")
    return read_ts(folder / match / f"{match}_{split.upper()}.ts")
