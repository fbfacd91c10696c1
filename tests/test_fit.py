"""Grids over training axes, power-law fits of the optimum, and transfers that apply them."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from dataclasses import replace

import pytest

import mutransfer
from mutransfer.errors import MutransferError
from mutransfer.fit import fit_power_law
from mutransfer.grid import Cell, Grid
from mutransfer.models import GPT, MLP
from mutransfer.sweep import Range, SweepConfig, sweep
from mutransfer.sweep.config import ConfigError
from mutransfer.transfer import transfer
from quick_benchmarks import run_quick
from sweep_helpers import mlp_config

SIZES = [100, 200, 400, 800]
LOG2_LRS = list(range(-12, -3))
DIGITS = {"in_features": 64, "out_features": 10}


def synthetic(optimum, sizes=SIZES, log2_lrs=LOG2_LRS, axis="steps") -> Grid:
    """A grid whose loss at each size is a parabola in log2 LR with its vertex at optimum(size):
    the parabola through three grid points finds that vertex exactly."""
    cells = tuple(
        Cell("mup", s, 2.0**k, 0, 1.0 + 0.05 * (k - optimum(s)) ** 2, 1.0, s, 0.0)
        for s in sizes
        for k in log2_lrs
    )
    protocol = {"axis": axis, "factory": "synthetic", "data": "none"}
    return Grid(protocol, tuple(sizes), tuple(2.0**k for k in log2_lrs), ("mup",), 1, cells)


def test_a_known_exponent_is_recovered_and_extrapolation_is_flagged():
    law = mutransfer.fit(synthetic(lambda s: -6 - 0.3 * math.log2(s / 100)))
    assert law.axis == "steps" and law.exponent == pytest.approx(-0.3, abs=1e-9)
    assert law.exponent_se == pytest.approx(0, abs=1e-9)
    inside = law.predict(300)
    assert inside.log2_lr == pytest.approx(-6 - 0.3 * math.log2(3)) and inside.outside == 1
    far = law.predict(20000)
    assert far.log2_lr == pytest.approx(-6 - 0.3 * math.log2(200))
    assert far.outside == pytest.approx(25) and far.extrapolates and "beyond 10x" in far.text("steps")


def test_noisy_optima_give_an_exponent_within_its_error():
    noise = dict(zip(SIZES, (0.15, -0.1, 0.05, -0.12), strict=True))  # log2 units, as seeds scatter
    law = mutransfer.fit(synthetic(lambda s: -6 + 0.5 * math.log2(s / 100) + noise[s]))
    assert 0 < law.exponent_se < 0.2
    assert abs(law.exponent - 0.5) < 3 * law.exponent_se
    assert law.predict(1600).log2_lr_se > law.predict(300).log2_lr_se  # farther out, less certain


def test_edge_optima_are_left_out_and_too_few_are_refused():
    law = mutransfer.fit(synthetic(lambda s: -6 - 0.3 * math.log2(s / 100) if s < 800 else -20))
    assert law.left_out == (800,) and law.sizes == (100, 200, 400)
    with pytest.raises(MutransferError, match="only 1 of the steps values"):
        mutransfer.fit(synthetic(lambda s: -6 if s == 100 else -20))
    with pytest.raises(MutransferError, match="2 or more distinct sizes"):
        fit_power_law("steps", [100], [-6.0])


@pytest.mark.parametrize(
    "axis, values, check",
    [
        ("steps", [10, 20, 40], lambda c: c.steps in (10, 20, 40)),
        ("batch_size", [4, 8, 16], lambda c: c.steps == 10),
    ],
)
def test_a_real_grid_over_a_training_axis_fits(axis, values, check, tmp_path):
    settings = {"steps": 10, "batch_size": 8, axis: values}
    result = mutransfer.grid(
        MLP,
        lrs=[2.0**k for k in range(-10, -3)],
        data=mutransfer.data.digits(),
        shape={"width": 32, **DIGITS},
        eval_batches=2,
        path=tmp_path / "g.json",
        **settings,
    )
    assert result.axis == axis and result.sizes == tuple(values) and result.parametrizations == ("mup",)
    assert all(check(c) for c in result.cells)
    assert result.protocol[axis] is None and result.protocol["width_key"] == "width"
    if axis == "batch_size":
        assert result.protocol["eval_batch_size"] == 16  # every cell scored on the same examples
    law = mutransfer.fit(Grid.load(tmp_path / "g.json"))
    assert math.isfinite(law.exponent) and law.axis == axis
    assert f"{axis} x LR grid" in result.table()


def test_a_sequence_length_grid_resizes_the_data_and_the_model():
    result = mutransfer.grid(
        GPT,
        lrs=[2.0**k for k in range(-9, -5)],
        data=mutransfer.data.stdlib(block_size=32),
        shape={"width": 16, "block_size": 32},
        steps=3,
        batch_size=2,
        block_size=[16, 32],
        eval_batches=1,
    )
    assert result.axis == "block_size" and result.sizes == (16, 32)
    assert all(math.isfinite(c.val_loss) for c in result.cells)


def test_a_training_axis_needs_one_width_and_one_axis():
    data = mutransfer.data.digits()
    with pytest.raises(MutransferError, match="give its width in shape="):
        mutransfer.grid(MLP, lrs=[1e-3, 1e-2, 1e-1], data=data, shape=DIGITS, steps=[10, 20])
    with pytest.raises(MutransferError, match=r"give exactly one of widths=.*got widths, steps"):
        mutransfer.grid(MLP, widths=[16, 32], lrs=[1e-3, 1e-2, 1e-1], data=data, steps=[10, 20])


def test_the_command_line_grids_over_steps_and_fits(tmp_path):
    grid_file = tmp_path / "steps.json"
    common = [sys.executable, "-m", "mutransfer"]
    lrs = ["--log2-lrs", "-9", "-8", "-7", "-6", "-5", "-4", "-3"]
    made = subprocess.run(
        [*common, "grid", "mutransfer.models:MLP", "--data", "digits", "--set", "width=16", "--steps", "8",
         "16", "32", *lrs, "--batch-size", "8", "--eval-batches", "1", "--json", str(grid_file)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "steps x LR grid" in made.stdout and "training lengths 8..32" in made.stdout
    fitted = subprocess.run(
        [*common, "fit", str(grid_file), "--to", "steps=400", "--json", str(tmp_path / "fit.json")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert fitted.returncode == 0, fitted.stderr
    assert "x log2(steps)" in fitted.stdout and "steps 400: lr 2^" in fitted.stdout
    assert "12.5x beyond the measured range" in fitted.stderr
    assert json.loads((tmp_path / "fit.json").read_text())["axis"] == "steps"
    wrong = subprocess.run(
        [*common, "fit", str(grid_file), "--to", "batch_size=64"], capture_output=True, text=True
    )
    assert wrong.returncode == 2 and "give the grid's axis" in wrong.stderr


# ---- transfer along the training axes ------------------------------------------------------------
@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    config = mlp_config(tmp_path_factory.mktemp("swept"), trials=2, pruner="none", steps=20)
    sweep(config)
    return config


def test_a_given_exponent_scales_the_transferred_lr(swept):
    plain = transfer(swept)
    longer = transfer(swept.with_overrides(target_steps=80, lr_exponents={"steps": -0.5}))
    assert longer.hparams["lr"] == pytest.approx(plain.hparams["lr"] * (80 / 20) ** -0.5)
    (adj,) = longer.lr_adjustments
    assert adj.source == "given" and adj.factor == pytest.approx(0.5)
    assert "lr x 0.5 for steps 20 -> 80: exponent -0.500, given in the config" in longer.summary()
    same = transfer(swept.with_overrides(lr_exponents={"steps": -0.5}))  # target trains as long
    assert same.lr_adjustments == () and same.hparams == plain.hparams


def test_a_fitted_exponent_from_a_grid_file_is_applied_with_a_warning_far_out(swept, tmp_path):
    path = tmp_path / "steps.json"
    synthetic(lambda s: -6 - 0.25 * math.log2(s / 100), sizes=[10, 20, 40]).save(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = transfer(swept.with_overrides(target_steps=2000, lr_exponents={"steps": str(path)}))
    (adj,) = t.lr_adjustments
    assert adj.exponent == pytest.approx(-0.25) and adj.outside == pytest.approx(50)
    assert adj.extrapolates and any("extrapolated past 10x" in str(w.message) for w in caught)
    t.save(tmp_path / "t.json")
    assert mutransfer.load_transfer(tmp_path / "t.json").lr_adjustments == (adj,)
    wrong_axis = tmp_path / "batch.json"
    synthetic(lambda s: -6.0, sizes=[4, 8, 16], axis="batch_size").save(wrong_axis)
    with pytest.raises(MutransferError, match="is a grid over batch_size, not steps"):
        transfer(swept.with_overrides(target_steps=2000, lr_exponents={"steps": str(wrong_axis)}))


def test_a_width_grids_slide_corrects_the_transferred_lr(swept, tmp_path):
    """muP's optimum sliding -0.3 log2 per doubling on a width grid (keyword ``width``): the
    transfer from width 32 to 256 multiplies the LR by 8 ** -0.3, and says where it came from."""
    path = tmp_path / "width.json"
    grid = synthetic(lambda s: -6 - 0.3 * math.log2(s / 32), sizes=[32, 64, 128], axis="width")
    replace(grid, protocol={**grid.protocol, "width_key": "width"}).save(path)
    plain = transfer(swept)
    t = transfer(swept.with_overrides(lr_exponents={"width": str(path)}))
    (adj,) = t.lr_adjustments
    assert (adj.axis, adj.proxy, adj.target) == ("width", 32, 256) and adj.exponent == pytest.approx(-0.3)
    assert t.hparams["lr"] == pytest.approx(plain.hparams["lr"] * 8**-0.3)
    assert (
        "for width 32 -> 256: exponent -0.300" in t.summary()
        and "2x beyond the measured width" in t.summary()
    )
    given = transfer(swept.with_overrides(lr_exponents={"width": 0.1}))
    assert given.hparams["lr"] == pytest.approx(plain.hparams["lr"] * 8**0.1)


def test_a_per_role_exponent_moves_only_that_roles_lr(swept, tmp_path):
    plain = transfer(swept)
    t = transfer(swept.with_overrides(lr_exponents={"width.output": 0.5}))
    assert t.hparams["lr"] == plain.hparams["lr"] and t.role_factors == pytest.approx({"output": 8**0.5})
    assert "lr of the output tensors x 2.83 for width 32 -> 256: exponent +0.500" in t.summary()
    model = MLP(**t.shape)
    before = {tuple(g["roles"]): g["lr"] for g in plain.param_groups(model)}
    after = {tuple(g["roles"]): g["lr"] for g in t.param_groups(model)}
    assert after[("output",)] == pytest.approx(before[("output",)] * 8**0.5)
    assert {k: v for k, v in after.items() if k != ("output",)} == {
        k: v for k, v in before.items() if k != ("output",)
    }
    _, optimizer = t.build()
    assert {tuple(g["roles"]): g["lr"] for g in optimizer.param_groups} == pytest.approx(after)
    t.save(tmp_path / "t.json")
    assert mutransfer.load_transfer(tmp_path / "t.json").role_factors == t.role_factors


def test_lr_exponents_are_checked_with_the_config():
    with pytest.raises(ConfigError) as info:
        SweepConfig(
            factory="mutransfer.models:MLP",
            data="digits",
            proxy={"width": 16},
            target={"width": 32},
            space={"lr": Range(1e-3, 1e-1, log=True)},
            lr_exponents={
                "heads": 0.5,
                "steps": math.nan,
                "depth": 0.1,
                "steps.hidden": 0.1,
                "width.readout": 1,
            },
        )
    assert "lr_exponents.heads: not one of ['steps', 'batch_size', 'width', 'depth']" in str(info.value)
    assert "lr_exponents.depth: needs depth, the keyword that counts the blocks" in str(info.value)
    for key in ("steps.hidden", "width.readout"):
        assert f"lr_exponents.{key}: a per-role exponent is width.<role> or depth.<role>" in str(info.value)
    assert "lr_exponents.steps: an exponent or a grid file path, got nan" in str(info.value)


def test_the_axes_benchmark_runs_in_quick_mode(tmp_path):
    record, _ = run_quick("axes", tmp_path)
    assert [a["axis"] for a in record["axes"]] == ["steps", "batch_size"]
    for a in record["axes"]:
        assert {"reuse", "fitted", "fit", "held_out_best"} <= set(a)
        assert (tmp_path / f"axes-{a['axis']}.json").exists()
