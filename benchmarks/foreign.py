"""Models written outside the library, the way users write them, to try mutransfer on.

None of them knows mutransfer: PyTorch's default init, their own attention, no hook points.
Each takes its width as ``width`` and a few switches that plant the faults users make by hand
(``benchmarks/verdict.py``):

- ``MLP``: linear layers with biases;
- ``Transformer``: pre-LN blocks with their own attention through ``F.scaled_dot_product_attention``
  (``base_d_head`` gives muP's ``1/d_head``; without it the usual ``1/sqrt(d_head)``); a factor in
  ``forward`` on the embeddings or on the logits; a readout tied by ``F.linear`` in ``forward``;
- ``MHATransformer``: ``nn.TransformerEncoderLayer`` blocks (``nn.MultiheadAttention`` inside);
- ``ViT``: a vision transformer of the same blocks on image patches;
- ``CNN``: convolutions whose channel count is the width, a linear readout.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["CNN", "MLP", "MHATransformer", "Transformer", "ViT"]


class MLP(nn.Module):
    def __init__(self, width: int = 64, in_features: int = 784, out_features: int = 10, depth: int = 3):
        super().__init__()
        sizes = [in_features] + [width] * depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.out = nn.Linear(width, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.layers:
            x = F.relu(layer(x))
        return self.out(x)


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int, base_d_head: int | None, manual: bool = False):
        super().__init__()
        self.heads, d, self.manual = heads, width // heads, manual
        self.scale = math.sqrt(base_d_head) / d if base_d_head else None  # None: SDPA's 1/sqrt(d)
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.out = nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.heads, -1).transpose(1, 2) for t in self.qkv(x).split(C, -1))
        if self.manual:  # written out, as many codebases do: scores, mask, softmax
            scores = q @ k.transpose(-2, -1)
            scores = scores * self.scale if self.scale else scores / math.sqrt(q.shape[-1])
            mask = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
            y = scores.masked_fill(mask, float("-inf")).softmax(-1) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        return self.out(y.transpose(1, 2).reshape(B, T, C))


class _Block(nn.Module):
    def __init__(self, width: int, heads: int, base_d_head: int | None, manual: bool):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = _Attention(width, heads, base_d_head, manual)
        self.up, self.down = nn.Linear(width, 4 * width, bias=False), nn.Linear(4 * width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.down(F.gelu(self.up(self.norm2(x))))


class Transformer(nn.Module):
    """A decoder written from scratch. ``embedding_factor`` / ``logit_factor``: ``"sqrt"`` multiplies
    the embeddings (as Gemma does) or the logits by ``sqrt(width)``; ``tie="functional"`` reads out
    through the embedding with ``F.linear`` in ``forward``; ``init_std`` draws every matrix from
    N(0, init_std**2) instead of PyTorch's default; ``attention="manual"`` writes the attention out
    (``q @ k^T`` times the scale, a mask, a softmax) instead of calling SDPA."""

    def __init__(
        self,
        width: int = 64,
        depth: int = 2,
        heads: int = 4,
        vocab_size: int = 256,
        block_size: int = 64,
        base_d_head: int | None = None,
        embedding_factor: str = "",
        logit_factor: str = "",
        tie: str = "",
        init_std: float | None = None,
        attention: str = "sdpa",
    ):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.pos = nn.Parameter(torch.zeros(block_size, width))
        self.blocks = nn.ModuleList(
            _Block(width, heads, base_d_head, attention == "manual") for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)
        self.head = None if tie else nn.Linear(width, vocab_size, bias=False)
        self.embedding_factor = math.sqrt(width) if embedding_factor == "sqrt" else 1.0
        self.logit_factor = math.sqrt(width) if logit_factor == "sqrt" else 1.0
        if init_std is not None:  # transformers' convention: one std for every matrix at every width
            for p in self.parameters():
                if p.dim() == 2:
                    nn.init.normal_(p, std=init_std)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = (self.embed(idx) + self.pos[: idx.shape[1]]) * self.embedding_factor
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        logits = F.linear(x, self.embed.weight) if self.head is None else self.head(x)
        return logits * self.logit_factor


class MHATransformer(nn.Module):
    """Causal pre-LN ``nn.TransformerEncoderLayer`` blocks: attention in ``nn.MultiheadAttention``."""

    def __init__(
        self, width: int = 64, depth: int = 2, heads: int = 4, vocab_size: int = 256, block_size: int = 64
    ):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.pos = nn.Embedding(block_size, width)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        x = self.embed(idx) + self.pos(torch.arange(T, device=idx.device))
        mask = nn.Transformer.generate_square_subsequent_mask(T, device=idx.device)
        for block in self.blocks:
            x = block(x, src_mask=mask, is_causal=True)
        return self.head(self.norm(x))


class ViT(nn.Module):
    """A vision transformer: 4x4 patches by a strided ``Conv2d``, a class token and position table,
    ``nn.TransformerEncoderLayer`` blocks (``nn.MultiheadAttention``), the class token read out."""

    def __init__(self, width: int = 32, depth: int = 2, heads: int = 4, image: int = 28, patch: int = 4,
                 in_channels: int = 1, num_classes: int = 10):  # fmt: skip
        super().__init__()
        self.patches = nn.Conv2d(in_channels, width, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, width) * 0.02)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                width, heads, 2 * width, dropout=0.0, batch_first=True, norm_first=True
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patches(x).flatten(2).transpose(1, 2)  # (B, patches, width)
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], dim=1) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, 0]))


class CNN(nn.Module):
    """Three 3x3 convolutions of ``width`` channels with ReLU and pooling, then a linear readout."""

    def __init__(self, width: int = 16, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.convs = nn.ModuleList(
            [nn.Conv2d(in_channels, width, 3, padding=1), nn.Conv2d(width, width, 3, padding=1),
             nn.Conv2d(width, width, 3, padding=1)]
        )  # fmt: skip
        self.out = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            x = F.relu(conv(x))
            if i < 2:
                x = F.max_pool2d(x, 2)
        return self.out(x.mean((2, 3)))
