"""Attention found, not declared: the plan sees SDPA and nn.MultiheadAttention, warns where it
cannot make them muP, and fixes exactly what it can (an MHA's queries, a ``scaling`` attribute)."""

from __future__ import annotations

import copy
import io
import math
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import mutransfer
from mutransfer.errors import MutransferWarning
from mutransfer.models import GPT
from mutransfer.scaling.intercept import intercept


class ViT(nn.Module):
    """Patches through a linear layer, two nn.TransformerEncoderLayer blocks, a mean-pooled head."""

    def __init__(self, width: int = 32, heads: int = 4, patch: int = 12):
        super().__init__()
        self.patch = nn.Linear(patch, width)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True)
            for _ in range(2)
        )
        self.head = nn.Linear(width, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, patches, patch)
        h = self.patch(x)
        for layer in self.layers:
            h = layer(h)
        return self.head(h.mean(1))


def muP_attention(mha: nn.MultiheadAttention, h: torch.Tensor, base_d_head: int) -> torch.Tensor:
    """What muP's attention computes, written out: SDPA with scale sqrt(base)/d over MHA's weights."""
    E, H = mha.embed_dim, mha.num_heads
    q, k, v = (h @ mha.in_proj_weight.T + mha.in_proj_bias).split(E, -1)
    heads = lambda t: t.view(*t.shape[:2], H, E // H).transpose(1, 2)  # noqa: E731
    y = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), scale=math.sqrt(base_d_head) / (E // H))
    return mha.out_proj(y.transpose(1, 2).reshape(h.shape))


def test_multihead_attention_is_made_one_over_d_head_exactly():
    plan = mutransfer.plan(ViT, base={"width": 32}, target={"width": 128})
    assert [s.name for s in plan.attention] == ["layers.0.self_attn.mha", "layers.1.self_attn.mha"]
    assert all(s.law == "1/sqrt(d_head)" and s.fix == "query" for s in plan.attention)
    torch.manual_seed(0)
    model = ViT(128)
    reference = copy.deepcopy(model)
    plan.init_(model)
    h = torch.randn(2, 6, 128)
    for need_weights in (False, True):  # SDPA inside, or the explicit softmax path
        got = model.layers[0].self_attn(h, h, h, need_weights=need_weights)[0]
        want = muP_attention(model.layers[0].self_attn, h, base_d_head=8)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert model.state_dict().keys() == reference.state_dict().keys()  # the parameters are the user's
    assert isinstance(model.layers[0].self_attn, nn.MultiheadAttention)


def test_the_fixed_attention_survives_save_load_deepcopy_and_trains():
    plan = mutransfer.plan(ViT, base={"width": 32}, target={"width": 64})
    torch.manual_seed(0)
    model = plan.init_(ViT(64))
    x = torch.randn(3, 6, 12)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    for other in (copy.deepcopy(model), torch.load(buffer, weights_only=False)):
        torch.testing.assert_close(other(x), model(x))
    fresh = ViT(64)  # a checkpoint's state_dict into a new model, then the plan again
    fresh.load_state_dict(model.state_dict())
    restored = type(plan).from_dict(plan.to_dict())
    restored.attach_(fresh)
    torch.testing.assert_close(fresh(x), model(x))
    model(x).sum().backward()
    assert model.layers[0].self_attn.in_proj_weight.grad.abs().sum() > 0


def test_attach_twice_is_refused():
    plan = mutransfer.plan(ViT, base={"width": 32}, target={"width": 64})
    model = plan.init_(ViT(64))
    with pytest.raises(mutransfer.MutransferError, match="already carries"):
        plan.attach_(model)


def test_sdpa_with_one_over_sqrt_d_head_is_reported_loudly():
    from foreign import Transformer  # SDPA's default scale: nothing the plan can change

    with pytest.warns(MutransferWarning, match=r"blocks.0.attn, blocks.1.attn compute attention with 1/sqrt"):
        plan = mutransfer.plan(Transformer, base={"width": 32}, target={"width": 128})
    assert "attention_scale(d_head, base_d_head=8)" in plan.summary()
    assert "NOT muP" in plan.summary()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # muP's scale: nothing to say
        good = mutransfer.plan(
            GPT, base={"width": 32, "base_d_head": 8}, target={"width": 128, "base_d_head": 8}
        )
    assert {s.law for s in good.attention} == {"1/d_head"}


class Decoy(nn.Module):
    """Keeps a float equal to the attention's scale that the attention does not read."""

    def __init__(self, width):
        super().__init__()
        self.emb, self.qkv = nn.Embedding(8, width), nn.Linear(width, 3 * width)
        self.d_head = width // 2
        self.dropout_p = self.d_head**-0.5  # equal to SDPA's default scale, by coincidence

    def forward(self, idx):
        q, k, v = (t.unflatten(-1, (2, -1)).transpose(1, 2) for t in self.qkv(self.emb(idx)).chunk(3, -1))
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)


def test_an_attribute_is_changed_only_if_the_attention_reads_it():
    plan = mutransfer.plan(GPT, base={"width": 32}, target={"width": 128})  # GPT's attn.scale
    assert {s.fix for s in plan.attention} == {"*scale"}
    model = plan.init_(GPT(width=128))
    assert model.blocks[0].attn.scale == pytest.approx(8**0.5 / 32)
    with pytest.warns(MutransferWarning, match="compute attention with 1/sqrt"):
        decoy = mutransfer.plan(Decoy, base={"width": 8}, target={"width": 32})
    assert [s.fix for s in decoy.attention] == [""]  # doubling dropout_p moved no scale: not touched


def test_fix_attention_false_leaves_multihead_attention_and_warns():
    with pytest.warns(MutransferWarning, match="fix_attention=True"):
        plan = mutransfer.plan(ViT, base={"width": 32}, target={"width": 64}, fix_attention=False)
    model = plan.init_(ViT(64))
    assert type(model.layers[0].self_attn) is nn.MultiheadAttention


def test_a_scaling_attribute_handed_to_attention_is_fixed():
    class Attention(nn.Module):  # Hugging Face's convention: the module owns `scaling`
        def __init__(self, width):
            super().__init__()
            self.qkv, self.d_head = nn.Linear(width, 3 * width), width // 2
            self.scaling = self.d_head**-0.5

        def forward(self, x):
            q, k, v = (t.unflatten(-1, (2, self.d_head)).transpose(1, 2) for t in self.qkv(x).chunk(3, -1))
            return F.scaled_dot_product_attention(q, k, v, scale=self.scaling).transpose(1, 2).flatten(2)

    def make(width):
        return nn.Sequential(nn.Embedding(16, width), Attention(width), nn.Linear(width, 16))

    plan = mutransfer.plan(make, base={"width": 8}, target={"width": 32})
    assert [(s.name, s.fix) for s in plan.attention] == [("1.sdpa", "*scaling")]
    model = plan.init_(make(32))
    assert model[1].scaling == pytest.approx(math.sqrt(4) / 16)


class Picky(nn.Module):
    """Reads tensor values in its forward, as transformers' mask code does: meta tensors have none."""

    def __init__(self, width, fails: bool = False):
        super().__init__()
        self.emb, self.qkv, self.out = (
            nn.Embedding(8, width),
            nn.Linear(width, 3 * width),
            nn.Linear(width, 8),
        )
        self.fails = fails

    def forward(self, idx):
        if self.fails or idx.sum().item() < 0:
            raise RuntimeError("no forward for you")
        q, k, v = (t.unflatten(-1, (2, -1)).transpose(1, 2) for t in self.qkv(self.emb(idx)).chunk(3, -1))
        return self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))


def test_a_forward_that_needs_values_is_run_on_the_cpu_at_small_shapes():
    with pytest.warns(MutransferWarning, match="compute attention with 1/sqrt"):
        plan = mutransfer.plan(Picky, base={"width": 8}, target={"width": 256})
    (site,) = plan.attention
    assert (site.name, site.base_d_head, site.target_d_head) == ("sdpa", 4, 128)  # carried from 4x to 32x
    assert site.target_scale == pytest.approx(128**-0.5)


def test_a_forward_that_fails_everywhere_leaves_a_note_not_an_error():
    plan = mutransfer.plan(lambda width: Picky(width, fails=True), base={"width": 8}, target={"width": 32})
    assert plan.attention is None
    assert "attention not inspected" in plan.summary() and "no forward for you" in plan.summary()


class _Softmax(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.qkv, self.d_head = nn.Linear(width, 3 * width), width // 2
        self.scaling = self.d_head**-0.5

    def forward(self, x):
        q, k, v = (t.unflatten(-1, (2, self.d_head)).transpose(1, 2) for t in self.qkv(x).chunk(3, -1))
        return F.scaled_dot_product_attention(q, k, v, scale=self.scaling).transpose(1, 2).flatten(2)


class _Recurrent(nn.Module):  # a linear-attention / state-space layer: no softmax attention at all
    def __init__(self, width):
        super().__init__()
        self.mix = nn.Linear(width, width)

    def forward(self, x):
        return self.mix(x).cumsum(1) / x.shape[1]


class Hybrid(nn.Module):
    """Softmax attention and a recurrent layer alternating under one name (``layers.N.mixer``),
    as hybrid models do; its forward reads a value, so the plan runs it on the CPU."""

    def __init__(self, width, depth=4):
        super().__init__()
        self.emb, self.out = nn.Embedding(8, width), nn.Linear(width, 8)
        self.layers = nn.ModuleList(
            nn.ModuleDict({"mixer": (_Softmax if i % 2 == 0 else _Recurrent)(width)}) for i in range(depth)
        )

    def forward(self, idx):
        h = self.emb(idx)
        if h.abs().sum().item() < 0:
            h = -h
        for layer in self.layers:
            h = h + layer["mixer"](h)
        return self.out(h)


def test_a_hybrid_model_s_attention_sites_are_its_softmax_layers_only():
    plan = mutransfer.plan(Hybrid, base={"width": 8, "depth": 2}, target={"width": 32, "depth": 4},
                           depth="depth", residual=["layers.*.mixer"])  # fmt: skip
    assert sorted(s.name for s in plan.attention) == ["layers.0.mixer.sdpa", "layers.2.mixer.sdpa"]
    model = plan.init_(Hybrid(32, depth=4))  # attach_ finds the attribute of every site it fixes
    assert model.layers[2]["mixer"].scaling == pytest.approx(math.sqrt(4) / 16)


def test_fixing_an_attribute_the_model_lacks_says_the_plan_is_for_another_model():
    plan = mutransfer.plan(Hybrid, base={"width": 8, "depth": 2}, target={"width": 32, "depth": 2})
    other = Hybrid(32, depth=2)
    del other.layers[0]["mixer"].scaling  # say, a model whose class was edited after planning
    with pytest.raises(mutransfer.MutransferError, match=r"layers.0.mixer has no attribute 'scaling'"):
        plan.init_(other)


def test_interception_is_gone_after_the_plan_and_sees_nothing_in_training():
    seen = []
    model = ViT(32)
    with intercept(model, seen.append):
        model(torch.randn(1, 4, 12))
    assert len(seen) == 2
    mutransfer.plan(ViT, base={"width": 32}, target={"width": 64})
    assert not torch.overrides._get_current_function_mode_stack()
    assert not torch.nn.modules.module._global_forward_hooks
    assert not torch.nn.modules.module._global_forward_pre_hooks


def test_plan_round_trips_its_attention_through_json(tmp_path):
    plan = mutransfer.plan(ViT, base={"width": 32}, target={"width": 64})
    plan.save(tmp_path / "plan.json")
    loaded = mutransfer.load_plan(tmp_path / "plan.json")
    assert loaded.attention == plan.attention and loaded.init_laws == plan.init_laws
