"""One sweep trial: from sampled values to a trained proxy and its score.

The config is resolved once per worker (factory imported, data loaded, plans cached per
shape); each trial then builds the proxy under its muP plan with the sampled multipliers and
trains it, reporting the training loss every ``report_every`` steps so a pruner can stop it.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mutransfer.data import TokenData, factory_keywords, fetch, load_for_training
from mutransfer.errors import MutransferError
from mutransfer.factory import construct, load
from mutransfer.scaling.plan import Plan
from mutransfer.scaling.planning import plan as make_plan
from mutransfer.setup import MULTIPLIERS, ModelSetup, TrainSetup
from mutransfer.sweep.config import HPARAMS, SweepConfig
from mutransfer.sweep.space import Value
from mutransfer.train import Run, cross_entropy

__all__ = ["FLOP_COUNTER", "Experiment", "ProxyRun"]


@dataclass
class ProxyRun:
    """What your own training function (``train = "module:function"``) gets for one trial.

    Train ``model`` with ``optimizer`` (already muP-scaled, with the trial's LR, weight decay
    and multipliers) for ``steps`` steps and return the value to minimise. Call
    ``report(step, loss)`` now and then: it raises ``optuna.TrialPruned`` when the pruner stops
    the trial, which your function should let through.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    params: dict[str, Value]
    shape: dict[str, Any]
    steps: int
    device: str
    report: Callable[[int, float], None]


@dataclass
class Outcome:
    """What a trial measured: ``value`` is ``inf`` when it ``diverged`` (the reason)."""

    value: float
    steps: int
    flops: float
    diverged: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class Experiment:
    """A resolved ``SweepConfig``: the factory, the data, the shapes and a plan per shape."""

    def __init__(self, config: SweepConfig) -> None:
        self.config = config
        self.make_model = load(config.factory)
        self.train_fn = load(config.train, "train") if config.train else None
        self.data = None
        implied: dict[str, Any] = {}
        if config.data is not None:
            self.data = load_for_training(config.data, config.block_size)
            implied = factory_keywords(self.data, self.make_model)
        elif self.train_fn is None:
            raise MutransferError('data: the built-in trainer needs a data source, e.g. data = "digits".')
        own = ModelSetup(factory=self.make_model, shape=config.shape, sp_shape=config.sp_shape)
        self.common = {**implied, **own.keywords(config.parametrization)}  # sp's, or u-muP's unit_scaled
        self.training = TrainSetup(data=self.data, steps=config.steps, batch_size=config.batch_size,
                                   schedule=config.schedule, optimizer=config.optimizer,
                                   eval_batches=config.eval_batches, z_loss=config.z_loss,
                                   monitor_every=config.monitor_every, fp8=config.fp8,
                                   device=config.device)  # fmt: skip
        self.proxy = {**self.common, **config.proxy}
        self.target = {**self.common, **config.target}
        self.base = {**self.common, **(config.base if config.base is not None else config.proxy)}
        self.width_keys = sorted(
            k for k in self.target if self.target[k] != self.base.get(k) and k != config.depth
        )
        if not self.width_keys and (
            config.depth is None or self.target.get(config.depth) == self.base.get(config.depth)
        ):
            raise MutransferError(
                f"target: {dict(config.target)} is the base shape; nothing scales. Give the target's "
                "widths, e.g. target = { width = 1024 }."
            )
        self.shape_keys = sorted(k for k in config.space if k not in HPARAMS and _accepts(self.make_model, k))
        self._plans: dict[str, Plan] = {}
        self._flops: dict[str, tuple[float, str]] = {}

    # ---- shapes and plans ------------------------------------------------------------------
    def shape_of(self, params: Mapping[str, Value]) -> dict[str, Any]:
        """The proxy's factory keywords, with any searched shape keywords applied."""
        return {**self.proxy, **{k: params[k] for k in self.shape_keys if k in params}}

    def plan_for(self, shape: Mapping[str, Any]) -> Plan:
        """muP from the base to ``shape``; for standard parametrization, the identity plan at
        ``shape`` (standard by definition, and it still knows every tensor's role); u-muP's has no
        base (its rules are absolute), so it is planned at ``shape`` too."""
        key = json.dumps(shape, sort_keys=True, default=str)
        if key not in self._plans:
            base = self.base if self.config.parametrization == "mup" else dict(shape)
            probe = {**base, **{k: 2 * base[k] for k in self.width_keys}} if base == dict(shape) else None
            c = self.config
            depth = {"depth": c.depth, "residual": c.residual, "alpha": c.alpha} if c.depth else {}
            kind = "u-mup" if c.parametrization == "u-mup" else "mup"  # standard's: the identity muP plan
            self._plans[key] = make_plan(self.make_model, base=base, target=shape, probe=probe, **depth,
                                         parametrization=kind)  # fmt: skip
        return self._plans[key]

    def flops_per_step(self, shape: Mapping[str, Any], batch_size: int | None = None) -> float:
        """Forward plus backward FLOPs of one training step, counted on the meta device."""
        return self._counted(shape, batch_size)[0]

    def flops_counted_by(self, shape: Mapping[str, Any], batch_size: int | None = None) -> str:
        """How ``flops_per_step`` got its number: ``"flop counter"``, or why it is an estimate."""
        return self._counted(shape, batch_size)[1]

    def _counted(self, shape: Mapping[str, Any], batch_size: int | None) -> tuple[float, str]:
        batch_size = batch_size or self.config.batch_size
        key = json.dumps([shape, batch_size], sort_keys=True, default=str)
        if key not in self._flops:
            self._flops[key] = _count_flops(self.make_model, shape, self.data, batch_size)
        return self._flops[key]

    # ---- one trial -------------------------------------------------------------------------
    def setups(self, params: Mapping[str, Value]) -> tuple[ModelSetup, TrainSetup]:
        """The model and the training of a run with the searched ``params``: the multipliers go
        to the model, the weight decay and warmup to the training; the rest is the config's."""
        c = self.config
        tuned = {k: float(params[k]) for k in MULTIPLIERS if k in params}
        model = ModelSetup(factory=self.make_model, shape=self.common, init_law=c.init_law, zero=c.zero,
                           multipliers=tuned)  # fmt: skip
        training = replace(
            self.training,
            weight_decay=float(params.get("weight_decay", 0.0)),
            warmup=float(params.get("warmup", 0.1)),
        )
        return model, training

    def build(
        self, params: Mapping[str, Value], shape: Mapping[str, Any]
    ) -> tuple[nn.Module, torch.optim.Optimizer]:
        """The model at ``shape`` with ``params`` under ``plan_for(shape)``, and its optimizer."""
        model, training = self.setups(params)
        plan = self.plan_for(shape)
        return model.build(
            shape, tuned=True, plan=plan, lr=float(params["lr"]), training=training, seed=self.config.seed
        )

    def run(self, params: Mapping[str, Value], report: Callable[[int, float], None]) -> Outcome:
        """Train the proxy with ``params``; ``report(step, loss)`` sees every step's training
        loss and may raise to prune the trial."""
        c = self.config
        shape = self.shape_of(params)
        model, optimizer = self.build(params, shape)
        per_step = self.flops_per_step(shape)  # nan without data: nothing to count a step on
        if self.train_fn is not None:
            taken = [0]

            def on_step(step: int, loss: float) -> None:
                taken[0] = step + 1
                report(step, loss)

            run = ProxyRun(model, optimizer, dict(params), shape, c.steps, c.device, on_step)
            value = float(self.train_fn(run))
            steps = taken[0] or c.steps  # a function that never reports is taken to run them all
            reason = "" if math.isfinite(value) else f"your training function returned {value}"
            return Outcome(value if not reason else math.inf, steps, steps * per_step, reason)
        result = self.fit(model, optimizer, params, on_step=report)
        value = result.val_loss if c.metric == "val_loss" else result.train_loss
        return Outcome(
            value=value,
            steps=result.steps,
            flops=result.steps * per_step,
            diverged=result.diverged,
            extra={"train_loss": result.train_loss, "val_loss": result.val_loss},
        )

    def fit(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        params: Mapping[str, Value],
        *,
        on_step: Callable[[int, float], None] | None = None,
    ) -> Run:
        """Train with the built-in trainer under the config's protocol (steps, batch, schedule,
        seed, evaluation): a proxy trial, or the target after transfer measured the same way."""
        _, training = self.setups(params)
        return training.train(model, optimizer, seed=self.config.seed, on_step=on_step)


def _count_flops(
    make_model: Callable[..., nn.Module], shape: Mapping[str, Any], data, batch_size: int
) -> tuple[float, str]:
    """FLOPs of one forward and backward pass on one batch (nothing is allocated: the meta
    device), and how they were found: counted, or estimated where the meta device cannot run
    the model (then said, not hidden: the tuning cost quotes it)."""
    if data is None:
        return math.nan, "no data source to count a step on"
    model = construct(make_model, shape)
    x, y = fetch(data, 0, batch_size, seed=0, device="meta")
    try:
        with FlopCounterMode(display=False) as counter:
            cross_entropy(model(x), y).backward()
    except Exception as exc:  # e.g. .item() in forward: estimate 6 x parameters x examples
        tokens = x.numel() if isinstance(data, TokenData) else x.shape[0]
        why = f"estimated as 6 x parameters x {'tokens' if isinstance(data, TokenData) else 'examples'}"
        reason = f"{why}: the meta device could not run the model ({type(exc).__name__}: {exc})"
        return 6.0 * sum(p.numel() for p in model.parameters()) * tokens, reason[:300]
    return float(counter.get_total_flops()), FLOP_COUNTER


FLOP_COUNTER = "flop counter"  # counted by torch.utils.flop_counter, op by op


def _accepts(make_model: Callable[..., Any], key: str) -> bool:
    """Whether ``key`` is a keyword of the factory (searched shapes, not trainer settings)."""
    try:
        params = inspect.signature(make_model).parameters
    except (TypeError, ValueError):
        return False
    return key in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
