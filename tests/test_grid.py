"""The width x LR grid: optimum fitting, drift and regret, resume, divergence, plot and command."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

import mutransfer
from mutransfer.cli import main
from mutransfer.data import digits, stdlib
from mutransfer.grid import Cell, Grid, fit_optimum
from mutransfer.models import GPT, MLP
from quick_benchmarks import run_quick

SHAPE = {"in_features": 64}
LRS = [2.0**k for k in range(-10, -3)]
SMALL = dict(widths=[32, 64, 128], lrs=LRS, shape=SHAPE, steps=40, batch_size=32, eval_batches=4)


@pytest.fixture(scope="module")
def data():
    return digits()


@pytest.fixture(scope="module")
def small(data, tmp_path_factory):
    path = tmp_path_factory.mktemp("grid") / "grid.json"
    return mutransfer.grid(MLP, data=data, path=path, **SMALL), path


def test_parabola_vertex_is_recovered_between_grid_points():
    xs = [-10, -9, -8, -7, -6]
    o = fit_optimum(64, xs, [(x + 7.3) ** 2 + 1 for x in xs])
    assert o.method == "parabola" and o.log2_lr == pytest.approx(-7.3)
    assert o.loss == pytest.approx(1.09)
    uneven = [-10, -8, -7.5, -6]
    assert fit_optimum(64, uneven, [(x + 7.7) ** 2 for x in uneven]).log2_lr == pytest.approx(-7.7)


@pytest.mark.parametrize(
    "losses, method, log2_lr",
    [
        ([1.0, 2.0, 3.0], "edge", -3),  # the best LR is the smallest: the optimum may lie below
        ([3.0, 2.0, 1.0], "edge", -1),
        ([3.0, 1.0, math.inf], "argmin", -2),  # a diverged neighbour: no parabola
        ([math.inf, math.inf, math.inf], "none", math.nan),
    ],
)
def test_optimum_falls_back_where_no_parabola_fits(losses, method, log2_lr):
    o = fit_optimum(8, [-3, -2, -1], losses)
    assert o.method == method
    assert (math.isnan(o.log2_lr) and math.isnan(log2_lr)) or o.log2_lr == log2_lr


def _known_grid(optima: dict[int, float], transfer_loss: float) -> Grid:
    """A grid whose answer is known: at width w the loss is (log2 lr - optima[w])**2 + 2 - w/1000,
    and one transfer run at the widest width reads ``transfer_loss``."""
    lrs = tuple(2.0**k for k in range(-12, -3))
    cells = [Cell("mup", w, lr, 0, (math.log2(lr) - o) ** 2 + 2 - w / 1000, 0.0, 10, 0.1)
             for w, o in optima.items() for lr in lrs]  # fmt: skip
    narrowest, widest = min(optima), max(optima)
    cells.append(Cell("mup", widest, 2.0 ** optima[narrowest], 0, transfer_loss, 0.0, 10, 0.1, transfer=True))
    return Grid({}, tuple(sorted(optima)), lrs, ("mup",), 1, tuple(cells))


def test_drift_and_regret_of_a_grid_with_known_answers():
    s = _known_grid({32: -7.3, 64: -8.1, 128: -6.6}, transfer_loss=2.3).summary("mup")
    assert [o.log2_lr for o in s.optima] == pytest.approx([-7.3, -8.1, -6.6])
    assert s.drift == pytest.approx(1.5)  # max minus min, whatever their order
    # the trend drift misses: least squares of -7.3, -8.1, -6.6 on log2 widths 5, 6, 7
    residuals = [-7.3 - (-9.4333 + 0.35 * 5), -8.1 - (-9.4333 + 0.35 * 6), -6.6 - (-9.4333 + 0.35 * 7)]
    assert s.exponent == pytest.approx(0.35)
    assert s.exponent_se == pytest.approx(math.sqrt(sum(r * r for r in residuals)) / math.sqrt(2), rel=1e-3)
    assert s.transfer_log2_lr == pytest.approx(-7.3)
    assert s.best_loss == pytest.approx(0.4**2 + 2 - 0.128)  # the widest width's grid minimum, at 2^-7
    assert s.regret == pytest.approx(2.3 / (0.4**2 + 2 - 0.128) - 1)
    # a transfer run that beats the grid's minimum is the best: no negative regret
    lucky = _known_grid({32: -7.0, 64: -7.0}, transfer_loss=1.5).summary("mup")
    assert lucky.best_loss == 1.5 and lucky.regret == 0.0 and lucky.drift == 0.0


def test_lr_sensitivity_is_the_mean_clipped_loss_above_the_best():
    """Wortsman et al.'s definition on four LRs with a known answer: losses 3, 1, 2 and a
    divergence, the loss at init 2.5: clipped 2.5, 1, 2, 2.5, mean 2, best 1, sensitivity 1."""
    lrs = (2.0**-4, 2.0**-3, 2.0**-2, 2.0**-1)
    cells = tuple(Cell("mup", 8, lr, 0, v, 0.0, 10, 0.1, curve=[2.5, 2.0])
                  for lr, v in zip(lrs, [3.0, 1.0, 2.0, math.inf], strict=True))  # fmt: skip
    grid = Grid({}, (8,), lrs, ("mup",), 1, cells)
    assert grid.sensitivity("mup", 8) == pytest.approx(1.0)
    assert grid.summary("mup").sensitivity == pytest.approx((1.0,))
    flat = Grid({}, (8,), lrs, ("mup",), 1, tuple(replace(c, val_loss=1.0) for c in cells))
    assert flat.sensitivity("mup", 8) == 0.0  # every LR as good as the best
    without_curves = Grid({}, (8,), lrs, ("mup",), 1, tuple(replace(c, curve=[]) for c in cells))
    assert math.isnan(without_curves.sensitivity("mup", 8))  # no loss at init: not guessed


def test_optimum_error_and_drift_error_come_from_the_seeds():
    """Two seeds whose own optima sit at c +- d: the mean's optimum has error d (their standard
    deviation over sqrt(2)); the drift's error adds the two widths' in quadrature."""
    lrs = tuple(2.0**k for k in range(-12, -3))
    spread = {32: (-7.3, 0.2), 64: (-6.8, 0.5)}
    cells = tuple(Cell("mup", w, lr, seed, (math.log2(lr) - c + (d if seed else -d)) ** 2, 0.0, 10, 0.1)
                  for w, (c, d) in spread.items() for seed in (0, 1) for lr in lrs)  # fmt: skip
    s = Grid({}, (32, 64), lrs, ("mup",), 2, cells).summary("mup")
    assert [o.log2_lr for o in s.optima] == pytest.approx([-7.3, -6.8])
    assert [o.error for o in s.optima] == pytest.approx([0.2, 0.5])
    assert s.drift_error == pytest.approx(math.hypot(0.2, 0.5))
    one_seed = Grid({}, (32, 64), lrs, ("mup",), 1, tuple(c for c in cells if c.seed == 0)).summary("mup")
    assert math.isnan(one_seed.optima[0].error) and math.isnan(one_seed.drift_error)
    table = Grid({"factory": "f", "data": "d", "batch_size": 1, "steps": 1, "optimizer": "adam", "warmup": 0,
                  "schedule": "cosine", "width_key": "width", "shape": {}, "base": 32},
                 (32, 64), lrs, ("mup",), 2, cells).table()  # fmt: skip
    assert "+- 0.20" in table and "+- 0.50" in table and "LR sens." in table


def test_mup_optimum_moves_less_than_standard():
    """The claim itself, at a size a test can afford: a GPT from width 16 to 64 on stdlib bytes."""
    text = stdlib(block_size=32)
    result = mutransfer.grid(
        GPT,
        data=text,
        widths=[16, 32, 64],
        lrs=[2.0**k for k in range(-10, -3)],
        shape={"base_d_head": 4, "block_size": 32},
        sp_shape={"base_d_head": None},
        steps=60,
        batch_size=8,
        eval_batches=4,
    )
    sp, mup = result.summary("sp"), result.summary("mup")
    assert sp.optima[0] == mup.optima[0]  # one model at the base width
    assert mup.drift + 0.5 < sp.drift, result.table()


def test_regret_comes_from_a_run_at_the_narrowest_optimum(small):
    result, _ = small
    assert result.complete
    for name in result.parametrizations:
        s = result.summary(name)
        transfer = [c for c in result.cells if c.transfer and c.parametrization == name]
        if transfer:  # the optimum fell between grid points: one run measures it at the widest width
            assert [(c.size, math.log2(c.lr)) for c in transfer] == [(128, s.transfer_log2_lr)]
            assert s.transfer_loss == transfer[0].val_loss
        assert s.regret == pytest.approx(s.transfer_loss / s.best_loss - 1)
    assert len(result.cells) == 2 * 3 * len(LRS) + sum(c.transfer for c in result.cells)


def test_table_and_json_say_the_same(small):
    result, path = small
    saved = json.loads(Path(path).read_text())
    assert saved["complete"] is True
    assert saved["summary"]["mup"]["drift"] == pytest.approx(result.summary("mup").drift)
    assert Grid.load(path) == result
    text = result.table()
    assert "drift of the optimum" in text and f"{result.summary('sp').drift:.2f} log2 units" in text


def test_a_killed_grid_resumes_without_repeating_a_cell(data, small, tmp_path):
    full, _ = small
    path = tmp_path / "grid.json"
    calls = []

    def stop_after_ten(done, total, what, left):
        calls.append(what)
        if done == 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        mutransfer.grid(MLP, data=data, path=path, progress=stop_after_ten, **SMALL)
    saved = Grid.load(path)
    assert len(saved.cells) == 10 and not saved.complete
    trained = []
    resumed = mutransfer.grid(
        MLP, data=data, path=path, progress=lambda d, t, what, left: trained.append(what), **SMALL
    )
    assert resumed.cells[:10] == saved.cells  # kept, not retrained
    assert len(trained) == len(full.cells) - 10 + 1  # one call per remaining cell, then "done"
    assert len({c.key for c in resumed.cells}) == len(resumed.cells)
    assert [c.val_loss for c in resumed.cells] == [c.val_loss for c in full.cells]  # deterministic


def test_resume_refuses_another_protocol(data, small):
    _, path = small
    with pytest.raises(mutransfer.MutransferError, match=r"steps: saved 40, now 41.*another path"):
        mutransfer.grid(MLP, data=data, path=path, **{**SMALL, "steps": 41})


def test_a_wider_lr_range_reuses_the_cells_it_has(data, small, tmp_path):
    full, path = small
    copy = tmp_path / "grid.json"
    copy.write_text(Path(path).read_text())
    trained = []
    wider = mutransfer.grid(
        MLP,
        data=data,
        path=copy,
        progress=lambda d, t, what, left: trained.append(what),
        **{**SMALL, "lrs": [*LRS, 2.0**-3]},
    )
    assert sum(what.startswith("cell") for what in trained) == 2 * 3  # only the new LR, per width
    assert wider.loss("sp", 64, LRS[2]) == full.loss("sp", 64, LRS[2])


def test_diverged_cells_are_recorded(data, tmp_path):
    result = mutransfer.grid(
        MLP,
        data=data,
        widths=[16, 32],
        lrs=[1e-2, 1e2, 1e6],
        shape=SHAPE,
        optimizer="sgd",
        steps=30,
        batch_size=16,
        eval_batches=1,
        parametrizations=["sp"],
        path=tmp_path / "g.json",
    )
    diverged = [c for c in result.cells if c.diverged]
    assert diverged and all(c.val_loss == math.inf for c in diverged)
    assert "div" in result.table()
    assert Grid.load(tmp_path / "g.json") == result  # inf is saved as null and read back
    saved = json.loads((tmp_path / "g.json").read_text())["cells"]
    assert [c["val_loss"] is None for c in saved] == [c.val_loss == math.inf for c in result.cells]


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"widths": [64]}, "at least 2 widths"),
        ({"lrs": [1e-3, 1e-2]}, "at least 3 positive learning rates"),
        ({"parametrizations": ["ntk"]}, "parametrizations"),
        ({"optimizer": "adagrad"}, "optimizer 'adagrad' is not known"),
        ({"warmup": 1.5}, "warmup is a fraction"),
    ],
)
def test_bad_input_fails_before_training(data, bad, match):
    with pytest.raises(mutransfer.MutransferError, match=match):
        mutransfer.grid(MLP, data=data, **{**SMALL, **bad})


def test_a_file_that_is_not_a_grid_is_refused(data, tmp_path):
    path = tmp_path / "grid.json"
    path.write_text('{"something": "else"}')
    with pytest.raises(mutransfer.MutransferError, match="not a grid result file"):
        mutransfer.grid(MLP, data=data, path=path, **SMALL)


def test_plot_shows_both_panels(small, tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib import image

    result, _ = small
    mutransfer.plot_grid(result, tmp_path / "grid.png")
    pixels = image.imread(tmp_path / "grid.png")
    assert pixels.shape[1] > 1.8 * pixels.shape[0]  # two panels side by side
    assert pixels[..., :3].std() > 0.05  # not blank


def test_grid_command_prints_table_writes_json_and_plot(tmp_path, capsys):
    out = tmp_path / "g.json"
    argv = ["grid", "mutransfer.models:MLP", "--data", "digits", "--widths", "16", "32", "--log2-lrs"]
    argv += ["-8", "-7", "-6", "--steps", "5", "--batch-size", "8", "--eval-batches", "1", "--json", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert "drift of the optimum" in printed.out and "from the data: in_features=64" in printed.err
    assert out.exists() and out.with_suffix(".png").exists()
    assert main(argv) == 0  # a rerun finds every cell done: no cell is announced, let alone trained
    assert "(cell " not in capsys.readouterr().err


def test_benchmark_quick_mode_runs(tmp_path):
    record, printed = run_quick("transfer", tmp_path)
    assert [m["model"] for m in record["models"]] == ["mlp", "gpt", "gpt-depth"]
    for m in record["models"]:
        assert all((tmp_path / plot).exists() for plot in m["plots"])
        sizes = m["sizes"]
        assert list(m["summaries"]) == (
            ["standard", f"CompleteP (base {sizes[0]})"]
            if m["model"] == "gpt-depth"
            else ["standard", f"muP (base {sizes[0]})", f"muP (base {sizes[-1]})"]
        )
        assert set(m["targets"]) == {"mup_drift", "sp_drift", "mup_regret", "mup_best_vs_sp_best"}
    assert "| mlp | digits |" in printed


def test_gap_benchmark_quick_mode_runs(tmp_path):
    """gap.py: a proxy sweep of the multipliers, then the grid with them at every muP width."""
    record, printed = run_quick("gap", tmp_path)
    assert set(record["multipliers"]) == {"input_mult", "output_mult"}
    assert record["multipliers"] == {k: record["sweep"]["best"][k] for k in record["multipliers"]}
    assert set(record["summary"]) == {"sp", "mup"}
    assert all((tmp_path / f"gap-quick-{f}").exists() for f in ("sweep.json", "grid.json", "grid.png"))
    assert "muP (base width 16)" in printed


def test_a_model_that_does_not_fit_the_data_gets_a_clear_error(tmp_path):
    text = stdlib(block_size=16)
    with pytest.raises(mutransfer.MutransferError, match="inputs match the data"):
        mutransfer.grid(MLP, data=text, widths=[8, 16], lrs=[1e-3, 1e-2, 1e-1], steps=2, batch_size=2)


def test_ctrl_c_in_the_command_says_how_to_resume(tmp_path, capsys, monkeypatch):
    import functools

    import mutransfer.cli.measure

    @functools.wraps(mutransfer.grid)  # the command's flags are read from its signature
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mutransfer.cli.measure, "grid", interrupted)
    code = main(["grid", "mutransfer.models:MLP", "--data", "digits", "--json", str(tmp_path / "g.json")])
    assert code == 130
    assert "rerun to resume" in capsys.readouterr().err


def test_more_seeds_reuse_seed_zero_and_drop_a_stale_transfer_run(data, small, tmp_path):
    full, path = small
    copy = tmp_path / "grid.json"
    copy.write_text(Path(path).read_text())
    two = mutransfer.grid(MLP, data=data, path=copy, **{**SMALL, "seeds": 2})
    assert two.complete and len({c.key for c in two.cells}) == len(two.cells)
    grid_cells = [c for c in full.cells if not c.transfer]
    assert [c for c in two.cells if c.seed == 0 and not c.transfer] == grid_cells
    for name in two.parametrizations:  # transfer runs only at the two-seed optimum, for both seeds
        lrs = {c.lr for c in two.cells if c.transfer and c.parametrization == name}
        assert lrs <= {2.0 ** two.summary(name).transfer_log2_lr}


def test_the_data_sets_the_vocabulary_a_factory_leaves_at_its_own_default():
    """A factory whose default vocabulary is not the data's (a GPT-2 config's 50257 tokens) is
    built with the data's 256 bytes by grids and coordinate checks, as the commands do."""
    built = []

    def make(width: int, vocab_size: int = 50257) -> GPT:
        built.append(vocab_size)
        return GPT(width=width, vocab_size=vocab_size, block_size=16, base_d_head=4)

    text = stdlib(block_size=16)
    mutransfer.grid(make, data=text, widths=[16, 32], lrs=[1e-3, 1e-2, 1e-1], steps=2, batch_size=2,
                    eval_batches=1)  # fmt: skip
    mutransfer.coord_check(make, widths=[16, 32, 64], data=text, steps=1, seeds=1, batch_size=2)
    assert built and set(built) == {256}


def test_a_per_role_grid_moves_one_roles_lr_and_holds_the_rest(data):
    """At the base LR a per-role grid's cell is the plain grid's cell, bit for bit; elsewhere only
    that role's learning rate moved (an output LR of 0 would leave the readout untouched)."""
    common = dict(widths=[16, 32], data=data, shape=SHAPE, steps=10, batch_size=16, eval_batches=2)
    lrs = [2.0**-8, 2.0**-6, 2.0**-4]
    plain = mutransfer.grid(MLP, lrs=lrs, parametrizations=["mup"], **common)
    output = mutransfer.grid(MLP, lrs=[2.0**-10, 2.0**-6, 2.0**-2], role="output", base_lr=2.0**-6, **common)
    assert output.protocol["role"] == "output" and output.parametrizations == ("mup",)
    for w in (16, 32):
        assert output.loss("mup", w, 2.0**-6) == plain.loss("mup", w, 2.0**-6)
        assert output.loss("mup", w, 2.0**-2) != plain.loss("mup", w, 2.0**-2)
    assert "width x output LR (the rest at 2^-6.00) grid" in output.table()
    with pytest.raises(mutransfer.MutransferError, match="give their LR as base_lr="):
        mutransfer.grid(MLP, lrs=lrs, role="hidden", **common)
    with pytest.raises(mutransfer.MutransferError, match="only the muP plan gives"):
        mutransfer.grid(MLP, lrs=lrs, role="hidden", base_lr=1e-3, parametrizations=["sp", "mup"], **common)
    with pytest.raises(mutransfer.MutransferError, match="role 'readout' unknown"):
        mutransfer.grid(MLP, lrs=lrs, role="readout", base_lr=1e-3, **common)


def test_the_grid_command_runs_a_per_role_grid(tmp_path, capsys):
    args = (
        "grid mutransfer.models:MLP --data digits --shape in_features=64 --widths 16 32 --lrs 0.001 0.01 0.1"
    )
    args += " --role output --base-lr 0.01 --steps 4 --eval-batches 1"
    args = [*args.split(), "--path", str(tmp_path / "g.json"), "--out", str(tmp_path / "g.png")]
    assert main(args) == 0
    assert "width x output LR (the rest at 2^-6.64) grid" in capsys.readouterr().out
    assert Grid.load(tmp_path / "g.json").protocol["role"] == "output"


def test_roles_and_slide_benchmarks_quick_mode_run(tmp_path):
    record, printed = run_quick("roles", tmp_path)
    assert set(record["models"]) == {"gpt", "llama", "own"}
    gpt = record["models"]["gpt"]
    assert set(gpt["roles"]) == {"input", "hidden", "output", "vector"}
    assert set(gpt["update_exponents"]) == {"input", "hidden", "output", "vector"}
    assert "global slope" in printed
    run_quick("unit_scaled", tmp_path, "--parts", "grids")  # its u-muP grid: the same protocol
    slide, _ = run_quick("slide", tmp_path)  # the held-out check reads roles.py's grids
    ways = slide["models"]["gpt"]["ways"]
    assert set(ways) >= {
        "muP, plain reuse",
        "muP + global width fit",
        "muP + per-role fit",
        "u-muP, plain reuse",
    }
    assert all(w["regret"] >= 0 for w in ways.values())
