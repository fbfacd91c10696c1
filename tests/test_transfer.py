"""From the proxy's best trial to the target's settings: values, plan, param groups, cost, file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import mutransfer
from mutransfer.cli import main
from mutransfer.data import digits
from mutransfer.errors import MutransferError
from mutransfer.models import GPT, MLP
from mutransfer.sweep import Range, SweepConfig, open_study, status
from mutransfer.sweep.experiment import Experiment
from mutransfer.train import cross_entropy
from quick_benchmarks import run_quick
from sweep_helpers import gpt_config, mlp_config


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    config = mlp_config(
        tmp_path_factory.mktemp("transfer"),
        trials=5,
        target_steps=1000,
        space={"lr": Range(1e-3, 0.1, log=True), "output_mult": [0.5, 2.0], "warmup": 0.05},
    )
    mutransfer.sweep(config)
    return config


def test_transfer_carries_the_best_values_through_the_target_plan(swept):
    t = mutransfer.transfer(swept)
    best = status(open_study(swept), 5)
    assert t.hparams == {"warmup": 0.05, **best.best_params}
    assert t.shape == {"in_features": 64, "out_features": 10, "width": 256}
    assert t.plan.width_multiplier == 8 and t.source["trial"] == best.best_number
    model = t.init_(MLP(**t.shape))
    groups = {tuple(g["roles"]): g["lr"] for g in t.param_groups(model)}
    lr, mult = t.hparams["lr"], t.hparams["output_mult"]
    assert groups[("hidden",)] == pytest.approx(lr / 8)  # muP: hidden LR / width multiplier
    assert groups[("output",)] == pytest.approx(lr * mult / 8)  # and the tuned output multiplier


def test_standard_transfer_copies_the_values_unchanged(swept):
    t = mutransfer.transfer(swept, parametrization="sp")
    assert t.plan.is_identity
    model = t.init_(MLP(**t.shape))
    lr, mult = t.hparams["lr"], t.hparams["output_mult"]
    for group in t.param_groups(model):  # no width factor anywhere; only the tuned multiplier
        assert group["lr"] == pytest.approx(lr * mult if group["roles"] == ["output"] else lr)


def test_cost_is_the_proxy_compute_over_one_target_run(swept):
    t = mutransfer.transfer(swept)
    trials = open_study(swept).get_trials()
    assert t.cost.proxy_flops == pytest.approx(sum(x.user_attrs["flops"] for x in trials))
    assert t.cost.target_steps == 1000
    # counted op by op: exactly what the flop counter reads for one step of the target, which for
    # an MLP is about 6 x params x batch (forward + backward)
    assert t.cost.flops_counted_by == "flop counter" and "estimated" not in t.cost.line()
    x, y = digits().batch(0, 32, seed=0)
    with FlopCounterMode(display=False) as counter:
        cross_entropy(MLP(**t.shape)(x), y).backward()
    assert t.cost.target_flops == 1000 * counter.get_total_flops()
    params = sum(p.numel() for p in MLP(**t.shape).parameters())
    assert t.cost.target_flops == pytest.approx(1000 * 6 * params * 32, rel=0.1)
    assert 0 < t.cost.fraction == pytest.approx(t.cost.proxy_flops / t.cost.target_flops)


def test_flops_a_model_keeps_from_the_counter_are_estimated_and_said_so(tmp_path):
    config = mlp_config(tmp_path, factory="sweep_helpers:mlp_reading_a_value", trials=1, steps=5)
    experiment = Experiment(config)
    how = experiment.flops_counted_by(experiment.target)
    assert how.startswith("estimated as 6 x parameters x examples: the meta device could not run")
    assert "item" in how  # the reason is the model's, not a shape the test got wrong
    params = sum(p.numel() for p in MLP(**experiment.target).parameters())
    assert experiment.flops_per_step(experiment.target) == 6 * params * config.batch_size
    mutransfer.sweep(config)
    t = mutransfer.transfer(config)
    assert t.cost.flops_counted_by == how and "FLOPs estimated as 6 x parameters" in t.cost.line()
    assert mutransfer.Transfer.from_dict(t.to_dict()).cost == t.cost


def test_the_file_round_trips_and_builds_a_trainable_target(swept, tmp_path):
    t = mutransfer.transfer(swept)
    t.save(tmp_path / "target.json")
    loaded = mutransfer.load_transfer(tmp_path / "target.json")
    assert loaded.to_dict() == t.to_dict()
    model, opt = loaded.build(seed=0)
    ref_model, ref_opt = t.build(seed=0)
    for a, b in zip(model.parameters(), ref_model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in ref_opt.param_groups]
    run = mutransfer.train.train(
        model, opt, mutransfer.data.digits(), steps=60, batch_size=32, eval_batches=4
    )
    assert run.val_loss < 1.0


def test_sweep_on_a_shallow_proxy_transfers_to_a_deeper_wider_target(tmp_path):
    """A GPT tuned at width 16 with 1 block goes to width 64 with 4 blocks: CompleteP on top of muP."""
    config = gpt_config(
        tmp_path,
        proxy={"width": 16, "depth": 1},
        target={"width": 64, "depth": 4},
        depth="depth",
        residual=list(GPT.residual),
    )
    mutransfer.sweep(config)
    t = mutransfer.transfer(config)
    assert t.plan.width_multiplier == 4 and t.plan.depth.multiplier == 4
    assert "width x4, depth x4 from the base" in t.summary()
    model = t.init_(GPT(**t.shape))
    lrs = {
        n: g["lr"]
        for g in t.param_groups(model)
        for p in g["params"]
        for n, q in model.named_parameters()
        if p is q
    }
    lr = t.hparams["lr"]
    assert lrs["blocks.3.fc.weight"] == pytest.approx(lr / 4)  # width 1/m; alpha 1: no depth factor
    assert lrs["blocks.3.fc_proj.weight"] == pytest.approx(lr / 16)  # and the absorbed 1/m_L
    assert lrs["lm_head.weight"] == pytest.approx(lr / 4)
    loaded = mutransfer.load_transfer(t.save(tmp_path / "deep.json") or tmp_path / "deep.json")
    assert loaded.plan == t.plan


def test_sp_shape_builds_the_standard_model_only_in_standard_parametrization(tmp_path):
    """The GPT's muP attention (base_d_head) is a factory keyword: a standard transfer must
    build the standard model (1/sqrt(d) attention), a muP one the muP model, from one study."""
    config = gpt_config(tmp_path, shape={"depth": 1, "base_d_head": 4}, sp_shape={"base_d_head": None})
    mutransfer.sweep(config)
    mup, sp = mutransfer.transfer(config), mutransfer.transfer(config, parametrization="sp")
    assert mup.shape["base_d_head"] == 4 and sp.shape["base_d_head"] is None
    assert sp.hparams == mup.hparams
    assert GPT(**sp.shape).blocks[0].attn.scale == pytest.approx(1 / 4)  # 1/sqrt(16)
    assert GPT(**mup.shape).blocks[0].attn.scale == pytest.approx(2 / 16)  # sqrt(4)/16
    # the standard parametrization's own sweep trains the standard model, and says so in its protocol
    standard = config.with_overrides(parametrization="sp", study="standard")
    mutransfer.sweep(standard)
    assert open_study(standard).user_attrs["mutransfer"]["sp_shape"] == {"base_d_head": None}
    assert mutransfer.transfer(standard).shape["base_d_head"] is None


def test_depth_settings_are_checked_with_the_rest():
    with pytest.raises(MutransferError) as caught:
        mlp_config(Path("."), depth="depth", alpha=2.0)
    text = str(caught.value)
    assert "residual: depth needs the residual branches" in text and "alpha: must lie in [0.5, 1]" in text


def test_transfer_without_trials_and_missing_files_say_what_to_do(tmp_path):
    empty = SweepConfig(
        factory="mutransfer.models:MLP",
        data="digits",
        proxy={"width": 32},
        target={"width": 64},
        storage=str(tmp_path / "empty.journal"),
    )
    with pytest.raises(MutransferError, match="run mutransfer sweep CONFIG first"):
        mutransfer.transfer(empty)
    with pytest.raises(MutransferError, match="run mutransfer transfer CONFIG first"):
        mutransfer.load_transfer(tmp_path / "nothing.json")


def test_sweep_and_transfer_commands(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mlp.toml").write_text(
        'factory = "mutransfer.models:MLP"\ndata = "digits"\nproxy = { width = 32 }\n'
        "target = { width = 128 }\nsteps = 40\neval_batches = 4\ntrials = 3\n"
        "[space]\nlr = { low = 0.001, high = 0.1, log = true }\n"
    )
    assert main(["sweep", "mlp.toml"]) == 0
    out = capsys.readouterr().out
    assert "3/3 trials" in out and "next: mutransfer transfer mlp.toml" in out
    assert main(["transfer", "mlp.toml"]) == 0
    out = capsys.readouterr().out
    assert "tuning cost: 3 proxy trials" in out and "of one target run" in out
    saved = json.loads((tmp_path / "mlp-target.json").read_text())
    assert saved["shape"]["width"] == 128 and saved["plan"]["width_multiplier"] == 4
    assert main(["validate", "mlp.toml"]) == 0
    try:
        import optuna_dashboard  # noqa: F401
    except ImportError:  # not installed here: the command says how to get it
        assert main(["dashboard", "mlp.toml"]) == 2
        assert "pip install optuna-dashboard" in capsys.readouterr().err


def test_pruning_benchmark_quick(tmp_path):
    record, printed = run_quick("pruning", tmp_path, "--orders", "1")
    assert [(r["reduction"], r["rungs"]) for r in record["halving"]] == [
        (2, 1),
        (3, 1),
        (4, 1),
        (2, 2),
        (3, 2),
        (4, 2),
    ]
    for r in record["halving"]:
        assert 0 < r["flops_fraction"] < 1 and r["pruned_trials"] > 0
    assert "best log2 LR per width, full grid" in printed


def test_sweep_transfer_benchmark_quick(tmp_path):
    rows = run_quick("sweep_transfer", tmp_path)[0]["rows"]
    assert [r["method"] for r in rows] == [
        "muP, tuned multipliers",
        "muP, LR only",
        "standard, LR copied",
        "standard, tuned at the target",
    ]
    assert all(r["target_loss"] > 0 for r in rows) and rows[-1]["vs_tuned_at_target"] == 0
