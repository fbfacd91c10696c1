"""A grid's results: its cells, and what they say (optima and their errors, drift, regret, LR
sensitivity); plain data with a JSON round-trip. Nothing here trains: ``cells.py`` fills them."""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from mutransfer.axis import TRAINING_AXES, plural
from mutransfer.errors import MutransferError
from mutransfer.files import jsonable, load_json, number, save_json
from mutransfer.fit import fit_optima
from mutransfer.parametrizations import label
from mutransfer.text import table

__all__ = ["Cell", "Grid", "Optimum", "Summary", "fit_optimum", "missing", "transfer_lr", "with_cell"]


@dataclass(frozen=True)
class Cell:
    """One training run of the grid. ``val_loss`` is ``inf`` when it ``diverged`` (the reason).
    ``transfer`` marks the extra run at the widest width with the narrowest width's optimum.
    ``monitors``: what ``mutransfer.monitor`` recorded, when the grid ran with ``monitor_every``.
    In a depth grid ``width`` is the number of blocks (and "widest" the deepest)."""

    parametrization: str
    size: int
    lr: float
    seed: int
    val_loss: float
    train_loss: float
    steps: int
    seconds: float
    diverged: str = ""
    transfer: bool = False
    curve: list[float] = field(default_factory=list, repr=False)
    monitors: dict[str, Any] = field(default_factory=dict, repr=False)  # ``Monitor.to_dict()``, if on

    @property
    def key(self) -> tuple[str, int, float, int, bool]:
        return (self.parametrization, self.size, self.lr, self.seed, self.transfer)


@dataclass(frozen=True)
class Optimum:
    """The best learning rate at one width. ``method``: ``parabola`` (vertex through the grid
    minimum and its neighbours), ``edge`` (the minimum is the grid's first or last LR: the true
    optimum may lie outside), ``argmin`` (the parabola does not open upwards or a neighbour
    diverged) or ``none`` (every LR diverged)."""

    size: int
    log2_lr: float
    loss: float  # the best validation loss on the grid at this size
    method: str
    error: float = math.nan  # standard error over seeds of each seed's own optimum (nan: one seed)


@dataclass(frozen=True)
class Summary:
    """What the grid says about one parametrization."""

    parametrization: str
    optima: tuple[Optimum, ...]
    drift: float  # max minus min of the optimal log2 LR over the widths
    drift_error: float  # from the two optima's errors (nan without seeds): a slide or a wobble?
    transfer_log2_lr: float  # the narrowest width's optimum, reused at the widest
    transfer_loss: float  # the widest width's validation loss at that LR
    best_loss: float  # the widest width's best validation loss (grid or transfer run)
    regret: float  # transfer_loss / best_loss - 1
    sensitivity: tuple[float, ...] = ()  # per size, as ``Grid.sensitivity``
    exponent: float = math.nan  # the optimum's slope in log2(size), fitted as mutransfer.fit does
    exponent_se: float = math.nan  # its standard error (nan with fewer than 3 optima inside the range)


@dataclass(frozen=True)
class Grid:
    """Cells of a width x LR grid and the protocol they were trained under; plain data with a
    JSON round-trip. Everything else (losses, optima, drift, regret) is computed from cells."""

    protocol: dict[str, Any]
    sizes: tuple[int, ...]
    lrs: tuple[float, ...]
    parametrizations: tuple[str, ...]
    seeds: int
    cells: tuple[Cell, ...] = ()

    @property
    def complete(self) -> bool:
        return not missing(self)

    @property
    def widths(self) -> tuple[int, ...]:
        """Deprecated name of ``sizes`` (they need not be widths), kept for one release."""
        return self.sizes

    def loss(self, parametrization: str, width: int, lr: float, *, transfer: bool = False) -> float:
        """Validation loss averaged over seeds; ``inf`` if any seed diverged, nan if not run."""
        values = [
            c.val_loss
            for c in self.cells
            if (c.parametrization, c.size, c.lr, c.transfer) == (parametrization, width, lr, transfer)
        ]
        if transfer and not values and lr in self.lrs:  # the optimum fell on a grid point
            return self.loss(parametrization, width, lr)
        return sum(values) / len(values) if values else math.nan

    def optimum(self, parametrization: str, width: int) -> Optimum:
        """The optimum of the seeds' mean loss; its error from each seed's own optimum."""
        x = [math.log2(lr) for lr in self.lrs]
        mean = fit_optimum(width, x, [self.loss(parametrization, width, lr) for lr in self.lrs])
        runs: dict[int, dict[float, float]] = {}
        for c in self.cells:
            if (c.parametrization, c.size, c.transfer) == (parametrization, width, False):
                runs.setdefault(c.seed, {})[c.lr] = c.val_loss
        each = [
            fit_optimum(width, x, [seed[lr] for lr in self.lrs]).log2_lr
            for seed in runs.values()
            if len(seed) == len(self.lrs)
        ]
        if len(each) < 2 or any(math.isnan(v) for v in each) or mean.method == "none":
            return mean
        return replace(mean, error=statistics.stdev(each) / math.sqrt(len(each)))

    def sensitivity(self, parametrization: str, width: int) -> float:
        """LR sensitivity as Wortsman et al. (2023) define it: over the grid's learning rates, the
        mean of (loss, clipped at the loss at init) minus the best loss. 0 when every LR is as good
        as the best; diverged cells count at the loss at init. nan when cells lack curves."""
        start = [
            c.curve[0]
            for c in self.cells
            if (c.parametrization, c.size, c.transfer) == (parametrization, width, False) and c.curve
        ]
        losses = [self.loss(parametrization, width, lr) for lr in self.lrs]
        if not start or any(math.isnan(v) for v in losses):
            return math.nan
        init = sum(start) / len(start)
        clipped = [min(v, init) for v in losses]
        return sum(clipped) / len(clipped) - min(clipped)

    def summary(self, parametrization: str) -> Summary:
        optima = tuple(self.optimum(parametrization, w) for w in self.sizes)
        found = [o.log2_lr for o in optima if o.method != "none"]
        drift, drift_error = math.nan, math.nan
        if len(found) == len(optima):
            high, low = max(optima, key=lambda o: o.log2_lr), min(optima, key=lambda o: o.log2_lr)
            drift, drift_error = high.log2_lr - low.log2_lr, math.hypot(high.error, low.error)
        widest = self.sizes[-1]
        lr = transfer_lr(optima[0])
        transfer = self.loss(parametrization, widest, lr, transfer=True) if lr else math.nan
        best = min(optima[-1].loss, transfer) if not math.isnan(transfer) else optima[-1].loss
        regret = transfer / best - 1 if math.isfinite(best) and not math.isnan(transfer) else math.nan
        return Summary(
            parametrization=parametrization,
            optima=optima,
            drift=drift,
            drift_error=drift_error,
            transfer_log2_lr=math.log2(lr) if lr else math.nan,
            transfer_loss=transfer,
            best_loss=best,
            regret=regret,
            sensitivity=tuple(self.sensitivity(parametrization, w) for w in self.sizes),
            **_slope(optima),
        )

    @property
    def axis(self) -> str:
        """What the grid varies: ``width`` or ``depth``."""
        return self.protocol.get("axis", "width")

    def table(self) -> str:
        """The loss of every cell (``*`` the best per width), each row's optimum and LR
        sensitivity, then drift and regret."""
        p = self.protocol
        axis = self.axis
        budget = {"steps": f"batch {p['batch_size']}", "batch_size": f"{p['steps']} steps"}.get(
            axis, f"{p['steps']} steps of batch {p['batch_size']}"
        )
        model = f" at {p['width_key']} {p['shape'].get(p['width_key'])}" if axis in TRAINING_AXES else ""
        varied = f"{p['role']} LR (the rest at 2^{math.log2(p['base_lr']):.2f})" if p.get("role") else "LR"
        lines = [
            f"{axis} x {varied} grid: {p['factory']}{model} on {p['data']}, {budget}, {p['optimizer']}, "
            f"warmup {p['warmup']:g} then {p['schedule']}; validation loss"
        ]
        head = ["log2 lr"] + [f"{math.log2(lr):g}" for lr in self.lrs] + ["optimum", "LR sens."]
        summaries = [self.summary(name) for name in self.parametrizations]
        for name, s in zip(self.parametrizations, summaries, strict=True):
            rows = [head]
            for o, sensitivity in zip(s.optima, s.sensitivity, strict=True):
                losses = [self.loss(name, o.size, lr) for lr in self.lrs]
                cells = [_cell_text(v, v == o.loss) for v in losses]
                rows.append([f"{axis} {o.size}", *cells, _optimum_text(o), _number(sensitivity, ".3f")])
            base_axis = p["width_key"] if axis in TRAINING_AXES else axis
            base = f" (base {base_axis} {p['base']})" if name == "mup" else ""
            lines += ["", f"{label(name, axis)}{base}:"]
            lines += table(rows, align="r", indent="  ")
            lines.append(_verdict_text(s, self.sizes, axis))
        lines += _divergence_notes(self.cells, axis)
        edge = sorted({o.size for s in summaries for o in s.optima if o.method == "edge"})
        if edge:
            lines.append(
                f"note: at {plural(axis)} {edge} the best LR is at the grid's edge, so the optimum may lie "
                "outside it. Fix: extend the LR range on that side."
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["cells"] = [jsonable(c) for c in data["cells"]]
        data["complete"] = self.complete
        data["summary"] = {n: jsonable(asdict(self.summary(n))) for n in self.parametrizations}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Grid:
        cells = tuple(Cell(**_cell_fields(c)) for c in data["cells"])
        return cls(
            protocol=dict(data["protocol"]),
            sizes=tuple(data["sizes"] if "sizes" in data else data["widths"]),  # "widths" before 0.2
            lrs=tuple(data["lrs"]),
            parametrizations=tuple(data["parametrizations"]),
            seeds=data["seeds"],
            cells=cells,
        )

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically: a kill mid-write leaves the previous file whole."""
        save_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Grid:
        fix = "pass another path, or move it away to start over."
        data = load_json(path, "grid result file", fix)
        try:
            return cls.from_dict(data)
        except (KeyError, TypeError) as exc:
            raise MutransferError(
                f"{path} is not a grid result file ({exc}). "
                "Fix: pass another path, or delete it to start over."
            ) from None


def fit_optimum(width: int, log2_lrs: Sequence[float], losses: Sequence[float]) -> Optimum:
    """The parabola's vertex through the grid minimum and its neighbours, kept between them."""
    finite = [v for v in losses if math.isfinite(v)]
    if not finite:
        return Optimum(width, math.nan, math.inf, "none")
    i = losses.index(min(finite))
    x, y = log2_lrs, losses
    if i == 0 or i == len(losses) - 1:
        return Optimum(width, x[i], y[i], "edge")
    if not (math.isfinite(y[i - 1]) and math.isfinite(y[i + 1])):
        return Optimum(width, x[i], y[i], "argmin")
    # y = a t^2 + b t + c through the three points, t = log2 lr - x[i]
    t0, t2 = x[i - 1] - x[i], x[i + 1] - x[i]
    d0, d2 = y[i - 1] - y[i], y[i + 1] - y[i]
    a = (d2 / t2 - d0 / t0) / (t2 - t0)
    b = d0 / t0 - a * t0
    if a <= 0:
        return Optimum(width, x[i], y[i], "argmin")
    vertex = min(max(-b / (2 * a), t0), t2)
    return Optimum(width, x[i] + vertex, y[i], "parabola")


def transfer_lr(optimum: Optimum) -> float | None:
    """The learning rate the transfer run uses: the optimum, rounded to 1/1000 of a log2 unit so
    that a rerun finds the same cell."""
    return 2.0 ** round(optimum.log2_lr, 3) if optimum.method != "none" else None


def missing(result: Grid) -> list[tuple[str, int, float, int, bool]]:
    """Cells still to run, narrowest width first; the transfer runs once the narrowest is done."""
    have = {c.key for c in result.cells}
    todo = [
        (name, w, lr, seed, False)
        for w in result.sizes
        for name in result.parametrizations
        for lr in result.lrs
        for seed in range(result.seeds)
        if (name, w, lr, seed, False) not in have
    ]
    narrowest_done = not any(w == result.sizes[0] for _, w, _, _, _ in todo)
    if narrowest_done:
        for name in result.parametrizations:
            lr = transfer_lr(result.optimum(name, result.sizes[0]))
            if lr is None or lr in result.lrs:  # diverged everywhere, or a grid cell already measures it
                continue
            todo += [
                (name, result.sizes[-1], lr, seed, True)
                for seed in range(result.seeds)
                if (name, result.sizes[-1], lr, seed, True) not in have
            ]
    return todo


def with_cell(result: Grid, cell: Cell) -> Grid:
    return replace(result, cells=(*result.cells, cell))


def _cell_fields(cell: Mapping[str, Any]) -> dict[str, Any]:
    """A saved cell's fields: null losses (diverged) read as inf, "width" (before 0.2) as size,
    null monitor values (not recorded at that step) as nan."""
    fields = {k: v for k, v in cell.items() if k != "width"}
    fields.setdefault("size", cell.get("width"))
    if fields.get("monitors"):
        series = {
            k: [math.nan if v is None else v for v in vs] for k, vs in fields["monitors"]["series"].items()
        }
        fields["monitors"] = {**fields["monitors"], "series": series}
    return fields | {"val_loss": number(cell["val_loss"]), "train_loss": number(cell["train_loss"])}


def _cell_text(value: float, best: bool) -> str:
    if math.isnan(value):
        return "-"
    if math.isinf(value):
        return "div"
    return f"{value:.4f}{'*' if best else ' '}"


def _slope(optima: Sequence[Optimum]) -> dict[str, float]:
    """The trend the drift's max-minus-min misses, fitted as ``mutransfer.fit`` fits it."""
    law = fit_optima("size", optima)
    if law is None:
        return {}
    return {
        "exponent": law.exponent,
        "exponent_se": law.exponent_se if math.isfinite(law.exponent_se) else math.nan,
    }


def _number(value: float, spec: str) -> str:
    return "n/a" if math.isnan(value) else format(value, spec)


def _optimum_text(o: Optimum) -> str:
    if o.method == "none":
        return "all diverged"
    error = "" if math.isnan(o.error) else f" +- {o.error:.2f}"
    return f"2^{o.log2_lr:.2f}{error} ({o.method})"


def _verdict_text(s: Summary, widths: Sequence[int], axis: str = "width") -> str:
    drift, note = _number(s.drift, ".2f"), ""
    if not math.isnan(s.drift_error):
        drift += f" +- {s.drift_error:.2f}"
        if s.drift < 2 * s.drift_error:
            note = " (less than twice its error: may be the seeds' noise, not a slide)"
    elif not math.isnan(s.drift):
        note = " (one seed, so no error: seeds=2 or more tell a slide from noise)"
    text = f"  drift of the optimum over {plural(axis)} {widths[0]}..{widths[-1]}: {drift} log2 units{note}"
    if not math.isnan(s.exponent):
        error = "" if math.isnan(s.exponent_se) else f" +- {s.exponent_se:.2f}"
        text += f"\n  slope of the optimum: {s.exponent:+.2f}{error} log2 units per doubling of {axis}"
    if not math.isnan(s.regret):
        text += (
            f"\n  regret: {axis} {widths[-1]} at {axis} {widths[0]}'s optimum 2^{s.transfer_log2_lr:.2f} "
            f"reaches {s.transfer_loss:.4f}, its best is {s.best_loss:.4f}: {100 * s.regret:+.2f}%"
        )
    return text


def _divergence_notes(cells: Sequence[Cell], axis: str) -> list[str]:
    """For each row, the lowest LR that diverged and what its monitors saw rise first."""
    first: dict[tuple[str, int], Cell] = {}
    for c in sorted(cells, key=lambda c: c.lr):
        if c.diverged and c.monitors:  # its reason ends with what rose first
            first.setdefault((c.parametrization, c.size), c)
    return [
        f"{label(c.parametrization, axis)}, {axis} {c.size}, lr 2^{math.log2(c.lr):g}: {c.diverged}"
        for c in first.values()
    ]
