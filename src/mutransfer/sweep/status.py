"""Where a sweep stands: its trials counted by outcome, the best one, and a leaderboard."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from mutransfer.text import short, table

__all__ = ["Status", "leaderboard", "retried_numbers", "status"]


@dataclass
class Status:
    """Where a sweep stands. ``finished`` trials (complete, diverged or pruned) count toward
    the budget; ``lost`` ones (a worker died or was interrupted) were re-queued."""

    trials: int
    complete: int = 0
    diverged: int = 0
    pruned: int = 0
    running: int = 0
    waiting: int = 0
    lost: int = 0
    failed: int = 0
    best_value: float = math.inf
    best_params: dict[str, Any] = field(default_factory=dict)
    best_number: int | None = None
    seconds: float = 0.0
    flops: float = 0.0

    @property
    def finished(self) -> int:
        return self.complete + self.diverged + self.pruned

    @property
    def done(self) -> bool:
        return self.finished >= self.trials and not self.running and not self.waiting

    def line(self) -> str:
        parts = [f"{self.finished}/{self.trials} trials"]
        parts += [f"{n} {what}" for what, n in (("pruned", self.pruned), ("diverged", self.diverged)) if n]
        if self.running:
            parts.append(f"{self.running} running")
        if self.lost:
            parts.append(f"{self.lost} re-queued")
        if self.failed:
            parts.append(f"{self.failed} failed")
        best = ""
        if self.best_number is not None:
            shown = ", ".join(f"{k}={short(v)}" for k, v in self.best_params.items())
            best = f"; best {self.best_value:.4f} (#{self.best_number}: {shown})"
        return ", ".join(parts) + best


def status(study: Any, trials: int) -> Status:
    """Count a study's trials by outcome and find the best finished one."""
    from optuna.trial import TrialState

    s = Status(trials=trials)
    all_trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(all_trials)
    for t in all_trials:
        attrs = t.user_attrs
        s.seconds += attrs.get("seconds", 0.0)
        s.flops += attrs.get("flops", 0.0) if math.isfinite(attrs.get("flops", 0.0)) else 0.0
        if t.state is TrialState.COMPLETE:
            if attrs.get("diverged"):
                s.diverged += 1
            else:
                s.complete += 1
                if t.value is not None and t.value < s.best_value:
                    s.best_value, s.best_params, s.best_number = t.value, dict(t.params), t.number
        elif t.state is TrialState.PRUNED:
            s.pruned += 1
        elif t.state is TrialState.RUNNING:
            s.running += 1
        elif t.state is TrialState.WAITING:
            s.waiting += 1
        elif t.number in retried:
            s.lost += 1
        elif not attrs.get("stray"):
            s.failed += 1
    return s


def leaderboard(study: Any, n: int = 5) -> str:
    """The ``n`` best finished trials as a table, with how many were pruned or diverged."""
    from optuna.trial import TrialState

    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not t.user_attrs.get("diverged")
    ]
    done.sort(key=lambda t: t.value)
    if not done:
        return "no finished trial yet"
    keys = list(done[0].params)
    rows = [["trial", "value", *keys, "steps", "seconds"]]
    for t in done[:n]:
        rows.append(
            [f"#{t.number}", f"{t.value:.4f}", *(short(t.params.get(k)) for k in keys),
             str(t.user_attrs.get("steps", "")), f"{t.user_attrs.get('seconds', 0):.1f}"]
        )  # fmt: skip
    return "\n".join(table(rows))


def retried_numbers(trials: list[Any]) -> set[int]:
    """Numbers of the trials that a later trial retries (Optuna's ``retry_history``)."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}
