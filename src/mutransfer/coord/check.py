"""Coordinate check: a verdict on whether every activation keeps its size as the model widens.

    >>> import mutransfer
    >>> from mutransfer.data import stdlib
    >>> from mutransfer.models import GPT
    >>> result = mutransfer.coord_check(
    ...     GPT, widths=[32, 64, 128, 256], data=stdlib(block_size=64), shape={"base_d_head": 8}
    ... )
    >>> result.passed
    True

In muP, after any fixed number of training steps, the typical entry of every activation, of
the attention logits and of the output logits keeps its size as the width grows, and so does
the change each layer's own update makes to its output (Tensor Programs V: every layer
updates maximally and nothing blows up). The check trains every width for a few steps from
several seeds and, before every step, runs a fixed probe batch and records for each watched
point (``probe.py``: modules, attention, the residual stream, the model's output) the RMS of

- ``rms``: its output;
- ``change``: its output minus its output before training;
- ``update``: its output minus what its initial copy computes from the same input, i.e. the
  effect of the module's own parameter updates (``dW @ x`` for a linear layer), which exposes
  a mis-scaled learning rate even while the layer's input dominates its output;
- ``scale``: for attention, the logit scale times ``d_head`` (muP: constant, since the scale
  is ``1/d_head``).

Over depth (``depths=[2, 4, 8, 16], residual=GPT.residual``) the same measures are taken per
block and averaged over the blocks (``blocks.*.fc`` stands for every block's ``fc``), the
blocks' outputs (the residual stream) are watched too, and the exponent is fitted against the
number of blocks: under CompleteP nothing grows with depth, while without a branch multiplier
the residual stream and its updates grow with every block added.

``verdict.py`` fits the exponent ``s`` of ``value ~ width**s`` and fails a point whose values
grow (``s > threshold``) or whose own updates vanish (``s < -threshold``), naming the cause.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import torch
from torch import nn

from mutransfer.axis import Axis, axis_of
from mutransfer.coord.probe import MEASURES, Run
from mutransfer.coord.probe import run as probe_run
from mutransfer.coord.result import CoordCheck
from mutransfer.coord.verdict import judge, slope
from mutransfer.data.batches import Batches, fetch
from mutransfer.errors import MutransferError, MutransferWarning, check_number
from mutransfer.losses import with_z_loss
from mutransfer.parametrizations import PLANNED, Parametrization, label
from mutransfer.parametrizations import check as check_parametrizations
from mutransfer.scaling.plan import Plan
from mutransfer.scaling.roles import Role, canonical_name
from mutransfer.scaling.rules import is_embedding
from mutransfer.setup import ModelSetup, TrainSetup
from mutransfer.train import LossFn, OptimizerSpec, cross_entropy

__all__ = ["GROWTH_THRESHOLD", "RELIABLE", "coord_check", "run"]

# Exponent beyond which a point fails, set from benchmarks/coord_thresholds.py (widths 32..256,
# 4 steps, 3 seeds, Adam lr 1e-3..3e-2, six models; figures in benchmarks/README.md). Exact muP
# would give 0, and standard parametrization's readout 1, at infinite width.
GROWTH_THRESHOLD = 0.35

# The smallest check whose verdict benchmarks/coord_thresholds.py found reliable (README): at
# least this many sizes spanning this ratio, steps and seeds. Below it a verdict is a guess.
RELIABLE = {"sizes": 4, "span": 8, "steps": 3, "seeds": 2}

Progress = Callable[[int, int, str], None]

# The role that names a module, strongest first (a Linear's weight outranks its bias).
_KIND_ORDER = (Role.OUTPUT, Role.HIDDEN, Role.INPUT, Role.VECTOR, Role.FIXED)


def coord_check(
    make_model: Callable[..., nn.Module],
    *,
    widths: Sequence[int] = (),
    depths: Sequence[int] = (),
    data: Batches,
    steps: int = 4,
    seeds: int = 3,
    seed: int = 0,
    lr: float = 3e-3,
    optimizer: OptimizerSpec = "adam",
    optimizer_family: str | None = None,
    parametrization: Parametrization = "mup",
    parametrizations: Sequence[str] | None = None,
    shape: Mapping[str, Any] | None = None,
    sp_shape: Mapping[str, Any] | None = None,
    width_key: str = "width",
    depth_key: str = "depth",
    residual: Sequence[str] = (),
    alpha: float = 1.0,
    base: int | None = None,
    batch_size: int = 8,
    loss: LossFn | None = None,
    z_loss: float = 0.0,
    modules: Sequence[str] | None = None,
    init_law: str | None = None,
    zero: Sequence[str] = (),
    threshold: float = GROWTH_THRESHOLD,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
) -> CoordCheck | list[CoordCheck]:
    """Train ``make_model(**shape, width=w)`` for ``steps`` steps at every width (default
    ``DEFAULT_WIDTHS``: 32, 64, 128, 256); judge growth.

    ``data`` is any ``mutransfer.data.Batches`` (``batch(index, batch_size, seed=...)``); batch
    0 is the probe; runs use seeds ``seed`` to ``seed + seeds - 1`` (init and batches).
    ``parametrization="mup"`` applies the plan from ``base`` (default: the narrowest width) with
    ``init_law`` and ``zero`` as in ``Plan.init_``; ``"sp"`` trains the model as built (with
    ``sp_shape`` over ``shape``) with one learning rate. ``parametrizations=["sp", "mup"]``
    runs each and returns a list, e.g. to compare them side by side. ``optimizer`` is
    ``"adam"``, ``"adamw"``, ``"sgd"`` or a callable taking the param groups (give
    ``optimizer_family`` then, default ``adam``). ``modules`` are name patterns to watch
    (default: every module that holds parameters, every attention, the residual stream and the
    output; see ``probe.py``). ``progress(done, total, label)`` is called per run. Build the
    model without dropout: the model and its initial copy would draw different masks.

    ``depths=`` instead of ``widths=`` checks depth: ``depth_key`` varies, ``shape`` holds the
    width, and "mup" is the CompleteP plan (``residual``, ``alpha``; see ``mutransfer.plan``).
    The keywords make a ``ModelSetup`` and a ``TrainSetup``; ``run`` takes those directly.
    """
    axis, sizes = axis_of(
        widths, depths, width_key=width_key, depth_key=depth_key, residual=residual, alpha=alpha
    )
    model = ModelSetup(
        factory=make_model, shape=shape or {}, sp_shape=sp_shape or {}, init_law=init_law, zero=zero
    )
    training = TrainSetup(
        data=data, steps=steps, batch_size=batch_size, optimizer=optimizer, optimizer_family=optimizer_family,
        loss=loss or cross_entropy, z_loss=z_loss, seeds=seeds, device=device,
    )  # fmt: skip
    settings = dict(axis=axis, sizes=sizes, lr=lr, seed=seed, base=base, modules=modules, threshold=threshold,
                    progress=progress)  # fmt: skip
    if parametrizations is None:
        return run(model, training, parametrization=parametrization, **settings)
    check_parametrizations(parametrizations, "parametrizations")
    results = []
    for i, p in enumerate(parametrizations):  # one count over all of them, each run named
        if progress is not None:
            settings["progress"] = partial(_counted, progress, i, len(parametrizations), label(p))
        results.append(run(model, training, parametrization=p, **settings))
    return results


def _counted(progress: Progress, index: int, count: int, name: str, done: int, total: int, what: str) -> None:
    progress(index * total + done, count * total, f"{name}: {what}")


def run(
    model: ModelSetup,
    training: TrainSetup,
    *,
    axis: Axis,
    sizes: Sequence[int],
    lr: float,
    parametrization: str = "mup",
    seed: int = 0,
    base: int | None = None,
    modules: Sequence[str] | None = None,
    threshold: float = GROWTH_THRESHOLD,
    progress: Progress | None = None,
) -> CoordCheck:
    """The coordinate check of ``model`` trained under ``training`` (its steps, batch size and
    seeds) at ``sizes`` along ``axis``; see ``coord_check``."""
    lr = check_number(lr, "lr", positive=True)
    check_parametrizations(parametrization)
    if len(sizes) < 3:
        raise MutransferError(
            f"a coordinate check needs at least 3 distinct {axis.name}s to fit a slope, got {sizes}. "
            f"Fix: e.g. {axis.name}s=[32, 64, 128, 256]."
        )
    model = model.with_data(training.data)
    base = sizes[0] if base is None else base
    example = (fetch(training.data, 0, 2, seed=0)[0],)  # what the plans run on meta to find the attention
    kind = parametrization if parametrization in PLANNED else "mup"  # standard: muP's plan names modules
    plans = {w: axis.plan(model.factory, model.keywords(kind), base, w, example, kind) for w in sizes}
    blocks = _Blocks(plans) if axis.name == "depth" else None
    _warn_if_unreliable(sizes, training.steps, training.seeds, axis.name)
    found = _Measured(sizes, blocks, _module_kinds(plans[sizes[-1]], blocks))
    total = len(sizes) * training.seeds
    for i, size in enumerate(sizes):
        for run_seed in range(seed, seed + training.seeds):
            if progress:
                progress(found.runs, total, f"{axis.name} {size} seed {run_seed}")
            plan = plans[size] if parametrization in PLANNED else None
            loss_fn = with_z_loss(training.loss, training.z_loss)
            shape = {**model.keywords(parametrization), axis.key: size}
            if plan is None and training.family == "muon":  # Muon needs roles: the identity plan is standard
                plan = axis.plan(model.factory, shape, size, size)
            built = model.build(shape, tuned=parametrization in PLANNED, plan=plan, lr=lr, training=training,
                                seed=run_seed)  # fmt: skip
            found.add_init(i, _init_sizes(built[0], plans[size]))
            extra = blocks.roots(size) if blocks and modules is None else ()
            found.add(i, probe_run(*built, training.data, steps=training.steps, seed=run_seed,
                                   batch_size=training.batch_size, loss_fn=loss_fn, patterns=modules,
                                   device=training.device, extra=extra))  # fmt: skip
    if progress:
        progress(found.runs, total, "done")
    expected = _expected_updates(plans[sizes[-1]]) if parametrization == "u-mup" else {}
    return found.result(
        parametrization=parametrization, training=training, lr=lr, threshold=threshold, axis=axis,
        settings={"base": base, "shape": dict(model.shape), "width_key": axis.key,
                  "batch_size": training.batch_size, "seed": seed}
        | ({"expected": expected} if expected else {})
        | ({"residual": list(axis.residual), "alpha": axis.alpha} if blocks else {}),
    )  # fmt: skip


class _Measured:
    """Every run's series, gathered per size and seed, then averaged over the seeds and judged."""

    def __init__(self, sizes: Sequence[int], blocks: _Blocks | None, kinds: dict[str, str]) -> None:
        self.sizes, self.blocks, self.kinds = list(sizes), blocks, kinds
        self.series: dict[str, list[list[list[float]]]] = {}  # "measure:point" -> size -> seed -> step
        self.losses: list[list[list[float]]] = [[] for _ in sizes]
        self.inits: dict[str, list[list[float]]] = {}  # parameter -> size -> seed: init over muP's factor
        self.order: list[str] = []
        self.previous: dict[str, str] = {}
        self.functions: dict[str, str] = {}
        self.runs = 0

    def add_init(self, i: int, sizes: Mapping[str, float]) -> None:
        for name, value in sizes.items():
            name = self.blocks.pattern(name) if self.blocks else name
            self.inits.setdefault(name, [[] for _ in self.sizes])[i].append(value)

    def add(self, i: int, measured: Run) -> None:
        if self.blocks:
            measured = self.blocks.merge(measured)
        self.order += [n for n in measured.order if n not in self.order]
        self.kinds.update(
            {n: k for n, k in measured.kinds.items() if n not in self.kinds or k == "attention"}
        )
        self.previous.update(measured.previous)
        self.functions.update(measured.functions)
        for key, series in measured.series.items():
            self.series.setdefault(key, [[] for _ in self.sizes])[i].append(series)
        self.losses[i].append(measured.losses)
        self.runs += 1

    def result(self, *, parametrization, training, lr, threshold, axis, settings) -> CoordCheck:
        """The averaged curves, judged (against ``settings["expected"]`` update exponents, if any)."""
        n = len(self.sizes)
        order = [p for p in self.order if all(self.series.get(f"rms:{p}", [[]] * n)[i] for i in range(n))]
        curves = {
            measure: {
                p: [_mean(s) for s in self.series[key]]
                for p in order
                if (key := f"{measure}:{p}") in self.series
            }
            for measure in MEASURES
        }
        loss = [_mean(s) for s in self.losses]
        optimizer = training.optimizer
        return CoordCheck(
            parametrization=parametrization,
            sizes=tuple(self.sizes),
            steps=training.steps,
            seeds=training.seeds,
            lr=lr,
            optimizer=optimizer if isinstance(optimizer, str) else getattr(optimizer, "__name__", "custom"),
            threshold=threshold,
            curves=curves,
            loss=loss,
            modules=judge(
                order,
                self.kinds,
                self.sizes,
                curves,
                loss,
                threshold,
                axis.name,
                self.previous,
                self.functions,
                _init_strays(self.sizes, self.inits, order),
                settings.get("expected"),
            ),
            settings=settings,
            axis=axis.name,
        )


def _expected_updates(plan: Plan) -> dict[str, float]:
    """Under u-muP the embeddings' LR falls like 1/sqrt(width) by design: their update exponent is
    -0.5 there, and the check judges them (and the stream they feed) against that."""
    return {p.name.rsplit(".", 1)[0]: -0.5 for p in plan.params if p.role is Role.INPUT and is_embedding(p)}


def _init_sizes(model: nn.Module, plan: Plan) -> dict[str, float]:
    """Each parameter's RMS at init over what muP's init multiplies the base std by here: the
    same at every width when the init follows muP's law (0 for an all-zero tensor)."""
    tensors = {canonical_name(n): t for n, t in model.named_parameters()}
    out = {}
    for p in plan.params:
        if p.role is Role.FIXED or p.name not in tensors:
            continue
        out[p.name] = tensors[p.name].detach().float().pow(2).mean().sqrt().item() / plan.factors(p)[0]
    return out


def _init_strays(
    widths: Sequence[int], inits: Mapping[str, list[list[float]]], points: Sequence[str]
) -> dict[str, tuple[str, float]]:
    """Per module, its parameter whose init exponent strays furthest from muP's, and the stray."""
    out: dict[str, tuple[str, float]] = {}
    for param, by_width in inits.items():
        module = param.rpartition(".")[0]
        if module not in points or any(not v for v in by_width):
            continue
        stray = slope(widths, [sum(v) / len(v) for v in by_width])
        if math.isfinite(stray) and abs(stray) > abs(out.get(module, ("", 0.0))[1]):
            out[module] = (param, stray)
    return out


def _warn_if_unreliable(widths: Sequence[int], steps: int, seeds: int, axis: str) -> None:
    short = []
    if len(widths) < RELIABLE["sizes"] or widths[-1] / widths[0] < RELIABLE["span"]:
        short.append(f"{len(widths)} {axis}s spanning {widths[-1] / widths[0]:g}x")
    if steps < RELIABLE["steps"]:
        short.append(f"{steps} steps")
    if seeds < RELIABLE["seeds"]:
        short.append(f"{seeds} seed" + ("s" if seeds != 1 else ""))
    if short:
        warnings.warn(
            f"this coordinate check ({', '.join(short)}) is smaller than the smallest whose verdict was "
            f"found reliable ({RELIABLE['sizes']} {axis}s spanning {RELIABLE['span']}x, {RELIABLE['steps']} "
            f"steps, {RELIABLE['seeds']} seeds): correct muP can fail it and a fault can pass.",
            MutransferWarning,
            stacklevel=3,
        )


# ---- set-up helpers --------------------------------------------------------------------------
def _module_kinds(plan: Plan, blocks: _Blocks | None = None) -> dict[str, str]:
    """Module name -> the strongest role among its own parameters (``output`` beats ``hidden``);
    over depth, every block's module under its pattern (``blocks.*.fc``), blocks as ``block``."""
    rename = blocks.pattern if blocks else (lambda name: name)
    roles: dict[str, set[Role]] = {}
    for p in plan.params:
        for name in p.names:
            roles.setdefault(rename(name.rpartition(".")[0]), set()).add(p.role)
    kinds = {m: next(r.value for r in _KIND_ORDER if r in rs) for m, rs in roles.items()}
    if blocks:
        kinds |= {rename(r): "block" for r in plan.depth.roots}
    return kinds | dict.fromkeys(map(rename, plan.tied_readouts), Role.OUTPUT.value)


class _Blocks:
    """Over depth, the same module of every block is one entry, ``blocks.*.fc``, whose values are
    the mean over the blocks: a model with 8 blocks and one with 2 can be compared."""

    def __init__(self, plans: Mapping[int, Plan]) -> None:
        self._roots = {d: plan.depth.roots for d, plan in plans.items()}
        if not any(self._roots.values()):
            raise MutransferError(
                "a coordinate check over depth needs the blocks in a ModuleList or Sequential whose "
                "length is the depth keyword; none was found. Fix: keep the blocks in an nn.ModuleList."
            )
        self._all = {r for roots in self._roots.values() for r in roots}

    def roots(self, depth: int) -> tuple[str, ...]:
        return self._roots[depth]

    def pattern(self, name: str) -> str:
        """``blocks.3.attn.qkv`` -> ``blocks.*.attn.qkv``; names outside the blocks unchanged."""
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            if ".".join(parts[:i]) in self._all:
                return ".".join([*parts[: i - 1], "*", *parts[i:]])
        return name

    def merge(self, measured: Run) -> Run:
        grouped: dict[str, list[list[float]]] = {}
        for key, values in measured.series.items():
            measure, _, name = key.partition(":")
            grouped.setdefault(f"{measure}:{self.pattern(name)}", []).append(values)
        series = {k: _mean(v) for k, v in grouped.items()}
        order = list(dict.fromkeys(self.pattern(n) for n in measured.order))
        rename = self.pattern
        return Run(
            series,
            measured.losses,
            order,
            kinds={rename(n): k for n, k in measured.kinds.items()},
            previous={rename(n): rename(p) for n, p in measured.previous.items()},
            functions={rename(n): f for n, f in measured.functions.items()},
        )


def _mean(runs: list[list[float]]) -> list[float]:
    return [sum(v) / len(v) for v in zip(*runs, strict=True)]
