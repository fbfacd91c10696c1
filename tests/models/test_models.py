"""Reference models: output shapes, the attention scale switch, tied weights, LLaMA-style parts."""

from __future__ import annotations

import math

import pytest
import torch

import mutransfer
from mutransfer.models import GPT, MLP, Llama, ResNet
from mutransfer.models.llama import rotary, rotate


def test_output_shapes():
    assert MLP(width=32)(torch.randn(4, 1, 28, 28)).shape == (4, 10)
    assert ResNet(width=8)(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert GPT(width=32, block_size=16)(torch.randint(0, 256, (2, 16))).shape == (2, 16, 256)
    assert Llama(width=32, block_size=16)(torch.randint(0, 256, (2, 16))).shape == (2, 16, 256)


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


def test_llama_is_causal_has_no_biases_and_shares_key_heads():
    model = Llama(width=64, depth=2, n_head=4, n_kv_head=2, block_size=16, base_d_head=16)
    assert not [n for n, _ in model.named_parameters() if n.endswith("bias")]
    assert model.blocks[0].attn.kv.weight.shape == (2 * 2 * 16, 64)  # 2 kv heads of 16, keys and values
    idx = torch.randint(0, 256, (2, 16))
    changed = idx.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 256
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[:, :-1], model(changed)[:, :-1])  # the past ignores the future
    seen = []
    hook = model.blocks[0].attn.logits.register_forward_hook(lambda m, args, out: seen.append(out))
    model(idx)
    hook.remove()
    assert seen[0].shape == (2, 4, 16, 16)  # the 2 key heads serve 4 query heads


def test_rotary_positions_preserve_length_and_relative_angle():
    cos, sin = rotary(8, 16)
    q, k = torch.randn(1, 1, 16, 8), torch.randn(1, 1, 16, 8)
    torch.testing.assert_close(rotate(q, cos, sin).norm(dim=-1), q.norm(dim=-1))
    # q at position 5 against k at 3 scores as q at 7 against k at 5 when the vectors are the same
    same_q, same_k = q[..., 5:6, :].expand(1, 1, 16, 8), k[..., 3:4, :].expand(1, 1, 16, 8)
    a, b = rotate(same_q, cos, sin), rotate(same_k, cos, sin)
    torch.testing.assert_close((a[..., 5, :] * b[..., 3, :]).sum(), (a[..., 7, :] * b[..., 5, :]).sum())


def test_llama_swiglu_grows_with_the_width_so_the_plan_has_one_multiplier():
    plan = mutransfer.plan(Llama, base={"width": 32}, target={"width": 256})
    assert plan.width_multiplier == 8 and plan.roles()["blocks.0.gate.weight"] == "hidden"
    with pytest.raises(ValueError, match="heads of even size"):
        Llama(width=36, n_head=4)
