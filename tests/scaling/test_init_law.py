"""The init law is measured, not assumed: PyTorch's fan_in, transformers' constant std, a readout
already at 1/fan_in, each tensor corrected to muP's init; biases held Theta(1)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mutransfer
from mutransfer.models import MLP


def std_ratio(make, plan, name: str, base: int, target: int, seeds: int = 4) -> float:
    """std of ``name`` after init_ at the target over its std in the base model (seed means)."""
    stds = {base: [], target: []}
    for seed in range(seeds):
        torch.manual_seed(seed)
        stds[base].append(make(base).get_parameter(name).std().item())
        torch.manual_seed(seed)
        stds[target].append(plan.init_(make(target)).get_parameter(name).std().item())
    return sum(stds[target]) / sum(stds[base])


def test_a_bias_keeps_its_init_std_from_base_to_16x():
    plan = mutransfer.plan(MLP, base={"width": 32}, target={"width": 512})
    assert plan.init_laws["hidden.0.bias"] == "fan_in"  # PyTorch's U(+-1/sqrt(fan_in))
    assert std_ratio(MLP, plan, "hidden.0.bias", 32, 512) == pytest.approx(1.0, rel=0.1)
    assert std_ratio(MLP, plan, "hidden.0.weight", 32, 512) == pytest.approx(0.25, rel=0.1)  # 1/sqrt(m)
    assert std_ratio(MLP, plan, "input.bias", 32, 512) == pytest.approx(1.0, rel=0.1)  # fan_in 784: fixed


def constant_std(width: int) -> nn.Module:
    """transformers' convention: one std for every matrix, whatever its fan_in."""
    model = nn.Sequential(nn.Embedding(64, width), nn.Linear(width, width), nn.Linear(width, 64))
    for p in model.parameters():
        nn.init.normal_(p, std=0.02) if p.dim() > 1 else nn.init.zeros_(p)
    return model


def test_a_constant_std_is_measured_and_shrunk_like_muP():
    plan = mutransfer.plan(constant_std, base={"width": 32}, target={"width": 512})
    assert plan.init_law == "measured"
    assert plan.init_laws["1.weight"] == "constant" and plan.init_laws["1.bias"] == "zero"
    assert std_ratio(constant_std, plan, "1.weight", 32, 512) == pytest.approx(0.25, rel=0.1)
    assert std_ratio(constant_std, plan, "2.weight", 32, 512) == pytest.approx(1 / 16, rel=0.1)
    assert "constant" in plan.summary() and "0.25" in plan.summary()  # init x: what init_ will do


def test_a_readout_already_at_one_over_fan_in_is_left_alone():
    def mup_aware(width: int) -> nn.Module:
        model = nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, width), nn.Linear(width, 3))
        nn.init.normal_(model[3].weight, std=1.0 / width)
        return model

    plan = mutransfer.plan(mup_aware, base={"width": 32}, target={"width": 256})
    assert plan.init_laws["3.weight"] == "1/fan_in"
    assert plan.init_factor(plan["3.weight"]) == pytest.approx(1.0)


def test_an_init_that_follows_no_law_is_refused_with_the_tensor_named():
    def odd(width: int) -> nn.Module:
        model = nn.Sequential(nn.Linear(8, width), nn.Linear(width, width), nn.Linear(width, 3))
        nn.init.normal_(model[1].weight, std=float(width) ** -2)
        return model

    with pytest.raises(mutransfer.MutransferError, match=r"1.weight \(width\*\*-2.0"):
        mutransfer.plan(odd, base={"width": 32}, target={"width": 256})
    plan = mutransfer.plan(odd, base={"width": 32}, target={"width": 256}, init_law="constant")  # told: wins
    assert plan.init_law == "constant"


def test_a_raw_transformers_factory_gets_muP_init_with_no_argument():
    transformers = pytest.importorskip("transformers")

    def make(width: int) -> nn.Module:
        config = transformers.GPT2Config(n_embd=width, n_layer=1, n_head=4, vocab_size=64, n_positions=16)
        return transformers.GPT2LMHeadModel(config)

    plan = mutransfer.plan(make, base={"width": 32}, target={"width": 128})
    assert plan.init_laws["transformer.h.0.mlp.c_fc.weight"] == "constant"
    assert plan.init_factor(plan["transformer.h.0.mlp.c_fc.weight"]) == pytest.approx(0.5)
    # transformers' attention hands its `scaling` to SDPA: the plan makes it 1/d_head
    assert {(s.law, s.fix) for s in plan.attention} == {("1/sqrt(d_head)", "*scaling")}
    model = plan.init_(make(128))
    assert model.transformer.h[0].attn.scaling == pytest.approx(8**0.5 / 32)


def test_the_caller_random_state_is_not_touched_by_measuring():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    mutransfer.plan(MLP, base={"width": 32}, target={"width": 128})
    torch.testing.assert_close(torch.rand(3), expected)
