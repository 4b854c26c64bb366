"""What several tasks share: the evaluation batch size, the special tokens, the length mask.

Special tokens are spelled one way. Vocabularies of g2p and translate runs written before this
spelling hold "<s>" and "</s>" in the same places (ids 2 and 3), so `special_id` reads those too.

>>> length_mask(torch.tensor([2, 0, 3]), 3).tolist()
[[True, True, False], [False, False, False], [True, True, True]]
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..data import UNK, Vocab

EVAL_BATCH = 256  # evaluation needs no gradient, so larger batches only save time

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
