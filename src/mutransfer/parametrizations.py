"""The parametrizations a check, a grid or a sweep runs, under one set of names.

``"mup"`` is the plan's (muP across width; over depth, the CompleteP plan), ``"sp"`` the model
as its code builds it with one learning rate (standard parametrization), ``"u-mup"`` the
unit-scaled muP (a plan with u-muP's absolute rules; a model that takes ``unit_scaled`` is built
with it on).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from mutransfer.errors import MutransferError

__all__ = ["NAMES", "PLANNED", "Parametrization", "check", "label"]

NAMES = {"mup": "muP", "sp": "standard", "u-mup": "u-muP"}  # name -> how tables and plots say it
PLANNED = ("mup", "u-mup")  # the parametrizations a plan applies (with their tuned multipliers)
Parametrization = Literal["mup", "sp", "u-mup"]


def label(name: str, axis: str = "width") -> str:
    """How tables and plots name a parametrization: over depth, "mup" is the CompleteP plan."""
    if name == "mup" and axis == "depth":
        return "CompleteP"
    return NAMES.get(name, name)


def check(names: str | Iterable[str], key: str = "parametrization") -> None:
    """Refuse a name that is not a parametrization, listing those that are."""
    given = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in given if n not in NAMES]
    if unknown or not given:
        raise MutransferError(
            f"{key} must be among {list(NAMES)}, got {given if not isinstance(names, str) else names!r}."
        )
