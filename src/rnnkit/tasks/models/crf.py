"""A linear-chain conditional random field over per-step tag scores (Lafferty et al. 2001).

For emissions E (T, K) from the tagger and learned transitions A (K, K), start s (K,) and end
e (K,), a tag path y = y_1..y_T scores

    score(y) = s[y_1] + sum_{t=1..T} E[t, y_t] + sum_{t=2..T} A[y_{t-1}, y_t] + e[y_T]

and p(y | x) = exp(score(y)) / Z with Z = sum over all K^T paths of exp(score). The forward
algorithm computes log Z in O(T K^2):

    alpha_1(j) = s[j] + E[1, j]
    alpha_t(j) = logsumexp_i (alpha_{t-1}(i) + A[i, j]) + E[t, j]
    log Z      = logsumexp_j (alpha_T(j) + e[j])

Viterbi decoding is the same recursion with max for logsumexp, keeping the argmax i of each
step as a back-pointer. Batches are padded: mask (B, T) is True on each sequence's first
lengths[b] steps. A padded step leaves alpha (and Viterbi's delta) as it was and its
back-pointer is the identity, so every sequence ends at its own last step.

Example:

>>> crf = LinearChainCRF(3)
>>> emissions, mask = torch.randn(2, 4, 3), torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]).bool()
>>> crf.decode(emissions, mask).shape, crf.nll(emissions, torch.zeros(2, 4).long(), mask).shape
(torch.Size([2, 4]), torch.Size([2]))
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LinearChainCRF(nn.Module):
    """Transition, start and end scores for K tags; log Z, the gold path's score, and Viterbi."""

    def __init__(self, num_tags: int):
        super().__init__()
        # Small random starts break the symmetry between tags, as in torchcrf and AllenNLP.
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags).uniform_(-0.1, 0.1))  # A[from, to]
        self.start = nn.Parameter(torch.empty(num_tags).uniform_(-0.1, 0.1))
        self.end = nn.Parameter(torch.empty(num_tags).uniform_(-0.1, 0.1))

    def log_partition(self, emissions: Tensor, mask: Tensor) -> Tensor:
        """log Z per sequence by the forward algorithm. emissions (B, T, K), mask (B, T) -> (B,)"""
        alpha = self.start + emissions[:, 0]  # (B, K)
        for t in range(1, emissions.shape[1]):
            # (B, K, 1) + (K, K) -> (B, K_from, K_to), summed out over K_from
            step = torch.logsumexp(alpha.unsqueeze(2) + self.transitions, dim=1) + emissions[:, t]  # (B, K)
            alpha = torch.where(mask[:, t, None], step, alpha)
        return torch.logsumexp(alpha + self.end, dim=1)

    def score(self, emissions: Tensor, tags: Tensor, mask: Tensor) -> Tensor:
        """score(y) of the given paths. emissions (B, T, K), tags (B, T), mask (B, T) -> (B,)"""
        m = mask.to(emissions.dtype)  # (B, T)
        emitted = emissions.gather(2, tags.unsqueeze(2)).squeeze(2)  # (B, T)
        moved = self.transitions[tags[:, :-1], tags[:, 1:]]  # (B, T-1): A[y_{t-1}, y_t]
        last = tags.gather(1, (mask.sum(1, keepdim=True) - 1).long()).squeeze(1)  # (B,) each sequence's y_T
        return self.start[tags[:, 0]] + (emitted * m).sum(1) + (moved * m[:, 1:]).sum(1) + self.end[last]

    def nll(self, emissions: Tensor, tags: Tensor, mask: Tensor) -> Tensor:
        """-log p(tags | x) = log Z - score(tags), per sequence. (B,)"""
        return self.log_partition(emissions, mask) - self.score(emissions, tags, mask)

    def forward(self, emissions: Tensor, tags: Tensor, mask: Tensor) -> Tensor:
        """The negative log-likelihood, nll(), per sequence. (B,)"""
        return self.nll(emissions, tags, mask)

    @torch.no_grad()
    def decode(self, emissions: Tensor, mask: Tensor) -> Tensor:
        """The highest-scoring path of each sequence (Viterbi); padded steps repeat the last tag. (B, T)"""
        B, T, K = emissions.shape
        delta = self.start + emissions[:, 0]  # (B, K) best score of a path ending in each tag
        identity = torch.arange(K, device=emissions.device).expand(B, K)
        pointers = []  # pointers[t-1][b, j]: the best previous tag when step t has tag j
        for t in range(1, T):
            best, previous = (delta.unsqueeze(2) + self.transitions).max(dim=1)  # (B, K_to) each
            keep = mask[:, t, None]
            delta = torch.where(keep, best + emissions[:, t], delta)
            pointers.append(torch.where(keep, previous, identity))
        tag = (delta + self.end).argmax(1)  # (B,)
        path = [tag]
        for previous in reversed(pointers):
            tag = previous.gather(1, tag.unsqueeze(1)).squeeze(1)
            path.append(tag)
        return torch.stack(path[::-1], dim=1)
