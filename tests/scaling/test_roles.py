"""Roles and multipliers against the table in DESIGN.md section 2, and the inference errors."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from torch import nn

import mutransfer
from mutransfer import MutransferError
from mutransfer.models import GPT, MLP, ResNet


def expected_adam(role: str, m: float) -> dict[str, float]:
    """DESIGN.md section 2, Adam-like, written out independently of the library."""
    return {
        "input": {"init": 1.0, "lr": 1.0, "eps": 1 / m},
        "vector": {"init": 1.0, "lr": 1.0, "eps": 1 / m},
        "hidden": {"init": 1 / math.sqrt(m), "lr": 1 / m, "eps": 1 / m},
        "output": {"init": 1 / m, "lr": 1 / m, "eps": 1.0},
        "fixed": {"init": 1.0, "lr": 1.0, "eps": 1.0},
    }[role]


def expected_sgd_lr(role: str, m: float) -> float:
    return {"input": m, "vector": m, "hidden": 1.0, "output": 1 / m, "fixed": 1.0}[role]


def check_table(plan: mutransfer.Plan, roles: dict[str, str]) -> None:
    from mutransfer.scaling.rules import init_multiplier, multipliers

    m = plan.width_multiplier
    assert plan.roles() == roles
    for p in plan.params:
        want = expected_adam(p.role.value, m)
        adam = multipliers(p, m, "adam")
        assert init_multiplier(p) == pytest.approx(want["init"]), p.name
        assert adam.lr == pytest.approx(want["lr"]), p.name
        assert adam.eps == pytest.approx(want["eps"]), p.name
        assert multipliers(p, m, "sgd").lr == pytest.approx(expected_sgd_lr(p.role.value, m)), p.name


def test_mlp_roles_and_multipliers():
    plan = mutransfer.plan(MLP, base={"width": 32}, target={"width": 256})
    assert plan.width_multiplier == 8
    check_table(
        plan,
        {
            "input.weight": "input",
            "input.bias": "vector",
            "hidden.0.weight": "hidden",
            "hidden.0.bias": "vector",
            "hidden.1.weight": "hidden",
            "hidden.1.bias": "vector",
            "readout.weight": "output",
            "readout.bias": "fixed",
        },
    )


def gpt_roles(depth: int, tied: bool) -> dict[str, str]:
    roles = {"wte.weight": "input", "wpe.weight": "input", "ln_f.weight": "vector", "ln_f.bias": "vector"}
    roles["lm_head.weight"] = "input" if tied else "output"
    for i in range(depth):
        b = f"blocks.{i}."
        roles |= {
            b + n: "hidden" for n in ("attn.qkv.weight", "attn.proj.weight", "fc.weight", "fc_proj.weight")
        }
        roles |= {
            b + n: "vector"
            for n in (
                "ln1.weight",
                "ln1.bias",
                "ln2.weight",
                "ln2.bias",
                "attn.proj.bias",
                "fc.bias",
                "fc_proj.bias",
            )
        }
    return roles


@pytest.mark.parametrize("tied", [False, True])
def test_gpt_roles_and_multipliers(tied):
    plan = mutransfer.plan(
        partial(GPT, depth=2, tie_embeddings=tied), base={"width": 64}, target={"width": 256}
    )
    assert plan.width_multiplier == 4
    check_table(plan, gpt_roles(2, tied))
    if tied:
        # one tensor under two names, embedding rules, readout input scaled by 1/m
        assert plan["lm_head.weight"] is plan["wte.weight"]
        assert plan.tied_readouts == ("lm_head",)
    else:
        assert plan.tied_readouts == ()


def test_cnn_roles_kernel_dims_are_not_fans():
    plan = mutransfer.plan(ResNet, base={"width": 8}, target={"width": 32})
    roles = {
        "stem.weight": "input",
        "stem.bias": "vector",
        "readout.weight": "output",
        "readout.bias": "fixed",
    }
    for i in range(2):
        roles |= {f"blocks.{i}.conv{j}.weight": "hidden" for j in (1, 2)}
        roles |= {f"blocks.{i}.norm{j}.{n}": "vector" for j in (1, 2) for n in ("weight", "bias")}
    check_table(plan, roles)
    conv = plan["blocks.0.conv1.weight"]
    assert (conv.m_in, conv.m_out) == (4, 4)


class RawParams(nn.Module):
    """Parameters registered directly on a module, the way ViTs and custom layers do."""

    def __init__(self, width: int = 16, tokens: int = 5):
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(tokens, width))  # one scaling dim: embedding-like
        self.mix = nn.Parameter(torch.randn(width, width))  # two: hidden
        self.gain = nn.Parameter(torch.ones(width))
        self.temperature = nn.Parameter(torch.ones(()))
        self.head = nn.Parameter(torch.randn(3, width))  # a raw readout: needs an override

    def forward(self, x):
        return (x + self.pos) @ self.mix * self.gain @ self.head.T * self.temperature


def test_raw_parameters_and_overrides():
    plan = mutransfer.plan(RawParams, base={"width": 16}, target={"width": 64})
    assert plan.roles() == {
        "pos": "input",
        "mix": "hidden",
        "gain": "vector",
        "temperature": "fixed",
        "head": "input",
    }
    plan = mutransfer.plan(RawParams, base={"width": 16}, target={"width": 64}, overrides={"head": "output"})
    assert plan.roles()["head"] == "output"
    assert plan["head"].m_in == 4


def test_override_pattern_that_matches_nothing_is_an_error():
    with pytest.raises(MutransferError, match=r"'lm_head\*' matches no parameter"):
        mutransfer.plan(RawParams, base={"width": 16}, target={"width": 64}, overrides={"lm_head*": "output"})
    with pytest.raises(MutransferError, match="unknown role 'readout'"):
        mutransfer.plan(RawParams, base={"width": 16}, target={"width": 64}, overrides={"head": "readout"})


def test_probe_tells_roles_when_base_equals_target():
    plan = mutransfer.plan(MLP, base={"width": 32}, target={"width": 32})
    assert plan.is_identity
    assert plan.roles()["hidden.0.weight"] == "hidden"
    assert plan["hidden.0.weight"].m_in == 1.0


# ---- errors ------------------------------------------------------------------------------


def grows_a_layer(width: int) -> nn.Module:
    layers = [nn.Linear(4, width), nn.Linear(width, 2)]
    if width > 32:
        layers.insert(1, nn.Linear(width, width))
    return nn.Sequential(*layers)


def test_names_differ_between_shapes():
    with pytest.raises(MutransferError, match=r"parameter names differ.*only at target"):
        mutransfer.plan(grows_a_layer, base={"width": 16}, target={"width": 64})


def test_more_than_two_scaling_dims():
    def cube(width):
        m = nn.Module()
        m.w = nn.Parameter(torch.zeros(width, width, width))
        return m

    with pytest.raises(MutransferError, match=r"'w'.*3 dimensions that scale"):
        mutransfer.plan(cube, base={"width": 4}, target={"width": 8})


def test_a_dimension_growing_at_its_own_ratio_takes_its_own_multiplier():
    # a Mamba-like conv over d_inner + 2 * d_state: 16 + 8 -> 64 + 8 grows 3x while the width grows 4x
    def model(width):
        return nn.Sequential(nn.Linear(4, width), nn.Linear(width, width + 8), nn.Linear(width + 8, 3))

    plan = mutransfer.plan(model, base={"width": 16}, target={"width": 64})
    assert plan.width_multiplier == 4
    assert (plan["1.weight"].m_in, plan["1.weight"].m_out) == (4, 3)
    assert (plan["2.weight"].role.value, plan["2.weight"].m_in) == ("output", 3)
    assert plan["1.bias"].m_out == 3
    groups = {g["lr_scale"] for g in plan.param_groups(model(64), lr=1.0)}
    assert groups == {1.0, 1 / 4, 1 / 3}  # input and vectors, the hidden 1/m_in, the readout 1/m_in


def test_a_dimension_that_shrinks_while_the_width_grows():
    def model(width):
        return nn.Sequential(nn.Linear(4, width), nn.Linear(width, 96 - width), nn.Linear(96 - width, 3))

    with pytest.raises(MutransferError, match=r"'1.weight' scales by 0.5 while the width scales by 2"):
        mutransfer.plan(model, base={"width": 32}, target={"width": 64})


def test_nothing_scales():
    with pytest.raises(MutransferError, match="nothing scales"):
        mutransfer.plan(lambda width: nn.Linear(8, 8), base={"width": 16}, target={"width": 64})


def test_kernel_dimension_that_scales():
    def conv(width):
        return nn.Sequential(nn.Conv2d(3, width, 3), nn.Conv2d(width, width, kernel_size=width // 4))

    with pytest.raises(MutransferError, match="kernel dimension"):
        mutransfer.plan(conv, base={"width": 8}, target={"width": 16})


def test_factory_that_reads_values_on_meta():
    def reads_values(width):
        model = nn.Linear(width, width)
        model.weight.sum().item()
        return model

    with pytest.raises(MutransferError, match="failed on the meta device with shape"):
        mutransfer.plan(reads_values, base={"width": 8}, target={"width": 16})


def test_the_target_is_built_on_meta_only():
    built = []

    def factory(width):
        model = MLP(width=width)
        built.append((model.input.weight.device.type, width))
        return model

    plan = mutransfer.plan(factory, base={"width": 8}, target={"width": 4096})
    assert ("meta", 4096) in built
    assert {w for device, w in built if device != "meta"} == {8, 32}  # the init law, at base and 4x
    assert plan.init_law == "measured"


def test_probe_is_required_when_several_keywords_could_be_the_width():
    shape = {"width": 32, "depth": 2}
    with pytest.raises(MutransferError, match="pass probe="):
        mutransfer.plan(MLP, base=shape, target=shape)
    plan = mutransfer.plan(MLP, base=shape, target=shape, probe={"width": 64, "depth": 2})
    assert plan.is_identity and plan.roles()["hidden.0.weight"] == "hidden"


def test_a_raw_tensor_used_as_a_linear_weight_is_read_as_out_by_in():
    """A router registered as a raw (experts, width) parameter: the plan's forward pass sees it
    used by F.linear, so it is an output, not the embedding-like tensor a raw shape suggests."""

    class Router(nn.Module):
        def __init__(self, width: int):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(4, width) * 0.02)

        def forward(self, x):
            return nn.functional.linear(x, self.weight)

    def model(width):
        return nn.Sequential(nn.Embedding(16, width), nn.Linear(width, width), Router(width))

    plan = mutransfer.plan(model, base={"width": 16}, target={"width": 64})
    assert plan.roles()["2.weight"] == "output"
