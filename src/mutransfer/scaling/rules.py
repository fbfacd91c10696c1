"""The muP scaling tables as data (Tensor Programs V, Table 3 form: no forward multipliers).

Every multiplier is relative to the base model, so at base shape all of them are 1.
``m`` is the model's width multiplier; ``m_in``/``m_out`` are a parameter's fan multipliers.

Adam-like (Adam, AdamW, RMSprop, Adagrad, Lion, other sign/normalised updates)::

    role              init std        lr             eps
    input / vector    sigma           eta            eps / m
    hidden            sigma/sqrt(m_in) eta / m_in     eps / m
    output            sigma / m_in    eta / m_in     eps

SGD-like::

    input / vector    lr eta * m_out
    hidden            lr eta * m_out / m_in
    output            lr eta / m_in

Adam's eps shrinks with width because, in this form, the gradient entries of every parameter
but the readout shrink like 1/width; a fixed eps would slowly take over Adam's denominator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mutransfer.errors import MutransferError
from mutransfer.scaling.roles import ParamRole, Role

__all__ = ["FAMILIES", "Multipliers", "init_multiplier", "multipliers"]


@dataclass(frozen=True)
class Multipliers:
    """Factors applied to the user's base learning rate and eps for one parameter.

    ``eps`` is None for families whose optimizers take no eps (SGD).
    """

    lr: float = 1.0
    eps: float | None = 1.0


def _adam(p: ParamRole, m: float) -> Multipliers:
    if p.role in (Role.INPUT, Role.VECTOR):
        return Multipliers(lr=1.0, eps=1.0 / m)
    if p.role is Role.HIDDEN:
        return Multipliers(lr=1.0 / p.m_in, eps=1.0 / m)
    if p.role is Role.OUTPUT:
        return Multipliers(lr=1.0 / p.m_in, eps=1.0)
    return Multipliers()


def _sgd(p: ParamRole, m: float) -> Multipliers:
    # input/vector: m_out; hidden: m_out / m_in; output: 1 / m_in; fixed: 1 (both fans are 1)
    return Multipliers(lr=p.m_out / p.m_in, eps=None)


FAMILIES: dict[str, Callable[[ParamRole, float], Multipliers]] = {"adam": _adam, "sgd": _sgd}


def multipliers(p: ParamRole, m: float, family: str) -> Multipliers:
    """Learning-rate and eps multipliers of ``p`` for an optimizer family."""
    try:
        rule = FAMILIES[family]
    except KeyError:
        raise MutransferError(
            f"unknown optimizer_family {family!r}; choose one of {sorted(FAMILIES)} "
            "('adam' covers Adam, AdamW, RMSprop, Adagrad, Lion and other normalised updates)."
        ) from None
    return rule(p, m)


def init_multiplier(p: ParamRole) -> float:
    """muP init std at target over the init std at base (the base std is sigma)."""
    if p.role is Role.HIDDEN:
        return p.m_in**-0.5
    if p.role is Role.OUTPUT:
        return 1.0 / p.m_in
    return 1.0
