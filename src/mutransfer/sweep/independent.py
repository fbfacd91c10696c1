"""Independent search (u-muP, Blake et al., ICLR 2025): each hyperparameter swept alone.

u-muP's hyperparameters, a learning rate and a few multipliers whose default is 1, barely
interact, so they need not be searched jointly. ``sampler = "independent"`` runs three phases:

1. ``lr``: the learning rate over its grid, every other searched value at its default;
2. each other key alone over its own grid, ``lr`` at phase 1's best, the others at their default
   (the key's default itself is not run again: phase 1 ran it at that very learning rate);
3. ``combined``: one trial with phase 1's learning rate and each key's best value, its default
   included. It is planned only when two or more keys besides ``lr`` are searched: with one, the
   combination is a point phase 1 or 2 already ran.

    space = {"lr": Range(2**-10, 2**-3, log=True),       # 8 points unless `points` says otherwise
             "output_mult": Range(0.25, 4.0, log=True),  # 5 points: 0.25, 0.5, 1, 2, 4
             "input_mult": [0.5, 1.0, 2.0]}
    print("\\n".join(plan_of(space).lines()))          # 8 + 4 + 2 + 1 = 15 trials

**Grids.** ``lr`` must be a range; it takes ``points`` values (default 8), geometrically spaced when
``log``. Any other searched key is a list of choices, or a range of ``points`` values (default 5).
A range with ``step`` has its values rounded to the step.

**Defaults.** Outside its own sweep a key takes 1 when 1 lies in its range or among its choices
(u-muP's multipliers); otherwise the middle of its range (geometric when ``log``) or its first
choice.

**Budget.** The plan fixes the number of trials (``trials`` is ignored, as for grid search):
``len(lr grid) + sum(len(grid) - 1 if it holds the default else len(grid)) + 1`` (no ``+ 1``
with fewer than two keys besides ``lr``).

**Resume.** The n-th trial to claim a slot of the budget (retries of a lost trial and strays aside,
the same count as the budget's) takes the n-th slot of the plan, and a slot's values are a function
of the space and the study's COMPLETE trials alone, so a killed sweep picks up where it stopped and
a re-queued trial reruns its own values. Pruned, diverged and failed trials are done but never best.
Each trial records its phase as the user attribute ``phase`` (``"lr"``, the key, or ``"combined"``).

**Parallel workers.** A slot's values are fixed when its trial starts. With several workers a
phase-2 trial may start before phase 1 has finished: it then takes the best learning rate among
the phase-1 trials complete so far (the middle of the lr grid if none is), and likewise the
combined trial takes the bests so far. The best phase-1 trial stands for each key's default when
choosing the key's best, which is exact only when that key's sweep ran at that learning rate. One
worker runs the method exactly; more trade that for time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import optuna

from mutransfer.errors import MutransferError
from mutransfer.sweep.space import Range, Value, tidy
from mutransfer.text import short

__all__ = ["COMBINED", "LR", "IndependentSampler", "SearchPlan", "Slot", "plan_of"]

LR = "lr"
COMBINED = "combined"
LR_POINTS = 8  # a range's points when it has none: lr's, then every other key's
POINTS = 5
SLOT = "independent_slot"  # system attributes of a trial: its slot in the plan, and its values
POINT = "independent_point"


@dataclass(frozen=True)
class Slot:
    """One trial of the plan: ``phase`` is ``"lr"``, the key swept alone, or ``"combined"``;
    ``value`` the swept value (None for the combined trial)."""

    phase: str
    value: Value | None = None


@dataclass(frozen=True)
class SearchPlan:
    """The phases of an independent search over one space."""

    lrs: tuple[Value, ...]
    """Phase 1: the learning rates."""
    defaults: Mapping[str, Value]
    """Every other searched key's value outside its own sweep."""
    sweeps: Mapping[str, tuple[Value, ...]]
    """Phase 2: each other key's values, its default left out (phase 1 ran it)."""

    @property
    def slots(self) -> list[Slot]:
        """Every trial, in the order they are run."""
        slots = [Slot(LR, lr) for lr in self.lrs]
        slots += [Slot(key, v) for key, values in self.sweeps.items() for v in values]
        return [*slots, Slot(COMBINED)] if len(self.defaults) >= 2 else slots

    def __len__(self) -> int:
        return len(self.slots)

    def point(self, index: int, done: Sequence[tuple[str, Mapping[str, Any], float]]) -> dict[str, Value]:
        """The values of slot ``index``, given the complete trials so far as ``(phase, params,
        value)`` in trial order. A slot past the plan's end repeats the combined point."""
        slot = self.slots[index] if 0 <= index < len(self) else Slot(COMBINED)
        if slot.phase == LR:
            return {LR: slot.value, **self.defaults}
        lr, best = self.best(done)
        if slot.phase == COMBINED:
            return {LR: lr, **best}
        return {LR: lr, **self.defaults, slot.phase: slot.value}

    def best(self, done: Sequence[tuple[str, Mapping[str, Any], float]]) -> tuple[Value, dict[str, Value]]:
        """Phase 1's best learning rate (the middle of its grid while no phase-1 trial is
        complete), and each other key's best value: the best phase-1 trial stands for its default,
        and wins a tie; the default while no trial is complete."""
        first = [d for d in done if d[0] == LR and math.isfinite(d[2])]
        top = min(first, key=lambda d: d[2]) if first else None
        lr = top[1][LR] if top else self.lrs[len(self.lrs) // 2]
        best = {}
        for key, default in self.defaults.items():
            mine = ([top] if top else []) + [d for d in done if d[0] == key and math.isfinite(d[2])]
            best[key] = min(mine, key=lambda d: d[2])[1][key] if mine else default
        return lr, best

    def lines(self) -> list[str]:
        """The plan in words, one line per phase."""
        others = ", ".join(f"{k} = {short(v)}" for k, v in self.defaults.items())
        lines = [
            f"independent search, {len(self)} trials:",
            f"  phase 1, lr: {len(self.lrs)} trials, lr in {_listed(self.lrs)}"
            + (f"; {others}" if others else ""),
        ]
        for key, values in self.sweeps.items():
            lines.append(
                f"  phase 2, {key}: {len(values)} trials, {key} in {_listed(values)} at phase 1's best lr "
                f"({key} = {short(self.defaults[key])} is phase 1's)"
            )
        if len(self.defaults) >= 2:
            lines.append("  combined: 1 trial, phase 1's best lr with each key's best value")
        return lines


def plan_of(space: Mapping[str, Any]) -> SearchPlan:
    """The independent search's plan over a space of ``Range``s, lists and fixed values; a
    ``MutransferError`` naming the key when ``lr`` is not a range."""
    spec = space.get(LR)
    if not isinstance(spec, Range):
        got = "it is missing" if spec is None else f"got {spec!r}"
        raise MutransferError(
            f"space.lr: independent search sweeps the learning rate alone first, over a range; {got}. "
            "Give a range, e.g. lr = {low = 1e-4, high = 0.1, log = true, points = 8}."
        )
    lrs = _axis(spec, LR_POINTS)
    defaults: dict[str, Value] = {}
    sweeps: dict[str, tuple[Value, ...]] = {}
    for key, spec in space.items():
        if key == LR or not isinstance(spec, Range | list):
            continue
        values = list(spec) if isinstance(spec, list) else _axis(spec, POINTS)
        defaults[key] = _default(spec)
        sweeps[key] = tuple(v for v in values if not _same(v, defaults[key]))
    return SearchPlan(tuple(lrs), defaults, sweeps)


class IndependentSampler(optuna.samplers.BaseSampler):
    """Optuna's side of the plan: when a trial starts, ``before_trial`` fixes its slot and values
    (system attributes, as Optuna's ``GridSampler`` does) and records its phase; each
    ``suggest_*`` then returns the slot's value. ``seed`` seeds only the fallback for a parameter
    outside the space (which a sweep never asks for)."""

    def __init__(self, space: Mapping[str, Any], seed: int | None = None) -> None:
        self.plan = plan_of(space)
        self._fallback = optuna.samplers.RandomSampler(seed=seed)

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
        return {}  # every value comes from the slot, one parameter at a time

    def sample_relative(self, study: Any, trial: Any, search_space: Mapping[str, Any]) -> dict[str, Any]:
        return {}

    def before_trial(self, study: Any, trial: Any) -> None:
        attrs = trial.system_attrs
        if SLOT in attrs or "fixed_params" in attrs or "failed_trial" in attrs:
            return  # a re-queued trial keeps its slot and values; an enqueued one has its own
        trials = study.get_trials(deepcopy=False)
        index = slot_index(trial.number, trials)
        point = self.plan.point(index, finished(trials, self.plan))
        phase = self.plan.slots[index].phase if index < len(self.plan) else "extra"
        study._storage.set_trial_system_attr(trial._trial_id, SLOT, index)
        study._storage.set_trial_system_attr(trial._trial_id, POINT, point)
        study._storage.set_trial_user_attr(trial._trial_id, "phase", phase)

    def sample_independent(self, study: Any, trial: Any, name: str, distribution: Any) -> Any:
        point = trial.system_attrs.get(POINT, {})
        if name in point:
            return point[name]
        return self._fallback.sample_independent(study, trial, name, distribution)

    def reseed_rng(self) -> None:
        self._fallback.reseed_rng()


def slot_index(number: int, trials: Sequence[Any]) -> int:
    """The plan slot of trial ``number``: how many trials before it claimed a slot of the budget,
    counted as the runner counts them (neither a retry of a lost trial nor a stray)."""
    return sum(
        1
        for t in trials
        if t.number < number and "failed_trial" not in t.system_attrs and not t.user_attrs.get("stray")
    )


def finished(trials: Sequence[Any], plan: SearchPlan) -> list[tuple[str, Mapping[str, Any], float]]:
    """``(phase, params, value)`` of each complete trial of the plan, diverged ones left out."""
    from optuna.trial import TrialState

    slots = plan.slots
    return [
        (slots[t.system_attrs[SLOT]].phase, t.params, t.value)
        for t in trials
        if t.state is TrialState.COMPLETE
        and t.value is not None
        and not t.user_attrs.get("diverged")
        and 0 <= t.system_attrs.get(SLOT, -1) < len(slots)
    ]


def _axis(spec: Range, points: int) -> list[Value]:
    """A range's grid, on its step and inside its ends, repeats dropped."""
    values: list[Value] = []
    for v in replace(spec, points=spec.points or points).grid():
        v = _snap(spec, v)
        if not any(_same(v, w) for w in values):
            values.append(v)
    return values


def _default(spec: Range | list[Value]) -> Value:
    """1 when the range or the choices hold it, else the middle of the range or the first choice."""
    if isinstance(spec, list):
        ones = [c for c in spec if _number(c) and c == 1]
        return ones[0] if ones else spec[0]
    if spec.low <= 1 <= spec.high and _same(_snap(spec, 1), 1):
        return 1 if spec.is_int else 1.0
    middle = math.sqrt(spec.low * spec.high) if spec.log else (spec.low + spec.high) / 2
    return _snap(spec, middle)


def _snap(spec: Range, v: float) -> Value:
    """``v`` rounded to the range's step (1 for an int range) and kept inside its ends."""
    step = spec.step or (1 if spec.is_int else None)
    if step is not None:
        v = spec.low + round((v - spec.low) / step) * step
        if v > spec.high:
            v -= step
    v = min(max(v, spec.low), spec.high)
    return round(v) if spec.is_int else tidy(float(v))


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _same(a: Any, b: Any) -> bool:
    if _number(a) and _number(b):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return type(a) is type(b) and a == b


def _listed(values: Sequence[Value]) -> str:
    return ", ".join(short(v) for v in values) if values else "(none)"
