"""Quickstart: put your own model in muP, tune the learning rate on a narrow proxy, reuse it wide.

Runs on CPU in under a minute. The data is real text that every machine has: the bytes of
CPython's own standard library. The task: predict the next byte from the previous eight.

    python examples/quickstart.py
"""

from __future__ import annotations

import math
import sysconfig
import time
from pathlib import Path

import torch
from torch import nn

import mutransfer

CONTEXT, BATCH, STEPS = 8, 64, 200
BASE, TARGET = 32, 512
LRS = [2**k for k in range(-11, -4)]  # Adam learning rates, log2 spaced


class NextByte(nn.Module):
    """Your model, unchanged: nothing in it knows about muP."""

    def __init__(self, width: int):
        super().__init__()
        self.embed = nn.Embedding(256, width)
        self.mix = nn.Linear(CONTEXT * width, width)
        self.hidden = nn.Linear(width, width)
        self.readout = nn.Linear(width, 256)

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        h = self.embed(context).flatten(1)  # (B, CONTEXT * width)
        h = torch.relu(self.mix(h))
        h = torch.relu(self.hidden(h))
        return self.readout(h)  # (B, 256) next-byte logits


def stdlib_bytes(limit: int = 2_000_000) -> torch.Tensor:
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks, size = [], 0
    for path in sorted(root.glob("*.py")):
        chunks.append(path.read_bytes())
        size += len(chunks[-1])
        if size >= limit:
            break
    return torch.frombuffer(bytearray(b"".join(chunks)[:limit]), dtype=torch.uint8).long()


def train(width: int, lr: float, text: torch.Tensor, mup: bool) -> float:
    """Train at ``width`` and return the mean loss of the last 20 steps (inf if it diverged)."""
    torch.manual_seed(0)
    model = NextByte(width)
    if mup:
        plan = mutransfer.plan(NextByte, base={"width": BASE}, target={"width": width})
        plan.init_(model)
        groups = plan.param_groups(model, lr=lr)
    else:
        groups = [{"params": model.parameters(), "lr": lr}]
    optimizer = torch.optim.Adam(groups)
    gen = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(STEPS):
        starts = torch.randint(0, len(text) - CONTEXT - 1, (BATCH,), generator=gen)
        window = text[starts[:, None] + torch.arange(CONTEXT + 1)]  # (B, CONTEXT + 1)
        loss = nn.functional.cross_entropy(model(window[:, :-1]), window[:, -1])
        if not torch.isfinite(loss):
            return math.inf
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return sum(losses[-20:]) / 20


def main() -> None:
    start = time.time()
    text = stdlib_bytes()
    plan = mutransfer.plan(NextByte, base={"width": BASE}, target={"width": TARGET})
    print(plan.summary(), "\n")

    print(f"1. tune the learning rate on the proxy (width {BASE}), muP and standard alike:")
    proxy = {lr: train(BASE, lr, text, mup=True) for lr in LRS}
    for lr, loss in proxy.items():
        print(f"   lr 2^{math.log2(lr):+.0f}  loss {loss:.3f}")
    best = min(proxy, key=proxy.get)
    print(f"   best lr 2^{math.log2(best):+.0f}\n")

    print(f"2. reuse it on the target (width {TARGET}) and compare with the target's own best:")
    for mup in (True, False):
        name = "muP     " if mup else "standard"
        target = {lr: train(TARGET, lr, text, mup=mup) for lr in LRS}
        own = min(target, key=target.get)
        print(
            f"   {name} proxy's lr -> loss {target[best]:.3f};  target's own best lr "
            f"2^{math.log2(own):+.0f} -> loss {target[own]:.3f}"
        )
    print(f"\ndone in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
