"""From the proxy's best trial to the target's training settings, and what the tuning cost.

    >>> import mutransfer
    >>> t = mutransfer.load_transfer("target.json")          # doctest: +SKIP
    >>> model = t.init_(make_model(**t.shape))                # muP init with the tuned multipliers
    >>> opt = torch.optim.Adam(t.param_groups(model))         # per-layer LRs, eps, weight decay

The file holds the tuned values, the plan (plain data, no factory needed to apply it) and the
cost: the proxy compute spent as a fraction of one target training run.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from mutransfer.errors import MutransferError, check_format
from mutransfer.scaling.plan import Plan
from mutransfer.sweep.config import HPARAMS, SweepConfig, resolve
from mutransfer.sweep.space import Range
from mutransfer.sweep.storage import redact
from mutransfer.train import optimizer_class, role_multipliers

__all__ = ["Cost", "Transfer", "load_transfer", "transfer"]

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
        return (
            f"tuning cost: {self.trials} proxy trials, {self.proxy_flops:.3g} FLOPs in "
            f"{self.proxy_seconds:.0f} s of proxy trials = {self.fraction:.1%} of one target run "
            f"({self.target_flops:.3g} FLOPs over {self.target_steps} steps, "
            f"~{self.target_seconds_estimate:.0f} s at the proxy's FLOP rate)"
        )


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
    init_law: str = "fan_in"
    zero: tuple[str, ...] = ()
    source: Mapping[str, Any] = field(default_factory=dict)
    cost: Cost | None = None

    @property
    def family(self) -> str:
        return optimizer_class(self.optimizer)[1]

    def _multipliers(self) -> tuple[dict[str, float], dict[str, float]]:
        h = self.hparams
        return role_multipliers(
            float(h.get("init_scale", 1.0)),
            float(h.get("input_mult", 1.0)),
            float(h.get("output_mult", 1.0)),
            self.family,
        )

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
        from mutransfer.sweep.experiment import build_tuned

        return build_tuned(
            resolve(self.factory, "factory"),
            self.shape,
            plan=self.plan,
            hparams=self.hparams,
            optimizer=self.optimizer,
            init_law=self.init_law,
            zero=self.zero,
            seed=seed,
            device=device,
        )

    def summary(self) -> str:
        values = ", ".join(f"{k}={_fmt(v)}" for k, v in self.hparams.items())
        src = self.source
        how = "muP" if self.parametrization == "mup" else "standard: values copied unchanged"
        lines = [
            f"transfer ({how}): {dict(src.get('proxy', {}))} -> {dict(self.shape)}, "
            f"width x{self.plan.width_multiplier:g}"
            + (f", depth x{self.plan.depth.multiplier:g}" if self.plan.depth else "")
            + " from the base",
            f"best proxy trial #{src.get('trial')}: {src.get('metric')} {src.get('value', math.nan):.4f}",
            f"hyperparameters: {values}",
        ]
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
            # FLOPs are unknown (nan) for your own training function: null in the file
            "cost": {k: _finite_or_none(v) for k, v in asdict(self.cost).items()} if self.cost else None,
            "plan": self.plan.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Transfer:
        check_format(data, (FORMAT_VERSION,), "transfer", "rerun mutransfer transfer with this version.")
        return cls(
            factory=data["factory"],
            shape=data["shape"],
            parametrization=data["parametrization"],
            hparams=data["hparams"],
            plan=Plan.from_dict(data["plan"]),
            optimizer=data.get("optimizer", "adam"),
            init_law=data.get("init_law", "fan_in"),
            zero=tuple(data.get("zero", ())),
            source=data.get("source", {}),
            cost=Cost(**{k: math.nan if v is None else v for k, v in data["cost"].items()})
            if data.get("cost")
            else None,
        )

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1, allow_nan=False, default=str)


def load_transfer(path: str | os.PathLike) -> Transfer:
    """Read what ``mutransfer transfer`` wrote; applying it needs no factory and no Optuna."""
    try:
        with open(path) as f:
            return Transfer.from_dict(json.load(f))
    except FileNotFoundError:
        raise MutransferError(
            f"no transfer file at {str(path)!r}: run mutransfer transfer CONFIG first."
        ) from None
    except (KeyError, json.JSONDecodeError) as exc:
        raise MutransferError(f"{path} is not a transfer file ({exc!r}).") from None


def transfer(config: SweepConfig, *, parametrization: str | None = None) -> Transfer:
    """The target's settings from the best finished proxy trial of ``config``'s study, and the
    tuning cost. ``parametrization="sp"`` copies the values without muP scaling (the baseline
    that shows what muP buys)."""
    from mutransfer.sweep.experiment import Experiment
    from mutransfer.sweep.runner import budget, open_study, status

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
    target_steps = config.target_steps or config.steps
    per_step = experiment.flops_per_step(experiment.target, config.target_batch_size or config.batch_size)
    target_flops = target_steps * per_step
    rate = s.seconds / s.flops if s.flops else math.nan
    cost = Cost(
        trials=s.finished,
        proxy_flops=s.flops,
        proxy_seconds=s.seconds,
        target_flops=target_flops,
        target_steps=target_steps,
        target_seconds_estimate=target_flops * rate,
    )
    factory = (
        config.factory
        if isinstance(config.factory, str)
        else f"{config.factory.__module__}:{config.factory.__qualname__}"
    )
    return Transfer(
        factory=factory,
        shape=experiment.target,
        parametrization=config.parametrization,
        hparams=hparams,
        plan=experiment.plan_for(experiment.target),
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
    )


def _finite_or_none(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
