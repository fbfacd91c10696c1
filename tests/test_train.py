"""The built-in trainer: schedule, determinism, divergence recorded, muP vs standard groups."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import mutransfer
from mutransfer.axis import width_plan
from mutransfer.data import digits
from mutransfer.models import MLP
from mutransfer.setup import ModelSetup, TrainSetup
from mutransfer.train import lr_factor, train

SHAPE = {"in_features": 64}


def build(make_model, shape, *, plan, lr, seed=0, optimizer="adam"):
    """The model and optimizer a grid cell trains: muP under ``plan``, else as built."""
    training = TrainSetup(data=None, optimizer=optimizer)
    return ModelSetup(factory=make_model).build(
        shape, tuned=True, plan=plan, lr=lr, training=training, seed=seed
    )


@pytest.fixture(scope="module")
def data():
    return digits()


def test_warmup_then_cosine_to_zero():
    factors = [lr_factor(s, 100, warmup=0.1, schedule="cosine") for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(factors[10:]))
    assert factors[-1] < 0.01
    assert lr_factor(50, 100, warmup=0.0, schedule="constant") == 1.0
    assert lr_factor(55, 100, warmup=0.1, schedule="linear") == pytest.approx(0.5)


def test_same_settings_give_the_same_run(data):
    runs = []
    for _ in range(2):
        model, opt = build(MLP, {**SHAPE, "width": 32}, plan=None, lr=1e-2, seed=3)
        runs.append(train(model, opt, data, steps=20, batch_size=16, eval_batches=2))
    assert runs[0].val_loss == runs[1].val_loss and runs[0].curve == runs[1].curve
    assert runs[0].steps == 20 and not runs[0].diverged
    assert runs[0].val_loss < math.log(10)  # it learned something


def test_the_schedule_leaves_the_base_lrs_in_place(data):
    model, opt = build(MLP, {**SHAPE, "width": 32}, plan=None, lr=1e-3)
    train(model, opt, data, steps=5, batch_size=8, eval_batches=1)
    assert opt.param_groups[0]["lr"] == 1e-3


def test_divergence_is_recorded_not_raised(data):
    model, opt = build(MLP, {**SHAPE, "width": 32}, plan=None, lr=1e8, optimizer="sgd")
    run = train(model, opt, data, steps=50, batch_size=16, eval_batches=1)
    assert run.diverged and "step" in run.diverged
    assert run.val_loss == math.inf and run.steps < 50
    assert all(math.isfinite(v) for v in run.curve)


def test_build_applies_the_plan_only_for_mup():
    plan = width_plan(MLP, SHAPE, "width", 32, 128)
    _, mup = build(MLP, {**SHAPE, "width": 128}, plan=plan, lr=1e-2)
    _, sp = build(MLP, {**SHAPE, "width": 128}, plan=None, lr=1e-2)
    assert len(sp.param_groups) == 1 and sp.param_groups[0]["lr"] == 1e-2
    assert {g["lr"] for g in mup.param_groups} == {1e-2 / 4, 1e-2}  # hidden and readout / the rest


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"steps": 0}, "steps"),
        ({"warmup": 1.0}, "warmup"),
        ({"schedule": "step"}, "schedule"),
    ],
)
def test_bad_settings_are_named(data, bad, match):
    model, opt = build(MLP, {**SHAPE, "width": 16}, plan=None, lr=1e-3)
    settings = {"steps": 5, "batch_size": 4, **bad}
    with pytest.raises(mutransfer.MutransferError, match=match):
        train(model, opt, data, **settings)


def test_optimizers_by_name_are_torch_s_own_and_an_unknown_name_lists_the_choices():
    for name, cls in (("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)):
        _, opt = build(MLP, {**SHAPE, "width": 16}, plan=None, lr=1e-3, optimizer=name)
        assert type(opt) is cls, name  # the registry holds torch's classes, not copies
    with pytest.raises(mutransfer.MutransferError, match="adamw"):
        build(MLP, {**SHAPE, "width": 16}, plan=None, lr=1e-3, optimizer="adagrad")
