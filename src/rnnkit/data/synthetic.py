"""Generated long-range tasks with known baselines: the adding problem and copy memory.

Everything is drawn from a torch.Generator the caller seeds, so a data set is
reproducible and train / valid / test can be independent (split_generators).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .errors import DataError

SPLIT_NAMES = ("train", "valid", "test")

# Predicting the constant 1 (the mean of the sum of two U[0,1) values) scores
# the sum's variance, 2 * 1/12.
ADDING_BASELINE_MSE = 1 / 6


def split_generators(seed: int) -> dict[str, torch.Generator]:
    """One independently seeded generator per split, all derived from `seed`.

    >>> g = split_generators(0)
    >>> sorted(g)
    ['test', 'train', 'valid']
    >>> torch.rand(2, generator=g["train"]).tolist() == torch.rand(2, generator=split_generators(0)["train"]).tolist()
    True
    """
    states = np.random.SeedSequence(seed).spawn(len(SPLIT_NAMES))
    return {
        name: torch.Generator().manual_seed(int(s.generate_state(1, np.uint64)[0]))
        for name, s in zip(SPLIT_NAMES, states)
    }


def adding_problem(n: int, length: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """x (n, length, 2) float32 and y (n,) float32 for the adding problem.

    Channel 0 holds U[0,1) values; channel 1 marks exactly two steps with 1,
    one in the first half and one in the second (the variant of Le, Jaitly &
    Hinton 2015). The target is the sum of the two marked values. Predicting
    the constant 1 gives MSE = 1/6 ~ 0.167, so a model must beat that to have
    learnt anything; Hochreiter & Schmidhuber (1997) count < 0.01 as solved.

    >>> x, y = adding_problem(4, 10, torch.Generator().manual_seed(0))
    >>> x.shape, y.shape, x[..., 1].sum(1).tolist()
    (torch.Size([4, 10, 2]), torch.Size([4]), [2.0, 2.0, 2.0, 2.0])
    """
    if n < 1 or length < 2:
        raise DataError(f"the adding problem needs n >= 1 and length >= 2, got n={n}, length={length}")
    half = length // 2
    values = torch.rand(n, length, generator=generator)
    first = torch.randint(0, half, (n,), generator=generator)
    second = torch.randint(half, length, (n,), generator=generator)
    marks = torch.zeros(n, length)
    rows = torch.arange(n)
    marks[rows, first] = 1.0
    marks[rows, second] = 1.0
    y = values[rows, first] + values[rows, second]
    return torch.stack([values, marks], dim=-1), y


def copy_memory(
    n: int, delay: int, generator: torch.Generator, symbols: int = 8, length: int = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    """x and y, both (n, length + delay + length) long, for the copy-memory task.

    Following Arjovsky, Shah & Bengio (2016): `length` random symbols from
    1..symbols, then delay - 1 blanks (0), a delimiter (symbols + 1) that says
    "recall now", then `length` blanks. The target is blanks, then the
    symbols in the last `length` steps. The vocabulary has symbols + 2 tokens.
    A memoryless model that predicts blanks until the delimiter and then a
    uniform guess scores cross-entropy length*log(symbols)/(delay + 2*length)
    (copy_memory_baseline).

    >>> x, y = copy_memory(1, 3, torch.Generator().manual_seed(0), symbols=4, length=2)
    >>> x.shape, bool((y[0, -2:] == x[0, :2]).all()), x[0, 2:].tolist()
    (torch.Size([1, 7]), True, [0, 0, 5, 0, 0])
    """
    if n < 1 or delay < 1 or symbols < 1 or length < 1:
        raise DataError(
            "copy memory needs n, delay, symbols and length >= 1, "
            f"got n={n}, delay={delay}, symbols={symbols}, length={length}"
        )
    steps = length + delay + length
    seq = torch.randint(1, symbols + 1, (n, length), generator=generator)
    x = torch.zeros(n, steps, dtype=torch.long)
    y = torch.zeros(n, steps, dtype=torch.long)
    x[:, :length] = seq
    x[:, length + delay - 1] = symbols + 1
    y[:, -length:] = seq
    return x, y


def copy_memory_baseline(delay: int, symbols: int = 8, length: int = 10) -> float:
    """Cross-entropy (nats per step) of the memoryless strategy for copy_memory.

    >>> round(copy_memory_baseline(100), 4)
    0.1733
    """
    return length * math.log(symbols) / (delay + 2 * length)
