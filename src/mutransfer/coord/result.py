"""A coordinate check's result: every curve, every exponent, every verdict; plain data with a
JSON round-trip and a table. ``check.py`` measures and judges; nothing here trains."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from mutransfer.coord.verdict import ModuleCheck, slopes
from mutransfer.errors import MutransferError
from mutransfer.files import load_json, save_json
from mutransfer.text import table

__all__ = ["CoordCheck"]


@dataclass(frozen=True)
class CoordCheck:
    """Measurements and verdicts of one coordinate check; plain data with a JSON round-trip.

    ``curves[measure][module][i][t]``: the seed-mean value at ``widths[i]`` before step ``t``
    for ``measure`` in ``rms``, ``change``, ``update``, ``input`` (the input's RMS; for
    attention logits the product of the q and k sizes) and ``scale``; ``change`` and
    ``update`` are nan at step 0. ``loss[i][t]`` is the probe batch's loss. ``axis`` says what
    ``widths`` counts: ``width``, or ``depth`` (numbers of blocks).
    """

    parametrization: str
    sizes: tuple[int, ...]
    steps: int
    seeds: int
    lr: float
    optimizer: str
    threshold: float
    curves: dict[str, dict[str, list[list[float]]]]
    loss: list[list[float]]
    modules: tuple[ModuleCheck, ...]
    settings: dict[str, Any] = field(default_factory=dict)
    axis: str = "width"

    @property
    def passed(self) -> bool:
        return all(m.passed for m in self.modules)

    @property
    def widths(self) -> tuple[int, ...]:
        """Deprecated name of ``sizes`` (they may be depths), kept for one release."""
        return self.sizes

    @property
    def failures(self) -> tuple[ModuleCheck, ...]:
        return tuple(m for m in self.modules if not m.passed)

    def slopes(self, module: str, measure: str = "rms") -> list[float]:
        """Growth exponent of one measure of ``module`` at every step."""
        return slopes(self.sizes, self.curves[measure].get(module, []), self.steps + 1)

    def table(self) -> str:
        """One line per module with its worst exponent per measure and its verdict, then the hints."""
        head = ["point", "kind", "init", "rms", "change", "update", "scale", "verdict"]
        rows = [
            [m.name, m.kind]
            + [_num(s) for s in (m.init_slope, m.rms_slope, m.change_slope, m.update_slope, m.scale_slope)]
            + [m.status + (" (cause)" if m.cause else "")]
            for m in self.modules
        ]
        axis = self.axis
        lines = [
            f"coordinate check ({self.parametrization}, {axis}s {list(self.sizes)}, {self.steps} steps, "
            f"{self.seeds} seeds, {self.optimizer} lr {self.lr:g}): exponent s of {axis}**s; "
            f"fail above {self.threshold:g}, or below -{self.threshold:g} for a layer's own updates"
            + ("; 'change' is judged on the blocks' outputs only" if axis == "depth" else "")
        ]
        lines += table([head, *rows])
        failures = self.failures
        lines.append(
            f"PASSED: nothing grows with {axis}, and every layer keeps learning"
            if not failures
            else f"FAILED: {len(failures)} of {len(self.modules)} points grow or stop learning with {axis}"
        )
        by_hint: dict[str, list[str]] = {}
        for m in failures:
            if m.cause or m.status == "diverged" or not any(f.cause for f in failures):
                by_hint.setdefault(m.hint, []).append(m.name)
        lines += [f"  {', '.join(names)}: {hint}" for hint, names in by_hint.items()]
        expected = self.settings.get("expected") or {}
        if expected:
            lines.append(
                f"  judged against u-muP's own law: {', '.join(expected)} learn like width**-0.5 by design "
                "(u-muP's embedding LR rule, 1/sqrt(width)); the exponents shown are relative to it"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CoordCheck:
        fields = {k: v for k, v in data.items() if k != "passed"}
        fields["sizes"] = tuple(fields.pop("widths", None) or fields["sizes"])  # "widths" before 0.2
        fields["modules"] = tuple(ModuleCheck(**m) for m in fields["modules"])
        return cls(**fields)

    def save(self, path: str | os.PathLike) -> None:
        save_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> CoordCheck:
        fix = "pass the --json file of mutransfer coord-check, or CoordCheck.save's."
        try:
            return cls.from_dict(load_json(path, "coordinate check file", fix))
        except (KeyError, TypeError) as exc:
            raise MutransferError(f"{path} is not a coordinate check file ({exc}). Fix: {fix}") from None


def _num(x: float) -> str:
    return "" if math.isnan(x) else f"{x:+.2f}" if math.isfinite(x) else str(x)
