"""Monitors of instabilities (attention logits, log Z, updates, gradients), the z-loss and
qk-layernorm: each measured value against its own computation, and the options as off-by-default."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import mutransfer
from mutransfer.cli import main
from mutransfer.data import digits, stdlib
from mutransfer.grid import Cell, Grid
from mutransfer.losses import cross_entropy, log_z, with_z_loss
from mutransfer.models import GPT, MLP, Llama
from mutransfer.monitor import Monitor, first_to_rise
from mutransfer.train import train
from quick_benchmarks import run_quick


class _OneHead(nn.Module):
    """Attention written with SDPA at a known scale, then a readout: every monitor has a value
    computable by hand."""

    def __init__(self, width: int = 8, classes: int = 5, scale: float = 0.7) -> None:
        super().__init__()
        self.q, self.k, self.out, self.scale = (
            nn.Linear(4, width),
            nn.Linear(4, width),
            nn.Linear(width, classes),
            scale,
        )

    def queries_keys(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.q(x).unsqueeze(1), self.k(x).unsqueeze(1)  # (B, 1, T, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k = self.queries_keys(x)
        return self.out(F.scaled_dot_product_attention(q, k, k, scale=self.scale).squeeze(1))


def test_each_monitor_equals_its_own_computation():
    torch.manual_seed(0)
    model, x, y = _OneHead(), torch.randn(3, 6, 4), torch.randint(0, 5, (3, 6))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with torch.no_grad():
        q, k = model.queries_keys(x)
        logits = (0.7 * q @ k.transpose(-2, -1)).abs().max().item()
        z = torch.logsumexp(model(x), -1).mean().item()
    before = [p.detach().clone() for p in model.parameters()]
    with Monitor(model, optimizer, every=2) as monitor:
        for _ in range(3):  # steps 0, 1, 2: recorded at 0 and 2
            loss = cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            if monitor.step == 0:
                grads = [p.grad.clone() for p in model.parameters()]
            optimizer.step()
    assert monitor.steps == [0, 2]
    series = monitor.series
    assert series["attention/"][0] == pytest.approx(logits, rel=1e-5)  # the root module ran it
    assert series["output/log_z"][0] == pytest.approx(z, rel=1e-5)

    def rms(ts):
        return math.sqrt(sum(float(t.pow(2).sum()) for t in ts) / sum(t.numel() for t in ts))

    assert series["grad/group0"][0] == pytest.approx(rms(grads), rel=1e-5)
    assert series["update/group0"][0] == pytest.approx(0.1 * rms(grads) / rms(before), rel=1e-4)
    assert not model._forward_hooks and not model._forward_pre_hooks  # closed: nothing left behind


def test_a_monitored_run_trains_exactly_as_an_unmonitored_one():
    data = digits()

    def run(every: int):
        torch.manual_seed(0)
        model = MLP(width=32, in_features=64)
        return train(model, torch.optim.Adam(model.parameters(), lr=1e-2), data, steps=12, batch_size=16,
                     eval_batches=2, monitor_every=every)  # fmt: skip

    plain, watched = run(0), run(4)
    assert plain.val_loss == watched.val_loss and plain.curve == watched.curve
    assert plain.monitors == {} and watched.monitors["steps"] == [0, 4, 8]
    assert set(watched.monitors["eps"]) == {"group0"}  # Adam's epsilon, to compare gradients with


def test_first_to_rise_names_the_earliest_tenfold_rise():
    steps = [0, 10, 20, 30]
    series = {
        "attention/blocks.1.attn": [2.0, 3.0, 25.0, 300.0],  # 10x at step 20
        "output/log_z": [5.0, 5.0, 6.0, 80.0],  # 10x only at step 30, though larger
        "grad/hidden": [1e-3, math.nan, 1e-3, 1e-3],
    }
    assert (
        first_to_rise(steps, series) == "attention logits in blocks.1.attn reached 25 at step 20, 12x step 0"
    )
    calm = first_to_rise(steps, {"output/log_z": [5.0, 6.0, 7.5, 7.0]})
    assert calm == "no monitor rose 10x; the most: the output's log Z reached 7.5 at step 20, 2x step 0"


def test_a_diverged_run_says_which_monitor_rose_first():
    torch.manual_seed(0)
    model = GPT(width=32, block_size=16)
    run = train(model, torch.optim.SGD(model.parameters(), lr=100.0), stdlib(block_size=16), steps=30,
                batch_size=8, eval_batches=1, monitor_every=1)  # fmt: skip
    assert run.diverged.startswith("training loss nan") and "; before it, attention logits in" in run.diverged
    assert run.monitors["steps"][0] == 0 and run.val_loss == math.inf


def test_z_loss_adds_its_weight_times_log_z_squared_and_holds_log_z_down():
    torch.manual_seed(0)
    output, target = 3 * torch.randn(4, 7, 11), torch.randint(0, 11, (4, 7))
    expected = cross_entropy(output, target) + 1e-2 * torch.logsumexp(output, -1).pow(2).mean()
    assert with_z_loss(cross_entropy, 1e-2)(output, target).item() == pytest.approx(expected.item())
    assert with_z_loss(cross_entropy, 0.0) is cross_entropy
    data = stdlib(block_size=16)

    def final_log_z(weight: float) -> float:
        torch.manual_seed(0)
        model = GPT(width=32, block_size=16)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        train(model, optimizer, data, steps=40, batch_size=8, eval_batches=1, z_loss=weight)
        x, _ = data.batch(0, 8, seed=0)
        with torch.no_grad():
            return log_z(model(x)).abs().mean().item()

    assert final_log_z(1.0) < 0.1 * final_log_z(0.0)  # a strong z-loss holds log Z near 0 (5.9 without)


@pytest.mark.parametrize("factory", [GPT, Llama])
def test_qk_norm_bounds_the_logits_and_its_gains_are_vectors(factory):
    shape = {"block_size": 16, "base_d_head": 8, "qk_norm": True}
    plan = mutransfer.plan(factory, base={"width": 32, **shape}, target={"width": 64, **shape})
    assert {plan.roles()[f"blocks.0.attn.{n}_norm.weight"] for n in "qk"} == {"vector"}
    torch.manual_seed(0)
    model = factory(width=64, **shape)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    with Monitor(model, optimizer) as monitor:
        for module in model.modules():  # huge queries and keys: normalised, they cannot matter
            if isinstance(module, nn.Linear) and module.out_features >= 64:
                module.weight.data.mul_(100)
        model(torch.randint(0, 256, (2, 16))).sum().backward()
        optimizer.step()
    d_head, scale = 16, model.blocks[0].attn.scale  # 4 heads at width 64; muP's sqrt(8) / 16
    largest = max(v[0] for k, v in monitor.series.items() if k.startswith("attention/"))
    assert largest <= scale * d_head * 1.0001  # |q.k| <= |q||k| = d_head for unit-RMS rows
    assert not hasattr(factory(width=32, block_size=16), "q_norm")  # off by default
    assert factory(width=32, block_size=16).blocks[0].attn.q_norm is None


def test_a_grid_keeps_each_cells_monitors_through_its_file(tmp_path):
    path = tmp_path / "grid.json"
    result = mutransfer.grid(MLP, widths=[16, 32], lrs=[1e-3, 1e-2, 1e-1], data=digits(),
                             shape={"in_features": 64}, steps=8, batch_size=16, eval_batches=2,
                             monitor_every=4, z_loss=1e-4, path=path)  # fmt: skip
    assert all(c.monitors["steps"] == [0, 4] for c in result.cells)
    assert Grid.load(path).cells == result.cells
    assert result.protocol["z_loss"] == 1e-4
    assert "z_loss" not in mutransfer.grid(MLP, widths=[16, 32], lrs=[1e-3, 1e-2, 1e-1], data=digits(),
                                           shape={"in_features": 64}, steps=2, batch_size=16,
                                           eval_batches=1).protocol  # fmt: skip


def _monitored_grid(attention: dict[int, float], diverged_peak: float | None = None) -> Grid:
    """A grid whose monitors are given: at lr 2^-6 each width's attention logits peak at
    ``attention[width]``, its hidden gradient RMS is 1e-3 * (32 / width)**2 and Adam's epsilon
    1e-8 * 32 / width (muP's, for hidden tensors); optionally a run at
    lr 2^-2 that diverged with the attention rising from 1 to ``diverged_peak``."""
    cells = []
    for w, peak in attention.items():
        for k, loss in ((-8, 3.0), (-6, 2.0), (-4, 2.5), (-2, 2.9)):
            series = {"attention/blocks.0.attn": [1.0, peak], "grad/hidden": [1e-2, 1e-3 * (32 / w) ** 2]}
            diverged = ""
            if k == -2 and diverged_peak is not None:
                series["attention/blocks.0.attn"], diverged, loss = (
                    [1.0, diverged_peak],
                    "loss nan at step 9",
                    math.inf,
                )
            monitors = {"every": 5, "steps": [0, 5], "series": series, "eps": {"hidden": 1e-8 * 32 / w}}
            cells.append(Cell("mup", w, 2.0**k, 0, loss, loss, 10, 0.1, diverged, monitors=monitors))
    return Grid({}, tuple(attention), tuple(2.0**k for k in (-8, -6, -4, -2)), ("mup",), 1, tuple(cells))


def test_forecast_fits_each_monitor_and_checks_itself_on_the_widest():
    grid = _monitored_grid({32: 2.0, 64: 4.0, 128: 8.0})  # attention peak doubling with width
    found = mutransfer.forecast(grid, 1024)
    assert found.lr == 2.0**-6  # nearest the narrowest width's optimum
    attention = next(f for f in found.items if f.monitor == "attention/blocks.0.attn")
    assert attention.statistic == "peak" and attention.exponent == pytest.approx(1.0)
    assert attention.predicted == pytest.approx(64.0) and attention.held_out_error == pytest.approx(0.0)
    grad = next(f for f in found.items if f.monitor == "grad/hidden")
    assert grad.statistic == "last" and grad.exponent == pytest.approx(-2.0)
    # the level is 10x epsilon at the target, extrapolated as muP scales it: 10 * 1e-8 * 32/1024
    assert grad.level == pytest.approx(10 * 1e-8 * 32 / 1024) and not found.warnings
    assert "width 1024" in found.text() and "+0%" in found.text()


def test_forecast_warns_where_a_smaller_run_diverged_and_when_gradients_near_epsilon():
    grid = _monitored_grid({32: 2.0, 64: 4.0, 128: 8.0}, diverged_peak=40.0)
    assert not mutransfer.forecast(grid, 256).warnings  # 16 < 40
    far = mutransfer.forecast(grid, 1024)  # 64 >= 40: the level a smaller run diverged at
    assert any("attention/blocks.0.attn" in w and "qk-layernorm" in w for w in far.warnings)
    tiny = mutransfer.forecast(grid, 2**20)  # gradient 1e-3 / 2^30 = 9e-13 < 10 eps = 3e-12
    assert any(w.startswith("grad/hidden") and "epsilon" in w for w in tiny.warnings)


def test_forecast_refuses_a_grid_without_monitors_and_names_the_flag(tmp_path):
    plain = Grid({}, (32, 64), (1e-3,), ("mup",), 1, (Cell("mup", 32, 1e-3, 0, 2.0, 2.0, 1, 0.1),))
    with pytest.raises(mutransfer.MutransferError, match="--monitor-every"):
        mutransfer.forecast(plain, 256)
    path = tmp_path / "g.json"
    _monitored_grid({32: 2.0, 64: 4.0, 128: 8.0}, diverged_peak=40.0).save(path)
    assert main(["forecast", str(path), "--to", "1024"]) == 1  # a warning: exit status 1
    assert main(["predict", str(path), "--to", "256", "--json", str(tmp_path / "f.json")]) == 0
    assert json.loads((tmp_path / "f.json").read_text())["size"] == 256


def test_stability_benchmark_quick_mode_runs(tmp_path):
    record, printed = run_quick("stability", tmp_path)
    assert set(record["variants"]) == {"none", "qk", "z", "qk+z"}
    row = record["rows"]["qk mup 32"]
    assert row["sensitivity"] >= 0 and row["lrs"] == 3
    # at lr 2^0 the attention logits without qk-layernorm dwarf those with it
    assert (
        record["rows"]["none sp 32"]["attention_logit_max_by_lr"]["0"]
        > 10 * row["attention_logit_max_by_lr"]["0"]
    )
    assert (tmp_path / "stability-quick.png").exists() and "first diverged" in printed


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_a_hugging_face_models_attention_is_monitored_either_way(implementation):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=32,
                                     bos_token_id=0, eos_token_id=0,
                                     attn_implementation=implementation)  # fmt: skip
    model = transformers.GPT2LMHeadModel(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with Monitor(model, optimizer, every=1) as monitor:
        model(torch.randint(0, 64, (2, 16))).logits.sum().backward()
        optimizer.step()
    assert {"attention/transformer.h.0.attn", "attention/transformer.h.1.attn", "output/log_z"} <= set(
        monitor.series
    )


def test_under_a_plan_gradients_and_updates_are_per_role_at_every_width():
    """At the base width a plan's groups merge (every multiplier is 1), wider they split: the
    monitors are named by role, so a forecast finds the same names at every width."""
    data = stdlib(block_size=16)
    names = []
    for width in (32, 64):
        shape = {"block_size": 16, "base_d_head": 8}
        base = {"width": 32, **shape}
        plan = mutransfer.plan(GPT, base=base, target={**base, "width": width}, probe={**base, "width": 64})
        model = plan.init_(GPT(width=width, **shape))
        optimizer = torch.optim.Adam(plan.param_groups(model, lr=1e-3))
        run = train(model, optimizer, data, steps=2, batch_size=4, eval_batches=1, monitor_every=1)
        names.append(sorted(k for k in run.monitors["series"] if k.startswith(("grad/", "update/"))))
        assert run.monitors["eps"]["hidden"] == pytest.approx(1e-8 * 32 / width)  # muP's Adam epsilon
    assert len(optimizer.param_groups) > 1 and names[0] == names[1]
    assert names[0] == [
        f"{k}/{r}" for k in ("grad", "update") for r in ("hidden", "input", "output", "vector")
    ]


def test_a_hugging_face_familys_own_qk_norm_gains_are_vectors():
    transformers = pytest.importorskip("transformers")
    config = transformers.Qwen3Config(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                      vocab_size=128, max_position_embeddings=64)  # fmt: skip
    from mutransfer import hf  # needs transformers

    plan = mutransfer.plan(hf.factory(config), base={"width": 64}, target={"width": 128})
    assert {plan.roles()[f"model.layers.0.self_attn.{n}_norm.weight"] for n in "qk"} == {"vector"}


@pytest.mark.parametrize("every", [0, -1, 2.5, True])
def test_a_monitor_refuses_a_bad_interval_and_a_grid_a_bad_monitor_every(every):
    model = MLP(width=8, in_features=4)
    with pytest.raises(mutransfer.MutransferError, match="every must be an int >= 1"):
        Monitor(model, torch.optim.SGD(model.parameters(), lr=0.1), every=every)
    if every != 0:  # 0 is "off" for a grid
        with pytest.raises(mutransfer.MutransferError, match="monitor_every must be an int >= 0"):
            mutransfer.grid(MLP, widths=[8, 16], lrs=[1e-3, 1e-2, 1e-1], data=digits(), monitor_every=every)


def test_a_grid_table_says_what_rose_first_in_its_lowest_diverged_cell():
    result = mutransfer.grid(GPT, widths=[16, 32], lrs=[1e-3, 1e-2, 100.0], data=stdlib(block_size=16),
                             shape={"block_size": 16}, parametrizations=["sp"], optimizer="sgd", steps=10,
                             batch_size=4, eval_batches=1, monitor_every=1)  # fmt: skip
    table = result.table()
    assert "standard, width 16, lr 2^6.64386: training loss nan" in table and "; before it, " in table
