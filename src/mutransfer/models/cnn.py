"""A small ResNet-style CNN: convolutions whose channel count is the width."""

from __future__ import annotations

import torch
from torch import nn


class _Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(x + self.norm2(self.conv2(h)))


class ResNet(nn.Module):
    """Stem conv -> ``depth`` residual blocks -> global average pool -> linear classifier."""

    def __init__(self, width: int = 16, depth: int = 2, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1)
        self.blocks = nn.Sequential(*(_Block(width) for _ in range(depth)))
        self.readout = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(torch.relu(self.stem(x)))  # (B, width, H, W)
        return self.readout(h.mean(dim=(2, 3)))  # (B, num_classes)
