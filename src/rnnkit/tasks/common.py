"""What several tasks share: the evaluation batch size, the special tokens, the length mask,
the length-pooled training batches.

Special tokens are spelled one way. Vocabularies of g2p and translate runs written before this
spelling hold "<s>" and "</s>" in the same places (ids 2 and 3), so `special_id` reads those too.

>>> length_mask(torch.tensor([2, 0, 3]), 3).tolist()
[[True, True, False], [False, False, False], [True, True, True]]
"""

from __future__ import annotations

from itertools import count
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ..data import UNK, Vocab, epoch_order

EVAL_BATCH = 256  # evaluation needs no gradient, so larger batches only save time
POOL = 50  # training batches whose examples are sorted by length together (less padding)

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIALS = (PAD, UNK, BOS, EOS)  # ids 0, 1, 2, 3 of every vocabulary that decodes sequences
PAD_ID = 0
OLD_SPELLING = {BOS: "<s>", EOS: "</s>"}  # seq2seq vocabularies of older runs


def special_id(vocab: Vocab, token: str) -> int:
    """The id of a special token, in a vocabulary of this or the older spelling."""
    if token in vocab.stoi:
        return vocab.stoi[token]
    return vocab.stoi[OLD_SPELLING.get(token, token)]


def length_mask(lengths: Tensor, steps: int) -> Tensor:
    """True on each sequence's first lengths[b] steps. (B, T)"""
    return torch.arange(steps, device=lengths.device)[None, :] < lengths[:, None]


# ------------------------------------------------------------ length-pooled batching

Permutation = Callable[[int], Tensor]  # n -> a permutation of range(n); called twice per epoch


def pooled_batches(lengths: Tensor, batch_size: int, permutation: Permutation, pool: int = POOL) -> list[Tensor]:
    """One epoch's training batches of example indices: shuffle the examples, sort each pool of
    `pool` batches by length and cut it into batches, then shuffle the batches.

    Examples of similar length share a batch, so little of a batch is padding. `permutation` is
    the task's random stream (`torch_stream` or `numpy_stream` below), called once for the
    examples and once for the batches; given the same stream the order depends on (seed, epoch)
    alone, so a resumed run sees the same batches. The two streams exist because the tasks
    predate this function with different generators: each keeps its own, so their batch orders,
    their tests and the recorded results are unchanged.

    >>> b = pooled_batches(torch.tensor([3, 1, 2, 1]), 2, torch_stream(seed=0, epoch=0))
    >>> sorted(i for x in b for i in x.tolist())
    [0, 1, 2, 3]
    """
    order = permutation(len(lengths))
    size, out = batch_size * pool, []
    for start in range(0, len(order), size):
        chunk = order[start : start + size]
        out += chunk[lengths[chunk].argsort(stable=True)].split(batch_size)
    return [out[i] for i in permutation(len(out)).tolist()]


def torch_stream(seed: int, epoch: int) -> Permutation:
    """The sequence-to-sequence tasks' stream: the k-th call is `epoch_order` with seed + k."""
    calls = count()
    return lambda n: epoch_order(n, True, seed + next(calls), epoch)


def numpy_stream(seed: int, epoch: int) -> Permutation:
    """The tagging task's stream: successive permutations of one numpy generator of (seed, epoch)."""
    g = np.random.default_rng(np.random.SeedSequence([seed, epoch]))
    return lambda n: torch.from_numpy(g.permutation(n))
