"""How a plan applies u-muP (``rules.unit_rule``'s table) to a model: unit init and the hooks.

Kept beside ``plan.py`` so the plan reads as muP's and calls here for the one other
parametrization; what the model's forward pass must do itself is in ``mutransfer.unit``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from mutransfer.errors import MutransferError
from mutransfer.scaling.forward import ScaleInput, ScaleLayer
from mutransfer.scaling.roles import ParamRole, Role
from mutransfer.scaling.rules import Multipliers, fans, is_embedding, unit_rule

__all__ = ["attach_unit_", "check_unit", "folded", "unit_factors", "unit_hooks", "unit_init_"]


def check_unit(optimizer_family: str, depth: object | None) -> None:
    """u-muP's rules are Adam's and width's: refuse the rest before anything is applied."""
    if optimizer_family != "adam":
        raise MutransferError(
            f"u-muP's learning-rate rules are Adam's (the paper's); optimizer family {optimizer_family!r} "
            "has none here. Fix: use Adam or AdamW, or parametrization='mup'."
        )
    if depth is not None:
        raise MutransferError(
            "u-muP's depth rules are not implemented; a depth plan is muP's (CompleteP). Fix: plan "
            "over width only, or use parametrization='mup' for depth."
        )


def unit_factors(p: ParamRole, optimizer_family: str, depth: object | None) -> tuple[float, Multipliers]:
    """``Plan.factors`` under u-muP: the absolute init std (1 where the init is the model's) and
    the optimizer's factors."""
    check_unit(optimizer_family, depth)
    rule = unit_rule(p)
    return 1.0 if rule.init is None else rule.init, Multipliers(lr=rule.lr, eps=rule.eps)


@torch.no_grad()
def unit_init_(
    params: Iterable[ParamRole],
    tensors: Mapping[str, torch.Tensor],
    zeroed: set[str],
    role_scale: Mapping[str, float],
) -> None:
    """Every matrix drawn from N(0, std**2) (std 1, or its folded multiplier), every bias zeroed,
    norm gains as built; ``role_scale`` multiplies a role's std (a tuned ``init_scale``)."""
    for p in params:
        t = tensors[p.name]
        if not t.requires_grad:
            continue
        factor = role_scale.get(p.role.value, 1.0)
        rule = unit_rule(p)
        if any(n in zeroed for n in p.names) or (rule.init is None and p.name.endswith("bias")):
            t.zero_()
        elif rule.init is not None:
            t.normal_(0.0, rule.init * factor)
        elif factor != 1.0:
            t.mul_(factor)


def unit_hooks(params: Iterable[ParamRole], tied_readouts: Iterable[str]) -> dict[str, object]:
    """Module name -> the hook that applies its weight's multiplier (a tied readout scales its
    input by 1/fan_in, since its weight takes the embedding's rules)."""
    params = list(params)
    hooks: dict[str, object] = {}
    for p in params:
        rule = unit_rule(p)
        if rule.hooked:
            module = p.name.rsplit(".", 1)[0]
            bias_dim = 1 if p.layer.startswith("Conv") and p.layer != "Conv1D" else -1
            hooks[module] = ScaleLayer(rule.forward, rule.backward, bias_dim)
    for name in tied_readouts:
        tensor = next(p for p in params if f"{name}.weight" in p.names)
        hooks[name] = ScaleInput(1.0 / fans(tensor)[1])
    return hooks


def attach_unit_(modules: Mapping[str, nn.Module], params: Iterable[ParamRole], tied: Iterable[str]) -> None:
    """Register ``unit_hooks`` on the modules (by canonical name)."""
    for name, hook in unit_hooks(params, tied).items():
        if isinstance(hook, ScaleInput):
            modules[name].register_forward_pre_hook(hook)
        else:
            modules[name].register_forward_hook(hook)


def folded(params: Iterable[ParamRole]) -> list[str]:
    """Tensors whose multiplier is folded into init and LR (no layer a hook can scale)."""
    return [
        p.name
        for p in params
        if p.role not in (Role.VECTOR, Role.FIXED) and not unit_rule(p).hooked and not is_embedding(p)
    ]
