"""From the proxy's best trial to the target's training settings, and what the tuning cost.

    >>> import mutransfer
    >>> t = mutransfer.load_transfer("target.json")          # doctest: +SKIP
    >>> model = t.init_(make_model(**t.shape))                # muP init with the tuned multipliers
    >>> opt = torch.optim.Adam(t.param_groups(model))         # per-layer LRs, eps, weight decay

The file holds the tuned values, the plan (plain data, no factory needed to apply it) and the
cost: the proxy compute spent as a fraction of one target training run.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mutransfer.errors import MutransferError
from mutransfer.factory import load, name_of
from mutransfer.files import check_format, jsonable, load_json, number, save_json
from mutransfer.fit import EXTRAPOLATION_WARNING
from mutransfer.scaling.plan import Plan
from mutransfer.setup import MULTIPLIERS, ModelSetup, TrainSetup, optimizer_class, role_multipliers
from mutransfer.sweep.config import HPARAMS, LR_AXES, SweepConfig
from mutransfer.sweep.experiment import FLOP_COUNTER, Experiment
from mutransfer.sweep.runner import budget, open_study
from mutransfer.sweep.space import Range
from mutransfer.sweep.status import status
from mutransfer.sweep.storage import redact
from mutransfer.text import short
from mutransfer.unit import ALPHAS

__all__ = ["Adjustment", "Cost", "Transfer", "load_transfer", "transfer"]

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Cost:
    """Proxy compute against one target run. FLOPs are counted per training step (forward and
    backward) by ``torch.utils.flop_counter`` on the meta device; the target's wall time is
    an estimate from the proxy's measured FLOP rate, not a measurement."""

    trials: int
    proxy_flops: float
    proxy_seconds: float
    target_flops: float
    target_steps: int
    target_seconds_estimate: float
    flops_counted_by: str = "flop counter"  # or why the FLOPs are an estimate (see Experiment)

    @property
    def fraction(self) -> float:
        """Proxy FLOPs over one target run's FLOPs."""
        return self.proxy_flops / self.target_flops if self.target_flops else math.nan

    def line(self) -> str:
        if not (self.proxy_flops and math.isfinite(self.target_flops)):
            return (
                f"tuning cost: {self.trials} proxy trials in {self.proxy_seconds:.0f} s; FLOPs not counted "
                "(no data source to count a step on: your own training function)"
            )
        estimated = "" if self.flops_counted_by == FLOP_COUNTER else f"; FLOPs {self.flops_counted_by}"
        return (
            f"tuning cost: {self.trials} proxy trials, {self.proxy_flops:.3g} FLOPs in "
            f"{self.proxy_seconds:.0f} s of proxy trials = {self.fraction:.1%} of one target run "
            f"({self.target_flops:.3g} FLOPs over {self.target_steps} steps, "
            f"~{self.target_seconds_estimate:.0f} s at the proxy's FLOP rate{estimated})"
        )


@dataclass(frozen=True)
class Adjustment:
    """An axis on which the target differs from the proxy, and the LR factor applied for it:
    ``(target / proxy) ** exponent``, to every tensor or, with ``role``, to that muP role's only.
    ``source`` is "given" (the config's number) or the grid file it was fitted from; then
    ``exponent_se`` is the fit's standard error and ``outside`` how far the target lies beyond
    the sizes that grid measured (1: inside)."""

    axis: str
    proxy: int
    target: int
    exponent: float
    source: str = "given"
    exponent_se: float | None = None
    outside: float | None = None
    role: str = ""  # "": every tensor's LR

    @property
    def factor(self) -> float:
        return (self.target / self.proxy) ** self.exponent

    @property
    def extrapolates(self) -> bool:
        return self.outside is not None and self.outside > EXTRAPOLATION_WARNING

    def line(self) -> str:
        why = "given in the config" if self.source == "given" else f"fitted from {self.source}"
        se = f" +- {self.exponent_se:.3f}" if self.exponent_se is not None else ""
        whose = f"lr of the {self.role} tensors" if self.role else "lr"
        text = (
            f"{whose} x {self.factor:.3g} for {self.axis} {self.proxy} -> {self.target}: exponent "
            f"{self.exponent:+.3f}{se}, {why}"
        )
        if self.outside is not None and self.outside > 1:
            text += f"; the target is {self.outside:.3g}x beyond the measured {self.axis}"
        if self.extrapolates:
            text += f" (WARNING: extrapolated past {EXTRAPOLATION_WARNING:g}x the measured range)"
        return text


def lr_adjustments(config: SweepConfig) -> list[Adjustment]:
    """One ``Adjustment`` per ``lr_exponents`` axis whose target differs from the proxy's."""
    from mutransfer.fit import fit
    from mutransfer.grid import Grid

    found = []
    for key, spec in dict(config.lr_exponents).items():
        axis, _, role = key.partition(".")  # "width.hidden": the hidden tensors' LR only
        grid = Grid.load(spec) if isinstance(spec, str) else None
        proxy, target = _sizes(config, axis, grid)
        if target == proxy:
            continue
        if grid is None:
            found.append(Adjustment(axis, proxy, target, float(spec), role=role))
            continue
        law = fit(grid, config.parametrization if config.parametrization in grid.parametrizations else None)
        if law.axis != axis:
            raise MutransferError(
                f"lr_exponents.{axis}: {spec} is a grid over {law.axis}, not {axis}. Fix: a grid made "
                f"with several --{axis.replace('_', '-')} values."
            )
        outside = law.predict(target).outside
        found.append(Adjustment(axis, proxy, target, law.exponent, spec, law.exponent_se, outside, role))
    return found


def _sizes(config: SweepConfig, axis: str, grid: Any) -> tuple[int, int]:
    """The proxy's and the target's size along ``axis``: a training setting, or a shape keyword
    (the grid's own width keyword, the config's depth keyword, or the one width that differs)."""
    if axis in LR_AXES:
        return getattr(config, axis), getattr(config, LR_AXES[axis]) or getattr(config, axis)
    proxy, target = {**config.shape, **config.proxy}, {**config.shape, **config.target}
    if axis == "depth":
        key = config.depth
    elif grid is not None and grid.axis == "width":
        key = grid.protocol.get("width_key", "width")
    else:
        differ = sorted(k for k in target if isinstance(target[k], int) and target[k] != proxy.get(k))
        key = differ[0] if len(differ) == 1 else ("width" if "width" in differ else None)
        if key is None:
            raise MutransferError(
                f"lr_exponents.width: the target differs from the proxy in {differ}; which one is the "
                "width? Fix: give a width grid file, whose protocol names its keyword."
            )
    if key not in proxy or key not in target:
        raise MutransferError(f"lr_exponents.{axis}: the proxy and the target need {key!r} in their shapes.")
    return int(proxy[key]), int(target[key])


@dataclass(frozen=True)
class Transfer:
    """The target's settings: the proxy's best values, applied through the target's plan
    (muP from the base; for standard parametrization, the identity plan at the target)."""

    factory: str
    shape: Mapping[str, Any]
    parametrization: str
    hparams: Mapping[str, Any]
    plan: Plan
    optimizer: str = "adam"
    init_law: str | None = None  # None: the plan's, which its factory declared
    zero: tuple[str, ...] = ()
    source: Mapping[str, Any] = field(default_factory=dict)
    cost: Cost | None = None
    lr_adjustments: tuple[Adjustment, ...] = ()

    @property
    def family(self) -> str:
        return optimizer_class(self.optimizer)[1]

    def _multipliers(self) -> tuple[dict[str, float], dict[str, float]]:
        h = self.hparams
        init, lr_scale = role_multipliers(
            float(h.get("init_scale", 1.0)),
            float(h.get("input_mult", 1.0)),
            float(h.get("output_mult", 1.0)),
            self.family,
        )
        for role, factor in self.role_factors.items():
            lr_scale[role] = lr_scale.get(role, 1.0) * factor
        return init, lr_scale

    @property
    def role_factors(self) -> dict[str, float]:
        """The per-role LR factors the adjustments apply (a global one is in ``hparams["lr"]``)."""
        factors: dict[str, float] = {}
        for a in self.lr_adjustments:
            if a.role:
                factors[a.role] = factors.get(a.role, 1.0) * a.factor
        return factors

    def init_(self, model: nn.Module) -> nn.Module:
        """muP init of a freshly built target model, with the tuned init multipliers."""
        return self.plan.init_(model, init_law=self.init_law, zero=self.zero, scale=self._multipliers()[0])

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Param groups for ``torch.optim``: per-layer LR, eps and weight decay at the target."""
        return self.plan.param_groups(
            model,
            lr=float(self.hparams["lr"]),
            weight_decay=float(self.hparams.get("weight_decay", 0.0)),
            optimizer_family=self.family,
            lr_scale=self._multipliers()[1],
        )

    def build(
        self, *, seed: int = 0, device: str | torch.device = "cpu"
    ) -> tuple[nn.Module, torch.optim.Optimizer]:
        """The target model (from the recorded factory) and its optimizer, ready to train."""
        h = self.hparams
        model = ModelSetup(factory=load(self.factory), init_law=self.init_law, zero=self.zero,
                           multipliers={k: float(h[k]) for k in MULTIPLIERS if k in h},
                           lr_scale=self.role_factors)  # fmt: skip
        decay = float(h.get("weight_decay", 0.0))
        training = TrainSetup(data=None, optimizer=self.optimizer, weight_decay=decay, device=device)
        return model.build(
            self.shape, tuned=True, plan=self.plan, lr=float(h["lr"]), training=training, seed=seed
        )

    def summary(self) -> str:
        values = ", ".join(f"{k}={short(v)}" for k, v in self.hparams.items())
        src = self.source
        how = {"mup": "muP", "u-mup": "u-muP: the LR and the alphas carried unchanged"}.get(
            self.parametrization, "standard: values copied unchanged"
        )
        scaled = f"width x{self.plan.width_multiplier:g}" + (
            f", depth x{self.plan.depth.multiplier:g}" if self.plan.depth else ""
        )
        lines = [
            f"transfer ({how}): {dict(src.get('proxy', {}))} -> {dict(self.shape)}"
            + ("" if self.parametrization == "u-mup" else f", {scaled} from the base"),
            f"best proxy trial #{src.get('trial')}: {src.get('metric')} {src.get('value', math.nan):.4f}",
            f"hyperparameters: {values}",
        ]
        lines += [a.line() for a in self.lr_adjustments]
        if self.cost is not None:
            lines.append(self.cost.line())
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "factory": self.factory,
            "shape": dict(self.shape),
            "parametrization": self.parametrization,
            "hparams": dict(self.hparams),
            "optimizer": self.optimizer,
            "init_law": self.init_law,
            "zero": list(self.zero),
            "source": dict(self.source),
            "lr_adjustments": [asdict(a) for a in self.lr_adjustments],
            # FLOPs are unknown (nan) for your own training function: null in the file
            "cost": jsonable(asdict(self.cost)) if self.cost else None,
            "plan": self.plan.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Transfer:
        check_format(data, FORMAT_VERSION, "transfer", "rerun mutransfer transfer with this version.")
        return cls(
            factory=data["factory"],
            shape=data["shape"],
            parametrization=data["parametrization"],
            hparams=data["hparams"],
            plan=Plan.from_dict(data["plan"]),
            optimizer=data.get("optimizer", "adam"),
            init_law=data.get("init_law"),
            zero=tuple(data.get("zero", ())),
            source=data.get("source", {}),
            lr_adjustments=tuple(Adjustment(**a) for a in data.get("lr_adjustments", ())),
            cost=Cost(
                **{k: v if isinstance(v, str) else number(v, math.nan) for k, v in data["cost"].items()}
            )
            if data.get("cost")
            else None,
        )

    def save(self, path: str | os.PathLike) -> None:
        save_json(path, self.to_dict(), strict=True)


def load_transfer(path: str | os.PathLike) -> Transfer:
    """Read what ``mutransfer transfer`` wrote; applying it needs no factory and no Optuna."""
    data = load_json(path, "transfer file", "run mutransfer transfer CONFIG first; it writes this file.")
    try:
        return Transfer.from_dict(data)
    except KeyError as exc:
        raise MutransferError(f"{path} is not a transfer file (no {exc}).") from None


def transfer(config: SweepConfig, *, parametrization: str | None = None) -> Transfer:
    """The target's settings from the best finished proxy trial of ``config``'s study, and the
    tuning cost. ``parametrization="sp"`` copies the values without muP scaling (the baseline
    that shows what muP buys)."""
    if "://" not in config.storage_url and not Path(config.storage_url).exists():
        raise MutransferError(  # before open_study, which would create an empty journal
            f"no sweep results at {config.storage_url!r}. Fix: run mutransfer sweep CONFIG first."
        )
    study = open_study(config, queue_grid=False)
    s = status(study, budget(config))
    if s.best_number is None:
        raise MutransferError(
            f"study {config.study!r} in {redact(config.storage_url)} has no finished trial yet ({s.line()}). "
            "Fix: run mutransfer sweep CONFIG first."
        )
    if parametrization not in (None, config.parametrization):
        if config.base is not None and dict(config.base) != dict(config.proxy):
            raise MutransferError(
                f"parametrization={parametrization!r} reuses the proxy's values, which is fair only "
                "when the proxy is the base (there muP and standard parametrization agree); this "
                f"config's base {dict(config.base)} is not its proxy {dict(config.proxy)}."
            )
        config = config.with_overrides(parametrization=parametrization)
    experiment = Experiment(config)
    space = config.space
    fixed = {k: v for k, v in space.items() if not isinstance(v, Range | list)}
    hparams = {k: v for k, v in {**fixed, **s.best_params}.items() if k in HPARAMS or config.train}
    hparams = {k: v for k, v in hparams.items() if k not in experiment.shape_keys}
    adjustments = lr_adjustments(config)
    if adjustments:
        if "lr" not in hparams:
            raise MutransferError("lr_exponents: the sweep tuned no lr to adjust.")
        hparams["lr"] = float(hparams["lr"]) * math.prod(a.factor for a in adjustments if not a.role)
        for a in adjustments:
            if a.extrapolates:
                warnings.warn(a.line(), stacklevel=2)
    target_steps = config.target_steps or config.steps
    target_batch = config.target_batch_size or config.batch_size
    per_step = experiment.flops_per_step(experiment.target, target_batch)
    target_flops = target_steps * per_step
    rate = s.seconds / s.flops if s.flops else math.nan
    cost = Cost(
        trials=s.finished,
        proxy_flops=s.flops,
        proxy_seconds=s.seconds,
        target_flops=target_flops,
        target_steps=target_steps,
        target_seconds_estimate=target_flops * rate,
        flops_counted_by=experiment.flops_counted_by(experiment.target, target_batch),
    )
    alphas = {k: v for k, v in {**fixed, **s.best_params}.items() if k in ALPHAS}  # u-muP's: width-free
    target = {**experiment.target, **alphas}
    return Transfer(
        factory=name_of(config.factory),
        shape=target,
        parametrization=config.parametrization,
        hparams=hparams,
        plan=experiment.plan_for(target),
        optimizer=config.optimizer,
        init_law=config.init_law,
        zero=tuple(config.zero),
        source={
            "study": config.study,
            "storage": redact(config.storage_url),
            "trial": s.best_number,
            "metric": config.metric,
            "value": s.best_value,
            "proxy": experiment.shape_of(s.best_params),
            "base": experiment.base,
        },
        cost=cost,
        lr_adjustments=tuple(adjustments),
    )
