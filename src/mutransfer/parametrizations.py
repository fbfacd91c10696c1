"""The parametrizations a check, a grid or a sweep runs, under one set of names.

``"mup"`` is the plan's (muP across width; over depth, the CompleteP plan), ``"sp"`` the model
as its code builds it with one learning rate (standard parametrization).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from mutransfer.errors import MutransferError

__all__ = ["NAMES", "Parametrization", "check", "label"]

NAMES = {"mup": "muP", "sp": "standard"}  # name -> how tables and plots say it
Parametrization = Literal["mup", "sp"]


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
