"""Will the target train as stably as the proxy? Each monitor, measured at the proxy widths,
extrapolated to the target's.

Wortsman et al. (2023) show that some instabilities can be seen coming from how activations and
gradients scale with model size, before any run diverges. A grid run with ``monitor_every``
holds, per cell, the monitors of ``mutransfer.monitor``. At one learning rate (default: the grid
LR nearest the narrowest width's optimum, the one a transfer would reuse) this fits

    log2 |monitor(width)| = a + e log2(width)

per monitor (the peak over training for attention logits and log Z, the last value for
gradients and relative updates) and extrapolates it to the target. It warns when the forecast
crosses the lowest level at which a smaller run of the grid diverged with that monitor rising,
or when a role's gradient RMS is forecast below 10x its Adam epsilon at the target (the update
then shrinks).
With 3 or more widths it also checks itself: fitted on all but the widest, it predicts the
widest, which was measured (``held_out``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from mutransfer.errors import MutransferError
from mutransfer.files import jsonable
from mutransfer.fit import fit_power_law
from mutransfer.grid import Cell, Grid
from mutransfer.monitor import RISE
from mutransfer.text import table

__all__ = ["EPS_MARGIN", "Forecast", "Forecasts", "forecast"]

EPS_MARGIN = 10.0  # a gradient RMS under this multiple of Adam's epsilon: the update is damped


@dataclass(frozen=True)
class Forecast:
    """One monitor: its values at the grid's sizes, the fitted exponent, the value forecast at
    ``size`` (with a one-standard-error range), the level to stay under (or above, for
    gradients), and the held-out check (fit without the widest, forecast it: nan if < 3 sizes)."""

    monitor: str
    statistic: str  # "peak" (largest |value| over training) or "last"
    sizes: tuple[int, ...]
    values: tuple[float, ...]
    exponent: float
    exponent_se: float
    size: int
    predicted: float
    low: float
    high: float
    level: float  # nan when no level is known
    warning: str
    held_out_predicted: float = math.nan
    held_out_measured: float = math.nan

    @property
    def held_out_error(self) -> float:
        """The held-out forecast over the measured value, minus 1."""
        return self.held_out_predicted / self.held_out_measured - 1


@dataclass(frozen=True)
class Forecasts:
    """Every monitor's forecast for one parametrization at one learning rate."""

    parametrization: str
    lr: float
    size: int
    axis: str
    items: tuple[Forecast, ...]

    @property
    def warnings(self) -> list[str]:
        return [f.warning for f in self.items if f.warning]

    def text(self) -> str:
        head = ["monitor", "stat", *(f"{self.axis} {s}" for s in self.items[0].sizes), "exponent",
                f"{self.axis} {self.size}", "level", "held-out"]  # fmt: skip
        rows = [head]
        for f in self.items:
            held = "-" if math.isnan(f.held_out_predicted) else f"{100 * f.held_out_error:+.0f}%"
            error = f" +- {f.exponent_se:.2f}" if math.isfinite(f.exponent_se) else ""
            level = "-" if math.isnan(f.level) else f"{f.level:.3g}"
            rows.append([f.monitor, f.statistic, *(f"{v:.3g}" for v in f.values), f"{f.exponent:+.2f}{error}",
                         f"{f.predicted:.3g} [{f.low:.3g}, {f.high:.3g}]", level, held])  # fmt: skip
        lines = [
            f"{self.parametrization} at lr 2^{math.log2(self.lr):g}, forecast for {self.axis} {self.size}:"
        ]
        lines += table(rows, indent="  ")
        lines.append(
            "  held-out: fitted without the widest size, the forecast of it against its measured value"
        )
        lines += [f"  warning: {w}" for w in self.warnings] or ["  no monitor is forecast to cross a level"]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return jsonable({
            "parametrization": self.parametrization, "lr": self.lr, "size": self.size, "axis": self.axis,
            "forecasts": [{**f.__dict__, "held_out_error": f.held_out_error} for f in self.items],
        })  # fmt: skip


def forecast(
    grid: Grid, size: int, *, lr: float | None = None, parametrization: str | None = None
) -> Forecasts:
    """Each monitor of ``grid`` at ``lr`` (default: the grid LR nearest the narrowest size's
    optimum), fitted along the grid's sizes and forecast at ``size``."""
    name = parametrization or ("mup" if "mup" in grid.parametrizations else grid.parametrizations[0])
    if name not in grid.parametrizations:
        raise MutransferError(f"this grid has no {name!r} cells; it has {list(grid.parametrizations)}.")
    if not any(c.monitors for c in grid.cells):
        raise MutransferError(
            "this grid recorded no monitors. Fix: run it with monitor_every= (CLI: --monitor-every 10); "
            "cells already trained are kept, but only new ones are monitored: use a new --path."
        )
    if lr is None:
        optimum = grid.optimum(name, grid.sizes[0])
        if optimum.method == "none":
            raise MutransferError(f"every {name} run at {grid.axis} {grid.sizes[0]} diverged; give lr=.")
        lr = min(grid.lrs, key=lambda v: abs(math.log2(v) - optimum.log2_lr))
    elif lr not in grid.lrs:
        raise MutransferError(f"lr {lr} is not one of the grid's: {list(grid.lrs)}.")
    cells = {s: [c for c in grid.cells if (c.parametrization, c.size, c.lr, c.transfer, bool(c.monitors))
                 == (name, s, lr, False, True)] for s in grid.sizes}  # fmt: skip
    diverged = [s for s, cs in cells.items() if any(c.diverged for c in cs)]
    if diverged:
        raise MutransferError(
            f"at lr {lr:g} the {grid.axis} {diverged} runs diverged: nothing to extrapolate from. "
            "Fix: a lower lr="
        )
    monitors = sorted({k for cs in cells.values() for c in cs for k in c.monitors.get("series", {})})
    items = []
    for monitor in monitors:
        values = [_mean([_statistic(c, monitor) for c in cells[s]]) for s in grid.sizes]
        if any(not (math.isfinite(v) and v > 0) for v in values):
            continue  # a monitor missing at some size, or at 0: no power law
        level = _level(grid, name, monitor, size)
        items.append(_forecast(monitor, grid.sizes, values, size, level))
    return Forecasts(name, lr, size, grid.axis, tuple(items))


def _forecast(
    monitor: str, sizes: Sequence[int], values: Sequence[float], size: int, level: float
) -> Forecast:
    law = fit_power_law("size", sizes, [math.log2(v) for v in values])
    at = law.predict(size)
    se = at.log2_lr_se if math.isfinite(at.log2_lr_se) else 0.0
    predicted, low, high = 2**at.log2_lr, 2 ** (at.log2_lr - se), 2 ** (at.log2_lr + se)
    held = (math.nan, math.nan)
    if len(sizes) >= 3:
        inner = fit_power_law("size", sizes[:-1], [math.log2(v) for v in values[:-1]])
        held = (2 ** inner.predict(sizes[-1]).log2_lr, values[-1])
    kind = monitor.partition("/")[0]
    warning = ""
    if kind == "grad" and math.isfinite(level) and predicted < level:
        warning = (
            f"{monitor}: gradient RMS forecast {predicted:.3g} at size {size}, under {EPS_MARGIN:g}x Adam's "
            f"epsilon ({level:.3g}): updates there are damped. Fix: a smaller eps for that group."
        )
    elif kind != "grad" and math.isfinite(level) and predicted >= level:
        warning = (
            f"{monitor}: forecast {predicted:.3g} at size {size} reaches {level:.3g}, where a smaller run "
            "of this grid diverged with it rising. Fix: " + _fix(kind)
        )
    return Forecast(monitor, _STATISTIC.get(kind, "last"), tuple(sizes), tuple(values), law.exponent,
                    law.exponent_se, size, predicted, low, high, level, warning, *held)  # fmt: skip


_STATISTIC = {"attention": "peak", "output": "peak"}


def _fix(kind: str) -> str:
    return {
        "attention": "qk-layernorm (qk_norm=True in the reference models), or a lower learning rate.",
        "output": "a z-loss (z_loss=1e-4), or a lower learning rate.",
    }.get(kind, "a lower learning rate.")


def _statistic(cell: Cell, monitor: str) -> float:
    values = [abs(v) for v in cell.monitors.get("series", {}).get(monitor, []) if math.isfinite(v)]
    if not values:
        return math.nan
    return max(values) if _STATISTIC.get(monitor.partition("/")[0]) == "peak" else values[-1]


def _level(grid: Grid, parametrization: str, monitor: str, size: int) -> float:
    """For a gradient: 10x its role's Adam epsilon at ``size`` (muP scales epsilon with width:
    fitted along the grid's sizes like the monitors). Otherwise the lowest peak that monitor
    reached in a diverged run of the grid where it rose 10x or more (nan when none did)."""
    kind, _, where = monitor.partition("/")
    if kind == "grad":
        eps: dict[int, float] = {}
        for c in grid.cells:
            if c.parametrization == parametrization and c.monitors.get("eps", {}).get(where):
                eps[c.size] = float(c.monitors["eps"][where])
        if not eps:
            return math.nan
        if len(eps) < 2:
            return EPS_MARGIN * max(eps.values())
        law = fit_power_law("size", list(eps), [math.log2(v) for v in eps.values()])
        return EPS_MARGIN * 2 ** law.predict(size).log2_lr
    peaks = []
    for c in grid.cells:
        values = [abs(v) for v in c.monitors.get("series", {}).get(monitor, []) if math.isfinite(v)]
        rose = len(values) >= 2 and values[0] > 0 and max(values) >= RISE * values[0]
        if c.parametrization == parametrization and c.diverged and rose:
            peaks.append(max(values))
    return min(peaks) if peaks else math.nan


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan
