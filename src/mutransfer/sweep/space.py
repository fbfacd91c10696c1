"""The search space: each hyperparameter is a range, a list of choices, or a fixed value.

    space = {
        "lr": Range(1e-4, 1e-1, log=True),   # sampled on a log scale
        "output_mult": [0.5, 1.0, 2.0],       # one of these
        "warmup": 0.1,                        # fixed
    }

In a config file the same reads ``lr = {low = 1e-4, high = 0.1, log = true}``. For grid search
a range needs ``points``: ``Range(2**-11, 2**-4, log=True, points=8)`` is the eight powers of two.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mutransfer.errors import MutransferError

__all__ = ["Range", "Value", "grid_points", "parse_space", "suggest", "tidy"]

Value = float | int | str | bool


@dataclass(frozen=True)
class Range:
    """A number between ``low`` and ``high`` (inclusive). Integers when both ends are ints and
    the range is not log-scaled; ``step`` quantises it; ``points`` gives the grid's points."""

    low: float
    high: float
    log: bool = False
    step: float | None = None
    points: int | None = None

    @property
    def is_int(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int) and not self.log

    def problems(self, key: str) -> list[str]:
        found = []
        for end in ("low", "high"):
            v = getattr(self, end)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                found.append(f"space.{key}.{end}: must be a finite number, got {v!r}")
        if found:
            return found
        if self.low >= self.high:
            found.append(
                f"space.{key}: empty range (low {self.low} >= high {self.high}); "
                "for a fixed value write the value itself"
            )
        if self.log and self.low <= 0:
            found.append(f"space.{key}: a log range needs low > 0, got {self.low}")
        if self.step is not None and (self.log or self.step <= 0):
            found.append(f"space.{key}.step: needs a linear range and step > 0")
        if self.points is not None and (isinstance(self.points, bool) or self.points < 2):
            found.append(f"space.{key}.points: needs an int >= 2, got {self.points!r}")
        return found

    def grid(self) -> list[Value]:
        """``points`` evenly spaced values (geometrically when ``log``), ends included."""
        n = self.points or 0
        if self.log:
            a, b = math.log(self.low), math.log(self.high)
            return [tidy(math.exp(a + (b - a) * i / (n - 1))) for i in range(n)]
        values = [self.low + (self.high - self.low) * i / (n - 1) for i in range(n)]
        return [round(v) for v in values] if self.is_int else [tidy(v) for v in values]


Space = Mapping[str, Range | Sequence[Value] | Value]


def parse_space(raw: Mapping[str, Any]) -> tuple[dict[str, Range | list[Value] | Value], list[str]]:
    """A config file's ``[space]`` table as ranges, choice lists and fixed values, plus every
    problem found (all of them, not just the first)."""
    space: dict[str, Range | list[Value] | Value] = {}
    problems: list[str] = []
    for key, spec in raw.items():
        if isinstance(spec, Range):
            space[key] = spec
        elif isinstance(spec, Mapping):
            unknown = sorted(set(spec) - {"low", "high", "log", "step", "points"})
            if unknown or not {"low", "high"} <= set(spec):
                problems.append(
                    f"space.{key}: a range is {{low = ..., high = ..., log = false, step = ..., "
                    f"points = ...}}; got keys {sorted(spec)}"
                )
                continue
            space[key] = Range(**spec)
        elif isinstance(spec, list | tuple):
            if not spec:
                problems.append(f"space.{key}: empty list of choices")
                continue
            if len(set(map(repr, spec))) != len(spec):
                problems.append(f"space.{key}: repeated choices {list(spec)}")
            space[key] = list(spec)
        elif isinstance(spec, int | float | str | bool):
            space[key] = spec
        else:
            problems.append(f"space.{key}: expected a range, a list of choices or a value, got {spec!r}")
        if isinstance(space.get(key), Range):
            problems += space[key].problems(key)
        elif key in space:
            values = space[key] if isinstance(space[key], list) else [space[key]]
            bad = [v for v in values if isinstance(v, float) and not math.isfinite(v)]
            if bad:
                problems.append(f"space.{key}: {bad[0]} is not a finite number")
    return space, problems


def suggest(trial: Any, space: Mapping[str, Range | list[Value] | Value]) -> dict[str, Value]:
    """Ask an Optuna trial for every searched value; fixed values pass through."""
    params: dict[str, Value] = {}
    for key, spec in space.items():
        if isinstance(spec, Range):
            if spec.is_int:
                params[key] = trial.suggest_int(key, spec.low, spec.high, step=int(spec.step or 1))
            else:
                params[key] = trial.suggest_float(key, spec.low, spec.high, log=spec.log, step=spec.step)
        elif isinstance(spec, list):
            params[key] = trial.suggest_categorical(key, spec)
        else:
            params[key] = spec
    return params


def grid_points(space: Mapping[str, Range | list[Value] | Value]) -> list[dict[str, Value]]:
    """Every combination of the searched values, for grid search (fixed values left out)."""
    axes: dict[str, list[Value]] = {}
    for key, spec in space.items():
        if isinstance(spec, Range):
            if spec.points is None:
                raise MutransferError(
                    f"space.{key}: grid search needs a list of values or a range with points, "
                    f"e.g. {{low = {spec.low}, high = {spec.high}, "
                    f"log = {str(spec.log).lower()}, points = 8}}."
                )
            axes[key] = spec.grid()
        elif isinstance(spec, list):
            axes[key] = spec
    return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]


def tidy(x: float) -> float:
    """Round away float noise (2**-7 stays 2**-7) so grid points print and compare cleanly."""
    return float(f"{x:.12g}")
