"""One training run with a fixed budget: what every grid cell (and every sweep trial) is made of.

    >>> import torch, mutransfer
    >>> from mutransfer.models import MLP
    >>> from mutransfer.train import train
    >>> data = mutransfer.data.digits()
    >>> shape = {"in_features": 64}
    >>> plan = mutransfer.plan(MLP, base={"width": 64, **shape}, target={"width": 256, **shape})
    >>> model = plan.init_(MLP(width=256, in_features=64))
    >>> optimizer = torch.optim.Adam(plan.param_groups(model, lr=2**-7))
    >>> run = train(model, optimizer, data, steps=100, batch_size=64)
    >>> run.diverged, round(run.val_loss, 1) < 2.3
    ('', True)

Batches come from ``data.batch(step, ...)`` (a pure function of seed and step), so two runs
that differ only in learning rate see the same examples in the same order and start from the
same weights: their losses differ by the learning rate, not by luck of the draw.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from mutransfer.data.batches import Batches, fetch
from mutransfer.errors import MutransferError
from mutransfer.fp8 import simulated_fp8
from mutransfer.losses import LossFn, cross_entropy
from mutransfer.losses import z_loss as z_loss_term
from mutransfer.monitor import monitoring
from mutransfer.optim import OPTIMIZERS

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "LossFn",
    "OptimizerSpec",
    "Run",
    "check_budget",
    "cross_entropy",
    "evaluate",
    "lr_factor",
    "train",
]

OptimizerSpec = str | Callable[[list[dict[str, Any]]], torch.optim.Optimizer]

SCHEDULES = ("cosine", "linear", "constant")


def lr_factor(step: int, steps: int, warmup: float, schedule: str) -> float:
    """The multiplier of every group's base LR at ``step``: linear warmup over the first
    ``warmup`` fraction of the steps, then ``schedule`` down to zero at the last step."""
    ramp = math.ceil(warmup * steps)
    if step < ramp:
        return (step + 1) / ramp
    if schedule == "constant":
        return 1.0
    progress = (step - ramp) / max(1, steps - ramp)
    return 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress


def check_budget(steps: int, batch_size: int, eval_batches: int, warmup: float, schedule: str) -> None:
    """Fail on a bad budget before any training, not at the first run."""
    if steps < 1 or batch_size < 1 or eval_batches < 1:
        raise MutransferError(
            f"steps, batch_size and eval_batches must be >= 1, got {steps}, {batch_size}, {eval_batches}."
        )
    if not 0 <= warmup < 1:
        raise MutransferError(f"warmup is a fraction of the steps in [0, 1), got {warmup}.")
    if schedule not in SCHEDULES:
        raise MutransferError(f"schedule must be one of {list(SCHEDULES)}, got {schedule!r}.")


@dataclass(frozen=True)
class Run:
    """What one training run measured. ``val_loss`` is ``inf`` when training ``diverged`` (the
    reason, e.g. ``"loss nan at step 40"``; empty when it did not)."""

    val_loss: float
    train_loss: float  # mean over the last tenth of the steps taken
    curve: list[float]  # train loss at ``curve_every`` step intervals, for plots
    curve_every: int
    steps: int  # steps taken: fewer than asked when it diverged
    seconds: float
    diverged: str = ""
    monitors: dict[str, Any] = field(default_factory=dict)  # ``Monitor.to_dict()`` when monitored


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: Batches,
    *,
    steps: int,
    batch_size: int,
    warmup: float = 0.1,
    schedule: str = "cosine",
    seed: int = 0,
    eval_batches: int = 16,
    eval_batch_size: int | None = None,
    loss: LossFn = cross_entropy,
    z_loss: float = 0.0,
    monitor_every: int = 0,
    fp8: bool = False,
    device: str | torch.device = "cpu",
    on_step: Callable[[int, float], None] | None = None,
) -> Run:
    """Train for ``steps`` steps on ``data``'s train split (batch ``i`` at step ``i``) under warmup
    and ``schedule``, then return the mean loss on ``eval_batches`` validation batches (of
    ``eval_batch_size``, default ``batch_size``: runs that train on different batch sizes
    compare on the same examples when they share it). A non-finite training loss stops the run
    and is recorded, not raised. ``z_loss`` adds ``mutransfer.losses.z_loss`` of that weight to
    the loss trained on, not to the losses reported. ``monitor_every`` > 0 records
    ``mutransfer.monitor``'s monitors every that many steps (in ``Run.monitors``; a divergence
    then says which rose first). ``fp8`` runs every matmul, training and evaluation, in simulated
    FP8 (``mutransfer.fp8``: E4M3 operands, E5M2 gradients, a plain cast). ``on_step(step,
    loss)`` sees every finite training loss; it may raise to stop the run (a pruner does)."""
    check_budget(steps, batch_size, eval_batches, warmup, schedule)
    with monitoring(model, optimizer, monitor_every) as monitor, simulated_fp8(fp8):  # eval: not monitored
        run = _loop(model, optimizer, data, steps=steps, batch_size=batch_size, warmup=warmup,
                    schedule=schedule, seed=seed, eval_batches=eval_batches, eval_batch_size=eval_batch_size,
                    loss=loss, z_loss=z_loss, device=device, on_step=on_step)  # fmt: skip
    if monitor is None:
        return run
    first = monitor.first_to_rise() if run.diverged else ""
    return replace(run, diverged=f"{run.diverged}; before it, {first}" if first else run.diverged,
                   monitors=monitor.to_dict())  # fmt: skip


def _loop(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: Batches,
    *,
    steps: int,
    batch_size: int,
    warmup: float,
    schedule: str,
    seed: int,
    eval_batches: int,
    eval_batch_size: int | None,
    loss: LossFn,
    z_loss: float,
    device: str | torch.device,
    on_step: Callable[[int, float], None] | None,
) -> Run:
    start = time.perf_counter()
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    every = max(1, steps // 50)
    losses: list[float] = []
    model.train()
    for step in range(steps):
        factor = lr_factor(step, steps, warmup, schedule)
        for group, lr in zip(optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = lr * factor
        x, y = fetch(data, step, batch_size, seed=seed, device=device)
        output = model(x)
        value = loss(output, y)
        losses.append(value.item())
        if z_loss:  # trained on, not reported
            value = value + z_loss_term(output, z_loss)
        if not math.isfinite(losses[-1]):
            return _diverged(losses, every, start, f"training loss {losses[-1]} at step {step}")
        if on_step is not None:
            on_step(step, losses[-1])
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
    for group, lr in zip(optimizer.param_groups, base_lrs, strict=True):
        group["lr"] = lr
    val = evaluate(
        model, data, batches=eval_batches, batch_size=eval_batch_size or batch_size, loss=loss, device=device
    )
    if not math.isfinite(val):
        return _diverged(losses, every, start, f"validation loss {val} after {steps} steps")
    tail = losses[-max(1, steps // 10) :]
    return Run(
        val_loss=val,
        train_loss=sum(tail) / len(tail),
        curve=losses[::every],
        curve_every=every,
        steps=steps,
        seconds=time.perf_counter() - start,
    )


def evaluate(
    model: nn.Module,
    data: Batches,
    *,
    batches: int = 16,
    batch_size: int = 32,
    loss: LossFn = cross_entropy,
    device: str | torch.device = "cpu",
) -> float:
    """Mean loss over the first ``batches`` validation batches of seed 0: every run is scored on
    the same examples."""
    was_training = model.training
    model.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(batches):
            x, y = fetch(data, i, batch_size, seed=0, split="val", device=device)
            total += loss(model(x), y).item()
    model.train(was_training)
    return total / batches


def _diverged(losses: list[float], every: int, start: float, reason: str) -> Run:
    return Run(
        val_loss=math.inf,
        train_loss=math.inf,
        curve=[v for v in losses[::every] if math.isfinite(v)],
        curve_every=every,
        steps=len(losses),
        seconds=time.perf_counter() - start,
        diverged=reason,
    )
