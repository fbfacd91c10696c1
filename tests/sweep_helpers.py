"""Importable helpers for sweep tests: worker processes find them by name."""

from __future__ import annotations

import math
import os
from pathlib import Path

from torch import nn

from mutransfer.models import MLP
from mutransfer.sweep import Range, SweepConfig


def quadratic(run) -> float:
    """A training function with a known optimum: lr = 0.01 and the smallest target_norm."""
    assert isinstance(run.model, nn.Module) and run.optimizer.param_groups
    value = (math.log10(run.params["lr"]) + 2) ** 2 + run.params["target_norm"]
    for step in range(5):
        run.report(step, value)
    return value


def mlp_without_readout_bias(**shape) -> nn.Module:
    """The reference MLP whose logits are exactly ``W h``, so a forward multiplier on them is
    a pure rescaling of the readout weight."""
    model = MLP(**shape)
    model.readout = nn.Linear(model.readout.in_features, model.readout.out_features, bias=False)
    return model


class _ReadsAValue(nn.Module):
    """A model whose forward reads a number out of a tensor, as models that branch on data do:
    the meta device has no values, so its FLOPs cannot be counted there."""

    def __init__(self, mlp: nn.Module) -> None:
        super().__init__()
        self.mlp = mlp

    def forward(self, x):
        if x.abs().sum().item() < 0:  # never true: it only reads a value
            x = -x
        return self.mlp(x)


def mlp_reading_a_value(width: int, in_features: int = 784, out_features: int = 10) -> nn.Module:
    return _ReadsAValue(MLP(width=width, in_features=in_features, out_features=out_features))


def breaks_when_told(run) -> float:
    """``quadratic``, or a crash while MUTRANSFER_TEST_BREAK is set: a bug, then its fix."""
    if os.environ.get("MUTRANSFER_TEST_BREAK"):
        raise RuntimeError("told to break")
    return quadratic(run)


def interrupted_inside_exec(run) -> float:
    """Ctrl-C landing while ``exec`` runs a string, as it does when a lazy import builds a
    dataclass during a trial: the moment that made a handled Ctrl-C end as death by SIGINT."""
    exec("import signal; signal.raise_signal(signal.SIGINT)")
    return quadratic(run)


def mlp_config(tmp_path: Path, **changes) -> SweepConfig:
    """A small sweep of the reference MLP on digits, journal in ``tmp_path``."""
    settings = dict(
        factory="mutransfer.models:MLP",
        data="digits",
        proxy={"width": 32},
        target={"width": 256},
        steps=60,
        batch_size=32,
        eval_batches=4,
        trials=6,
        space={"lr": Range(1e-3, 0.3, log=True), "output_mult": Range(0.25, 4.0, log=True)},
        storage=str(tmp_path / "sweep.journal"),
    )
    return SweepConfig(**{**settings, **changes})


def gpt_config(tmp_path: Path, **changes) -> SweepConfig:
    """A tiny sweep of the reference GPT on the standard library's bytes, journal in ``tmp_path``."""
    settings = dict(
        factory="mutransfer.models:GPT",
        data="stdlib",
        block_size=16,
        proxy={"width": 16},
        target={"width": 64},
        steps=4,
        batch_size=2,
        eval_batches=1,
        trials=2,
        space={"lr": Range(1e-3, 1e-2, log=True)},
        storage=str(tmp_path / "gpt.journal"),
    )
    return SweepConfig(**{**settings, **changes})
