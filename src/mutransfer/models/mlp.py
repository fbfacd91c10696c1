"""A plain MLP: the smallest model with input, hidden and output layers."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """``in_features -> width -> ... -> width -> out_features`` with ReLU; ``depth`` hidden layers."""

    def __init__(self, width: int = 128, depth: int = 3, in_features: int = 784, out_features: int = 10):
        super().__init__()
        self.input = nn.Linear(in_features, width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(depth - 1))
        self.readout = nn.Linear(width, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.input(x.flatten(1)))  # (B, width)
        for layer in self.hidden:
            h = torch.relu(layer(h))
        return self.readout(h)  # (B, out_features)
