"""Training a grid: every (parametrization, size, LR, seed) cell, then the transfer runs, saved
after every cell and resumed from the file under the same protocol."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mutransfer.axis import Axis, axis_of, plural
from mutransfer.data import factory_keywords
from mutransfer.data.batches import Batches, fetch
from mutransfer.errors import MutransferError, check_number
from mutransfer.factory import construct
from mutransfer.files import check_protocol
from mutransfer.grid.result import Cell, Grid, missing, transfer_lr, with_cell
from mutransfer.parametrizations import PLANNED, label
from mutransfer.parametrizations import check as check_parametrizations
from mutransfer.scaling.plan import Plan
from mutransfer.setup import ROLES, ModelSetup, TrainSetup, one
from mutransfer.train import LossFn, OptimizerSpec, check_budget, cross_entropy

__all__ = ["GridProgress", "grid", "run"]

# progress(cells done, cells in all, what runs next, estimated seconds left or None)
GridProgress = Callable[[int, int, str, float | None], None]


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
    z_loss: float = 0.0,
    monitor_every: int = 0,
    fp8: bool = False,
    role: str | None = None,
    base_lr: float | None = None,
    path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    progress: GridProgress | None = None,
) -> Grid:
    """Train every (parametrization, width, LR, seed) cell, then the transfer runs; return the Grid.
    ``widths`` default to 32, 64, 128, 256 (``mutransfer.axis.DEFAULT_WIDTHS``).

    ``shape`` holds the factory's other keywords; ``sp_shape`` those that differ for the standard
    model (e.g. ``{"base_d_head": None}``). muP uses the plan from ``base`` (default: the
    narrowest width, where muP and standard parametrization coincide) with ``init_law`` and
    ``zero`` as in ``Plan.init_``, and ``multipliers`` (``init_scale``, ``input_mult``,
    ``output_mult``, as a sweep tunes them on the proxy) on its cells; ``"u-mup"`` among the
    ``parametrizations`` adds u-muP (no base; ``unit_scaled=True`` where the factory takes it,
    its alphas in ``shape``). ``lrs`` are base learning
    rates, best spaced evenly in log2. ``z_loss``: its weight (e.g. 1e-4), added to the loss
    trained on. ``monitor_every``: record each cell's monitors (``mutransfer.monitor``:
    attention logits, log Z, updates, gradients) every that many steps. ``fp8``: every matmul in
    simulated FP8 (``mutransfer.fp8``). ``path``: save after
    every cell and resume from it. ``progress`` is told before every cell.

    ``role`` (``"output"``, ``"hidden"``, ...) makes a per-role grid: ``lrs`` are that role's
    learning rates and every other tensor trains at ``base_lr`` (muP's rules on top of both);
    each width's optimum and their slope say whether that role's rule holds.

    ``depths=`` instead of ``widths=`` makes a depth grid: ``depth_key`` varies, ``shape`` holds
    the width, and "mup" is the CompleteP plan (``residual``, ``alpha``; see ``mutransfer.plan``)
    from ``base`` blocks.

    A list of ``steps``, ``batch_size`` or ``block_size`` (sequence length; text data) instead
    makes a training-axis grid: one model, at the width ``shape`` gives, trained at every size
    and LR; muP means the plan from the ``base`` width (default: the model's own, where muP is
    the model as built) and is the only parametrization by default. Every cell of a batch-size
    grid is evaluated on the same examples (batches of the largest size). Fit how the optimum
    moves with ``mutransfer.fit``.

    The keywords make a ``ModelSetup`` and a ``TrainSetup`` (``mutransfer.setup``); ``run``
    takes those directly.
    """
    varied = {k: v for k, v in (("steps", steps), ("batch_size", batch_size), ("block_size", block_size))
              if _several(v)}  # fmt: skip
    axis, sizes = axis_of(
        widths,
        depths,
        width_key=width_key,
        depth_key=depth_key,
        residual=residual,
        alpha=alpha,
        training=varied,
    )
    model = ModelSetup(
        factory=make_model,
        shape=shape or {},
        sp_shape=sp_shape or {},
        init_law=init_law,
        zero=zero,
        multipliers=multipliers or {},
    )
    training = TrainSetup(
        data=data,
        steps=one(steps),
        batch_size=one(batch_size),
        block_size=one(block_size),
        warmup=warmup,
        schedule=schedule,
        optimizer=optimizer,
        optimizer_family=optimizer_family,
        weight_decay=weight_decay,
        eval_batches=eval_batches,
        loss=loss or cross_entropy,
        z_loss=z_loss,
        monitor_every=monitor_every,
        fp8=fp8,
        seeds=seeds,
        device=device,
    )
    return run(model, training, axis=axis, sizes=sizes, lrs=lrs, parametrizations=parametrizations, base=base,
               path=path, progress=progress, role=role, base_lr=base_lr)  # fmt: skip


def run(
    model: ModelSetup,
    training: TrainSetup,
    *,
    axis: Axis,
    sizes: Sequence[int],
    lrs: Sequence[float],
    parametrizations: Sequence[str] | None = None,
    base: int | None = None,
    path: str | os.PathLike | None = None,
    progress: GridProgress | None = None,
    role: str | None = None,
    base_lr: float | None = None,
) -> Grid:
    """The grid of ``model`` trained under ``training`` at ``sizes`` along ``axis`` and at ``lrs``
    (one ``role``'s, the rest at ``base_lr``, when a role is given)."""
    if parametrizations is None:
        parametrizations = ("mup",) if axis.trains or role else ("sp", "mup")
    _check_role(role, base_lr, parametrizations)
    check_parametrizations(parametrizations, "parametrizations")
    lrs = sorted({check_number(lr, "every learning rate in lrs", positive=True) for lr in lrs})
    if len(sizes) < 2:
        raise MutransferError(
            f"a grid needs at least 2 {plural(axis.name)}, got {sizes}. Fix: e.g. [128, 256, 512]."
        )
    if len(lrs) < 3:
        raise MutransferError(
            f"a grid needs at least 3 positive learning rates to locate an optimum, got {lrs}. "
            "Fix: e.g. lrs=[2**k for k in range(-12, -4)]."
        )
    planned = tuple(p for p in parametrizations if p in PLANNED)
    cells = _Cells(model, training, axis, sizes, base, planned, role=(role, base_lr))
    result = Grid(cells.protocol, tuple(sizes), tuple(lrs), tuple(parametrizations), training.seeds)
    if path is not None and Path(path).exists():
        result = _resume(Grid.load(path), result, path)
    clock = _Clock(cells.costs)
    while todo := missing(result):
        if progress:
            # the transfer runs are listed once the narrowest size is done: until then, count them
            narrowest_left = any(w == sizes[0] for _, w, _, _, _ in todo)
            extra = training.seeds * len(parametrizations) if narrowest_left else 0
            progress(len(result.cells), len(result.cells) + len(todo) + extra, _label(todo[0], axis.name),
                     clock.left(todo))  # fmt: skip
        cell = cells.train(todo[0])
        clock.add(cell)
        result = with_cell(result, cell)
        if path is not None:
            result.save(path)
    if progress:
        progress(len(result.cells), len(result.cells), "done", 0.0)
    return result


class _Cells:
    """How to train any cell of one grid: the factory's keywords, the run and the plan at each size."""

    def __init__(
        self,
        model: ModelSetup,
        training: TrainSetup,
        axis: Axis,
        sizes: Sequence[int],
        base: int | None,
        planned: Sequence[str],
        role: tuple[str | None, float | None] = (None, None),
    ) -> None:
        self.axis, self.training = axis, training
        self.role, self.base_lr = role
        self.runs = {w: _run_settings(axis, w, training) for w in sizes}
        for settings in self.runs.values():  # the axis's sizes are budgets too
            check_budget(settings["steps"], settings["batch_size"], training.eval_batches, training.warmup,
                         training.schedule)  # fmt: skip
        self.takes_block = "block_size" in factory_keywords(training.data, model.factory)
        if axis.trains:
            if axis.width_key not in model.shape:
                raise MutransferError(
                    f"a {axis.name} grid trains one model at every size: give its width in shape=, e.g. "
                    f"shape={{{axis.width_key!r}: 64}}, and the muP base width with base= (default: that)."
                )
            base = model.shape[axis.width_key] if base is None else int(base)
        else:
            base = sizes[0] if base is None else int(base)
        self.base = base
        self.protocol = self._protocol(model, training, sizes)
        self.model = model.with_data(training.data)
        self.costs = {
            w: w if axis.trains else _parameter_count(model.factory, self.keywords("mup", w)) for w in sizes
        }
        example = (fetch(training.data, 0, 2, seed=0)[0],)  # what the plans run to find the attention
        self.plans = {
            (name, w): axis.plan(model.factory, self.keywords(name, w), base, w, example, name)
            for name in planned
            for w in sizes
        }

    def keywords(self, parametrization: str, size: int) -> dict[str, Any]:
        """The factory's keywords for one cell: the size's, over the parametrization's."""
        sized = _model_keywords(self.axis, size, self.takes_block, self.training.block_size)
        return {**self.model.keywords(parametrization), **sized}

    def train(self, cell: tuple[str, int, float, int, bool]) -> Cell:
        name, size, lr, seed, transfer = cell
        shape = self.keywords(name, size)
        plan: Plan | None = self.plans.get((name, size))
        if name == "sp" and self.training.family == "muon":  # Muon needs roles: the identity plan is standard
            own = self.model.shape[self.axis.width_key] if self.axis.trains else size
            plan = self.axis.plan(self.model.factory, shape, own, size)
        model, run_lr = self.model, lr
        if self.role is not None:  # the cell's LR is the role's; every other tensor's is the base LR
            model = replace(model, lr_scale={**model.lr_scale, self.role: lr / self.base_lr})
            run_lr = self.base_lr
        built = model.build(
            shape, tuned=name in PLANNED, plan=plan, lr=run_lr, training=self.training, seed=seed
        )
        batch = self.runs[size]
        eval_batch = self.runs[max(self.runs)]["batch_size"] if self.axis.name == "batch_size" else None
        try:
            r = self.training.train(*built, seed=seed, eval_batch_size=eval_batch, **batch)
        except (RuntimeError, TypeError, IndexError) as exc:  # not divergence: a bug to show
            raise MutransferError(
                f"training the {_label(cell, self.axis.name)} failed: {type(exc).__name__}: {exc}. The cells "
                "done so far are saved. Check that the model's inputs match the data (keywords in shape=)."
            ) from exc
        return Cell(name, size, lr, seed, r.val_loss, r.train_loss, r.steps, r.seconds, r.diverged, transfer,
                    r.curve, r.monitors)  # fmt: skip

    def _protocol(self, model: ModelSetup, training: TrainSetup, sizes: Sequence[int]) -> dict[str, Any]:
        """The grid's protocol: the setups' and the axis's (keys added over time appear only when
        they apply, so grids saved before them still resume)."""
        axis = self.axis
        protocol = {**model.protocol(), **training.protocol(), "base": self.base}
        protocol["width_key"] = axis.width_key if axis.trains else axis.key
        if axis.name == "depth":
            protocol |= {"axis": "depth", "residual": list(axis.residual), "alpha": axis.alpha}
        if self.role is not None:
            protocol |= {"role": self.role, "base_lr": self.base_lr}
        if axis.trains:  # the swept setting is the axis; the cells' sizes say its values
            largest = self.runs[max(sizes)]["batch_size"]
            protocol |= {"axis": axis.name, axis.name: None, "eval_batch_size": largest}
        return protocol


def _check_role(role: str | None, base_lr: float | None, parametrizations: Sequence[str]) -> None:
    """A per-role grid needs a known role, the others' learning rate, and muP's roles."""
    if role is None:
        if base_lr is not None:
            raise MutransferError("base_lr is the other tensors' LR in a per-role grid: give role= too.")
        return
    if role not in ROLES:
        raise MutransferError(f"role {role!r} unknown; a per-role grid varies one of {', '.join(ROLES)}.")
    if base_lr is None:
        raise MutransferError(
            f"a per-role grid varies the {role} tensors' LR and holds the others: give their LR as "
            "base_lr= (--base-lr; e.g. the optimum of a width grid)."
        )
    check_number(base_lr, "base_lr", positive=True)
    if "sp" in parametrizations:
        raise MutransferError(
            "a per-role grid needs the tensors' roles, which only the muP plan gives: "
            "parametrizations=['mup']."
        )


def _several(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str) and len(set(value)) > 1


def _run_settings(axis: Axis, size: int, training: TrainSetup) -> dict[str, Any]:
    """``train``'s steps, batch size and data at one size of the axis."""
    settings = {"steps": training.steps, "batch_size": training.batch_size, "data": training.data}
    if axis.name in ("steps", "batch_size"):
        settings[axis.name] = size
    block = size if axis.name == "block_size" else training.block_size
    data = training.data
    if block is not None and block != getattr(data, "block_size", block):
        if not hasattr(data, "with_block_size"):
            raise MutransferError(f"block_size= needs text data (TokenData); {data!r} has no sequences.")
        settings["data"] = data.with_block_size(block)
    return settings


def _model_keywords(axis: Axis, size: int, takes_block: bool, block: Any) -> dict[str, Any]:
    """The factory keywords one size sets: the width or depth, or a sequence length the model
    takes as ``block_size`` (its position table)."""
    if not axis.trains:
        return {axis.key: size}
    block = size if axis.name == "block_size" else block
    return {"block_size": block} if block is not None and takes_block else {}


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
    pending = {(name, w) for name, w, _, _, transfer in missing(kept) if not transfer}
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
