"""Token streams for stateful language-model training: split, then batchify."""

from __future__ import annotations

from typing import Sequence

import torch

from .errors import DataError


def split_stream(
    ids: Sequence[int] | torch.Tensor, fractions: tuple[float, float, float] = (0.9, 0.05, 0.05)
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Contiguous train / valid / test pieces of one id stream, as torch.long tensors.

    Contiguous (not shuffled) so that no sentence is split between the sets
    except at the two boundaries.

    >>> tr, va, te = split_stream(range(100))
    >>> (len(tr), len(va), len(te)), int(va[0]), int(te[-1])
    ((90, 5, 5), 90, 99)
    """
    stream = torch.as_tensor(ids if isinstance(ids, torch.Tensor) else list(ids), dtype=torch.long).reshape(-1)
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise DataError(f"split fractions must be three non-negative numbers summing to 1, got {tuple(fractions)}")
    n = len(stream)
    n_train, n_valid = int(n * fractions[0]), int(n * fractions[1])
    sizes = (n_train, n_valid, n - n_train - n_valid)
    for name, size, frac in zip(("train", "valid", "test"), sizes, fractions):
        if frac > 0 and size == 0:
            raise DataError(
                f"the {name} split of a {n}-token stream is empty; use more text or a larger {name} fraction"
            )
    return tuple(t.clone() for t in torch.split(stream, sizes))  # type: ignore[return-value]


def batchify(stream: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Cut a stream into batch_size parallel columns: (L, B), column b is one contiguous piece.

    The remainder that does not fill a row is dropped. A language model needs
    at least two steps (an input and its next-token target), so L >= 2.

    >>> batchify(torch.arange(10), 3)
    tensor([[0, 3, 6],
            [1, 4, 7],
            [2, 5, 8]])
    """
    if batch_size < 1:
        raise DataError(f"batch size must be at least 1, got {batch_size}")
    stream = stream.reshape(-1)
    steps = len(stream) // batch_size
    if steps < 2:
        raise DataError(
            f"{len(stream)} tokens give fewer than 2 steps per column at batch size {batch_size}; "
            f"pass --batch-size {max(1, len(stream) // 2)} or less, or use more text"
        )
    return stream[: steps * batch_size].view(batch_size, steps).t().contiguous()
