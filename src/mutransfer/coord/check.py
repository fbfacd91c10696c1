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
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from mutransfer.axis import axis_of
from mutransfer.coord.probe import MEASURES, Run, run
from mutransfer.coord.verdict import ModuleCheck, judge, slope, slopes
from mutransfer.data import factory_keywords
from mutransfer.data.batches import Batches, fetch
from mutransfer.errors import MutransferError, MutransferWarning, check_number
from mutransfer.files import save_json
from mutransfer.parametrizations import Parametrization
from mutransfer.parametrizations import check as check_parametrizations
from mutransfer.scaling.plan import Plan
from mutransfer.scaling.roles import Role, canonical_name
from mutransfer.text import table
from mutransfer.train import LossFn, OptimizerSpec, build, cross_entropy, optimizer_class

__all__ = ["GROWTH_THRESHOLD", "RELIABLE", "CoordCheck", "coord_check"]

# Growth exponent above which a module fails, set from benchmarks/coord_thresholds.py (widths
# 32..256, 4 steps, 3 seeds, Adam lr 1e-3..3e-2; figures in benchmarks/README.md): correct muP
# reached at most 0.21 in any module, and every fault at least 0.50 where it lives; 0.35 is
# midway. Exact muP would give 0, and SP's readout 1, at infinite width.
GROWTH_THRESHOLD = 0.35

Progress = Callable[[int, int, str], None]

# The role that names a module, strongest first (a Linear's weight outranks its bias).
_KIND_ORDER = (Role.OUTPUT, Role.HIDDEN, Role.INPUT, Role.VECTOR, Role.FIXED)


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
    shape: Mapping[str, Any] | None = None,
    width_key: str = "width",
    depth_key: str = "depth",
    residual: Sequence[str] = (),
    alpha: float = 1.0,
    base: int | None = None,
    batch_size: int = 8,
    loss: LossFn | None = None,
    modules: Sequence[str] | None = None,
    init_law: str | None = None,
    zero: Sequence[str] = (),
    threshold: float = GROWTH_THRESHOLD,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
) -> CoordCheck:
    """Train ``make_model(**shape, width=w)`` for ``steps`` steps at every width; judge growth.

    ``data`` is any ``mutransfer.data.Batches`` (``batch(index, batch_size, seed=...)``); batch
    0 is the probe; runs use seeds ``seed`` to ``seed + seeds - 1`` (init and batches).
    ``parametrization="mup"`` applies the plan from ``base`` (default: the
    narrowest width) with ``init_law`` and ``zero`` as in ``Plan.init_``; ``"sp"`` trains the
    model as built with one learning rate. ``optimizer`` is ``"adam"``, ``"adamw"``, ``"sgd"`` or
    a callable taking the param groups (give ``optimizer_family`` then, default ``adam``).
    ``modules`` are name patterns to watch (default: every module that holds parameters, every
    attention, the residual stream and the output; see ``probe.py``). ``progress(done, total,
    label)`` is called per run.
    Build the model without dropout: the model and its initial copy would draw different masks.

    ``depths=`` instead of ``widths=`` checks depth: ``depth_key`` varies, ``shape`` holds the
    width, and "mup" is the CompleteP plan (``residual``, ``alpha``; see ``mutransfer.plan``).
    """
    axis, widths = axis_of(
        widths, depths, width_key=width_key, depth_key=depth_key, residual=residual, alpha=alpha
    )
    lr = check_number(lr, "lr", positive=True)
    if len(widths) < 3:
        raise MutransferError(
            f"a coordinate check needs at least 3 distinct {axis.name}s to fit a slope, got {widths}. "
            f"Fix: e.g. {axis.name}s=[32, 64, 128, 256]."
        )
    if steps < 1 or seeds < 1:
        raise MutransferError(f"steps and seeds must be at least 1, got steps={steps}, seeds={seeds}.")
    check_parametrizations(parametrization)
    _, family = optimizer_class(optimizer, optimizer_family)  # fail on a bad name before any training
    implied = factory_keywords(data, make_model)  # the vocabulary or input size, where shape leaves it open
    shape = {**{k: v for k, v in implied.items() if k != "block_size"}, **dict(shape or {})}
    base = widths[0] if base is None else base
    loss = loss or cross_entropy
    example = (fetch(data, 0, 2, seed=0)[0],)  # what the plans run on meta to find the attention
    plans = {w: axis.plan(make_model, shape, base, w, example=example) for w in widths}
    blocks = _Blocks(plans) if axis.name == "depth" else None
    kinds = _module_kinds(plans[widths[-1]], blocks)
    _warn_if_unreliable(widths, steps, seeds, axis.name)

    total, done = len(widths) * seeds, 0
    runs: dict[str, list[list[list[float]]]] = {}  # "measure:point" -> width -> seed -> step
    losses: list[list[list[float]]] = [[] for _ in widths]
    order: list[str] = []
    previous: dict[str, str] = {}
    functions: dict[str, str] = {}
    inits: dict[str, list[list[float]]] = {}  # parameter -> width -> seed: init RMS over muP's factor
    for i, w in enumerate(widths):
        for run_seed in range(seed, seed + seeds):
            if progress:
                progress(done, total, f"{axis.name} {w} seed {run_seed}")
            plan, zeroed = (plans[w], zero) if parametrization == "mup" else (None, ())
            if plan is None and family == "muon":  # Muon needs roles: the identity plan is standard
                plan = axis.plan(make_model, shape, w, w)
            model, opt = build(
                make_model,
                {**shape, axis.key: w},
                plan=plan,
                lr=lr,
                optimizer=optimizer,
                optimizer_family=optimizer_family,
                init_law=init_law,
                zero=zeroed,
                seed=run_seed,
                device=device,
            )
            for name, value in _init_sizes(model, plans[w]).items():
                inits.setdefault(blocks.pattern(name) if blocks else name, [[] for _ in widths])[i].append(
                    value
                )
            extra = blocks.roots(w) if blocks and modules is None else ()
            measured = run(
                model, opt, data, steps=steps, seed=run_seed, batch_size=batch_size, loss_fn=loss,
                patterns=modules, device=device, extra=extra,
            )  # fmt: skip
            if blocks:
                measured = blocks.merge(measured)
            order += [n for n in measured.order if n not in order]
            kinds.update({n: k for n, k in measured.kinds.items() if n not in kinds or k == "attention"})
            previous.update(measured.previous)
            functions.update(measured.functions)
            for key, series in measured.series.items():
                runs.setdefault(key, [[] for _ in widths])[i].append(series)
            losses[i].append(measured.losses)
            done += 1
    if progress:
        progress(done, total, "done")

    order = [n for n in order if all(runs.get(f"rms:{n}", [[]] * len(widths))[i] for i in range(len(widths)))]
    curves = {
        measure: {n: [_mean(s) for s in runs[f"{measure}:{n}"]] for n in order if f"{measure}:{n}" in runs}
        for measure in MEASURES
    }
    mean_loss = [_mean(s) for s in losses]
    return CoordCheck(
        parametrization=parametrization,
        sizes=tuple(widths),
        steps=steps,
        seeds=seeds,
        lr=lr,
        optimizer=optimizer if isinstance(optimizer, str) else getattr(optimizer, "__name__", "custom"),
        threshold=threshold,
        curves=curves,
        loss=mean_loss,
        modules=judge(
            order,
            kinds,
            widths,
            curves,
            mean_loss,
            threshold,
            axis.name,
            previous,
            functions,
            _init_strays(widths, inits, order),
        ),
        settings={"base": base, "shape": shape, "width_key": axis.key, "batch_size": batch_size, "seed": seed}
        | ({"residual": list(axis.residual), "alpha": axis.alpha} if blocks else {}),
        axis=axis.name,
    )


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


# The smallest check whose verdict benchmarks/coord_thresholds.py found reliable (README): at
# least this many sizes spanning this ratio, steps and seeds. Below it a verdict is a guess.
RELIABLE = {"sizes": 4, "span": 8, "steps": 3, "seeds": 2}


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


def _num(x: float) -> str:
    return "" if math.isnan(x) else f"{x:+.2f}" if math.isfinite(x) else str(x)
