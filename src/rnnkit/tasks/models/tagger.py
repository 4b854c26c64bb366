"""The aligned tagger: word embeddings [+ character features] -> bidirectional rnnkit layers -> a score per tag
at every word, read out by a per-word softmax or a linear-chain CRF (rnnkit.tasks.models.crf).

>>> from rnnkit.train.config import ModelConfig
>>> model = Tagger(ModelConfig(hidden=8, embed=6, char_embed=4, bidirectional=True), 20, 10, 5)
>>> words, chars = torch.randint(1, 20, (2, 3)), torch.randint(1, 10, (2, 3, 2))
>>> model(words, chars, torch.tensor([3, 2])).shape
torch.Size([2, 3, 5])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .crf import LinearChainCRF
from .recurrent import recurrent


class CharFeatures(nn.Module):
    """A word from its characters: the embeddings of its first and last character and the mean of all.

    In Chinese the last character often marks the part of speech (们 plural, 性/化 nouns from
    adjectives and verbs, 年/日 times), so this is what an unseen word is tagged by.
    """

    def __init__(self, num_chars: int, width: int):
        super().__init__()
        self.embed = nn.Embedding(num_chars, width, padding_idx=0)
        self.width = 3 * width

    def forward(self, chars: Tensor) -> Tensor:
        e = self.embed(chars)  # (B, T, C, E), zero at padding
        n = (chars > 0).sum(2).clamp_min(1)  # (B, T) characters per word; padded words count 1
        mean = e.sum(2) / n.unsqueeze(2).to(e.dtype)  # (B, T, E)
        last = e.gather(2, (n - 1)[:, :, None, None].expand(-1, -1, 1, e.shape[3])).squeeze(2)  # (B, T, E)
        return torch.cat([e[:, :, 0], last, mean], dim=2)  # (B, T, 3E)


class Tagger(nn.Module):
    """Word embedding [+ character features] -> rnnkit layers -> dropout -> a score per tag at every word.

    forward(words (B, T), chars (B, T, C), lengths (B,)) -> emissions (B, T, K); decode turns them
    into tags by argmax, or by Viterbi when the model has a CRF output layer.
    """

    def __init__(self, cfg, num_words: int, num_chars: int, num_tags: int):
        super().__init__()
        self.embed = nn.Embedding(num_words, cfg.embed, padding_idx=0)
        self.chars = CharFeatures(num_chars, cfg.char_embed) if cfg.char_embed > 0 else None
        width = cfg.embed + (self.chars.width if self.chars is not None else 0)
        self.rnn = recurrent(cfg, width, cfg.bidirectional)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.hidden * (2 if cfg.bidirectional else 1), num_tags)
        self.crf = LinearChainCRF(num_tags) if cfg.crf else None

    def forward(self, words: Tensor, chars: Tensor, lengths: Tensor) -> Tensor:
        x = self.embed(words)  # (B, T, E)
        if self.chars is not None:
            x = torch.cat([x, self.chars(chars)], dim=2)  # (B, T, E + 3C)
        out, _ = self.rnn(self.drop(x), lengths=lengths.cpu())  # (B, T, D*H), zero beyond each length
        return self.head(self.drop(out))  # (B, T, K)

    def loss_sum(self, emissions: Tensor, tags: Tensor, mask: Tensor) -> Tensor:
        """Summed negative log-likelihood: of each word's tag (softmax) or of each whole path (CRF)."""
        if self.crf is not None:
            return self.crf.nll(emissions.float(), tags, mask).sum()
        return F.cross_entropy(emissions[mask].float(), tags[mask], reduction="sum")

    def decode(self, emissions: Tensor, mask: Tensor) -> Tensor:
        """Tag ids (B, T); beyond each length they mean nothing."""
        if self.crf is not None:
            return self.crf.decode(emissions.float(), mask)
        return emissions.argmax(2)
