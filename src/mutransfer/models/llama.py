"""A LLaMA-style decoder: RMSNorm, SwiGLU, rotary positions, grouped-query attention, no biases."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from mutransfer import unit
from mutransfer.scaling.attention import AttentionLogits, attention_scale


def rotary(d_head: int, block_size: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of RoPE's angles, each (block_size, d_head // 2)."""
    freqs = theta ** (-torch.arange(0, d_head, 2, dtype=torch.float32) / d_head)
    angles = torch.outer(torch.arange(block_size, dtype=torch.float32), freqs)
    return angles.cos(), angles.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[2i], x[2i+1]) of x (B, heads, T, d_head) by the position's angles."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class _Attention(nn.Module):
    def __init__(
        self, width: int, n_head: int, n_kv_head: int, scale: float, qk_norm: bool, unit_scaled: bool
    ):
        super().__init__()
        self.n_head, self.n_kv_head, self.d_head, self.scale = n_head, n_kv_head, width // n_head, scale
        self.unit_scaled = unit_scaled
        self.q = nn.Linear(width, width, bias=False)
        self.kv = nn.Linear(width, 2 * n_kv_head * self.d_head, bias=False)  # keys and values of the kv heads
        self.proj = nn.Linear(width, width, bias=False)
        self.logits = AttentionLogits()  # hook point for the coordinate check
        self.q_norm = nn.RMSNorm(self.d_head) if qk_norm else None  # as Qwen3 and OLMo 2
        self.k_norm = nn.RMSNorm(self.d_head) if qk_norm else None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q = self.q(x).view(B, T, self.n_head, self.d_head).transpose(1, 2)  # (B, nh, T, hd)
        k, v = self.kv(x).view(B, T, 2 * self.n_kv_head, self.d_head).transpose(1, 2).chunk(2, dim=1)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)  # k, v: (B, n_kv, T, hd)
        self.logits.observe(q, k, self.scale)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale, enable_gqa=True)
        if self.unit_scaled:
            y = unit.attention_output(y, T)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class _Block(nn.Module):
    def __init__(
        self, width: int, n_head: int, n_kv_head: int, hidden: int, scale: float, qk_norm: bool, unit_scaled
    ):
        super().__init__()
        self.attn_norm = nn.RMSNorm(width)
        self.attn = _Attention(width, n_head, n_kv_head, scale, qk_norm, unit_scaled is not None)
        self.unit = unit_scaled  # None, or (tau_attn, tau_mlp, alpha_ffn_act)
        self.mlp_norm = nn.RMSNorm(width)
        self.gate = nn.Linear(width, hidden, bias=False)
        self.up = nn.Linear(width, hidden, bias=False)
        self.down = nn.Linear(hidden, width, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        if self.unit is not None:
            return unit.block(x, self.unit, lambda h: self.attn(self.attn_norm(h), cos, sin), self._unit_mlp)
        x = x + self.attn(self.attn_norm(x), cos, sin)
        h = self.mlp_norm(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))  # SwiGLU

    def _unit_mlp(self, h: torch.Tensor, alpha: float) -> torch.Tensor:
        h = self.mlp_norm(h)
        return self.down(unit.glu(self.up(h), self.gate(h), F.silu, alpha))


class Llama(nn.Module):
    """Token embedding, ``depth`` pre-norm blocks (RMSNorm; attention with rotary positions and
    ``n_kv_head`` key/value heads shared by ``n_head`` query heads; SwiGLU MLP), final RMSNorm,
    readout. No biases, no position embedding table.

    The head counts are fixed, so the head size grows with ``width``; ``base_d_head`` selects
    muP's ``1/d_head`` attention scale, as in ``GPT``. The SwiGLU hidden size is
    ``hidden_mult * width``: LLaMA's 8/3 rounded up to a whole multiple, because muP needs every
    growing dimension to grow by the same factor as the width. ``qk_norm`` RMS-normalises each
    head's queries and keys before the rotation, as Qwen3 and OLMo 2 do. ``unit_scaled`` and the
    alphas build u-muP's forward pass, as in ``GPT`` (a unit SwiGLU of ``alpha_ffn_act``).
    """

    residual = ("blocks.*.attn.proj", "blocks.*.down")  # each residual branch's last layer

    def __init__(
        self,
        width: int = 128,
        depth: int = 2,
        n_head: int = 4,
        n_kv_head: int = 2,
        hidden_mult: int = 3,
        vocab_size: int = 256,
        block_size: int = 128,
        tie_embeddings: bool = False,
        base_d_head: int | None = None,
        qk_norm: bool = False,
        unit_scaled: bool = False,
        alpha_res: float = 1.0,
        alpha_res_attn_ratio: float = 1.0,
        alpha_attn: float = 1.0,
        alpha_ffn_act: float = 1.0,
        alpha_loss: float = 1.0,
    ):
        super().__init__()
        if width % n_head or n_head % n_kv_head or (width // n_head) % 2:
            raise ValueError(
                f"width {width} must split into n_head {n_head} heads of even size, "
                f"and n_head into groups of n_kv_head {n_kv_head}"
            )
        d_head = width // n_head
        scale, blocks = unit.blocks(depth, d_head, unit_scaled, alpha_res, alpha_res_attn_ratio, alpha_attn,
                                    alpha_ffn_act, alpha_loss)  # fmt: skip
        scale = scale or (attention_scale(d_head, base_d_head) if base_d_head else 1 / math.sqrt(d_head))
        self.unit_scaled, self.alpha_loss = unit_scaled, alpha_loss
        self.block_size = block_size
        self.embed = nn.Embedding(vocab_size, width)
        self.blocks = nn.ModuleList(
            _Block(width, n_head, n_kv_head, hidden_mult * width, scale, qk_norm, b) for b in blocks
        )
        self.norm = nn.RMSNorm(width)
        self.lm_head = nn.Linear(width, vocab_size, bias=False)
        nn.init.normal_(self.embed.weight, std=0.02)  # as GPT: a unit-std embedding swamps the stream
        if tie_embeddings:
            self.lm_head.weight = self.embed.weight
        cos, sin = rotary(d_head, block_size)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        cos, sin = self.cos[:T], self.sin[:T]
        x = self.embed(idx)  # (B, T, width)
        for block in self.blocks:
            x = block(x, cos, sin)
        logits = self.lm_head(self.norm(x))  # (B, T, vocab)
        return unit.loss_input(logits, self.alpha_loss) if self.unit_scaled else logits
