"""Depth (CompleteP): the plan's factors, the absorbed branch multiplier, errors, the depth check."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import mutransfer
from mutransfer import MutransferError
from mutransfer.data import stdlib
from mutransfer.models import GPT
from mutransfer.scaling.forward import ScaleOutput, plan_hooks
from training import classification_batch, train

GPT_BASE = {"width": 32, "depth": 2, "block_size": 16}
GPT_TARGET = {"width": 64, "depth": 8, "block_size": 16}


class Branch(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.fc = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(2 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, width: int, multiplier: float):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.branch = Branch(width)
        self.multiplier = multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.multiplier * self.branch(self.norm(x))


class ResidualMLP(nn.Module):
    """Pre-norm residual blocks; ``multiplier`` is CompleteP's branch factor written in the forward."""

    def __init__(self, width: int = 16, depth: int = 2, multiplier: float = 1.0):
        super().__init__()
        self.input = nn.Linear(8, width)
        self.blocks = nn.ModuleList(Block(width, multiplier) for _ in range(depth))
        self.readout = nn.Linear(width, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.input(x)
        for block in self.blocks:
            h = block(h)
        return self.readout(h)


def gpt_plan(**kw):
    return mutransfer.plan(GPT, base=GPT_BASE, target=GPT_TARGET, depth="depth", residual=GPT.residual, **kw)


# ---- the factors ------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_completep_factors_on_the_gpt(alpha):
    plan = gpt_plan(alpha=alpha)
    m, m_l = 2.0, 4.0  # width 32 -> 64, depth 2 -> 8
    a = m_l**-alpha
    assert plan.depth.multiplier == m_l and plan.depth.branch_multiplier == pytest.approx(a)

    def factors(name, family="adam"):
        return plan.factors(plan[name], family)

    # a hidden matrix inside a block: width 1/m, depth m_L**(alpha-1); eps 1/m * m_L**-alpha
    init, mult = factors("blocks.5.attn.qkv.weight")
    assert (init, mult.lr, mult.eps) == pytest.approx((m**-0.5, m_l ** (alpha - 1) / m, m_l**-alpha / m))
    # a branch end absorbs a: init x a, lr x a, eps / a
    init, mult = factors("blocks.5.fc_proj.weight")
    assert (init, mult.lr, mult.eps) == pytest.approx((a * m**-0.5, a * m_l ** (alpha - 1) / m, 1 / m))
    init, mult = factors("blocks.0.attn.proj.bias")
    assert (init, mult.lr, mult.eps) == pytest.approx((a, a * m_l ** (alpha - 1), 1 / m))
    # a norm gain inside a block
    init, mult = factors("blocks.7.ln2.weight")
    assert (init, mult.lr, mult.eps) == pytest.approx((1, m_l ** (alpha - 1), m_l**-alpha / m))
    # outside the blocks: width rules only
    for name, want in [
        ("wte.weight", (1, 1, 1 / m)),
        ("ln_f.weight", (1, 1, 1 / m)),
        ("lm_head.weight", (1 / m, 1 / m, 1)),
    ]:
        init, mult = factors(name)
        assert (init, mult.lr, mult.eps) == pytest.approx(want), name
    # SGD: blocks m_L**(2 alpha - 1), the absorbed a costs a**2, no eps
    _, mult = factors("blocks.5.attn.qkv.weight", "sgd")
    assert mult.lr == pytest.approx(m_l ** (2 * alpha - 1)) and mult.eps is None
    _, mult = factors("blocks.5.fc_proj.weight", "sgd")
    assert mult.lr == pytest.approx(a**2 * m_l ** (2 * alpha - 1))
    # Muon: a hidden matrix keeps its width factor sqrt(m_out/m_in) = 1; depth as for Adam
    _, mult = factors("blocks.5.attn.qkv.weight", "muon")
    assert mult.lr == pytest.approx(m_l ** (alpha - 1)) and mult.eps is None
    _, mult = factors("blocks.5.fc_proj.weight", "muon")
    assert mult.lr == pytest.approx(a * m_l ** (alpha - 1))


def test_depth_plan_at_base_depth_and_width_is_the_identity():
    plan = mutransfer.plan(
        GPT,
        base=GPT_BASE,
        target=GPT_BASE,
        depth="depth",
        residual=GPT.residual,
        probe={**GPT_BASE, "width": 64},
    )
    assert plan.is_identity
    torch.manual_seed(0)
    model = GPT(**GPT_BASE)
    before = {n: t.clone() for n, t in model.state_dict().items()}
    plan.init_(model)
    assert all(torch.equal(t, before[n]) for n, t in model.state_dict().items())
    groups = plan.param_groups(model, lr=1e-3, weight_decay=0.1)
    assert len(groups) == 1 and groups[0]["lr"] == 1e-3 and groups[0]["eps"] == 1e-8


def test_summary_merges_the_blocks():
    text = gpt_plan().summary()
    assert "blocks.{0..7}.attn.proj.weight" in text and "branch end" in text
    assert "depth: depth 2 -> 8 blocks (m_L 4), alpha 1: branch multiplier 0.25" in text
    assert "blocks.3." not in text


# ---- absorbing the multiplier changes nothing -----------------------------------------------------


@pytest.mark.parametrize("residual", ["blocks.*.branch.proj", "blocks.*.branch"])
@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_plan_trains_like_the_forward_multiplier(residual, alpha):
    """CompleteP written in the forward (multiplier a, block lr x m_L**(alpha-1), eps x m_L**-alpha)
    and the plan's form (a absorbed into the last layer, or a forward hook) train identically."""
    base, depth, lr, eps, wd = 2, 8, 3e-3, 1e-8, 0.1
    m_l = depth / base
    a = m_l**-alpha
    plan = mutransfer.plan(
        ResidualMLP,
        base={"width": 16, "depth": base},
        target={"width": 16, "depth": depth},
        probe={"width": 32, "depth": depth},
        depth="depth",
        residual=[residual],
        alpha=alpha,
    )
    absorbed = residual.endswith("proj")
    assert bool(plan.depth.branch_ends) == absorbed and bool(plan.depth.hooked) != absorbed

    torch.manual_seed(0)
    reference = ResidualMLP(16, depth, multiplier=a)
    ours = ResidualMLP(16, depth)
    ours.load_state_dict(reference.state_dict())
    plan.init_(ours)
    blocks = {n for n, _ in reference.named_parameters() if n.startswith("blocks.")}
    groups = [
        {
            "params": [p],
            "lr": lr * (m_l ** (alpha - 1) if n in blocks else 1),
            "eps": eps * (m_l**-alpha if n in blocks else 1),
            "weight_decay": wd / (m_l ** (alpha - 1) if n in blocks else 1),
        }
        for n, p in reference.named_parameters()
    ]
    x, y = classification_batch(32, 8, 4, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-6)
    want = train(reference, torch.optim.AdamW(groups), x, y, 20)
    got = train(ours, plan.optimizer(ours, "adamw", lr=lr, eps=eps, weight_decay=wd), x, y, 20)
    assert want[-1] < want[0]
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-4, atol=1e-5)
    assert [type(h) for _, h in plan_hooks(ours)] == ([] if absorbed else [ScaleOutput] * depth)


def test_hooks_attach_once_and_again_after_a_checkpoint():
    plan = mutransfer.plan(
        ResidualMLP,
        base={"width": 16, "depth": 2},
        target={"width": 16, "depth": 4},
        probe={"width": 32, "depth": 4},
        depth="depth",
        residual="blocks.*.branch",
    )
    torch.manual_seed(0)
    model = plan.init_(ResidualMLP(16, 4))
    with pytest.raises(MutransferError, match="already"):
        plan.attach_(model)
    fresh = ResidualMLP(16, 4)
    fresh.load_state_dict(model.state_dict())
    x, _ = classification_batch(8, 8, 4, seed=2)
    with torch.no_grad():
        assert not torch.equal(fresh(x), model(x))  # the hook is not in the state_dict
        plan.attach_(fresh)
        assert torch.equal(fresh(x), model(x))


def test_depth_plan_round_trips_through_json(tmp_path):
    plan = gpt_plan(alpha=0.75)
    plan.save(tmp_path / "plan.json")
    assert mutransfer.load_plan(tmp_path / "plan.json") == plan
    old = mutransfer.plan(GPT, base={"width": 32}, target={"width": 64}).to_dict()
    old["format"] = 1
    del old["depth"]
    assert mutransfer.Plan.from_dict(old).depth is None  # width-only plans saved before depth still load


# ---- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"residual": ["blocks.*.attn.out"]}, r"residual pattern 'blocks.\*.attn.out' matches no module"),
        ({"residual": ["lm_head"]}, "not inside a block repeated with 'depth'"),
        (
            {"residual": ["blocks.0.attn.proj"]},
            r"blocks \['blocks.1', 'blocks.2', 'blocks.3'\] have no residual branch",
        ),
        ({"residual": []}, "depth scaling needs the residual branches"),
        ({"residual": ["blocks.*"]}, "matches the whole block 'blocks.0'"),
        ({"residual": ["blocks.*.attn", "blocks.*.attn.proj"]}, "one inside the other"),
        ({"residual": GPT.residual, "alpha": 2.0}, r"alpha must lie in \[0.5, 1.0\]"),
    ],
)
def test_bad_depth_declarations_fail_loudly(kwargs, match):
    kwargs = {"depth": "depth", **kwargs}
    with pytest.raises(MutransferError, match=match):
        mutransfer.plan(GPT, base=GPT_BASE, target=GPT_TARGET, **kwargs)


def test_depth_keyword_errors():
    with pytest.raises(MutransferError, match="residual= needs depth="):
        mutransfer.plan(GPT, base=GPT_BASE, target=GPT_TARGET, residual=GPT.residual)
    with pytest.raises(MutransferError, match="unless it counts residual blocks: then name it with depth="):
        mutransfer.plan(GPT, base=GPT_BASE, target=GPT_TARGET)
    with pytest.raises(MutransferError, match="no parameter is repeated with 'n_head'"):
        mutransfer.plan(
            GPT,
            base={**GPT_BASE, "n_head": 2},
            target={**GPT_TARGET, "n_head": 4},
            depth="n_head",
            residual=GPT.residual,
        )
    with pytest.raises(MutransferError, match="the base shape must give 'depth' as a positive number"):
        mutransfer.plan(GPT, base={"width": 32}, target=GPT_TARGET, depth="depth", residual=GPT.residual)


# ---- the coordinate check over depth ----------------------------------------------------------------


def test_depth_coordinate_check_passes_completep_and_flags_standard():
    data = stdlib(block_size=32)
    settings = dict(
        depths=[2, 4, 8, 16], residual=GPT.residual, data=data, shape={"width": 32, "block_size": 32}, seeds=2
    )
    complete = mutransfer.coord_check(GPT, **settings)
    standard = mutransfer.coord_check(GPT, parametrization="sp", **settings)
    assert complete.passed, complete.table()
    assert not standard.passed
    assert complete.axis == standard.axis == "depth"
    stream = {m.name: m for m in standard.failures}["blocks.*"]  # the residual stream grows with depth
    assert stream.kind == "block" and stream.rms_slope > 0.45
    assert {m.name: m for m in complete.modules}["blocks.*"].rms_slope < 0
    text = standard.table()
    assert "exponent s of depth**s" in text and "residual branches are not scaled" in text
    assert mutransfer.CoordCheck.from_dict(standard.to_dict()) == standard


def test_depth_check_and_grid_need_residual_and_one_axis():
    data = stdlib(block_size=32)
    with pytest.raises(MutransferError, match="depths= needs residual="):
        mutransfer.coord_check(GPT, depths=[2, 4, 8], data=data)
    with pytest.raises(MutransferError, match=r"exactly one of widths= .* or depths="):
        mutransfer.grid(GPT, widths=[32, 64], depths=[2, 4], lrs=[1e-3, 2e-3, 4e-3], data=data)


def test_depth_grid_resumes_and_labels_depth(tmp_path):
    data = stdlib(block_size=16)
    settings = dict(
        depths=[1, 2],
        residual=GPT.residual,
        lrs=[2.0**-8, 2.0**-7, 2.0**-6],
        data=data,
        shape={"width": 16, "block_size": 16},
        steps=3,
        batch_size=2,
        eval_batches=1,
        path=tmp_path / "grid.json",
    )
    result = mutransfer.grid(GPT, **settings)
    assert result.axis == "depth" and result.protocol["residual"] == list(GPT.residual)
    assert "depth x LR grid" in result.table() and "CompleteP (base depth 1)" in result.table()
    # at the base depth CompleteP is the standard model: same losses
    for lr in result.lrs:
        assert result.loss("mup", 1, lr) == result.loss("sp", 1, lr)
    assert not math.isclose(result.loss("mup", 2, result.lrs[0]), result.loss("sp", 2, result.lrs[0]))
    again = mutransfer.grid(GPT, **settings)  # everything is on file: nothing runs
    assert again.cells == result.cells
