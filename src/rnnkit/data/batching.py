"""Mini-batches of variable-length sequences for many-to-one tasks.

Batches are padded (B, T_max, ...) with the true lengths beside them, in the
dataset's (shuffled) order: the layers accept `lengths=` or packed input with
enforce_sorted=False, so nothing is sorted here. The order of an epoch depends
only on (seed, epoch), so a resumed run can start at any batch index.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from .errors import DataError


def _as_tensor(x) -> torch.Tensor:
    """A sequence as a tensor: float arrays become float32, integer ones stay integer (token ids)."""
    t = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    if t.is_floating_point() and t.dtype != torch.float32:
        t = t.float()
    elif not t.is_floating_point() and t.dtype != torch.long:
        t = t.long() if t.dtype != torch.uint8 else t  # keep uint8 images compact
    return t


def _labels_tensor(labels) -> torch.Tensor:
    t = torch.as_tensor(labels if isinstance(labels, torch.Tensor) else np.asarray(labels))
    return t.float() if t.is_floating_point() else t.long()


class SequenceDataset:
    """Variable-length sequences (T_i, F) or token ids (T_i,), with one label each.

    >>> ds = SequenceDataset([torch.ones(3, 2), torch.ones(5, 2)], [0, 1])
    >>> len(ds), ds.lengths.tolist(), ds.labels.tolist()
    (2, [3, 5], [0, 1])
    """

    def __init__(self, sequences: Sequence, labels):
        self.sequences = [_as_tensor(s) for s in sequences]
        self.labels = _labels_tensor(labels)
        if not self.sequences:
            raise DataError("the data set is empty; check the data file or split")
        if len(self.labels) != len(self.sequences):
            raise DataError(
                f"{len(self.sequences)} sequences but {len(self.labels)} labels; they must match one to one"
            )
        tail = self.sequences[0].shape[1:]
        for i, s in enumerate(self.sequences):
            if s.dim() == 0 or len(s) == 0:
                raise DataError(
                    f"example {i} is empty (length 0); remove it, a recurrent layer needs at least one step"
                )
            if s.shape[1:] != tail:
                raise DataError(
                    f"example {i} has features {tuple(s.shape[1:])}, example 0 has {tuple(tail)}; all must match"
                )
        self.lengths = torch.tensor([len(s) for s in self.sequences], dtype=torch.long)

    @classmethod
    def from_tensor(cls, x: torch.Tensor, labels) -> "SequenceDataset":
        """Equal-length examples stacked in one (N, T, ...) tensor."""
        return cls(list(x.unbind(0)), labels)

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, i: int):
        return self.sequences[i], self.labels[i]

    def subset(self, indices: Sequence[int]) -> "SequenceDataset":
        """The examples at `indices` (for example one side of stratified_split)."""
        idx = list(indices)
        return SequenceDataset([self.sequences[i] for i in idx], self.labels[idx])


def _check_batch_size(n: int, batch_size: int, what: str) -> None:
    if batch_size < 1:
        raise DataError(f"batch size must be at least 1, got {batch_size}; pass --batch-size 1 or more")
    if batch_size > n:
        raise DataError(
            f"batch size {batch_size} is larger than the {n} examples in the {what}; pass --batch-size {n} or less"
        )


def num_batches(dataset: SequenceDataset | int, batch_size: int, drop_last: bool = False) -> int:
    """Batches per epoch; the last, smaller batch counts unless drop_last.

    >>> num_batches(10, 4), num_batches(10, 4, drop_last=True)
    (3, 2)
    """
    n = dataset if isinstance(dataset, int) else len(dataset)
    return n // batch_size if drop_last else -(-n // batch_size)


def _seed_for(seed: int, epoch: int) -> int:
    """One generator seed per (seed, epoch), with no overlap between nearby pairs."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0])


def epoch_order(n: int, shuffle: bool, seed: int = 0, epoch: int = 0) -> torch.Tensor:
    """The order of the n examples in one epoch; depends only on (seed, epoch).

    >>> epoch_order(5, shuffle=False).tolist()
    [0, 1, 2, 3, 4]
    >>> bool((epoch_order(50, True, 1, 2) == epoch_order(50, True, 1, 2)).all())
    True
    """
    if not shuffle:
        return torch.arange(n)
    g = torch.Generator().manual_seed(_seed_for(seed, epoch))
    return torch.randperm(n, generator=g)


def collate(dataset: SequenceDataset, indices: torch.Tensor):
    """(padded (B, T_max, ...), lengths (B,), labels (B,)) for the examples at indices; pad is 0."""
    seqs = [dataset.sequences[i] for i in indices.tolist()]
    return pad_sequence(seqs, batch_first=True), dataset.lengths[indices], dataset.labels[indices]


def batches(
    dataset: SequenceDataset,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
    start: int = 0,
    drop_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
    what: str = "training split",
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (padded, lengths, labels) for one epoch, from batch index `start` on.

    Resuming at `start` yields exactly the tail of the uninterrupted epoch.
    With world_size > 1, each global batch of batch_size examples is cut into
    world_size contiguous slices and this rank gets slice `rank`, so data-
    parallel training sees the same global batches as one process.

    >>> ds = SequenceDataset([torch.arange(1, n + 1) for n in (2, 3, 1)], [0, 1, 0])
    >>> x, lengths, y = next(batches(ds, 2, shuffle=False))
    >>> x.tolist(), lengths.tolist(), y.tolist()
    ([[1, 2, 0], [1, 2, 3]], [2, 3], [0, 1])
    """
    n = len(dataset)
    _check_batch_size(n, batch_size, what)
    total = num_batches(n, batch_size, drop_last)
    if not 0 <= start <= total:
        raise DataError(
            f"cannot start at batch {start}: an epoch has {total} batches; the checkpoint may be from another data set"
        )
    if not 0 <= rank < world_size:
        raise DataError(f"rank {rank} is outside a world of {world_size} processes")
    order = epoch_order(n, shuffle, seed, epoch)
    for b in range(start, total):
        idx = order[b * batch_size : (b + 1) * batch_size]
        idx = torch.tensor_split(idx, world_size)[rank]
        if len(idx):
            yield collate(dataset, idx)


def stratified_split(labels: Sequence, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(kept, held_out) sorted index lists; held_out has round(fraction * N) examples,
    each class represented in proportion (largest remainders break the rounding).

    >>> kept, held = stratified_split([0] * 8 + [1] * 2, 0.5, seed=0)
    >>> len(held), sum(1 for i in held if i >= 8)
    (5, 1)
    """
    if not 0 < fraction < 1:
        raise DataError(f"the held-out fraction must be between 0 and 1, got {fraction}")
    keys = [k.item() if isinstance(k, torch.Tensor) else k for k in labels]
    n = len(keys)
    classes = sorted(set(keys), key=lambda c: (str(type(c)), c))
    members = {c: [i for i, k in enumerate(keys) if k == c] for c in classes}
    want = round(fraction * n)
    if want == 0 or want == n:
        raise DataError(
            f"holding out {fraction:.0%} of {n} examples leaves one side empty; use more data or another fraction"
        )
    quota = {c: fraction * len(members[c]) for c in classes}
    take = {c: int(quota[c]) for c in classes}
    # Hand out what rounding down left over, largest fractional part first.
    for c in sorted(classes, key=lambda c: -(quota[c] - take[c]))[: want - sum(take.values())]:
        take[c] += 1
    rng = np.random.default_rng(seed)
    held: list[int] = []
    for c in classes:
        held.extend(rng.permutation(members[c])[: take[c]].tolist())
    held_set = set(held)
    return [i for i in range(n) if i not in held_set], sorted(held)


def encode_labels(labels: Sequence[str]) -> tuple[list[int], list[str]]:
    """Class ids for string labels, and the class names in id order (numbers sort numerically).

    >>> encode_labels(["10", "2", "2", "1"])
    ([2, 1, 1, 0], ['1', '2', '10'])
    """

    def key(c: str):
        try:
            return (0, float(c), c)
        except ValueError:
            return (1, 0.0, c)

    classes = sorted(set(labels), key=key)
    index = {c: i for i, c in enumerate(classes)}
    return [index[c] for c in labels], classes
