"""Optimizers from a plan: Muon on hidden matrices without double scaling, SGD, schedulers, state."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import mutransfer
from mutransfer import MutransferError
from mutransfer.models import GPT, MLP
from mutransfer.optim import MuonWithAdam
from mutransfer.setup import ModelSetup, TrainSetup
from training import classification_batch, cross_entropy, train

MLP_KW = {"depth": 3, "in_features": 8, "out_features": 4}


@pytest.fixture(scope="module")
def plan():
    return mutransfer.plan(MLP, base={"width": 16, **MLP_KW}, target={"width": 64, **MLP_KW})


def model_for(plan, seed=0):
    torch.manual_seed(seed)
    return plan.init_(MLP(width=64, **MLP_KW))


def test_muon_groups_take_hidden_matrices_at_the_base_lr(plan):
    model = model_for(plan)
    groups = plan.param_groups(model, lr=0.02, weight_decay=0.1, optimizer_family="muon")
    by_tensor = {id(p): g for g in groups for p in g["params"]}
    for name, p in model.named_parameters():
        g = by_tensor[id(p)]
        if name.startswith("hidden.") and name.endswith("weight"):
            # sqrt(m_out / m_in) = 1: no Adam 1/m on top of Muon's own scaling
            assert g["optimizer"] == "muon" and g["lr"] == 0.02 and "eps" not in g, name
        else:
            assert g["optimizer"] == "adam" and "eps" in g, name
    readout = by_tensor[id(model.readout.weight)]
    assert readout["lr"] == pytest.approx(0.02 / 4) and readout["eps"] == 1e-8  # Adam's output rule


def test_one_call_builds_muon_with_adam(plan):
    model = model_for(plan)
    opt = plan.optimizer(model, "muon", lr=0.02, weight_decay=0.1)
    assert isinstance(opt, torch.optim.Optimizer) and isinstance(opt, MuonWithAdam)
    assert {g["optimizer"] for g in opt.param_groups} == {"muon", "adam"}
    muon = opt._parts["muon"]
    assert isinstance(muon, torch.optim.Muon) and all(
        g["adjust_lr_fn"] == "original" for g in muon.param_groups
    )
    x, y = classification_batch(32, 8, 4, seed=1)
    losses = train(model, opt, x, y, 10)
    assert losses[-1] < losses[0]
    assert set(opt.state) == {p for p in model.parameters()}  # both inner optimizers wrote one state


def test_muon_matches_the_two_torch_optimizers_it_wraps(plan):
    a, b = model_for(plan), model_for(plan)
    groups = plan.param_groups(b, lr=0.02, weight_decay=0.1, optimizer_family="muon")
    muon = torch.optim.Muon([g for g in groups if g["optimizer"] == "muon"])
    adam = torch.optim.AdamW([g for g in groups if g["optimizer"] == "adam"])
    x, y = classification_batch(32, 8, 4, seed=1)
    want = []
    for _ in range(5):
        loss = cross_entropy(b, x, y)
        muon.zero_grad()
        adam.zero_grad()
        loss.backward()
        muon.step()
        adam.step()
        want.append(loss.item())
    got = train(a, plan.optimizer(a, "muon", lr=0.02, weight_decay=0.1), x, y, 5)
    assert got == want


def test_muon_refuses_double_scaling_and_untagged_groups(plan):
    model = model_for(plan)
    with pytest.raises(MutransferError, match="scaled twice"):
        plan.optimizer(model, "muon", lr=0.02, muon={"adjust_lr_fn": "match_rms_adamw"})
    with pytest.raises(MutransferError, match='tagged "optimizer": "muon" or "adam"'):
        MuonWithAdam(plan.param_groups(model, lr=0.02))
    with pytest.raises(MutransferError, match="Adafactor multiplies each step by the parameter's RMS"):
        plan.optimizer(model, "adafactor", lr=0.02)
    with pytest.raises(MutransferError, match="optimizer 'lamb' is not known"):
        plan.optimizer(model, "lamb", lr=0.02)


class BiasFreeMLP(torch.nn.Module):
    """Without biases, a hidden layer's update is its matrix's alone (Adam moves biases by lr)."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.input = torch.nn.Linear(64, width, bias=False)
        self.hidden = torch.nn.Linear(width, width, bias=False)
        self.readout = torch.nn.Linear(width, 10, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(torch.relu(self.hidden(torch.relu(self.input(x.flatten(1))))))


def _adam_rule_on_muon(groups):
    """The known bug: Adam's hidden-layer 1/m_in applied to Muon's groups as well (base width 64)."""
    for g in groups:
        if g["optimizer"] == "muon":
            g["lr"] = g["lr"] * 64 / g["params"][0].shape[1]
    return MuonWithAdam(groups)


def test_muon_width_coordinate_check_keeps_hidden_updates_flat():
    """muP with Muon: nothing grows, and hidden updates do not shrink either; Adam's 1/m on top of
    Muon's own scaling makes them vanish like 1/width."""
    data = mutransfer.data.load("digits")
    settings = dict(widths=[64, 128, 256, 512], data=data, lr=0.02, steps=3, seeds=2)
    ours = mutransfer.coord_check(BiasFreeMLP, optimizer="muon", **settings)
    assert ours.passed, ours.table()
    assert abs({m.name: m for m in ours.modules}["hidden"].update_slope) < 0.25
    wrong = mutransfer.coord_check(
        BiasFreeMLP, optimizer=_adam_rule_on_muon, optimizer_family="muon", **settings
    )
    assert {m.name: m for m in wrong.modules}["hidden"].update_slope < -0.6


def test_sgd_with_momentum_from_a_plan(plan):
    model = model_for(plan)
    opt = plan.optimizer(model, "sgd", lr=0.1, momentum=0.9)
    assert isinstance(opt, torch.optim.SGD) and all(g["momentum"] == 0.9 for g in opt.param_groups)
    lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lrs[id(model.input.weight)] == pytest.approx(0.1 * 4)  # SGD: input-like lr x m_out
    assert lrs[id(model.hidden[0].weight)] == pytest.approx(0.1)  # m_out / m_in
    assert lrs[id(model.readout.weight)] == pytest.approx(0.1 / 4)
    assert all("eps" not in g for g in opt.param_groups)


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_lr_schedulers_keep_the_plans_ratios(plan, name):
    """A scheduler multiplies every group's LR by one factor: the muP ratios hold at every step."""
    model = model_for(plan)
    opt = plan.optimizer(model, name, lr=0.02, weight_decay=0.1)
    start = [g["lr"] for g in opt.param_groups]
    assert len(set(start)) > 1
    warmup = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=3)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=7)
    schedule = torch.optim.lr_scheduler.SequentialLR(opt, [warmup, cosine], milestones=[3])
    x, y = classification_batch(32, 8, 4, seed=1)
    factors = []
    for _ in range(8):
        train(model, opt, x, y, 1)
        schedule.step()
        ratios = [g["lr"] / s for g, s in zip(opt.param_groups, start, strict=True)]
        assert max(ratios) - min(ratios) < 1e-12
        factors.append(ratios[0])
    assert factors[0] == pytest.approx(0.4) and factors[2] == pytest.approx(1.0) and factors[-1] < 0.25
    if name == "muon":  # the inner optimizers see the scheduled LR: they share the group dicts
        inner = [g["lr"] for part in opt._parts.values() for g in part.param_groups]
        assert sorted(inner) == sorted(g["lr"] for g in opt.param_groups)


def test_muon_state_dict_resumes_exactly(plan):
    model = model_for(plan)
    opt = plan.optimizer(model, "muon", lr=0.02, weight_decay=0.1)
    x, y = classification_batch(32, 8, 4, seed=1)
    train(model, opt, x, y, 3)
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    saved_opt = copy.deepcopy(opt.state_dict())  # state_dict holds the live tensors
    want = train(model, opt, x, y, 2)

    resumed = MLP(width=64, **MLP_KW)
    resumed.load_state_dict(saved_model)
    opt2 = plan.optimizer(resumed, "muon", lr=0.02, weight_decay=0.1)
    opt2.load_state_dict(saved_opt)
    assert all(part.state is opt2.state for part in opt2._parts.values())
    assert train(resumed, opt2, x, y, 2) == want


def test_standard_parametrization_with_muon_needs_a_plan():
    with pytest.raises(MutransferError, match="Muon takes the hidden matrices"):
        ModelSetup(factory=MLP).build({"width": 32, **MLP_KW}, tuned=False, plan=None, lr=0.02,
                                      training=TrainSetup(data=None, optimizer="muon"), seed=0)  # fmt: skip


def test_gpt_with_muon_depth_plan_trains():
    plan = mutransfer.plan(
        GPT,
        base={"width": 32, "depth": 1, "block_size": 16},
        target={"width": 64, "depth": 2, "block_size": 16},
        depth="depth",
        residual=GPT.residual,
    )
    torch.manual_seed(0)
    model = plan.init_(GPT(width=64, depth=2, block_size=16))
    opt = plan.optimizer(model, "muon", lr=0.02, weight_decay=0.0)
    muon_lrs = {g["lr"] for g in opt.param_groups if g["optimizer"] == "muon"}
    assert muon_lrs == {0.02, 0.01}  # block matrices (alpha 1: no depth factor), branch ends x 1/2
    idx = torch.randint(0, 256, (4, 17), generator=torch.Generator().manual_seed(0))
    losses = train(model, opt, idx[:, :-1], idx[:, 1:], 5)
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
