"""An encoder-decoder with attention over rnnkit's recurrent layers (the sequence-to-sequence shape).

Encoder: embedding -> rnnkit RNN/LSTM/GRU (optionally bidirectional), fed packed through
lengths=, so padding never enters a state. Its outputs are the memory M (B, S, D*H).

Decoder: a stack of rnnkit cells of the same family, one step at a time, with input feeding
(Luong, Pham & Manning 2015, section 3.3). At step t, with y_{t-1} the previous token:

    s_t        = cells([embed(y_{t-1}); h~_{t-1}], s_{t-1})         top-layer output h_t
    c_t, a_t   = attention(query h_t, keys M, mask)                 a_t: weights over the source
    h~_t       = tanh(W_c [h_t; c_t])                               the attentional vector
    p(y_t)     = softmax(W_o h~_t)

Feeding h~_{t-1} back in tells the decoder what it attended to before (coverage, roughly).
With --attention none there is no c_t: h~_t = h_t and nothing is fed back, the plain
encoder-decoder of Sutskever et al. 2014 / Cho et al. 2014. Either way the decoder starts from
the encoder's final states through a bridge, s_0 = tanh(W_b [h_fwd; h_bwd]) per layer (and the
same, with its own W, for an LSTM's cell state).

Teacher forcing: in training the decoder is fed the gold previous token with probability p per
sequence and step, else a token drawn from its own prediction (scheduled sampling, Bengio et
al. 2015). p = 1 is plain teacher forcing, and then the output layer runs once over all steps.

Decoding uses rnnkit.tasks.decoding: `start(src, lengths)` returns the state, which holds the
memory, every tensor with the batch on dim 0, so beam search reorders it with `reorder`.

>>> from rnnkit.train.config import ModelConfig
>>> torch.manual_seed(0) and None
>>> model = Seq2Seq(ModelConfig(cell="gru", hidden=8, embed=4, attention="additive", bidirectional=True), 10, 12)
>>> src, lengths = torch.tensor([[4, 5, 6], [7, 8, 0]]), torch.tensor([3, 2])
>>> logits, weights = model(src, lengths, torch.tensor([[2, 5], [2, 6]]))
>>> logits.shape, weights.shape                     # (B, T, V), (B, T, S)
(torch.Size([2, 2, 12]), torch.Size([2, 2, 3]))
>>> weights[1, :, 2].tolist()                       # the padding gets no attention
[0.0, 0.0]
>>> model.decode(src, lengths, bos=2, eos=3, max_len=4).shape[0]
2
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ...train.config import ModelConfig
from .. import decoding as decode
from ..common import PAD_ID, length_mask
from .attention import make_attention
from .recurrent import CELLS, recurrent

class DecoderState(NamedTuple):
    """Everything a decoding step needs, batch on dim 0 of every tensor (for beam search's reorder)."""
    layers: tuple            # per layer: h (B, H), or (h, c) for an LSTM
    feed: Tensor | None      # h~_{t-1} (B, H), None without attention
    memory: Tensor           # encoder outputs (B, S, Hk)
    prepared: Tensor         # the attention's key projection of the memory (B, S, A)
    mask: Tensor             # (B, S) bool, True on real source positions


def reorder(state, index: Tensor):
    """decode.reorder_state with the batch on dim 0 (DecoderState's convention)."""
    return decode.reorder_state(state, index, dim=0)


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        self.directions = 2 if cfg.bidirectional else 1
        self.embed = nn.Embedding(vocab_size, cfg.embed, padding_idx=PAD_ID)
        self.rnn = recurrent(cfg, cfg.embed, cfg.bidirectional)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, src: Tensor, lengths: Tensor):
        """src (B, S) -> memory (B, S, D*H) (zero past each length), final states per layer.

        The final states come as (layers, B, D*H): both directions of a layer side by side;
        for an LSTM a pair (h, c) of those.
        """
        memory, final = self.rnn(self.drop(self.embed(src)), lengths=lengths.cpu())
        return self.drop(memory), tuple(self.by_layer(s) for s in final) if isinstance(final, tuple) \
            else self.by_layer(final)

    def by_layer(self, h_n: Tensor) -> Tensor:
        """(layers * D, B, H) -> (layers, B, D * H)."""
        L, B, H = h_n.shape[0] // self.directions, h_n.shape[1], h_n.shape[2]
        return h_n.view(L, self.directions, B, H).permute(0, 2, 1, 3).reshape(L, B, self.directions * H)


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int, key_size: int):
        super().__init__()
        _, cls, kw = CELLS[cfg.cell]
        self.lstm, H = cfg.cell == "lstm", cfg.hidden
        self.attention = make_attention(cfg.attention, H, key_size)
        feed = H if self.attention is not None else 0
        self.embed = nn.Embedding(vocab_size, cfg.embed, padding_idx=PAD_ID)
        self.cells = nn.ModuleList(cls(cfg.embed + feed if i == 0 else H, H, engine=cfg.engine, **kw)
                                   for i in range(cfg.layers))
        self.bridge_h = nn.Linear(key_size, H)
        self.bridge_c = nn.Linear(key_size, H) if self.lstm else None
        self.combine = nn.Linear(H + key_size, H) if self.attention is not None else None
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(H, vocab_size)

    def start(self, memory: Tensor, mask: Tensor, final) -> DecoderState:
        """The state before the first step, from the encoder's memory and final states."""
        if self.lstm:
            h, c = torch.tanh(self.bridge_h(final[0])), torch.tanh(self.bridge_c(final[1]))   # (L, B, H)
            layers = tuple((h[i], c[i]) for i in range(len(self.cells)))
        else:
            h = torch.tanh(self.bridge_h(final))                                                # (L, B, H)
            layers = tuple(h[i] for i in range(len(self.cells)))
        feed = memory.new_zeros(memory.shape[0], self.cells[0].hidden_size) if self.attention is not None else None
        prepared = self.attention.prepare(memory) if self.attention is not None else memory
        return DecoderState(layers, feed, memory, prepared, mask)

    def step(self, tokens: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState, Tensor | None]:
        """One step: tokens (B,) -> (h~_t (B, H), new state, attention weights (B, S) or None)."""
        x = self.drop(self.embed(tokens))                                    # (B, E)
        if state.feed is not None:
            x = torch.cat([x, state.feed], -1)                               # (B, E + H)
        layers = []
        for i, (cell, s) in enumerate(zip(self.cells, state.layers)):
            s = cell(x if i == 0 else self.drop(x), s)
            layers.append(s)
            x = s[0] if self.lstm else s                                     # (B, H)
        weights = None
        if self.attention is not None:
            context, weights = self.attention(x, state.memory, state.mask, prepared=state.prepared)   # (B, Hk)
            x = torch.tanh(self.combine(torch.cat([x, context], -1)))        # h~_t (B, H)
        return x, state._replace(layers=tuple(layers), feed=x if state.feed is not None else None), weights

    def logits(self, attentional: Tensor) -> Tensor:
        return self.out(self.drop(attentional))                               # (..., V)


class Seq2Seq(nn.Module):
    """Encoder + decoder. forward() is teacher-forced (or scheduled); decode() greedy or beam."""

    def __init__(self, cfg: ModelConfig, src_vocab: int, tgt_vocab: int):
        super().__init__()
        self.encoder = Encoder(cfg, src_vocab)
        self.decoder = Decoder(cfg, tgt_vocab, cfg.hidden * self.encoder.directions)

    def start(self, src: Tensor, lengths: Tensor) -> DecoderState:
        memory, final = self.encoder(src, lengths)                           # (B, S, Hk)
        return self.decoder.start(memory, length_mask(lengths.to(src.device), src.shape[1]), final)

    def step(self, tokens: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        """rnnkit.tasks.decoding's interface: tokens (B,) -> (logits (B, V), state)."""
        attentional, state, _ = self.decoder.step(tokens, state)
        return self.decoder.logits(attentional), state

    def forward(self, src: Tensor, lengths: Tensor, inputs: Tensor, gold_prob: Tensor | None = None):
        """Scores for every target step: (logits (B, T, V), attention weights (B, T, S) or None).

        inputs (B, T) are the decoder's gold inputs (BOS, y_1, ..., y_{T-1}). Where gold_prob (B,)
        is below 1, each step after the first instead feeds, with probability 1 - gold_prob, a
        token sampled from the model's own previous prediction (not backpropagated through).
        """
        state = self.start(src, lengths)
        scheduled = gold_prob is not None and bool((gold_prob < 1).any())
        outputs, weights, logits = [], [], []
        tokens = inputs[:, 0]
        for t in range(inputs.shape[1]):
            if scheduled and t > 0:
                own = torch.multinomial(logits[-1].detach().float().softmax(-1), 1).squeeze(1)     # (B,)
                gold = torch.rand(gold_prob.shape, device=gold_prob.device) < gold_prob
                tokens = torch.where(gold, inputs[:, t], own)
            elif t > 0:
                tokens = inputs[:, t]
            attentional, state, w = self.decoder.step(tokens, state)
            outputs.append(attentional)
            weights.append(w)
            if scheduled:                               # the next step samples from these
                logits.append(self.decoder.logits(attentional))
        out = torch.stack(logits, 1) if scheduled else self.decoder.logits(torch.stack(outputs, 1))   # (B, T, V)
        return out, torch.stack(weights, 1) if weights[0] is not None else None

    @torch.no_grad()
    def decode(self, src: Tensor, lengths: Tensor, bos: int, eos: int, max_len: int, beam: int = 1,
               length_penalty: float = 1.0) -> Tensor:
        """Output tokens (B, L), eos-padded: greedy for beam 1, else batched beam search ranked by
        total log-prob / length ** length_penalty (1: the mean log-prob per token)."""
        state = self.start(src, lengths)
        start = torch.full((src.shape[0],), bos, dtype=torch.long, device=src.device)
        if beam == 1:
            return decode.greedy(self.step, state, start, max_len, eos=eos)
        return decode.beam_search(self.step, state, start, beam, max_len, eos=eos,
                                  length_penalty=length_penalty, reorder=reorder)[0]
