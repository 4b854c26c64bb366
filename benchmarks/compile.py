"""What torch.compile(fullgraph=True) gains on a whole model holding rnnkit layers.

The model is the shape of the task models: an embedding, a two-layer LSTM and a linear head with
a cross-entropy loss. Contenders, in one process, alternating: the rnnkit model eager, the same
model compiled with fullgraph=True (the LSTM's engine stays one opaque operator; Inductor compiles
what surrounds it), and torch.nn's model eager (torch.compile cannot take it whole: Dynamo refuses
torch.nn's RNN modules in fullgraph mode). Ratios are eager ms / compiled ms and torch.nn ms / ms.

    python benchmarks/compile.py [--quick] [--threads 1] [--out benchmarks/results/compile.json]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import rnnkit
from common import format_machine, machine_info, time_alternating, write_json_atomic

VOCAB, EMBED = 1000, 64


class Model(torch.nn.Module):
    def __init__(self, lstm_class, hidden: int):
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, EMBED)
        self.rnn = lstm_class(EMBED, hidden, num_layers=2, batch_first=True)
        self.head = torch.nn.Linear(hidden, VOCAB)

    def forward(self, tokens, targets):
        logits = self.head(self.rnn(self.embed(tokens))[0])  # (B, T, V)
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())


def runners(models: dict, tokens, targets, mode: str) -> dict:
    def make(model):
        if mode == "inference":
            def run():
                with torch.no_grad():
                    model(tokens, targets)
        else:
            def run():
                model.zero_grad(set_to_none=True)
                model(tokens, targets).backward()
        return run
    return {name: make(m) for name, m in models.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one shape, fewer rounds")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "compile.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shapes = [(16, 50, 128)] if args.quick else [(16, 50, 128), (64, 50, 256), (1, 200, 128)]
    rounds = 5 if args.quick else 15
    rows = []
    for batch, steps, hidden in shapes:
        torch.manual_seed(0)
        ours = Model(rnnkit.LSTM, hidden)
        theirs = Model(torch.nn.LSTM, hidden)
        theirs.load_state_dict(ours.state_dict())
        compiled = torch.compile(ours, fullgraph=True)
        tokens = torch.randint(0, VOCAB, (batch, steps))
        targets = torch.randint(0, VOCAB, (batch, steps))
        loss = [m(tokens, targets).item() for m in (ours, compiled, theirs)]
        assert max(loss) - min(loss) < 1e-4 * max(abs(v) for v in loss), f"losses differ: {loss}"
        for mode in ("inference", "train"):
            ms = time_alternating(runners({"eager": ours, "compiled": compiled, "torch.nn": theirs}, tokens, targets,
                                          mode), warmup=3, rounds=rounds)
            rows.append({"B": batch, "T": steps, "H": hidden, "mode": mode, **{f"{k}_ms": v for k, v in ms.items()},
                         "compile_gain": ms["eager"] / ms["compiled"], "vs_torch_eager": ms["torch.nn"] / ms["eager"],
                         "vs_torch_compiled": ms["torch.nn"] / ms["compiled"]})
            r = rows[-1]
            print(f"B={batch:3d} T={steps:3d} H={hidden:3d} {mode:9s} eager {r['eager_ms']:8.2f} ms  compiled "
                  f"{r['compiled_ms']:8.2f} ms  torch.nn {r['torch.nn_ms']:8.2f} ms  compile gain "
                  f"{r['compile_gain']:.2f}x  torch.nn/compiled {r['vs_torch_compiled']:.2f}x", flush=True)
    info = machine_info(args.threads)
    print(format_machine(info))
    write_json_atomic(args.out, {"machine": info, "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
