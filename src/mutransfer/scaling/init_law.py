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
from typing import Any, Literal

import torch
from torch import nn

from mutransfer.errors import MutransferError
from mutransfer.factory import construct
from mutransfer.scaling.roles import ParamRole, Role, canonical_name

__all__ = ["INIT_LAWS", "InitLaw", "Measured", "check_init_law", "check_measured", "measure", "user_growth"]

InitLaw = Literal["fan_in", "constant", "measured"]
INIT_LAWS = ("fan_in", "constant", "measured")  # what a user may declare; "measured": read it

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
        sizes.append(sum(p.numel() for p in construct(make_model, shape).parameters()))
    if sum(sizes) > _MAX_PARAMETERS:
        return f"the models to measure it on hold {sum(sizes):,} parameters"
    rms = []
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        for shape in shapes:
            torch.manual_seed(0)
            model = construct(make_model, shape, "cpu")
            rms.append({canonical_name(n): _rms(t) for n, t in model.named_parameters()})
    laws: dict[str, str] = {}
    unexplained: dict[str, float] = {}
    undecided: list[ParamRole] = []
    by_name = {n: p for p in params for n in p.names}
    for p in params:
        if p.name not in rms[0] or p.name not in rms[1]:
            continue
        if p.role is Role.FIXED and _layer_fan_in(p, by_name) is None:
            continue  # nothing of it scales, not even its layer's fan_in
        (b, noise_b), (o, noise_o) = rms[0][p.name], rms[1][p.name]
        if b == 0.0 and o == 0.0:
            laws[p.name] = "zero"
            continue
        if b == 0.0 or o == 0.0:
            unexplained[p.name] = math.inf if b == 0.0 else -math.inf
            continue
        exponent = math.log(o / b) / math.log(width_ratio)
        noise = math.hypot(noise_b, noise_o) / abs(math.log(width_ratio))
        fits = [law for law, e in LAWS.items() if abs(exponent - e) <= _TOLERANCE + 3 * noise]
        if len(fits) == 1:
            laws[p.name] = fits[0]
        elif fits:
            undecided.append(p)  # too few entries to tell apart
        else:
            unexplained[p.name] = exponent
    by_role = {
        role: Counter(laws[p.name] for p in params if p.role is role and laws.get(p.name) in LAWS)
        for role in Role
    }
    for p in undecided:  # a bias as PyTorch inits it (its layer's fan_in decides), else as its role's do
        if p.name.endswith("bias") and _LINEAR_LIKE.search(p.layer):
            laws[p.name] = "constant" if _layer_fan_in(p, by_name) is None else "fan_in"
            continue
        common = by_role[p.role].most_common(1)
        laws[p.name] = common[0][0] if common else ("fan_in" if p.role is not Role.INPUT else "constant")
    return Measured(laws, unexplained)


def user_growth(p: ParamRole, law: str, plan_params: Mapping[str, ParamRole], *, measured: bool) -> float:
    """How much the user's init std at the target exceeds the base's under ``law``: this
    tensor's measured law (``measured``), or a plan-wide ``"fan_in"`` / ``"constant"``.

    The fan that sets a tensor's law is its own fan_in for a matrix, and for a Linear or Conv
    layer's bias its weight's: PyTorch's ``U(+-1/sqrt(fan_in))`` shrinks such a bias with the
    layer's width even when the bias itself does not grow (a readout's). muP holds every bias
    Theta(1) (TP5 Table 3 counts biases as input weights of fan_in 1; microsoft/mup rescales
    them when it sets base shapes). Plan-wide ``"fan_in"`` takes other vectors and input
    tensors as constant; a measured law applies to the tensor's own growth."""
    if law in ("zero", "constant") or law not in LAWS:
        return 1.0
    if p.role in (Role.HIDDEN, Role.OUTPUT):
        return p.m_in ** LAWS[law]
    layer = _layer_fan_in(p, plan_params)
    if layer is not None:
        return layer ** LAWS[law]
    return p.m_out ** LAWS[law] if measured else 1.0


def _layer_fan_in(p: ParamRole, plan_params: Mapping[str, ParamRole]) -> float | None:
    """For the bias of a Linear or Conv layer whose fan_in grows, that growth; else None."""
    if (
        p.role not in (Role.VECTOR, Role.FIXED)
        or not p.name.endswith("bias")
        or not _LINEAR_LIKE.search(p.layer)
    ):
        return None
    weight = plan_params.get(p.name[: -len("bias")] + "weight")
    return weight.m_in if weight is not None and weight.role in (Role.HIDDEN, Role.OUTPUT) else None


def _rms(t: torch.Tensor) -> tuple[float, float]:
    """The RMS of ``t``'s entries and its relative sampling error, from the spread of their squares."""
    squares = t.detach().float().pow(2).flatten()
    mean = squares.mean().item()
    if mean == 0.0 or squares.numel() < 2:
        return math.sqrt(mean), 0.0
    return math.sqrt(mean), 0.5 * squares.std().item() / mean / math.sqrt(squares.numel())


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


def check_init_law(init_law: Any) -> InitLaw:
    if init_law not in INIT_LAWS:
        raise MutransferError(
            f"init_law must be one of {list(INIT_LAWS)}, got {init_law!r} ('fan_in': std ~ 1/sqrt(fan_in), "
            "PyTorch's default; 'constant': one std at every width; 'measured': what the plan read)."
        )
    return init_law
