"""How the best learning rate moves along an axis muP does not cover: a power law fitted to a grid.

    >>> g = mutransfer.Grid.load("steps.json")          # mutransfer grid ... --steps 100 200 400 800
    >>> law = mutransfer.fit(g)                         # doctest: +SKIP
    >>> law.exponent, law.exponent_se                   # d log2(lr*) / d log2(steps), and its error
    >>> law.predict(20000)                              # the LR at 20000 steps, with a range

muP makes the best learning rate independent of width (and, with CompleteP, of depth). Training
length, batch size and sequence length are outside the theory (Tensor Programs V reports them
with caveats; later work fits them: DeepSeek's and Step Law's power laws in tokens and batch).
A grid over one of them gives the optimum at each size (``Grid.optimum``); this fits

    log2 lr*(x) = intercept + exponent * log2(x)

by least squares, with the exponent's standard error from the residuals, and predicts the
optimum elsewhere with a standard error that grows with the distance from the measured sizes.
Optima at the grid's edge are left out of the fit (they only bound the optimum) and named.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from mutransfer.errors import MutransferError
from mutransfer.files import jsonable

__all__ = ["EXTRAPOLATION_WARNING", "PowerLaw", "Prediction", "fit", "fit_optima", "fit_power_law"]

# beyond this factor outside the measured sizes, a prediction is an extrapolation to flag
EXTRAPOLATION_WARNING = 10.0


@dataclass(frozen=True)
class Prediction:
    """The fitted optimum at ``size``: ``log2_lr`` with its standard error, and how far outside
    the measured sizes it lies (1 inside; 20 means 20x beyond the nearest end)."""

    size: float
    log2_lr: float
    log2_lr_se: float
    outside: float

    @property
    def lr(self) -> float:
        return 2.0**self.log2_lr

    @property
    def extrapolates(self) -> bool:
        return self.outside > EXTRAPOLATION_WARNING

    def text(self, axis: str) -> str:
        where = "inside the measured range" if self.outside <= 1 else f"{self.outside:.3g}x beyond it"
        warn = " (extrapolation: beyond 10x the measured range)" if self.extrapolates else ""
        return (
            f"{axis} {self.size:g}: lr 2^{self.log2_lr:.2f} +- {self.log2_lr_se:.2f} "
            f"(= {self.lr:.3g}), {where}{warn}"
        )


@dataclass(frozen=True)
class PowerLaw:
    """``log2 lr* = intercept + exponent * log2(size)`` along ``axis``, fitted to ``sizes`` and
    their optima ``log2_lrs``; ``left_out`` lists sizes whose optimum lay at the grid's edge."""

    axis: str
    exponent: float
    exponent_se: float
    intercept: float
    sizes: tuple[float, ...]
    log2_lrs: tuple[float, ...]
    residual_se: float
    left_out: tuple[float, ...] = field(default=())

    def predict(self, size: float) -> Prediction:
        """The optimum at ``size``, its standard error, and how far it extrapolates."""
        if size <= 0:
            raise MutransferError(f"a {self.axis} to predict at must be > 0, got {size}.")
        xs = [math.log2(s) for s in self.sizes]
        x = math.log2(size)
        mean = sum(xs) / len(xs)
        sxx = sum((v - mean) ** 2 for v in xs)
        se = self.residual_se * math.sqrt(1 / len(xs) + (x - mean) ** 2 / sxx)
        low, high = min(self.sizes), max(self.sizes)
        outside = max(size / high, low / size, 1.0)
        return Prediction(size, self.intercept + self.exponent * x, se, outside)

    def factor(self, size: float, reference: float) -> float:
        """The LR multiplier from ``reference`` to ``size``: ``(size / reference) ** exponent``."""
        return (size / reference) ** self.exponent

    def text(self) -> str:
        lines = [
            f"log2 lr* = {self.intercept:.2f} {'+' if self.exponent >= 0 else '-'} "
            f"{abs(self.exponent):.3f} (+- {self.exponent_se:.3f}) x log2({self.axis})",
            f"  fitted to {len(self.sizes)} {self.axis} values "
            + ", ".join(f"{s:g}: 2^{v:.2f}" for s, v in zip(self.sizes, self.log2_lrs, strict=True))
            + f"; residual {self.residual_se:.3f} log2 units",
        ]
        if self.left_out:
            lines.append(
                f"  left out (optimum at the grid's edge): {', '.join(f'{s:g}' for s in self.left_out)}"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """Plain data; an unknown error (two points) is null, as strict JSON wants."""
        return {
            "axis": self.axis,
            "exponent": self.exponent,
            "exponent_se": jsonable(self.exponent_se),
            "intercept": self.intercept,
            "sizes": list(self.sizes),
            "log2_lrs": list(self.log2_lrs),
            "residual_se": jsonable(self.residual_se),
            "left_out": list(self.left_out),
        }


def fit_power_law(axis: str, sizes: Sequence[float], log2_lrs: Sequence[float]) -> PowerLaw:
    """Least squares of ``log2_lrs`` on ``log2(sizes)``. With two points the line is exact and
    its error unknown (inf); three or more give a standard error from the residuals."""
    points = sorted(zip(sizes, log2_lrs, strict=True))
    if len(points) < 2 or len({s for s, _ in points}) < 2:
        raise MutransferError(
            f"a power law in {axis} needs optima at 2 or more distinct sizes, got {len(points)}. Fix: a "
            "grid over more sizes, or an LR range wide enough that the optima are not at its edge."
        )
    xs = [math.log2(s) for s, _ in points]
    ys = [v for _, v in points]
    n, mx, my = len(xs), sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    intercept = my - slope * mx
    if n > 2:
        ssr = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
        residual = math.sqrt(ssr / (n - 2))
        slope_se = residual / math.sqrt(sxx)
    else:
        residual = slope_se = math.inf
    return PowerLaw(
        axis=axis,
        exponent=slope,
        exponent_se=slope_se,
        intercept=intercept,
        sizes=tuple(s for s, _ in points),
        log2_lrs=tuple(ys),
        residual_se=residual,
    )


def fit_optima(axis: str, optima: Sequence) -> PowerLaw | None:
    """The power law of a grid's optima (``Grid.optimum``) inside its LR range, those at the
    edge named in ``left_out``; None when fewer than 2 distinct sizes are inside."""
    kept = [o for o in optima if o.method in ("parabola", "argmin")]
    if len({o.size for o in kept}) < 2:
        return None
    law = fit_power_law(axis, [o.size for o in kept], [o.log2_lr for o in kept])
    return replace(law, left_out=tuple(o.size for o in optima if o not in kept))


def fit(grid, parametrization: str | None = None) -> PowerLaw:
    """The power law of a grid's optima along its axis (a training axis, or width and depth,
    where muP's exponent should be near 0). ``parametrization``: default muP."""
    name = parametrization or ("mup" if "mup" in grid.parametrizations else grid.parametrizations[0])
    if name not in grid.parametrizations:
        raise MutransferError(f"this grid has no {name!r} cells; it has {list(grid.parametrizations)}.")
    optima = [grid.optimum(name, w) for w in grid.sizes]
    law = fit_optima(grid.axis, optima)
    if law is None:
        inside = [o.size for o in optima if o.method in ("parabola", "argmin")]
        left = [o.size for o in optima if o.size not in inside]
        raise MutransferError(
            f"only {len(inside)} of the {grid.axis} values {list(grid.sizes)} has an optimum inside the LR "
            f"range (at the edge or diverged: {left}); a power law needs 2 or more. Fix: extend the "
            "grid's LR range on the side where the best LR lies (the grid's table marks it 'edge')."
        )
    return law
