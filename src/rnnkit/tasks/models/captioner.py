"""The captioner: a small convolutional encoder whose output starts an rnnkit word decoder (one-to-many).

    image (B, 3, 64, 64) uint8 --ConvEncoder--> regions (B, 64, C), one per cell of an 8x8 grid
    mean of the regions --Linear, tanh--> the decoder's initial state h_0 (and c_0 for an LSTM)
    decoder: embedding of the previous word [+ attention context over the regions] -> rnnkit
             LSTM/GRU/RNN -> scores over the vocabulary

Without attention the image reaches the decoder only through its initial state (Vinyals et al.
2015, "Show and tell", which feeds the image once); the whole teacher-forced sequence then runs
in one call of the recurrent layer. With --attention additive or multiplicative, each step also
reads a context vector, the regions weighted by attention on the previous top-layer hidden state
(Xu et al. 2015, "Show, attend and tell"), so the decoder runs step by step.

Decoding (rnnkit.tasks.decoding) uses `step(tokens, state)` with the state
(recurrent state, memory), memory = (regions, prepared keys) or None; `reorder` makes both follow
the beams (the recurrent state has its batch on dim 1, the memory on dim 0).

>>> from rnnkit.train.config import ModelConfig
>>> model = Captioner(ModelConfig(cell="gru", hidden=16, embed=8, attention="additive"), vocab_size=10)
>>> images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
>>> model(images, torch.tensor([[2, 5, 6], [2, 7, 0]])).shape    # teacher forcing: (B, T, V)
torch.Size([2, 3, 10])
>>> logits, state = model.step(torch.tensor([2, 2]), model.start(images))
>>> logits.shape
torch.Size([2, 10])
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...train.config import ModelConfig
from ..decoding import reorder_state
from .attention import make_attention
from .recurrent import recurrent

CHANNELS = (32, 64, 128)  # three stride-2 stages: 64x64 -> 8x8 regions of 128 features


class ConvEncoder(nn.Module):
    """uint8 images (B, 3, H, W) -> regions (B, H/8 * W/8, CHANNELS[-1]): conv, batch norm, ReLU, stride 2, thrice."""

    def __init__(self, channels=CHANNELS):
        super().__init__()
        layers, width = [], 3
        for c in channels:
            layers += [nn.Conv2d(width, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
            width = c
        self.net = nn.Sequential(*layers)
        self.size = width

    def forward(self, images: Tensor) -> Tensor:
        x = images.float() / 127.5 - 1.0  # (B, 3, H, W) in [-1, 1]; white background is 1
        features = self.net(x)  # (B, C, H/8, W/8)
        return features.flatten(2).transpose(1, 2)  # (B, S, C), S = H/8 * W/8 regions


class Captioner(nn.Module):
    """Image -> caption scores; see the module docstring for the shape of the computation."""

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        if cfg.bidirectional:  # a decoder cannot read the words it has not written yet
            raise ValueError("--bidirectional does not apply to a caption decoder (it writes left to right); drop it")
        self.cell, self.layers, self.hidden = cfg.cell, cfg.layers, cfg.hidden
        self.encoder = ConvEncoder()
        C = self.encoder.size
        self.init_h = nn.Linear(C, cfg.layers * cfg.hidden)
        self.init_c = nn.Linear(C, cfg.layers * cfg.hidden) if cfg.cell == "lstm" else None
        self.attention = make_attention(cfg.attention, cfg.hidden, C)
        self.embed = nn.Embedding(vocab_size, cfg.embed, padding_idx=0)
        self.rnn = recurrent(cfg, cfg.embed + (C if self.attention is not None else 0), bidirectional=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.hidden, vocab_size)

    def initial_state(self, regions: Tensor):
        """The decoder's (h_0[, c_0]), each (L, B, H), from the mean of the image regions (B, S, C)."""
        summary = regions.mean(1)  # (B, C)
        shape = (summary.shape[0], self.layers, self.hidden)
        h = torch.tanh(self.init_h(summary)).view(shape).transpose(0, 1).contiguous()  # (L, B, H)
        if self.init_c is None:
            return h
        c = torch.tanh(self.init_c(summary)).view(shape).transpose(0, 1).contiguous()
        return h, c

    def start(self, images: Tensor):
        """The decoding state for images (B, 3, H, W): (recurrent state, memory)."""
        regions = self.encoder(images)  # (B, S, C)
        memory = None if self.attention is None else (regions, self.attention.prepare(regions))
        return self.initial_state(regions), memory

    def forward(self, images: Tensor, inputs: Tensor) -> Tensor:
        """Teacher forcing: images (B, 3, H, W) and input words (B, T) -> scores (B, T, V)."""
        state = self.start(images)
        if self.attention is None:  # the image is all in the initial state: one call for all steps
            out, _ = self.rnn(self.drop(self.embed(inputs)), state[0])  # (B, T, H)
            return self.head(self.drop(out))
        logits = []
        for t in range(inputs.shape[1]):
            step_logits, state = self.step(inputs[:, t], state)
            logits.append(step_logits)
        return torch.stack(logits, 1)  # (B, T, V)

    def step(self, tokens: Tensor, state):
        """One word per sequence (B,) -> (scores (B, V), state): rnnkit.tasks.decoding's step interface."""
        rnn_state, memory = state
        x = self.drop(self.embed(tokens))  # (B, E)
        if memory is not None:
            regions, prepared = memory
            top = (rnn_state[0] if isinstance(rnn_state, tuple) else rnn_state)[-1]  # (B, H): the query
            mask = torch.ones(regions.shape[:2], dtype=torch.bool, device=regions.device)  # every region is real
            context, _ = self.attention(top, regions, mask, prepared=prepared)  # (B, C)
            x = torch.cat([x, context], -1)  # (B, E + C)
        out, rnn_state = self.rnn(x[:, None], rnn_state)  # (B, 1, H)
        return self.head(self.drop(out[:, 0])), (rnn_state, memory)

    @staticmethod
    def reorder(state, index: Tensor):
        """Select the hypotheses `index` of a decoding state (beam search's reorder=)."""
        rnn_state, memory = state
        return reorder_state(rnn_state, index, dim=1), reorder_state(memory, index, dim=0)
