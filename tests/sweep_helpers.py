"""Importable helpers for sweep tests: worker processes find them by name."""

from __future__ import annotations

import math
import os

from torch import nn

from mutransfer.models import MLP


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


def breaks_when_told(run) -> float:
    """``quadratic``, or a crash while MUTRANSFER_TEST_BREAK is set: a bug, then its fix."""
    if os.environ.get("MUTRANSFER_TEST_BREAK"):
        raise RuntimeError("told to break")
    return quadratic(run)
