"""Reference models: output shapes, the attention scale switch, tied weights."""

from __future__ import annotations

import math

import pytest
import torch

import mutransfer
from mutransfer.models import GPT, MLP, ResNet


def test_output_shapes():
    assert MLP(width=32)(torch.randn(4, 1, 28, 28)).shape == (4, 10)
    assert ResNet(width=8)(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert GPT(width=32, block_size=16)(torch.randint(0, 256, (2, 16))).shape == (2, 16, 256)


def test_attention_scale_is_sp_at_base_and_one_over_d_beyond():
    assert mutransfer.attention_scale(16, base_d_head=16) == pytest.approx(1 / math.sqrt(16))
    assert mutransfer.attention_scale(64, base_d_head=16) == pytest.approx(4 / 64)
    gpt = GPT(width=256, n_head=4, base_d_head=16)
    assert gpt.blocks[0].attn.scale == pytest.approx(4 / 64)
    assert GPT(width=256, n_head=4).blocks[0].attn.scale == pytest.approx(1 / 8)
    with pytest.raises(ValueError, match="head sizes must be positive"):
        mutransfer.attention_scale(0, 16)


def test_tied_gpt_shares_one_tensor():
    gpt = GPT(width=32, tie_embeddings=True)
    assert gpt.lm_head.weight is gpt.wte.weight


def test_attention_logits_are_computed_only_while_observed(monkeypatch):
    model = GPT(width=32, depth=2, n_head=4, base_d_head=8)
    calls = []
    original = mutransfer.AttentionLogits.forward
    monkeypatch.setattr(
        mutransfer.AttentionLogits, "forward", lambda self, *a: calls.append(1) or original(self, *a)
    )
    idx = torch.randint(0, 256, (2, 16))
    model(idx)
    assert calls == []  # training keeps the fused path

    seen = []
    hook = model.blocks[0].attn.logits.register_forward_hook(lambda m, args, out: seen.append((args, out)))
    model(idx)
    hook.remove()
    (q, k, scale), logits = seen[0]
    assert logits.shape == (2, 4, 16, 16)
    torch.testing.assert_close(logits, q @ k.transpose(-2, -1) * scale)
    assert scale == pytest.approx(1 / math.sqrt(8))  # at the base head size muP equals SP


def test_gpt_embeddings_start_small():
    model = GPT(width=64, tie_embeddings=True)
    assert model.wte.weight.std().item() == pytest.approx(0.02, rel=0.1)
