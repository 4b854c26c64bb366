"""Many-to-many, aligned: tokens -> next-token scores at every step; stateful (a language model)."""

from __future__ import annotations

from torch import Tensor, nn

from ...train.config import ModelConfig
from .recurrent import recurrent


class LanguageModel(nn.Module):
    """Embedding -> stacked recurrent layers -> dropout -> scores over the vocabulary, at every step.

    forward(x (B, T), state) -> (logits (B, T, V), state): the state is the layers' (h_n[, c_n]),
    carried from batch to batch in stateful training. With tie_weights the output matrix is the
    embedding matrix (Press & Wolf 2017), which needs embed == hidden.
    """

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        if cfg.bidirectional:  # reading ahead would see the very tokens it must predict
            raise ValueError("--bidirectional does not apply to a language model (it reads left to right); drop it")
        if cfg.tie_weights and cfg.embed != cfg.hidden:
            raise ValueError(f"--tie-weights needs --embed equal to --hidden, got {cfg.embed} and {cfg.hidden}")
        self.embed = nn.Embedding(vocab_size, cfg.embed)
        self.rnn = recurrent(cfg, cfg.embed, bidirectional=False)  # a language model reads left to right only
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.hidden, vocab_size)
        if cfg.tie_weights:
            self.head.weight = self.embed.weight

    def forward(self, x: Tensor, state=None):
        out, state = self.rnn(self.drop(self.embed(x)), state)  # (B, T, H)
        return self.head(self.drop(out)), state  # (B, T, V)

    def step(self, tokens: Tensor, state=None):
        """One token per sequence (B,) -> (logits (B, V), state): the decoder interface of rnnkit.tasks.decoding."""
        logits, state = self(tokens[:, None], state)
        return logits[:, 0], state
