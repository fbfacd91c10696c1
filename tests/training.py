"""The few lines every test that trains a model needs: a fixed batch and a plain loop."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def classification_batch(n: int, features: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, features, generator=g), torch.randint(0, classes, (n,), generator=g)


def cross_entropy(model, x, y):
    """Classification, or next-token prediction when the model returns (B, T, vocab)."""
    logits = model(x)
    return F.cross_entropy(logits.flatten(0, -2), y.flatten())


def train(model, optimizer, x, y, steps: int, loss_fn=cross_entropy) -> list[float]:
    """Full-batch steps on (x, y); returns the loss of every step."""
    losses = []
    for _ in range(steps):
        loss = loss_fn(model, x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
