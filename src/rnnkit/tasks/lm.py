"""Language modelling: character- or word-level, trained statefully with truncated BPTT, and generation.

The training stream is cut into batch_size parallel columns (rnnkit.data.batchify); each
optimizer step is one TBPTT(k1, k2) window over all columns, and the hidden state is carried,
detached, from window to window (rnnkit.train.tbptt). Metrics: cross-entropy per token in
nats, perplexity exp(loss), and for characters bits per character loss / ln 2.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..data import (DataError, Vocab, batchify, detokenize, file_text, fortunes_text, split_stream, stdlib_text,
                    tokenize)
from ..train import tbptt
from ..train.config import RunConfig
from ..train.interface import TaskBase
from . import decoding as decode
from .models.language import LanguageModel

DEFAULT_BPTT = 64
EVAL_COLUMNS = 16  # parallel columns when evaluating a held-out stream


def corpus_text(name: str, max_chars: int) -> str:
    """stdlib, fortunes, or a path to a text file."""
    if name == "stdlib":
        return stdlib_text(max_chars or None)
    text = fortunes_text() if name == "fortunes" else file_text(name)
    return text[:max_chars] if max_chars else text


def truncation(config: RunConfig) -> tuple[int, int]:
    """(k1, k2) from --bptt and --bptt-back."""
    k1 = config.train.bptt or DEFAULT_BPTT
    k2 = config.train.bptt_back or k1
    if k2 < k1:
        raise DataError(f"--bptt-back {k2} must be at least --bptt {k1}: each update backpropagates k2 >= k1 steps")
    return k1, k2


def perplexity(loss: float) -> float:
    """exp(loss), and inf where that is too large for a float (never a capped, made-up number).

    >>> perplexity(0.0), perplexity(1000.0)
    (1.0, inf)
    """
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


class LanguageModelTask(TaskBase):
    metric, higher_is_better, has_valid = "loss", False, True

    def __init__(self, config: RunConfig, text: str | None = None, vocab: Vocab | None = None):
        self.config, self.level = config, config.task.level
        tokens = tokenize(text if text is not None else corpus_text(config.task.corpus, config.task.max_chars), self.level)
        if len(tokens) < 100:
            raise DataError(f"the corpus has {len(tokens)} {self.level} tokens; a language model needs at least 100")
        n_train = int(len(tokens) * 0.9)
        # words: those seen twice in training, the rest <unk>
        if vocab is None and self.level == "char":  # closed: every character of the corpus, no <unk>
            vocab = Vocab.build(tokens, specials=())
        self.vocab = vocab or Vocab.build(tokens[:n_train], min_count=2)
        self.streams = dict(zip(("train", "valid", "test"), split_stream(self.vocab.encode(tokens))))
        self.k1, self.k2 = truncation(config)
        self.train_columns = batchify(self.streams["train"], config.train.batch_size).t().contiguous()  # (B, L)
        self.windows = tbptt.windows(self.train_columns.shape[1] - 1, self.k1, self.k2)

    def build_model(self) -> LanguageModel:
        return LanguageModel(self.config.model, len(self.vocab))

    def num_batches(self) -> int:
        return len(self.windows)

    def batches(self, epoch: int, start: int):
        """Windows in stream order (stateful training has no shuffling): (inputs, targets, window)."""
        for w in self.windows[start:]:
            local = tbptt.Window(0, w.loss_start - w.start, w.end - w.start, w.carry_at - w.start)
            yield (self.train_columns[:, w.start:w.end], self.train_columns[:, w.loss_start + 1:w.end + 1], local)

    def export_inputs(self, batch: tuple) -> tuple:
        """model(tokens) -> (logits, state): the inputs `rnnkit export` traces the model with."""
        x, _, _ = batch
        return (x,)

    def loss(self, model, batch, carry):
        x, y, window = batch
        logits, carry = tbptt.run_window(model, x, window, carry)  # (B, k1, V)
        return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum"), y.numel(), carry

    @torch.no_grad()
    def evaluate(self, model, split: str) -> dict[str, float]:
        stream = self.streams[split]
        device = next(model.parameters()).device
        columns = batchify(stream, min(EVAL_COLUMNS, max(1, len(stream) // 2))).t().to(device)  # (B, L)
        total, count, state = 0.0, 0, None
        for w in tbptt.windows(columns.shape[1] - 1, self.k1, self.k1):
            logits, state = model(columns[:, w.start:w.end], state)
            y = columns[:, w.start + 1:w.end + 1]
            total += float(F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum"))
            count += y.numel()
        loss = total / count
        metrics = {"loss": loss, "perplexity": perplexity(loss)}
        if self.level == "char":
            metrics["bpc"] = loss / math.log(2)
        return metrics

    def state_dict(self) -> dict:
        return {"vocab": self.vocab.to_dict(), "level": self.level}


def encode_prompt(vocab: Vocab, level: str, prompt: str) -> torch.Tensor:
    """Prompt text -> ids (1, P); a token outside the vocabulary is an error, not a silent <unk>."""
    tokens = tokenize(prompt, level)
    if not tokens:
        raise DataError("the prompt is empty; pass --prompt with at least one character")
    return torch.tensor([vocab.encode(tokens, strict=True)])


def generate(model: LanguageModel, vocab: Vocab, level: str, prompt: str, length: int, method: str = "sample",
             temperature: float = 1.0, top_k: int | None = None, beam: int = 4, seed: int = 0) -> str:
    """Continue `prompt` by `length` tokens: sample (temperature, top-k), greedy, or beam search."""
    model.eval()
    ids = encode_prompt(vocab, level, prompt).to(next(model.parameters()).device)  # (1, P)
    if method == "sample":
        g = torch.Generator(device=ids.device).manual_seed(seed)
        out = decode.sample(model.step, None, ids, length, temperature=temperature, top_k=top_k, generator=g)
    else:
        with torch.no_grad():  # warm the state on all but the last prompt token, which starts decoding
            _, state = model(ids[:, :-1], None) if ids.shape[1] > 1 else (None, None)
        if method == "greedy":
            out = decode.greedy(model.step, state, ids[:, -1], length)
        elif method == "beam":
            out, _ = decode.beam_search(model.step, state, ids[:, -1], beam, length)
        else:
            raise ValueError(f"unknown generation method {method!r}: expected sample, greedy or beam")
    return detokenize(vocab.decode(out[0].tolist()), level)
