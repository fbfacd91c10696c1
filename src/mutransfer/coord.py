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
module the RMS of

- ``rms``: its output;
- ``change``: its output minus its output before training;
- ``update``: its output minus what its initial copy computes from the same input, i.e. the
  effect of the module's own parameter updates (``dW @ x`` for a linear layer), which exposes
  a mis-scaled learning rate even while the layer's input dominates its output;
- ``scale``: for an ``AttentionLogits`` hook point, the logit scale times ``d_head`` (muP:
  constant, since the scale is ``1/d_head``).

Over depth (``depths=[2, 4, 8, 16], residual=GPT.residual``) the same measures are taken per
block and averaged over the blocks (``blocks.*.fc`` stands for every block's ``fc``), the
blocks' outputs (the residual stream) are watched too, and the exponent is fitted against the
number of blocks: under CompleteP nothing grows with depth, while without a branch multiplier
the residual stream and its updates grow with every block added.

For each it fits the growth exponent ``s`` of ``value ~ width**s`` (least-squares slope on
log-log axes, values averaged over seeds first). A module fails when an exponent exceeds
``threshold``. It is a *cause* when its own update, its attention scale or its initial output
(beyond its input's) grows; otherwise it only inherits the growth from upstream.
"""

from __future__ import annotations

import copy
import fnmatch
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from mutransfer.data import factory_keywords
from mutransfer.data.batches import Batches, fetch
from mutransfer.errors import MutransferError, check_number
from mutransfer.files import save_json
from mutransfer.scaling.attention import AttentionLogits
from mutransfer.scaling.plan import Plan
from mutransfer.scaling.roles import Role, canonical_name
from mutransfer.train import LossFn, OptimizerSpec, axis_of, build, cross_entropy, optimizer_class

__all__ = ["GROWTH_THRESHOLD", "CoordCheck", "ModuleCheck", "coord_check"]

# Growth exponent above which a module fails, set from benchmarks/coord_thresholds.py (widths
# 32..256, 4 steps, 3 seeds, Adam lr 1e-3..3e-2; figures in benchmarks/README.md): correct muP
# reached at most 0.21 in any module, and every fault at least 0.50 where it lives; 0.35 is
# midway. Exact muP would give 0, and SP's readout 1, at infinite width.
GROWTH_THRESHOLD = 0.35

Parametrization = Literal["mup", "sp"]
Progress = Callable[[int, int, str], None]

# The role that names a module, strongest first (a Linear's weight outranks its bias).
_KIND_ORDER = (Role.OUTPUT, Role.HIDDEN, Role.INPUT, Role.VECTOR, Role.FIXED)
_MEASURES = ("rms", "change", "update", "input", "scale")


@dataclass(frozen=True)
class ModuleCheck:
    """The verdict for one watched module: its worst growth exponent per measure (nan where a
    measure does not apply), ``status`` ``ok``/``grows``/``diverged``, whether it is a cause of
    growth rather than an heir to its input's, and the likely reason."""

    name: str
    kind: str
    rms_slope: float
    change_slope: float
    update_slope: float
    scale_slope: float
    status: str
    cause: bool = False
    hint: str = ""

    @property
    def slope(self) -> float:
        """The worst exponent over all measures."""
        slopes = (self.rms_slope, self.change_slope, self.update_slope, self.scale_slope)
        return max((s for s in slopes if not math.isnan(s)), default=math.nan)

    @property
    def passed(self) -> bool:
        return self.status == "ok"


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
    widths: tuple[int, ...]
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
    def failures(self) -> tuple[ModuleCheck, ...]:
        return tuple(m for m in self.modules if not m.passed)

    def slopes(self, module: str, measure: str = "rms") -> list[float]:
        """Growth exponent of one measure of ``module`` at every step."""
        return _slopes(self.widths, self.curves[measure].get(module, []), self.steps + 1)

    def table(self) -> str:
        """One line per module with its worst exponent per measure and its verdict, then the hints."""
        head = ["module", "kind", "rms", "change", "update", "scale", "verdict"]
        rows = [
            [m.name, m.kind]
            + [_num(s) for s in (m.rms_slope, m.change_slope, m.update_slope, m.scale_slope)]
            + [m.status + (" (cause)" if m.cause else "")]
            for m in self.modules
        ]
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        axis = self.axis
        lines = [
            f"coordinate check ({self.parametrization}, {axis}s {list(self.widths)}, {self.steps} steps, "
            f"{self.seeds} seeds, {self.optimizer} lr {self.lr:g}): growth exponent s of {axis}**s; "
            f"fail above {self.threshold:g}"
            + ("; 'change' inside the blocks is shown, not judged" if axis == "depth" else "")
        ]
        lines += [
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [head, *rows]
        ]
        failures = self.failures
        lines.append(
            f"PASSED: no module grows with {axis}"
            if not failures
            else f"FAILED: {len(failures)} of {len(self.modules)} modules grow with {axis}"
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
        fields["widths"] = tuple(fields["widths"])
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
    0 is the probe. ``parametrization="mup"`` applies the plan from ``base`` (default: the
    narrowest width) with ``init_law`` and ``zero`` as in ``Plan.init_``; ``"sp"`` trains the
    model as built with one learning rate. ``optimizer`` is ``"adam"``, ``"adamw"``, ``"sgd"`` or
    a callable taking the param groups (give ``optimizer_family`` then, default ``adam``).
    ``modules`` are name patterns to watch (default: every module that holds parameters, and
    every ``AttentionLogits`` hook point). ``progress(done, total, label)`` is called per run.
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
    if parametrization not in ("mup", "sp"):
        raise MutransferError(f"parametrization must be 'mup' or 'sp', got {parametrization!r}.")
    _, family = optimizer_class(optimizer, optimizer_family)  # fail on a bad name before any training
    implied = factory_keywords(data, make_model)  # the vocabulary or input size, where shape leaves it open
    shape = {**{k: v for k, v in implied.items() if k != "block_size"}, **dict(shape or {})}
    base = widths[0] if base is None else base
    loss = loss or cross_entropy
    plans = {w: axis.plan(make_model, shape, base, w) for w in widths}
    blocks = _Blocks(plans) if axis.name == "depth" else None
    kinds = _module_kinds(plans[widths[-1]], blocks)

    total, done = len(widths) * seeds, 0
    runs: dict[str, list[list[list[float]]]] = {}  # "measure:module" -> width -> seed -> step
    losses: list[list[list[float]]] = [[] for _ in widths]
    order: list[str] = []
    for i, w in enumerate(widths):
        for seed in range(seeds):
            if progress:
                progress(done, total, f"{axis.name} {w} seed {seed}")
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
                seed=seed,
                device=device,
            )
            extra = blocks.roots(w) if blocks and modules is None else ()
            run = _run(model, opt, data, steps, seed, batch_size, loss, modules, device, extra)
            if blocks:
                run = blocks.merge(run)
            order += [n for n in run.order if n not in order]
            kinds.update(dict.fromkeys(run.attention, "attention"))
            for key, series in run.series.items():
                runs.setdefault(key, [[] for _ in widths])[i].append(series)
            losses[i].append(run.losses)
            done += 1
    if progress:
        progress(done, total, "done")

    curves = {
        measure: {n: [_mean(s) for s in runs[f"{measure}:{n}"]] for n in order if f"{measure}:{n}" in runs}
        for measure in _MEASURES
    }
    mean_loss = [_mean(s) for s in losses]
    return CoordCheck(
        parametrization=parametrization,
        widths=tuple(widths),
        steps=steps,
        seeds=seeds,
        lr=lr,
        optimizer=optimizer if isinstance(optimizer, str) else getattr(optimizer, "__name__", "custom"),
        threshold=threshold,
        curves=curves,
        loss=mean_loss,
        modules=_judge(order, kinds, widths, curves, mean_loss, threshold, axis.name),
        settings={"base": base, "shape": shape, "width_key": axis.key, "batch_size": batch_size}
        | ({"residual": list(axis.residual), "alpha": axis.alpha} if blocks else {}),
        axis=axis.name,
    )


# ---- one training run ------------------------------------------------------------------------
@dataclass
class _Run:
    series: dict[str, list[float]]  # "measure:module" -> value before each step (nan: not measured)
    losses: list[float]
    order: list[str]  # watched modules in the order the forward pass reached them
    attention: set[str]  # the AttentionLogits hook points among them


def _run(model, optimizer, data, steps, seed, batch_size, loss_fn, patterns, device, extra=()) -> _Run:
    watched = _watched(model, patterns)
    named = {canonical_name(n): m for n, m in model.named_modules()}
    watched |= {n: named[n] for n in extra}
    initial = copy.deepcopy(model)  # before any hook: calling its modules records nothing
    initial_modules = {canonical_name(n): m for n, m in initial.named_modules()}
    series: dict[str, list[float]] = {}
    first_output: dict[str, torch.Tensor] = {}

    def hook(name: str, is_logits: bool, has_params: bool):
        def record(module, args, kwargs, output):
            out = (output[0] if isinstance(output, (tuple, list)) else output).detach().float()
            values = {"rms": _rms(out), "input": _input_rms(args, is_logits)}
            if is_logits:  # muP's scale is 1/d_head: scale * d_head stays fixed
                scale = args[2] if len(args) > 2 else kwargs["scale"]
                values["scale"] = float(scale) * args[0].shape[-1]
            values["change"] = values["update"] = math.nan  # both need a step taken
            if name not in first_output:
                first_output[name] = out
            else:
                values["change"] = _rms(out - first_output[name])
                if has_params:  # the initial module on today's input: what the updates changed
                    before = initial_modules[name].forward(*args, **kwargs)
                    before = before[0] if isinstance(before, (tuple, list)) else before
                    values["update"] = _rms(out - before.detach().float())
            for measure, value in values.items():
                series.setdefault(f"{measure}:{name}", []).append(value)

        return record

    probe = fetch(data, 0, batch_size, seed=seed, device=device)
    losses: list[float] = []
    for step in range(steps + 1):
        handles = [
            module.register_forward_hook(
                hook(name, isinstance(module, AttentionLogits), _owns_parameters(module)), with_kwargs=True
            )
            for name, module in watched.items()
        ]
        try:
            with torch.no_grad():
                losses.append(loss_fn(model(probe[0]), probe[1]).item())
        finally:
            for h in handles:
                h.remove()
        if step == steps:
            break
        x, y = fetch(data, step + 1, batch_size, seed=seed, device=device)
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()
    order = [n for n in first_output]
    attention = {n for n, m in watched.items() if isinstance(m, AttentionLogits)}
    return _Run(series, losses, order, attention)


def _owns_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def _watched(model: nn.Module, patterns: Sequence[str] | None) -> dict[str, nn.Module]:
    named = {canonical_name(n): m for n, m in model.named_modules() if n}
    if patterns is None:
        return {n: m for n, m in named.items() if isinstance(m, AttentionLogits) or _owns_parameters(m)}
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in named)]
    if unmatched:
        raise MutransferError(
            f"modules= patterns {unmatched} match no module. Modules are named like "
            f"{list(named)[:6]}. Fix: use fnmatch patterns over these names, e.g. 'blocks.*.attn.*'."
        )
    return {n: m for n, m in named.items() if any(fnmatch.fnmatchcase(n, p) for p in patterns)}


def _rms(t: torch.Tensor) -> float:
    return t.detach().float().pow(2).mean().sqrt().item()


def _input_rms(args: tuple, is_logits: bool) -> float:
    """RMS of the module's input; for attention logits the product of the q and k sizes."""
    tensors = [a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]
    if not tensors:
        return 1.0  # token ids or no tensor input: nothing upstream can grow
    return math.prod(_rms(t) for t in tensors[:2]) if is_logits else _rms(tensors[0])


# ---- judging ---------------------------------------------------------------------------------
def _judge(order, kinds, widths, curves, loss, threshold, axis="width") -> tuple[ModuleCheck, ...]:
    # over depth, _inside_blocks modules are judged on rms and update only
    diverged = _divergence(widths, loss)
    steps = len(loss[0])
    measured = []
    for name in order:
        slopes = {m: _slopes(widths, curves[m].get(name, []), steps) for m in _MEASURES}
        worst = {m: _worst(slopes[m]) for m in ("rms", "change", "update")}
        worst["scale"] = slopes["scale"][0]
        if diverged or any(math.isinf(s) for m in ("rms", "change", "update") for s in slopes[m]):
            status = "diverged"
        else:
            judged = [s for m, s in worst.items() if m != "change" or not _inside_blocks(name, kinds, axis)]
            status = "grows" if max(_finite(s) for s in judged) > threshold else "ok"
        reason = _own_growth(worst, slopes, threshold) if status == "grows" else None
        measured.append((name, kinds.get(name, "other"), worst, status, reason))
    first_cause = next((name for name, _, _, _, reason in measured if reason), None)
    verdicts = []
    for name, kind, worst, status, reason in measured:
        if status == "diverged":
            hint = diverged or "its output is not finite at some width: training diverged. Fix: lower lr."
        elif status == "ok":
            hint = ""
        elif axis == "depth":  # one fault there: the branches or their LRs are not scaled
            hint = _DEPTH_HINT
        elif reason:
            hint = _hint(kind, reason)
        elif first_cause:
            hint = f"grows because its input grows; the growth starts at {first_cause}"
        else:
            hint = "grows a little in each of several modules; check that the plan covers every layer"
        slopes = (worst["rms"], worst["change"], worst["update"], worst["scale"])
        verdicts.append(ModuleCheck(name, kind, *slopes, status=status, cause=reason is not None, hint=hint))
    return tuple(verdicts)


def _inside_blocks(name: str, kinds: Mapping[str, str], axis: str) -> bool:
    """A module inside the blocks of a depth check, where ``change`` is shown but not judged: at
    a few blocks the first block sees only the embeddings, and how far its normalised features
    move grows with depth under CompleteP and standard alike (benchmarks/README.md). Depth
    theory speaks of the residual stream (the blocks' outputs) and each module's own updates."""
    return axis == "depth" and "*" in name and kinds.get(name) != "block"


def _own_growth(worst: dict[str, float], slopes: dict[str, list[float]], threshold: float) -> str | None:
    """What a growing module adds itself, if anything: its attention scale, the effect of its own
    updates, or its initial output beyond its input's growth. None: it inherits the growth."""
    if _finite(worst["scale"]) > threshold:
        return "scale"
    if _finite(worst["update"]) > threshold:
        return "update"
    if _finite(slopes["rms"][0]) - _finite(slopes["input"][0]) > threshold:
        return "init"
    return None


_DEPTH_HINT = (
    "grows with the number of blocks: the residual branches are not scaled. Fix: a depth plan, "
    "mutransfer.plan(..., depth='depth', residual=[each branch's last module]) (CompleteP: branch "
    "multiplier m_L**-alpha, blocks' lr x m_L**(alpha-1))."
)


def _hint(kind: str, reason: str) -> str:
    """The likely fault; one text per fault, so the table lists every module it applies to once."""
    if reason == "scale":
        return (
            "attention logits grow: the scale is not 1/d_head (1/sqrt(d_head) is standard "
            "parametrization). Fix: scale=mutransfer.attention_scale(d_head, base_d_head)."
        )
    if reason == "init":
        return (
            "grows at initialisation: the init std does not shrink with fan_in. Fix: muP init "
            "(plan.init_; readouts std/width or zero)."
        )
    if kind == "output":
        return (
            "logits grow with the readout's own updates: the readout is not scaled. Fix: its learning "
            "rate and init shrink like 1/width (plan.param_groups and plan.init_)."
        )
    if kind == "hidden":
        return (
            "its own updates grow: the hidden learning rate is not scaled. Fix: with Adam a hidden "
            "matrix takes lr/m_in (plan.param_groups)."
        )
    return "its own updates grow: its learning rate is scaled up with width. Fix: use plan.param_groups."


def _slopes(widths: Sequence[int], curve: list[list[float]], steps: int) -> list[float]:
    """Exponent at every step of ``curve[i][t]`` (width ``i``); nan where nothing was recorded."""
    if not curve:
        return [math.nan] * steps
    return [_slope(widths, [c[t] for c in curve]) for t in range(steps)]


def _finite(x: float) -> float:
    return x if math.isfinite(x) else 0.0


def _worst(slopes: list[float]) -> float:
    return max((s for s in slopes if math.isfinite(s)), default=math.nan)


def _divergence(widths: Sequence[int], loss: list[list[float]]) -> str:
    for w, series in zip(widths, loss, strict=True):
        for t, v in enumerate(series):
            if not math.isfinite(v):
                return f"training diverged at width {w} (loss not finite before step {t}). Fix: lower lr."
    return ""


def _slope(widths: Sequence[int], values: Sequence[float]) -> float:
    """Least-squares slope of log(values) on log(widths); nan when a value is 0, inf if not finite."""
    if any(math.isnan(v) for v in values):
        return math.nan  # not recorded at this step
    if any(math.isinf(v) for v in values):
        return math.inf
    if any(v <= 0 for v in values):
        return math.nan  # e.g. a zero-initialised readout at step 0: no size to compare
    xs = [math.log(w) for w in widths]
    ys = [math.log(v) for v in values]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


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

    def merge(self, run: _Run) -> _Run:
        grouped: dict[str, list[list[float]]] = {}
        for key, values in run.series.items():
            measure, _, name = key.partition(":")
            grouped.setdefault(f"{measure}:{self.pattern(name)}", []).append(values)
        series = {k: _mean(v) for k, v in grouped.items()}
        order = list(dict.fromkeys(self.pattern(n) for n in run.order))
        return _Run(series, run.losses, order, {self.pattern(n) for n in run.attention})


def _mean(runs: list[list[float]]) -> list[float]:
    return [sum(v) / len(v) for v in zip(*runs, strict=True)]


def _num(x: float) -> str:
    return "" if math.isnan(x) else f"{x:+.2f}" if math.isfinite(x) else str(x)
