"""How a factory's own init scales with width, measured instead of assumed.

muP prescribes each tensor's init std at the target relative to the base (``rules.init_multiplier``);
``Plan.init_`` multiplies the user's init by the ratio of that to what the user's init already
does. PyTorch's layers shrink with fan_in (``U(+-1/sqrt(fan_in))``, biases included);
transformers keeps one std (``initializer_range``) at every width; a muP-aware model may already
shrink its readout like ``1/fan_in``. Taking one of these on trust is how a plan goes silently
wrong, so the plan builds the factory at two small shapes on the CPU and reads, for every tensor
that scales, the exponent ``e`` of ``rms ~ width**e``: 0 (constant), -1/2 (fan_in) or -1.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mutransfer.errors import MutransferError
from mutransfer.scaling.roles import ParamRole, Role, canonical_name

__all__ = ["LAWS", "Measured", "check_measured", "measure", "user_growth"]

LAWS = {"constant": 0.0, "fan_in": -0.5, "1/fan_in": -1.0}  # name -> exponent of rms against width
_TOLERANCE = 0.12  # how far a measured exponent may sit from its law beyond its sampling noise
_MAX_PARAMETERS = 50_000_000  # both models together; above it the plan does not build them
_LINEAR_LIKE = re.compile(r"Linear|Conv")  # layers whose default bias init shrinks with their fan_in


@dataclass(frozen=True)
class Measured:
    """Per tensor, the law its init follows (``LAWS`` key; ``"zero"`` for an all-zero tensor),
    and the tensors that follow none, with their measured exponent."""

    laws: Mapping[str, str]
    unexplained: Mapping[str, float]


def measure(
    make_model: Callable[..., nn.Module],
    shapes: tuple[Mapping[str, Any], Mapping[str, Any]],
    params: tuple[ParamRole, ...],
    width_ratio: float,
) -> Measured | str:
    """Build the factory at the two ``shapes`` (CPU, seeded, the caller's RNG untouched) and
    read each scaling tensor's law; a string says why it was not measured."""
    sizes = []
    for shape in shapes:
        with torch.device("meta"):
            sizes.append(sum(p.numel() for p in make_model(**shape).parameters()))
    if sum(sizes) > _MAX_PARAMETERS:
        return f"the models to measure it on hold {sum(sizes):,} parameters"
    rms = []
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        for shape in shapes:
            torch.manual_seed(0)
            model = make_model(**shape)
            rms.append({canonical_name(n): _rms(t) for n, t in model.named_parameters()})
    laws: dict[str, str] = {}
    unexplained: dict[str, float] = {}
    undecided: list[ParamRole] = []
    for p in params:
        if p.role is Role.FIXED or p.name not in rms[0] or p.name not in rms[1]:
            continue
        (b, n), (o, _) = rms[0][p.name], rms[1][p.name]
        if b == 0.0 and o == 0.0:
            laws[p.name] = "zero"
            continue
        if b == 0.0 or o == 0.0:
            unexplained[p.name] = math.inf if b == 0.0 else -math.inf
            continue
        exponent = math.log(o / b) / math.log(width_ratio)
        # rms of n samples has a relative spread of about 0.75/sqrt(n); two of them, over the ratio
        noise = 0.75 * math.sqrt(2.0 / n) / abs(math.log(width_ratio))
        fits = [law for law, e in LAWS.items() if abs(exponent - e) <= _TOLERANCE + 3 * noise]
        if len(fits) == 1:
            laws[p.name] = fits[0]
        elif fits:
            undecided.append(p)  # too few entries to tell: as the tensors of its role do
        else:
            unexplained[p.name] = exponent
    by_role = {
        role: Counter(laws[p.name] for p in params if p.role is role and laws.get(p.name) in LAWS)
        for role in Role
    }
    for p in undecided:
        common = by_role[p.role].most_common(1)
        laws[p.name] = common[0][0] if common else ("fan_in" if p.role is not Role.INPUT else "constant")
    return Measured(laws, unexplained)


def user_growth(p: ParamRole, law: str, plan_params: Mapping[str, ParamRole]) -> float:
    """How much the user's init std at the target exceeds the base's, under ``law``: a law name
    from ``LAWS`` for this tensor, or a plan-wide ``"fan_in"`` / ``"constant"``.

    Plan-wide ``"fan_in"`` is PyTorch's default: matrices shrink with their own fan_in, and so
    does a Linear or Conv layer's bias, with its weight's (TP5 Table 3 holds every bias
    Theta(1), as microsoft/mup does when it sets base shapes); other vectors and input tensors
    keep their init."""
    if law in ("zero", "constant"):
        return 1.0
    grown = p.m_in if p.role in (Role.HIDDEN, Role.OUTPUT) else p.m_out
    if law != "fan_in" or p.role in (Role.HIDDEN, Role.OUTPUT):
        return grown ** LAWS[law] if law in LAWS else 1.0
    if p.role is Role.VECTOR and p.name.endswith("bias") and _LINEAR_LIKE.search(p.layer):
        weight = plan_params.get(p.name[: -len("bias")] + "weight")
        if weight is not None and weight.role in (Role.HIDDEN, Role.OUTPUT):
            return weight.m_in**-0.5
    return 1.0


def _rms(t: torch.Tensor) -> tuple[float, int]:
    return t.detach().float().pow(2).mean().sqrt().item(), t.numel()


def check_measured(measured: Measured) -> None:
    """Refuse tensors whose init follows no known law: ``init_`` could not know what to do."""
    if measured.unexplained:
        listed = ", ".join(f"{n} (width**{e:+.2f})" for n, e in list(measured.unexplained.items())[:6])
        raise MutransferError(
            f"the init of {len(measured.unexplained)} tensor(s) grows with the width neither like a "
            f"constant std, nor like 1/sqrt(fan_in), nor like 1/fan_in: {listed}. The plan cannot tell what "
            "muP's init should multiply it by. Fix: pass init_law='fan_in' or 'constant' to "
            "mutransfer.plan (what your init does), or init these tensors with one of those laws."
        )
