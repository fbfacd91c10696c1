"""Width x learning-rate grid: does the best learning rate stay put as the model widens?

    >>> import mutransfer
    >>> from mutransfer.models import MLP
    >>> result = mutransfer.grid(
    ...     MLP, widths=[64, 128, 256], lrs=[2**k for k in range(-11, -4)],
    ...     data=mutransfer.data.digits(), shape={"in_features": 64}, steps=100, batch_size=64,
    ... )
    >>> print(result.table())                          # doctest: +SKIP
    >>> result.summary("mup").drift < result.summary("sp").drift   # doctest: +SKIP
    True

The same grid over depths (``depths=[2, 4, 8], residual=GPT.residual``) checks CompleteP's
claim that the best learning rate also stays put as the model deepens.

Every cell trains ``make_model(**shape, width=w)`` from the same seed on the same batches with
learning rate ``lr`` (warmup, then cosine decay) and records its validation loss; a diverged
cell is recorded with its reason. Per width, the optimal log2 LR is the vertex of the parabola
through the grid minimum and its two neighbours (the minimum itself at the grid's edge). The
claim of muTransfer (Tensor Programs V, Figure 1) is measured two ways:

- ``drift``: how far the optimum moves across the widths, max minus min, in log2 units;
- ``regret``: the relative loss increase at the widest width when it trains with the
  narrowest width's optimal LR (one extra run) instead of its own best grid LR.

With ``path``, the results are saved after every cell and a rerun with the same protocol
skips the cells already there, so a killed grid resumes where it stopped.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mutransfer.axis import TRAINING_AXES, axis_of, plural
from mutransfer.data import factory_keywords
from mutransfer.data.batches import Batches
from mutransfer.errors import MutransferError, check_number
from mutransfer.factory import construct, name_of
from mutransfer.files import check_protocol, jsonable, load_json, number, save_json
from mutransfer.parametrizations import check as check_parametrizations
from mutransfer.parametrizations import label
from mutransfer.scaling.planning import BIASES, init_law_of
from mutransfer.text import table
from mutransfer.train import (
    LossFn,
    OptimizerSpec,
    build,
    check_budget,
    cross_entropy,
    optimizer_class,
    train,
)

__all__ = ["Cell", "Grid", "Optimum", "Summary", "fit_optimum", "grid", "transfer_lr"]


# progress(cells done, cells in all, what runs next, estimated seconds left or None)
GridProgress = Callable[[int, int, str, float | None], None]


@dataclass(frozen=True)
class Cell:
    """One training run of the grid. ``val_loss`` is ``inf`` when it ``diverged`` (the reason).
    ``transfer`` marks the extra run at the widest width with the narrowest width's optimum.
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


@dataclass(frozen=True)
class Summary:
    """What the grid says about one parametrization."""

    parametrization: str
    optima: tuple[Optimum, ...]
    drift: float  # max minus min of the optimal log2 LR over the widths
    transfer_log2_lr: float  # the narrowest width's optimum, reused at the widest
    transfer_loss: float  # the widest width's validation loss at that LR
    best_loss: float  # the widest width's best validation loss (grid or transfer run)
    regret: float  # transfer_loss / best_loss - 1


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
        return not _missing(self)

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
        losses = [self.loss(parametrization, width, lr) for lr in self.lrs]
        return fit_optimum(width, [math.log2(lr) for lr in self.lrs], losses)

    def summary(self, parametrization: str) -> Summary:
        optima = tuple(self.optimum(parametrization, w) for w in self.sizes)
        found = [o.log2_lr for o in optima if o.method != "none"]
        drift = max(found) - min(found) if len(found) == len(optima) else math.nan
        widest = self.sizes[-1]
        lr = transfer_lr(optima[0])
        transfer = self.loss(parametrization, widest, lr, transfer=True) if lr else math.nan
        best = min(optima[-1].loss, transfer) if not math.isnan(transfer) else optima[-1].loss
        regret = transfer / best - 1 if math.isfinite(best) and not math.isnan(transfer) else math.nan
        return Summary(
            parametrization=parametrization,
            optima=optima,
            drift=drift,
            transfer_log2_lr=math.log2(lr) if lr else math.nan,
            transfer_loss=transfer,
            best_loss=best,
            regret=regret,
        )

    @property
    def axis(self) -> str:
        """What the grid varies: ``width`` or ``depth``."""
        return self.protocol.get("axis", "width")

    def table(self) -> str:
        """The loss of every cell (``*`` the best per width), then optimum, drift and regret."""
        p = self.protocol
        axis = self.axis
        budget = {"steps": f"batch {p['batch_size']}", "batch_size": f"{p['steps']} steps"}.get(
            axis, f"{p['steps']} steps of batch {p['batch_size']}"
        )
        model = f" at {p['width_key']} {p['shape'].get(p['width_key'])}" if axis in TRAINING_AXES else ""
        lines = [
            f"{axis} x LR grid: {p['factory']}{model} on {p['data']}, {budget}, {p['optimizer']}, "
            f"warmup {p['warmup']:g} then {p['schedule']}; validation loss"
        ]
        head = ["log2 lr"] + [f"{math.log2(lr):g}" for lr in self.lrs] + ["optimum"]
        summaries = [self.summary(name) for name in self.parametrizations]
        for name, s in zip(self.parametrizations, summaries, strict=True):
            rows = [head]
            for o in s.optima:
                losses = [self.loss(name, o.size, lr) for lr in self.lrs]
                cells = [_cell_text(v, v == o.loss) for v in losses]
                rows.append([f"{axis} {o.size}", *cells, _optimum_text(o)])
            base_axis = p["width_key"] if axis in TRAINING_AXES else axis
            base = f" (base {base_axis} {p['base']})" if name == "mup" else ""
            lines += ["", f"{label(name, axis)}{base}:"]
            lines += table(rows, align="r", indent="  ")
            lines.append(_verdict_text(s, self.sizes, axis))
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


def grid(
    make_model: Callable[..., nn.Module],
    *,
    widths: Sequence[int] = (),
    depths: Sequence[int] = (),
    lrs: Sequence[float],
    data: Batches,
    parametrizations: Sequence[str] | None = None,
    shape: Mapping[str, Any] | None = None,
    sp_shape: Mapping[str, Any] | None = None,
    width_key: str = "width",
    depth_key: str = "depth",
    residual: Sequence[str] = (),
    alpha: float = 1.0,
    base: int | None = None,
    steps: int | Sequence[int] = 300,
    batch_size: int | Sequence[int] = 32,
    block_size: int | Sequence[int] | None = None,
    warmup: float = 0.1,
    schedule: str = "cosine",
    optimizer: OptimizerSpec = "adam",
    optimizer_family: str | None = None,
    weight_decay: float = 0.0,
    init_law: str | None = None,
    zero: Sequence[str] = (),
    multipliers: Mapping[str, float] | None = None,
    seeds: int = 1,
    eval_batches: int = 16,
    loss: LossFn | None = None,
    path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    progress: GridProgress | None = None,
) -> Grid:
    """Train every (parametrization, width, LR, seed) cell, then the transfer runs; return the Grid.

    ``shape`` holds the factory's other keywords; ``sp_shape`` those that differ for the standard
    model (e.g. ``{"base_d_head": None}``). muP uses the plan from ``base`` (default: the
    narrowest width, where muP and standard parametrization coincide) with ``init_law`` and
    ``zero`` as in ``Plan.init_``, and ``multipliers`` (``init_scale``, ``input_mult``,
    ``output_mult``, as a sweep tunes them on the proxy) on its cells. ``lrs`` are base learning
    rates, best spaced evenly in log2. ``path``: save after every cell and resume from it.
    ``progress`` is told before every cell.

    ``depths=`` instead of ``widths=`` makes a depth grid: ``depth_key`` varies, ``shape`` holds
    the width, and "mup" is the CompleteP plan (``residual``, ``alpha``; see ``mutransfer.plan``)
    from ``base`` blocks.

    A list of ``steps``, ``batch_size`` or ``block_size`` (sequence length; text data) instead
    makes a training-axis grid: one model, at the width ``shape`` gives, trained at every size
    and LR; muP means the plan from the ``base`` width (default: the model's own, where muP is
    the model as built) and is the only parametrization by default. Every cell of a batch-size
    grid is evaluated on the same examples (batches of the largest size). Fit how the optimum
    moves with ``mutransfer.fit``.
    """
    training = {k: v for k, v in (("steps", steps), ("batch_size", batch_size), ("block_size", block_size))
                if _several(v)}  # fmt: skip
    axis, widths = axis_of(
        widths,
        depths,
        width_key=width_key,
        depth_key=depth_key,
        residual=residual,
        alpha=alpha,
        training=training,
    )
    steps, batch_size, block_size = (_one(v) for v in (steps, batch_size, block_size))
    if parametrizations is None:
        parametrizations = ("mup",) if axis.trains else ("sp", "mup")
    lrs = sorted({check_number(lr, "every learning rate in lrs", positive=True) for lr in lrs})
    if len(widths) < 2:
        raise MutransferError(
            f"a grid needs at least 2 {plural(axis.name)}, got {widths}. Fix: e.g. [128, 256, 512]."
        )
    if len(lrs) < 3 or lrs[0] <= 0:
        raise MutransferError(
            f"a grid needs at least 3 positive learning rates to locate an optimum, got {lrs}. "
            "Fix: e.g. lrs=[2**k for k in range(-12, -4)]."
        )
    check_parametrizations(parametrizations, "parametrizations")
    if seeds < 1:
        raise MutransferError(f"seeds must be at least 1, got {seeds}.")
    _, family = optimizer_class(optimizer, optimizer_family)  # fail on a bad name before any training
    shape = dict(shape or {})
    runs = {w: _run_settings(axis, w, steps, batch_size, data, block_size) for w in widths}
    for settings in runs.values():
        check_budget(settings["steps"], settings["batch_size"], eval_batches, warmup, schedule)
    implied = factory_keywords(data, make_model)
    takes_block = "block_size" in implied
    # the vocabulary or input size the data decides, where the shape leaves it open (a Hugging
    # Face config's 50257-token GPT-2 vocabulary would otherwise train on bytes)
    filled = {k: v for k, v in implied.items() if k not in shape and k != "block_size"}
    sized = {w: {**filled, **shape, **_model_keywords(axis, w, takes_block, block_size)} for w in widths}
    if axis.trains:
        if width_key not in shape:
            raise MutransferError(
                f"a {axis.name} grid trains one model at every size: give its width in shape=, e.g. "
                f"shape={{{width_key!r}: 64}}, and the muP base width with base= (default: the same)."
            )
        base = shape[width_key] if base is None else int(base)
    else:
        base = widths[0] if base is None else int(base)
    shapes = {"sp": {**filled, **shape, **(sp_shape or {})}, "mup": {**filled, **shape}}
    protocol = {
        "factory": name_of(make_model),
        "data": getattr(data, "name", type(data).__name__),
        "data_fingerprint": getattr(data, "fingerprint", ""),
        "block_size": block_size or getattr(data, "block_size", None),
        "shape": shape,
        "sp_shape": dict(sp_shape or {}),
        "width_key": axis.width_key if axis.trains else axis.key,
        "base": base,
        "steps": steps,
        "batch_size": batch_size,
        "warmup": warmup,
        "schedule": schedule,
        "optimizer": name_of(optimizer),
        "weight_decay": weight_decay,
        "init_law": init_law or init_law_of(make_model),
        "biases": BIASES,
        "zero": list(zero),
        "eval_batches": eval_batches,
        "loss": name_of(loss or cross_entropy),
    }
    if axis.name == "depth":  # only then, so width grids saved before depth existed still resume
        protocol |= {"axis": "depth", "residual": list(axis.residual), "alpha": axis.alpha}
    multipliers = dict(multipliers or {})
    unknown_mult = sorted(set(multipliers) - {"init_scale", "input_mult", "output_mult"})
    if unknown_mult:
        raise MutransferError(
            f"multipliers: {unknown_mult} unknown; the tunable ones are init_scale, input_mult, output_mult."
        )
    if multipliers:  # only then, so grids saved before they existed still resume
        protocol["multipliers"] = {
            k: check_number(v, f"multipliers.{k}", positive=True) for k, v in multipliers.items()
        }
    if axis.trains:  # the swept setting is the axis; the cells' sizes say its values
        protocol |= {"axis": axis.name, axis.name: None, "eval_batch_size": runs[widths[-1]]["batch_size"]}
    result = Grid(protocol, tuple(widths), tuple(lrs), tuple(parametrizations), seeds)
    if path is not None and Path(path).exists():
        result = _resume(Grid.load(path), result, path)
    run_settings = dict(
        warmup=warmup,
        schedule=schedule,
        eval_batches=eval_batches,
        eval_batch_size=runs[widths[-1]]["batch_size"] if axis.name == "batch_size" else None,
        loss=loss or cross_entropy,
        device=device,
    )
    build_settings = dict(
        optimizer=optimizer,
        optimizer_family=optimizer_family,
        weight_decay=weight_decay,
        init_law=init_law,
        zero=zero,
        device=device,
    )
    # what a cell costs, for the time-left estimate: parameters, or the training axis's size
    sizes = {w: w if axis.trains else _parameter_count(make_model, sized[w]) for w in widths}
    clock = _Clock(sizes)
    plans = {w: axis.plan(make_model, sized[w], base, w) for w in widths} if "mup" in parametrizations else {}

    def run(cell: tuple[str, int, float, int, bool]) -> Cell:
        name, width, lr, seed, transfer = cell
        plan, settings = (
            (plans[width], {**build_settings, **multipliers}) if name == "mup" else (None, build_settings)
        )
        model_shape = {**shapes[name], **_model_keywords(axis, width, takes_block, block_size)}
        if name == "sp" and family == "muon":  # Muon needs roles: the identity plan is standard
            plan = axis.plan(make_model, model_shape, shape[width_key] if axis.trains else width, width)
            settings = {**build_settings, "zero": ()}
        model, opt = build(make_model, model_shape, plan=plan, lr=lr, seed=seed, **settings)
        try:
            r = train(model, opt, seed=seed, **run_settings, **runs[width])
        except (RuntimeError, TypeError, IndexError) as exc:  # not divergence: a bug to show
            raise MutransferError(
                f"training the {_label(cell, axis.name)} failed: {type(exc).__name__}: {exc}. The cells done "
                "so far are saved. Check that the model's inputs match the data (factory keywords in shape=)."
            ) from exc
        return Cell(
            name, width, lr, seed, r.val_loss, r.train_loss, r.steps, r.seconds, r.diverged, transfer, r.curve
        )

    while todo := _missing(result):
        if progress:
            # the transfer runs are listed once the narrowest width is done: until then, count them
            narrowest_left = any(w == widths[0] for _, w, _, _, _ in todo)
            total = len(result.cells) + len(todo) + (seeds * len(parametrizations) if narrowest_left else 0)
            progress(len(result.cells), total, _label(todo[0], axis.name), clock.left(todo))
        cell = run(todo[0])
        clock.add(cell)
        result = _with_cell(result, cell)
        if path is not None:
            result.save(path)
    if progress:
        progress(len(result.cells), len(result.cells), "done", 0.0)
    return result


def _several(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str) and len(set(value)) > 1


def _one(value: Any) -> Any:
    """A setting given as a one-element list is that element."""
    return value[0] if isinstance(value, Sequence) and not isinstance(value, str) and value else value


def _run_settings(axis: Any, size: int, steps: Any, batch_size: Any, data: Batches, block: Any) -> dict:
    """``train``'s steps, batch size and data at one size of the axis."""
    settings = {"steps": steps, "batch_size": batch_size, "data": data}
    if axis.name in ("steps", "batch_size"):
        settings[axis.name] = size
    block = size if axis.name == "block_size" else block
    if block is not None and block != getattr(data, "block_size", block):
        if not hasattr(data, "with_block_size"):
            raise MutransferError(f"block_size= needs text data (TokenData); {data!r} has no sequences.")
        settings["data"] = data.with_block_size(block)
    return settings


def _model_keywords(axis: Any, size: int, takes_block: bool, block: Any) -> dict:
    """The factory keywords one size sets: the width or depth, or a sequence length the model
    takes as ``block_size`` (its position table)."""
    if not axis.trains:
        return {axis.key: size}
    block = size if axis.name == "block_size" else block
    return {"block_size": block} if block is not None and takes_block else {}


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


# ---- bookkeeping -----------------------------------------------------------------------------
def _missing(result: Grid) -> list[tuple[str, int, float, int, bool]]:
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


def _with_cell(result: Grid, cell: Cell) -> Grid:
    return replace(result, cells=(*result.cells, cell))


def _resume(saved: Grid, fresh: Grid, path: str | os.PathLike) -> Grid:
    """Keep the saved cells that this grid would train again; refuse a different protocol."""
    fix = "pass another path, or delete the file to start over."
    check_protocol(saved.protocol, fresh.protocol, f"{path} holds a grid trained", fix)
    wanted = {
        (name, w, lr, seed)
        for name in fresh.parametrizations
        for w in fresh.sizes
        for lr in fresh.lrs
        for seed in range(fresh.seeds)
    }
    kept = replace(
        fresh, cells=tuple(c for c in saved.cells if (c.parametrization, c.size, c.lr, c.seed) in wanted)
    )
    # a transfer run still counts if the narrowest width is complete and gives the same optimum;
    # otherwise it is run again once the narrowest width is done
    pending = {(name, w) for name, w, _, _, transfer in _missing(kept) if not transfer}
    transfer = tuple(
        c
        for c in saved.cells
        if c.transfer
        and c.parametrization in fresh.parametrizations
        and (c.parametrization, fresh.sizes[0]) not in pending
        and (c.size, c.seed) in {(fresh.sizes[-1], s) for s in range(fresh.seeds)}
        and c.lr == transfer_lr(kept.optimum(c.parametrization, fresh.sizes[0]))
    )
    return replace(kept, cells=kept.cells + transfer)


class _Clock:
    """Seconds left, from the seconds per parameter measured so far times the parameters to go:
    wider cells cost more, so counting cells would mislead."""

    def __init__(self, sizes: dict[int, int]) -> None:
        self.sizes, self.seconds, self.params = sizes, 0.0, 0

    def add(self, cell: Cell) -> None:
        self.seconds += cell.seconds
        self.params += self.sizes[cell.size]

    def left(self, todo: Sequence[tuple[str, int, float, int, bool]]) -> float | None:
        if not self.params:
            return None
        return self.seconds / self.params * sum(self.sizes[w] for _, w, _, _, _ in todo)


def _parameter_count(make_model: Callable[..., nn.Module], shape: Mapping[str, Any]) -> int:
    return sum(p.numel() for p in construct(make_model, shape).parameters())  # on meta: shapes only


def _label(cell: tuple[str, int, float, int, bool], axis: str = "width") -> str:
    name, width, lr, seed, transfer = cell
    what = "transfer run" if transfer else "cell"
    return f"{what} {label(name, axis)} {axis} {width} lr 2^{math.log2(lr):.3g} seed {seed}"


def _cell_fields(cell: Mapping[str, Any]) -> dict[str, Any]:
    """A saved cell's fields: null losses (diverged) read as inf, "width" (before 0.2) as size."""
    fields = {k: v for k, v in cell.items() if k != "width"}
    fields.setdefault("size", cell.get("width"))
    return fields | {"val_loss": number(cell["val_loss"]), "train_loss": number(cell["train_loss"])}


def _cell_text(value: float, best: bool) -> str:
    if math.isnan(value):
        return "-"
    if math.isinf(value):
        return "div"
    return f"{value:.4f}{'*' if best else ' '}"


def _optimum_text(o: Optimum) -> str:
    if o.method == "none":
        return "all diverged"
    return f"2^{o.log2_lr:.2f} ({o.method})"


def _verdict_text(s: Summary, widths: Sequence[int], axis: str = "width") -> str:
    drift = "n/a" if math.isnan(s.drift) else f"{s.drift:.2f}"
    text = f"  drift of the optimum over {plural(axis)} {widths[0]}..{widths[-1]}: {drift} log2 units"
    if not math.isnan(s.regret):
        text += (
            f"\n  regret: {axis} {widths[-1]} at {axis} {widths[0]}'s optimum 2^{s.transfer_log2_lr:.2f} "
            f"reaches {s.transfer_loss:.4f}, its best is {s.best_loss:.4f}: {100 * s.regret:+.2f}%"
        )
    return text
