"""What the sequence-to-sequence tasks (g2p, translate) share: batching, loss, decoding, evaluation.

A subclass gives the data as token lists and says how to read a source, write a target and
score decoded outputs; this class follows the trainer's task interface (rnnkit.train.trainer).

Batches are (src (B, S), src_lengths (B,), tgt (B, T), gold_prob (B,)): tgt is the target
followed by <eos> and padded with <pad> (id 0); the decoder reads <bos> then tgt[:, :-1]. gold_prob
is the teacher-forcing probability at that batch's optimizer step (see `teacher_forcing`),
carried in the batch so that a resumed run and every DDP process see the same schedule.

Evaluation decodes each distinct source once: greedily on "valid" (it runs after every epoch,
for early stopping) and with --beam on "test" and in `predict`, where beam search ranks by
mean log-prob per token (length_penalty 1).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from ..data import UNK, DataError, Vocab
from ..train.config import RunConfig
from ..train.interface import TaskBase
from .common import BOS, EOS, EVAL_BATCH, PAD_ID, SPECIALS, pooled_batches, special_id, torch_stream
from .models.seq2seq import Seq2Seq
PLOT_EXAMPLES = 3                    # attention heat maps saved after training


def teacher_forcing(spec: str) -> tuple[float, float]:
    """--teacher-forcing "P" or "START:END" -> (start, end) probabilities of feeding the gold token.

    >>> teacher_forcing("1"), teacher_forcing("1:0.5")
    ((1.0, 1.0), (1.0, 0.5))
    """
    try:
        values = [float(v) for v in str(spec).split(":")]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or not all(0 <= v <= 1 for v in values):
        raise ValueError(f"--teacher-forcing must be a probability P or START:END in [0, 1], got {spec!r}")
    return values[0], values[-1]


def gold_probability(start: float, end: float, step: int, total: int) -> float:
    """Linear decay from start (step 0) to end (the last step, total - 1).

    >>> gold_probability(1.0, 0.5, 0, 11), gold_probability(1.0, 0.5, 5, 11), gold_probability(1.0, 0.5, 10, 11)
    (1.0, 0.75, 0.5)
    """
    return start + (end - start) * min(1.0, step / max(1, total - 1))


def encode_sources(vocab: Vocab, sources: list[list[str]]) -> list[list[int]]:
    """Token ids; an empty source reads as one <unk> (a recurrent layer needs a step)."""
    return [vocab.encode(s) or [vocab.stoi[UNK]] for s in sources]


def encode_targets(vocab: Vocab, targets: list[list[str]]) -> list[list[int]]:
    """Token ids followed by <eos>."""
    return [vocab.encode(t) + [special_id(vocab, EOS)] for t in targets]


class Pairs:
    """Token-id sequences of one split: sources and targets (each target ends in <eos>)."""

    def __init__(self, sources: list[list[int]], targets: list[list[int]]):
        if not sources:
            raise DataError("a split of the sequence-to-sequence data is empty; use more data")
        self.sources = [torch.tensor(s, dtype=torch.long) for s in sources]
        self.targets = [torch.tensor(t, dtype=torch.long) for t in targets]
        self.lengths = torch.tensor([len(s) for s in sources])

    def __len__(self) -> int:
        return len(self.sources)

    def collate(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(src (B, S), lengths (B,), tgt (B, T)), padded with 0."""
        idx = index.tolist()
        return (pad_sequence([self.sources[i] for i in idx], batch_first=True), self.lengths[index],
                pad_sequence([self.targets[i] for i in idx], batch_first=True))


class Seq2SeqTask(TaskBase):
    """Subclasses set `metric` and `higher_is_better` and define
    source_tokens(text) -> list[str], target_text(tokens) -> str, and
    score(split, hypotheses: list[list[str]]) -> {metric: value} (over `eval_sources[split]`)."""

    metric, higher_is_better = "loss", False

    def __init__(self, config: RunConfig, src_vocab: Vocab, tgt_vocab: Vocab, splits: dict[str, Pairs] | None = None,
                 eval_sources: dict[str, list[list[str]]] | None = None):
        self.config, self.src_vocab, self.tgt_vocab = config, src_vocab, tgt_vocab
        self.splits, self.eval_sources = splits or {}, eval_sources or {}
        self.gold_start, self.gold_end = teacher_forcing(config.task.teacher_forcing)
        if config.task.beam < 1:
            raise ValueError(f"--beam must be at least 1, got {config.task.beam}")
        self.has_valid = "valid" in self.splits
        if splits and config.train.batch_size > len(splits["train"]):
            n = len(splits["train"])
            raise DataError(f"batch size {config.train.batch_size} is larger than the {n} training pairs; "
                            f"pass --batch-size {n} or less")
        self._epoch_batches: tuple[int, list] | None = None

    @classmethod
    def for_inference(cls, config: RunConfig, task_state: dict):
        return cls(config, Vocab.from_dict(task_state["src_vocab"]), Vocab.from_dict(task_state["tgt_vocab"]))

    def state_dict(self) -> dict:
        return {"src_vocab": self.src_vocab.to_dict(), "tgt_vocab": self.tgt_vocab.to_dict()}

    def build_model(self) -> Seq2Seq:
        return Seq2Seq(self.config.model, len(self.src_vocab), len(self.tgt_vocab))

    # ------------------------------------------------------------ training

    def epoch_batches(self, epoch: int) -> list[torch.Tensor]:
        if self._epoch_batches is None or self._epoch_batches[0] != epoch:
            train = self.splits["train"]
            stream = torch_stream(self.config.train.seed, epoch)
            self._epoch_batches = (epoch, pooled_batches(train.lengths, self.config.train.batch_size, stream))
        return self._epoch_batches[1]

    def num_batches(self) -> int:
        return len(self.epoch_batches(0))    # the same count every epoch: pools have fixed sizes

    def total_steps(self) -> int:
        return self.config.train.max_steps or self.config.train.epochs * self.num_batches()

    def batches(self, epoch: int, start: int):
        batches, n = self.epoch_batches(epoch), self.num_batches()
        for b in range(start, len(batches)):
            src, lengths, tgt = self.splits["train"].collate(batches[b])
            p = gold_probability(self.gold_start, self.gold_end, epoch * n + b, self.total_steps())
            yield src, lengths, tgt, torch.full((len(src),), p)

    def export_inputs(self, batch: tuple) -> tuple:
        """model(src, lengths, gold decoder inputs), teacher-forced: the inputs `rnnkit export` traces."""
        src, lengths, tgt, _ = batch
        return src, lengths, self.decoder_inputs(tgt)

    def loss(self, model, batch, carry):
        src, lengths, tgt, gold = batch
        logits, _ = model(src, lengths, self.decoder_inputs(tgt), gold)       # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), tgt.flatten(), ignore_index=PAD_ID, reduction="sum")
        return loss, int((tgt != PAD_ID).sum()), None

    def decoder_inputs(self, tgt: torch.Tensor) -> torch.Tensor:
        """<bos> followed by the target shifted right: (B, T)."""
        bos = torch.full_like(tgt[:, :1], special_id(self.tgt_vocab, BOS))
        return torch.cat([bos, tgt[:, :-1]], 1)

    # ------------------------------------------------------------ evaluation and inference

    @torch.no_grad()
    def evaluate(self, model, split: str) -> dict[str, float]:
        model.eval()
        hypotheses = self.decode_texts(model, self.eval_sources[split], beam=1 if split == "valid" else None)
        return {**self.score(split, hypotheses), "loss": self.mean_loss(model, self.splits[split])}

    def mean_loss(self, model, pairs: Pairs) -> float:
        """Teacher-forced cross-entropy per target token."""
        device = next(model.parameters()).device
        total, count = 0.0, 0
        for index in torch.arange(len(pairs)).split(EVAL_BATCH):
            src, lengths, tgt = (t.to(device) for t in pairs.collate(index))
            loss, n, _ = self.loss(model, (src, lengths, tgt, None), None)
            total, count = total + float(loss), count + n
        return total / max(count, 1)

    def encode_sources(self, sources: list[list[str]]) -> list[list[int]]:
        return encode_sources(self.src_vocab, sources)

    @torch.no_grad()
    def decode_ids(self, model, sources: list[list[int]], beam: int | None = None) -> list[list[int]]:
        """Decoded target ids (without <eos>) for each source, in the given order."""
        beam = beam or self.config.task.beam
        device = next(model.parameters()).device
        eos, out = special_id(self.tgt_vocab, EOS), [None] * len(sources)
        order = sorted(range(len(sources)), key=lambda i: len(sources[i]))   # similar lengths per batch
        for chunk in torch.tensor(order).split(EVAL_BATCH):
            src = pad_sequence([torch.tensor(sources[i]) for i in chunk.tolist()], batch_first=True).to(device)
            lengths = torch.tensor([len(sources[i]) for i in chunk.tolist()])
            max_len = self.config.task.max_len or 2 * src.shape[1] + 10
            tokens = model.decode(src, lengths, special_id(self.tgt_vocab, BOS), eos, max_len, beam=beam)
            for i, row in zip(chunk.tolist(), tokens.tolist()):
                out[i] = row[:row.index(eos)] if eos in row else row
        return out

    def decode_texts(self, model, sources: list[list[str]], beam: int | None = None) -> list[list[str]]:
        return [self.tgt_vocab.decode(ids) for ids in self.decode_ids(model, self.encode_sources(sources), beam)]

    def predict(self, model, inputs: list[str]) -> list[str]:
        model.eval()
        hyps = self.decode_texts(model, [self.source_tokens(text) for text in inputs])
        return [self.target_text(tokens) for tokens in hyps]

    # ------------------------------------------------------------ attention heat maps

    @torch.no_grad()
    def attention_maps(self, model, sources: list[list[str]]):
        """(source tokens, decoded tokens, weights (T, S)) per source, from greedy decoding."""
        model.eval()
        device = next(model.parameters()).device
        out = []
        for tokens, ids in zip(sources, self.decode_ids(model, self.encode_sources(sources), beam=1)):
            src = torch.tensor([self.encode_sources([tokens])[0]], device=device)
            tgt = torch.tensor([ids + [special_id(self.tgt_vocab, EOS)]], device=device)
            _, weights = model(src, torch.tensor([src.shape[1]]), self.decoder_inputs(tgt))   # (1, T, S)
            if weights is None:
                return []
            out.append((tokens, self.tgt_vocab.decode(ids) + [EOS], weights[0].cpu()))
        return out

    def save_plots(self, model, folder: str) -> list[str]:
        """plots/attention.png for the first few short test sources; [] without attention or matplotlib."""
        from ..train.plots import pyplot, save_figure

        plt = pyplot()
        sources = [s for s in self.eval_sources.get("test", []) if 0 < len(s) <= 20][:PLOT_EXAMPLES]
        maps = self.attention_maps(model, sources) if plt is not None and sources else []
        if not maps:
            return []
        fig, axes = plt.subplots(1, len(maps), figsize=(4.5 * len(maps), 4), squeeze=False)
        for ax, (src, hyp, weights) in zip(axes[0], maps):
            ax.imshow(weights.numpy(), cmap="viridis", vmin=0, vmax=1, aspect="auto")
            ax.set_xticks(range(len(src)), src, rotation=90, fontsize=8)
            ax.set_yticks(range(len(hyp)), hyp, fontsize=8)
            ax.set_xlabel("source")
            ax.set_ylabel("output")
        fig.tight_layout()                            # the output tokens of one map clear the next
        path = os.path.join(folder, "plots", "attention.png")
        save_figure(fig, path)
        plt.close(fig)
        return [path]
