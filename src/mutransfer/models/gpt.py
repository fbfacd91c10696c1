"""A pre-norm GPT with a byte vocabulary and an explicit attention scale."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from mutransfer import unit
from mutransfer.scaling.attention import AttentionLogits, attention_scale


class _Attention(nn.Module):
    def __init__(
        self, width: int, n_head: int, scale: float, qk_norm: bool = False, unit_scaled: bool = False
    ):
        super().__init__()
        self.n_head, self.scale, self.unit_scaled = n_head, scale, unit_scaled
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width)
        self.logits = AttentionLogits()  # hook point for the coordinate check
        # qk-layernorm (Dehghani et al. 2023; Wortsman et al. 2023): bounds the attention logits
        self.q_norm = nn.LayerNorm(width // n_head) if qk_norm else None
        self.k_norm = nn.LayerNorm(width // n_head) if qk_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        self.logits.observe(q, k, self.scale)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)  # (B, nh, T, hd)
        if self.unit_scaled:
            y = unit.attention_output(y, T)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class _Block(nn.Module):
    def __init__(self, width: int, n_head: int, scale: float, qk_norm: bool, unit_scaled: tuple | None):
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = _Attention(width, n_head, scale, qk_norm, unit_scaled is not None)
        self.ln2 = nn.LayerNorm(width)
        self.fc = nn.Linear(width, 4 * width)
        self.fc_proj = nn.Linear(4 * width, width)
        self.unit = unit_scaled  # None, or (tau_attn, tau_mlp, alpha_ffn_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.unit is not None:
            return unit.block(x, self.unit, lambda h: self.attn(self.ln1(h)), self._unit_mlp)
        x = x + self.attn(self.ln1(x))
        return x + self.fc_proj(F.gelu(self.fc(self.ln2(x))))

    def _unit_mlp(self, h: torch.Tensor, alpha: float) -> torch.Tensor:
        return self.fc_proj(unit.activation(self.fc(self.ln2(h)), F.gelu, alpha))


class GPT(nn.Module):
    """Token + position embeddings, ``depth`` pre-norm blocks, final norm, linear readout.

    The head count is fixed, so the head size grows with ``width``. ``base_d_head`` selects
    muP's ``1/d_head`` attention scale (equal to ``1/sqrt(d_head)`` at that head size); without
    it the model uses the standard ``1/sqrt(d_head)``. ``tie_embeddings`` shares the token
    embedding with the readout. ``qk_norm`` normalises each head's queries and keys (a
    LayerNorm over ``d_head``), the fix for attention-logit growth at high learning rates.

    ``unit_scaled`` builds u-muP's forward pass (``mutransfer.unit``): unit residual adds weighted
    by ``alpha_res`` and ``alpha_res_attn_ratio``, ``alpha_attn / d_head`` attention logits, a
    unit GELU of ``alpha_ffn_act``, embeddings summed at unit scale, logits times ``alpha_loss``
    with a unit gradient. Pair it with a ``parametrization="u-mup"`` plan, which does the weights.
    """

    # The last module of each residual branch, for a depth plan: mutransfer.plan(..., depth="depth",
    # residual=GPT.residual) puts CompleteP's branch multiplier into these layers' weights.
    residual = ("blocks.*.attn.proj", "blocks.*.fc_proj")

    def __init__(
        self,
        width: int = 128,
        depth: int = 2,
        n_head: int = 4,
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
        if width % n_head:
            raise ValueError(f"width {width} must be a multiple of n_head {n_head}")
        d_head = width // n_head
        scale, blocks = unit.blocks(depth, d_head, unit_scaled, alpha_res, alpha_res_attn_ratio, alpha_attn,
                                    alpha_ffn_act, alpha_loss)  # fmt: skip
        scale = scale or (attention_scale(d_head, base_d_head) if base_d_head else 1 / math.sqrt(d_head))
        self.unit_scaled, self.alpha_loss = unit_scaled, alpha_loss
        self.block_size = block_size
        self.wte = nn.Embedding(vocab_size, width)
        self.wpe = nn.Embedding(block_size, width)
        self.blocks = nn.ModuleList(_Block(width, n_head, scale, qk_norm, b) for b in blocks)
        self.ln_f = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, vocab_size, bias=False)
        # GPT-2's embedding init (std 0.02; PyTorch's default is 1), the rest PyTorch's default:
        # with std 1 a tied readout starts with logits of size sqrt(width) and a loss near 16
        nn.init.normal_(self.wte.weight, std=0.02)
        nn.init.normal_(self.wpe.weight, std=0.02)
        if tie_embeddings:
            self.lm_head.weight = self.wte.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        pos = torch.arange(T, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)  # (B, T, width)
        if self.unit_scaled:
            x = x / math.sqrt(2.0)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))  # (B, T, vocab)
        return unit.loss_input(logits, self.alpha_loss) if self.unit_scaled else logits
