"""The one exception type users need to catch, and the number check every entry point shares."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["MutransferError", "MutransferWarning", "check_number"]


class MutransferError(ValueError):
    """Raised for bad input or an inconsistent model/plan.

    Messages say what was received, what was expected, and how to fix it.
    """


class MutransferWarning(UserWarning):
    """Something that makes a plan or check not muP, or less reliable, but need not stop it:
    e.g. attention the plan cannot fix, a coordinate check too small to be trusted."""


def check_number(value: Any, name: str, *, positive: bool = False) -> float:
    """``value`` as a float, refusing what is not a finite number >= 0 (> 0 when ``positive``):
    a nan learning rate trains nothing and says nothing, so it stops here instead."""
    ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise MutransferError(f"{name} must be a finite number {bound}, got {value!r}.")
    return float(value)
