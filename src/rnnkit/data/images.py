"""IDX files (the MNIST format) and Fashion-MNIST from Debian's dataset-fashion-mnist."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from ._files import existing_file, read_bytes
from .errors import DataError
from .sources import SOURCES

# The third byte of an IDX magic number names the element type (big-endian).
IDX_TYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FASHION_PREFIX = {"train": "train", "test": "t10k"}


def parse_idx(raw: bytes, name: str = "IDX data") -> np.ndarray:
    """An array from the bytes of an IDX file; DataError on a bad magic or a wrong size.

    >>> parse_idx(bytes([0, 0, 8, 2, 0, 0, 0, 1, 0, 0, 0, 3, 7, 8, 9])).tolist()
    [[7, 8, 9]]
    """
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES:
        raise DataError(
            f"{name} is not an IDX file (magic {raw[:4].hex() or 'missing'}, expected 0000 then a type byte and ndim)"
        )
    dtype, ndim = IDX_TYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(
            f"{name} is truncated: {len(raw)} bytes cannot hold its {ndim}-dimension header; reinstall the file"
        )
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "longer than its header says"
        raise DataError(f"{name} is {what}: shape {shape} needs {expected} bytes, found {len(raw)}; reinstall the file")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (gzip-compressed when it ends in .gz) as a native-endian array."""
    p = existing_file(path, "IDX file")
    return parse_idx(read_bytes(p), str(p))


def fashion_mnist(split: str, root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (N, 28, 28) and labels int64 (N,) of the "train" (60k) or "test" (10k) split.

    Read row by row, each image is a sequence of 28 steps of 28 features.
    """
    prefix = _FASHION_PREFIX.get(split)
    if prefix is None:
        raise DataError(f"unknown Fashion-MNIST split {split!r}; use 'train' or 'test'")
    folder = Path(root) if root is not None else SOURCES["fashion-mnist"].require()
    images = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(
            f"{folder}: expected uint8 images of 28x28, found {images.dtype} {images.shape}; "
            "reinstall dataset-fashion-mnist"
        )
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(
            f"{folder}: {len(images)} images but labels of shape {labels.shape}; reinstall dataset-fashion-mnist"
        )
    if len(labels) and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise DataError(
            f"{folder}: label {int(labels.max())} is outside the 10 classes; reinstall dataset-fashion-mnist"
        )
    return images, labels.astype(np.int64)
