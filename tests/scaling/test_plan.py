"""Applying a plan: init, param groups, identity at base, plain-data round trips, errors."""

from __future__ import annotations

import copy
import json
import math
from functools import partial
from pathlib import Path

import pytest
import torch

import mutransfer
import training
from mutransfer import MutransferError
from mutransfer.models import GPT, MLP
from mutransfer.scaling.forward import readout_hooks
from training import classification_batch


def tiny_gpt(**kw):
    return partial(GPT, depth=1, block_size=16, **kw)


def train(model, optimizer, steps=5):
    return training.train(model, optimizer, *classification_batch(32, 784, 10, seed=0), steps)


# ---- identity at base ----------------------------------------------------------------------


def test_at_base_shape_model_and_training_are_the_users_own():
    plan = mutransfer.plan(MLP, base={"width": 64}, target={"width": 64})
    torch.manual_seed(0)
    original = MLP(width=64)
    user, ours = copy.deepcopy(original), copy.deepcopy(original)  # same memory layout for both
    plan.init_(ours)
    for a, b in zip(user.parameters(), ours.parameters(), strict=True):
        assert torch.equal(a, b)

    groups = plan.param_groups(ours, lr=1e-3, weight_decay=0.1, eps=1e-8)
    assert len(groups) == 1
    assert [id(p) for p in groups[0]["params"]] == [id(p) for p in ours.parameters()]
    assert (groups[0]["lr"], groups[0]["weight_decay"], groups[0]["eps"]) == (1e-3, 0.1, 1e-8)

    sp = train(user, torch.optim.AdamW(user.parameters(), lr=1e-3, weight_decay=0.1))
    mup = train(ours, torch.optim.AdamW(groups))
    assert sp == mup  # bitwise


def test_at_base_shape_tied_model_gets_no_hook():
    plan = mutransfer.plan(tiny_gpt(tie_embeddings=True), base={"width": 32}, target={"width": 32})
    model = plan.init_(tiny_gpt(tie_embeddings=True)(width=32))
    assert readout_hooks(model) == []


# ---- init ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("law", "hidden", "readout", "bias"),
    [
        ("fan_in", 1.0, 0.5, 2.0),
        ("constant", 0.5, 0.25, 1.0),
        ("measured", 1.0, 0.5, 2.0),
        (None, 1.0, 0.5, 2.0),
    ],
)
def test_init_rescales_by_role_and_law(law, hidden, readout, bias):
    plan = mutransfer.plan(MLP, base={"width": 32}, target={"width": 128})  # m = 4
    torch.manual_seed(0)
    before = MLP(width=128)
    after = plan.init_(copy.deepcopy(before), init_law=law)
    factors = {
        "input.weight": 1.0,
        "input.bias": 1.0,
        "hidden.0.weight": hidden,
        "hidden.0.bias": bias,  # shrank with its layer's fan_in: muP holds every bias Theta(1)
        "readout.weight": readout,
        "readout.bias": bias,  # fixed size, but PyTorch's bound shrinks with the readout's fan_in
    }
    for name, factor in factors.items():
        torch.testing.assert_close(after.get_parameter(name), before.get_parameter(name) * factor)


def test_init_std_follows_mup_for_pytorch_default_init():
    """With PyTorch's default Linear init, the readout std falls like 1/width (muP), not 1/sqrt(width)."""
    stds = {}
    for width in (64, 1024):
        plan = mutransfer.plan(MLP, base={"width": 64}, target={"width": width})
        torch.manual_seed(0)
        model = plan.init_(MLP(width=width))
        stds[width] = (model.hidden[0].weight.std().item(), model.readout.weight.std().item())
    assert stds[1024][0] / stds[64][0] == pytest.approx(1 / 4, rel=0.05)  # 1/sqrt(16)
    assert stds[1024][1] / stds[64][1] == pytest.approx(1 / 16, rel=0.1)  # 1/16


def test_zero_patterns():
    plan = mutransfer.plan(tiny_gpt(), base={"width": 32}, target={"width": 64})
    model = plan.init_(tiny_gpt()(width=64), zero=["lm_head.weight", "*.attn.qkv.weight"])
    assert model.lm_head.weight.abs().sum() == 0
    assert model.blocks[0].attn.qkv.weight.abs().sum() == 0
    assert model.blocks[0].fc.weight.abs().sum() > 0
    with pytest.raises(MutransferError, match="'q_proj' matches no parameter"):
        plan.init_(tiny_gpt()(width=64), zero=["q_proj"])


def test_role_scales_multiply_init_and_lr_on_top_of_mup():
    plan = mutransfer.plan(MLP, base={"width": 32}, target={"width": 128})
    torch.manual_seed(0)
    plain = plan.init_(MLP(width=128))
    torch.manual_seed(0)
    scaled = plan.init_(MLP(width=128), scale={"output": 0.5, "hidden": 2.0})
    assert torch.equal(scaled.readout.weight, 0.5 * plain.readout.weight)
    assert torch.equal(scaled.hidden[0].weight, 2.0 * plain.hidden[0].weight)
    assert torch.equal(scaled.input.weight, plain.input.weight)
    lrs = {tuple(g["roles"]): g["lr"] for g in plan.param_groups(scaled, lr=1.0, lr_scale={"output": 3.0})}
    assert lrs[("output",)] == pytest.approx(3.0 / 4) and lrs[("hidden",)] == pytest.approx(1 / 4)
    with pytest.raises(MutransferError, match=r"lr_scale has unknown roles \['readout'\]"):
        plan.param_groups(scaled, lr=1.0, lr_scale={"readout": 2.0})


def test_init_twice_is_an_error_not_double_scaling():
    plan = mutransfer.plan(MLP, base={"width": 32}, target={"width": 128})
    model = plan.init_(MLP(width=128))
    snapshot = copy.deepcopy(model.state_dict())
    with pytest.raises(MutransferError, match="already initialised"):
        plan.init_(model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshot[k])


def test_tied_readout_hook_scales_logits_once():
    plan = mutransfer.plan(tiny_gpt(tie_embeddings=True), base={"width": 32}, target={"width": 128})
    torch.manual_seed(0)
    model = tiny_gpt(tie_embeddings=True)(width=128)
    idx = torch.randint(0, 256, (2, 16))
    plan.init_(model)
    h = model.ln_f(model.blocks[0](model.wte(idx) + model.wpe(torch.arange(16))))  # hooks only on lm_head
    assert [name for name, _ in readout_hooks(model)] == ["lm_head"]
    torch.testing.assert_close(model(idx), model.lm_head.weight.matmul((h / 4).unsqueeze(-1)).squeeze(-1))
    with pytest.raises(MutransferError, match="already carries"):
        plan.attach_(model)


# ---- param groups --------------------------------------------------------------------------


def test_param_groups_partition_and_scale():
    plan = mutransfer.plan(tiny_gpt(), base={"width": 32}, target={"width": 256})  # m = 8
    model = plan.init_(tiny_gpt()(width=256))
    groups = plan.param_groups(model, lr=1e-2, weight_decay=0.1, eps=1e-8)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())  # each tensor exactly once
    by_role = {tuple(g["roles"]): g for g in groups}
    assert set(by_role) == {("input", "vector"), ("hidden",), ("output",)}
    hidden, out = by_role[("hidden",)], by_role[("output",)]
    assert hidden["lr"] == pytest.approx(1e-2 / 8) and hidden["eps"] == pytest.approx(1e-8 / 8)
    assert out["lr"] == pytest.approx(1e-2 / 8) and out["eps"] == pytest.approx(1e-8)
    # independent weight decay: lr * wd per step is the same in every group
    for g in groups:
        assert g["lr"] * g["weight_decay"] == pytest.approx(1e-2 * 0.1)
    coupled = plan.param_groups(model, lr=1e-2, weight_decay=0.1, independent_weight_decay=False)
    assert {g["weight_decay"] for g in coupled} == {0.1}


def test_param_groups_work_with_any_optimizer_and_scheduler():
    plan = mutransfer.plan(MLP, base={"width": 32}, target={"width": 128})
    model = plan.init_(MLP(width=128))
    for make in (torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop, torch.optim.Adagrad):
        make(plan.param_groups(model, lr=1e-3))
    opt = torch.optim.SGD(plan.param_groups(model, lr=0.1, optimizer_family="sgd"), momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    ratios = [g["lr"] / 0.1 for g in opt.param_groups]
    for _ in range(3):
        opt.step()
        sched.step()
    scale = opt.param_groups[0]["lr"] / (0.1 * ratios[0])
    assert [g["lr"] / (0.1 * scale) for g in opt.param_groups] == pytest.approx(ratios)
    assert all("eps" not in g for g in plan.param_groups(model, lr=0.1, optimizer_family="sgd"))


def test_decay_vectors_false_and_frozen_parameters():
    plan = mutransfer.plan(MLP, base={"width": 32}, target={"width": 128})
    model = plan.init_(MLP(width=128))
    model.input.weight.requires_grad_(False)
    groups = plan.param_groups(model, lr=1e-3, weight_decay=0.1, decay_vectors=False)
    params = [p for g in groups for p in g["params"]]
    assert all(p is not model.input.weight for p in params)
    for g in groups:
        if g["roles"] == ["vector"]:
            assert g["weight_decay"] == 0.0


def test_unknown_optimizer_family():
    plan = mutransfer.plan(MLP, base={"width": 32}, target={"width": 128})
    with pytest.raises(
        MutransferError, match=r"unknown optimizer_family 'lamb'; choose one of \['adam', 'muon', 'sgd'\]"
    ):
        plan.param_groups(MLP(width=128), lr=1e-3, optimizer_family="lamb")


def test_model_at_the_wrong_shape():
    plan = mutransfer.plan(MLP, base={"width": 32}, target={"width": 128})
    with pytest.raises(
        MutransferError, match=r"'input.weight' has shape \(64, 784\).*target shape is \(128, 784\)"
    ):
        plan.param_groups(MLP(width=64), lr=1e-3)
    with pytest.raises(MutransferError, match="do not match the plan: missing"):
        plan.init_(MLP(width=128, depth=2))


# ---- plain data ----------------------------------------------------------------------------


def test_plan_round_trips_through_json(tmp_path):
    plan = mutransfer.plan(tiny_gpt(tie_embeddings=True), base={"width": 32}, target={"width": 96})
    again = mutransfer.Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan
    plan.save(tmp_path / "plan.json")
    assert mutransfer.load_plan(tmp_path / "plan.json") == plan
    assert math.isclose(again.width_multiplier, 3.0)


def test_unknown_plan_format():
    data = mutransfer.plan(MLP, base={"width": 32}, target={"width": 64}).to_dict() | {"format": 99}
    with pytest.raises(MutransferError, match="plan format 99 is not supported"):
        mutransfer.Plan.from_dict(data)


def test_summary_lists_every_parameter():
    plan = mutransfer.plan(tiny_gpt(tie_embeddings=True), base={"width": 32}, target={"width": 64})
    text = plan.summary()
    assert "wte.weight = lm_head.weight" in text
    for p in plan.params:
        assert p.name in text
    assert "tied readout input scaled by 1/2: lm_head" in text


# ---- already-built models ------------------------------------------------------------------


def test_plan_from_model_matches_factory_plan():
    factory = tiny_gpt(tie_embeddings=True)
    want = mutransfer.plan(factory, base={"width": 32}, target={"width": 128})
    model = factory(width=128)
    by_dims = mutransfer.plan_from_model(model, base_dims={128: 32, 384: 96, 512: 128})
    shapes = {p.name: p.base_shape for p in want.params}
    by_shapes = mutransfer.plan_from_model(model, base_shapes=shapes)
    for got in (by_dims, by_shapes):
        assert got.params == want.params
        assert got.tied_readouts == want.tied_readouts
        assert got.width_multiplier == 4


def test_plan_from_model_needs_exactly_one_description():
    with pytest.raises(MutransferError, match="exactly one of base_dims= or base_shapes="):
        mutransfer.plan_from_model(MLP(width=64))


def test_plans_saved_by_earlier_versions_still_load():
    """A transfer file written before the plan's format 3 (the demo's, kept in the repository)."""
    saved = json.loads((Path(__file__).parents[2] / "tests/data/saved/demo-2026-12-03.json").read_text())
    plan = saved["transfer"]["mup"]["plan"]
    assert plan["format"] == 2
    loaded = mutransfer.Plan.from_dict(plan)
    assert loaded.init_law == "fan_in" and len(loaded.params) == len(plan["params"]) > 0
    for bad in (0, 4, "2", None, True):
        with pytest.raises(MutransferError, match="not supported"):
            mutransfer.Plan.from_dict(plan | {"format": bad})
