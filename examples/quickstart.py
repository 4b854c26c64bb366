"""Quickstart: train a small rnnkit.LSTM to continue noisy sine waves, and watch the loss fall.

    python examples/quickstart.py [--steps 200]

Each batch holds sine waves of random frequency and phase; the model reads the first
T steps and predicts every next value (many-to-many). rnnkit.LSTM is used exactly like
torch.nn.LSTM, and its backward is rnnkit's hand-derived BPTT.
"""

from __future__ import annotations

import argparse
import math

import torch

import rnnkit


def sine_batch(batch: int, steps: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (B, T, 1) and next-step targets (B, T, 1) of noisy sine waves."""
    freq = 0.1 + 0.3 * torch.rand(batch, 1, generator=generator)
    phase = 2 * math.pi * torch.rand(batch, 1, generator=generator)
    t = torch.arange(steps + 1, dtype=torch.float32)
    wave = torch.sin(freq * t + phase) + 0.05 * torch.randn(batch, steps + 1, generator=generator)
    return wave[:, :-1, None], wave[:, 1:, None]


class NextStep(torch.nn.Module):
    def __init__(self, hidden: int = 32):
        super().__init__()
        self.rnn = rnnkit.LSTM(1, hidden, batch_first=True)
        self.head = torch.nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0])  # (B, T, 1)


def train(steps: int, batch: int = 32, seq_len: int = 40, seed: int = 0) -> list[float]:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = NextStep()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for step in range(1, steps + 1):
        x, y = sine_batch(batch, seq_len, generator)
        loss = torch.nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # keeps early BPTT steps from exploding
        optimizer.step()
        losses.append(loss.item())
        if step == 1 or step % max(1, steps // 10) == 0:
            print(f"step {step:4d}  mse {loss.item():.4f}", flush=True)
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps")
    args = parser.parse_args()
    losses = train(args.steps)
    first, last = losses[0], sum(losses[-10:]) / len(losses[-10:])
    print(f"mse fell from {first:.4f} to {last:.4f} ({first / last:.0f}x lower)")


if __name__ == "__main__":
    main()
