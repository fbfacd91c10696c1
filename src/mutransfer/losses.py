"""The losses a run trains on: cross-entropy over classes or next tokens, and the z-loss that
holds the output logits' normaliser near 1."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

__all__ = ["LossFn", "cross_entropy", "log_z", "with_z_loss", "z_loss"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Classification ``(B, C)`` or next-token prediction ``(B, T, V)``; a Hugging Face model's
    output (a ``ModelOutput``) is scored by its ``logits``."""
    output = getattr(output, "logits", output)
    return F.cross_entropy(output.reshape(-1, output.shape[-1]).float(), target.reshape(-1))


def log_z(output: torch.Tensor) -> torch.Tensor:
    """log Z of the output logits at every position: the log of the softmax's normaliser. It
    drifting far from 0 is the output-logit divergence a z-loss (``z_loss * log_z ** 2``,
    Chowdhery et al. 2022; 1e-4 in Wortsman et al. 2023) holds back."""
    output = getattr(output, "logits", output)
    return torch.logsumexp(output.float(), dim=-1)


def z_loss(output: torch.Tensor, weight: float) -> torch.Tensor:
    """The z-loss term: ``weight * log_z(output) ** 2``, mean over positions."""
    return weight * log_z(output).pow(2).mean()


def with_z_loss(loss: LossFn, weight: float) -> LossFn:
    """``loss`` plus the z-loss term; ``loss`` itself when ``weight`` is 0."""
    if not weight:
        return loss

    def plus_z_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return loss(output, target) + z_loss(output, weight)

    return plus_z_loss
