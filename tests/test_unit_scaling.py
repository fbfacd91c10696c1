"""u-muP: the unit-scaled ops, the plan's absolute rules, and the parametrization through the commands."""

import math
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import mutransfer
from mutransfer import unit
from mutransfer.errors import MutransferError, MutransferWarning
from mutransfer.models import GPT, Llama
from mutransfer.scaling.plan import Plan, load_plan
from mutransfer.sweep.config import SweepConfig
from mutransfer.sweep.space import Range


def _quiet_plan(*args, **kwargs) -> Plan:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MutransferWarning)
        return mutransfer.plan(*args, **kwargs)


# ---- the ops -----------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [F.gelu, F.silu, F.relu])
@pytest.mark.parametrize("alpha", [0.5, 1.0, 3.0])
def test_a_unit_activation_gives_a_unit_gaussian_a_unit_output(fn, alpha):
    x = torch.randn(400_000, generator=torch.Generator().manual_seed(0))
    assert unit.activation(x, fn, alpha).std().item() == pytest.approx(1.0, abs=0.01)
    assert unit.glu(torch.randn(400_000), x, fn, alpha).std().item() == pytest.approx(1.0, abs=0.01)


def test_gelus_std_is_the_known_constant():
    mean, rms = unit.gaussian_moments(F.gelu)
    assert math.sqrt(rms**2 - mean**2) == pytest.approx(0.588, abs=1e-3)


def test_a_residual_keeps_a_unit_stream_and_cuts_the_branch_gradient():
    x = torch.randn(200_000, requires_grad=True)
    noise = torch.randn(200_000)
    assert unit.residual(x, lambda h: noise + 0 * h, tau=0.5).std().item() == pytest.approx(1.0, abs=0.01)
    seen = []

    def branch(h):
        h.register_hook(seen.append)
        return h * 1.0

    x.grad = None
    unit.residual(x, branch, tau=0.5).backward(torch.ones(200_000))
    share = 0.5 / math.sqrt(1.25)
    assert seen[0][0].item() == pytest.approx(1.0)  # the branch sees a unit gradient, not share
    assert x.grad[0].item() == pytest.approx(1 / math.sqrt(1.25) + share)  # the stream's is the true one


def test_the_residual_rule_gives_equal_thirds_at_the_defaults():
    taus = unit.residual_taus(4)
    total, attn, mlp = 4.0, 0.0, 0.0  # the embedding brings `blocks` units
    for i, tau in enumerate(taus):
        share = tau**2 * total  # the branch's unnormalised variance
        attn, mlp = (attn + share, mlp) if i % 2 == 0 else (attn, mlp + share)
        total += share
    assert attn == pytest.approx(4.0) and mlp == pytest.approx(4.0)
    ratio = unit.residual_taus(4, alpha_res_attn_ratio=2.0)
    assert ratio[0] > taus[0] > ratio[1]


def test_the_loss_input_scales_forward_by_alpha_and_makes_the_gradient_unit():
    logits = torch.zeros(64, 256, requires_grad=True)
    loss = F.cross_entropy(unit.loss_input(logits, alpha=2.0), torch.zeros(64, dtype=torch.long))
    loss.backward()
    assert loss.item() == pytest.approx(math.log(256), rel=1e-5)  # alpha * 0 = 0: uniform
    assert logits.grad.pow(2).mean().sqrt().item() == pytest.approx(1.0, rel=0.01)


def test_alphas_away_from_one_need_the_unit_scaled_model():
    with pytest.raises(ValueError, match="unit_scaled=True"):
        GPT(width=32, alpha_attn=2.0)
    assert GPT(width=32, unit_scaled=True, alpha_attn=2.0).blocks[0].attn.scale == pytest.approx(2.0 / 8)


# ---- the plan's rules --------------------------------------------------------------------------
def test_the_u_mup_plan_states_its_table_on_the_gpt():
    plan = _quiet_plan(GPT, target={"width": 128, "unit_scaled": True}, parametrization="u-mup")
    factors = {p.name: plan.factors(p)[1].lr for p in plan.params}
    assert factors["wte.weight"] == pytest.approx(128**-0.5)  # u-muP's embedding rule: 1/sqrt(width)
    assert factors["blocks.0.fc.weight"] == pytest.approx(128**-0.5)  # hidden: 1/sqrt(fan_in)
    assert factors["blocks.0.fc_proj.weight"] == pytest.approx(512**-0.5)
    assert factors["lm_head.weight"] == 1.0 and factors["ln_f.weight"] == 1.0
    text = plan.summary()
    assert "u-muP plan" in text and "0.007812 (hook)" in text  # the readout's 1/fan_in
    assert load_plan_roundtrip(plan).parametrization == "u-mup"


def load_plan_roundtrip(plan: Plan) -> Plan:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        plan.save(f"{d}/p.json")
        return load_plan(f"{d}/p.json")


def test_u_mup_inits_every_weight_at_unit_scale_and_zeroes_biases():
    torch.manual_seed(0)
    plan = _quiet_plan(GPT, target={"width": 128, "unit_scaled": True}, parametrization="u-mup")
    model = plan.init_(GPT(width=128, unit_scaled=True))
    assert model.blocks[0].fc.weight.std().item() == pytest.approx(1.0, abs=0.02)
    assert model.wte.weight.std().item() == pytest.approx(1.0, abs=0.02)
    assert model.blocks[0].fc.bias.abs().max().item() == 0.0
    assert model.ln_f.weight.eq(1).all()


@pytest.mark.parametrize("factory", [GPT, Llama])
def test_the_unit_scaled_models_start_with_unit_activations_and_gradients(factory):
    for width in (64, 256):
        torch.manual_seed(0)
        shape = {"width": width, "unit_scaled": True, "block_size": 32}
        plan = _quiet_plan(factory, base={**shape, "width": 32}, target=shape, parametrization="u-mup")
        model = plan.init_(factory(**shape))
        seen: dict[str, float] = {}

        def record(module, args, out, name, seen=seen):
            seen[name] = out.std().item()

        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and name != "lm_head":
                module.register_forward_hook(lambda m, a, o, n=name, r=record: r(m, a, o, n))
        idx = torch.randint(0, 256, (4, 32))
        F.cross_entropy(model(idx).flatten(0, 1), idx.flatten()).backward()
        assert all(0.5 < v < 2.0 for v in seen.values()), seen
        grads = [p.grad.pow(2).mean().sqrt().item() for n, p in model.named_parameters() if p.dim() == 2]
        # near 1 (queries less: near-flat attention at init passes them little), not 1e-4 as plain models'
        assert all(0.03 < g < 30 for g in grads), grads


def test_a_tensor_no_hook_can_scale_is_folded_and_trains_as_if_hooked():
    class Raw(nn.Module):  # the hidden matrix as a raw parameter: no Linear to hook
        def __init__(self, width: int = 16):
            super().__init__()
            self.inp = nn.Linear(4, width)
            self.hidden = nn.Parameter(torch.empty(width, width))
            self.out = nn.Linear(width, 3, bias=False)

        def forward(self, x):
            return self.out(torch.relu(F.linear(torch.relu(self.inp(x)), self.hidden)))

    class Hooked(Raw):
        def __init__(self, width: int = 16):
            super().__init__(width)
            del self.hidden
            self.hidden = nn.Linear(width, width, bias=False)

        def forward(self, x):
            return self.out(torch.relu(self.hidden(torch.relu(self.inp(x)))))

    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    losses = {}
    for factory in (Raw, Hooked):
        plan = _quiet_plan(factory, base={"width": 8}, target={"width": 16}, parametrization="u-mup")
        torch.manual_seed(0)
        model = factory(16)
        plan.init_(model)
        if factory is Raw:
            assert plan.notes and "folded" in plan.notes[-1]
            assert model.hidden.std().item() == pytest.approx(16**-0.5, rel=0.2)
        else:  # the same draw, scaled as the fold does, so both start from one function
            with torch.no_grad():
                torch.manual_seed(0)
                ref = Raw(16)
                _quiet_plan(Raw, base={"width": 8}, target={"width": 16}, parametrization="u-mup").init_(ref)
                model.hidden.weight.copy_(ref.hidden * 16**0.5)
                model.inp.load_state_dict(ref.inp.state_dict())
                model.out.load_state_dict(ref.out.state_dict())
        opt = torch.optim.Adam(plan.param_groups(model, lr=0.05))
        run = []
        for _ in range(20):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.append(loss.item())
        losses[factory.__name__] = run
    assert losses["Raw"] == pytest.approx(losses["Hooked"], rel=1e-4)


def test_u_mup_refuses_sgd_and_depth_and_warns_on_a_model_it_cannot_unit_scale():
    plan = _quiet_plan(GPT, target={"width": 64, "unit_scaled": True}, parametrization="u-mup")
    with pytest.raises(MutransferError, match="Adam"):
        plan.param_groups(GPT(width=64, unit_scaled=True), lr=1.0, optimizer_family="sgd")
    with pytest.raises(MutransferError, match="depth"):
        mutransfer.plan(GPT, target={"width": 64, "depth": 4}, depth="depth", parametrization="u-mup")
    with pytest.warns(MutransferWarning, match="not unit-scaled"):
        mutransfer.plan(GPT, target={"width": 64}, parametrization="u-mup")
    with pytest.raises(MutransferError, match="second width"):
        mutransfer.plan(GPT, target={"width": 64, "block_size": 32}, parametrization="u-mup")


# ---- through the commands ----------------------------------------------------------------------
def test_the_coordinate_check_passes_u_mup_on_the_gpt_judging_the_embedding_by_its_own_law():
    data = mutransfer.data.shakespeare(block_size=16)
    (check,) = mutransfer.coord_check(
        GPT, widths=[32, 64, 128], data=data, lr=2**-2, steps=3, seeds=1, batch_size=4,
        parametrizations=["u-mup"], shape={"depth": 1},
    )  # fmt: skip
    assert check.passed, check.table()
    assert "wte" in check.settings["expected"] and "own law" in check.table()


def test_a_grid_trains_u_mup_beside_mup_and_the_unit_model_is_built():
    data = mutransfer.data.shakespeare(block_size=16)
    result = mutransfer.grid(
        GPT, widths=[32, 64], lrs=[2**-6, 2**-3, 2**0], data=data, steps=4, batch_size=4, eval_batches=2,
        parametrizations=["mup", "u-mup"], shape={"depth": 1},
    )  # fmt: skip
    assert result.parametrizations == ("mup", "u-mup")
    assert "u-muP" in result.table()
    assert result.loss("u-mup", 64, 2**-3) != result.loss("mup", 64, 2**-3)


def test_a_sweep_config_refuses_alphas_outside_u_mup():
    with pytest.raises(MutransferError, match="u-mup"):
        SweepConfig(factory=GPT, proxy={"width": 32}, target={"width": 64}, data="shakespeare",
                    space={"lr": Range(1e-3, 1e-1, log=True), "alpha_attn": Range(0.5, 2.0)})  # fmt: skip


def test_a_grid_in_simulated_fp8_casts_and_records_it(monkeypatch):
    from mutransfer import fp8

    modes = []
    real = fp8.simulated_fp8

    def spy(enabled=True, **kw):
        mode = real(enabled, **kw)
        modes.append(mode)
        return mode

    monkeypatch.setattr("mutransfer.train.simulated_fp8", spy)
    data = mutransfer.data.shakespeare(block_size=16)
    kwargs = dict(
        widths=[32, 64], lrs=[2**-6, 2**-4, 2**-2], data=data, steps=3, batch_size=4, eval_batches=2,
        parametrizations=["u-mup"], shape={"depth": 1},
    )  # fmt: skip
    cast = mutransfer.grid(GPT, fp8=True, **kwargs)
    assert cast.protocol["fp8"] is True
    assert all(m.counts["linear"] > 0 for m in modes)  # every run's matmuls went through the cast
    plain = mutransfer.grid(GPT, **kwargs)
    assert "fp8" not in plain.protocol  # off: grids saved before it still resume
    assert cast.loss("u-mup", 64, 2**-4) != plain.loss("u-mup", 64, 2**-4)


def test_the_unit_scaled_benchmark_runs_quick(tmp_path):
    from quick_benchmarks import run_quick

    record, printed = run_quick("unit_scaled", tmp_path)
    assert set(record["grids"]) == {"sp", "mup", "u-mup"}
    assert {"independent", "tpe-0"} <= set(record["search"]["runs"])
    assert record["fp8"]["u-mup"] and "FP8 u-muP" in printed


def test_u_mup_builds_a_factory_that_takes_unit_scaled_with_it_on():
    from mutransfer.models import MLP
    from mutransfer.setup import ModelSetup

    assert ModelSetup(factory=GPT).keywords("u-mup")["unit_scaled"] is True
    assert "unit_scaled" not in ModelSetup(factory=GPT).keywords("mup")
    assert "unit_scaled" not in ModelSetup(factory=MLP).keywords("u-mup")  # it has no such keyword


def test_the_command_line_plans_and_grids_u_mup(tmp_path):
    import subprocess
    import sys

    from mutransfer.grid import Grid

    def run(command: str) -> str:
        done = subprocess.run([sys.executable, "-m", "mutransfer", *command.split()], capture_output=True,
                              text=True, cwd=tmp_path, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    printed = run(
        "plan mutransfer.models:GPT --target width=64 unit_scaled=True --parametrization u-mup --out p.json"
    )
    assert "u-muP plan" in printed and load_plan(tmp_path / "p.json").parametrization == "u-mup"
    printed = run(
        "grid mutransfer.models:GPT --widths 32 64 --log2-lrs -4 -2 0 --parametrizations u-mup --fp8 "
        "--steps 3 --batch-size 4 --eval-batches 2 --shape depth=1 --block-size 16 --path g.json"
    )
    grid = Grid.load(tmp_path / "g.json")
    assert grid.parametrizations == ("u-mup",) and grid.protocol["fp8"] is True and "u-muP" in printed


def test_a_tied_embedding_takes_the_embeddings_rules_and_its_readout_scales_its_input():
    torch.manual_seed(0)
    shape = {"width": 128, "tie_embeddings": True, "unit_scaled": True}
    plan = _quiet_plan(Llama, target=shape, parametrization="u-mup")
    model = plan.init_(Llama(**shape))
    assert not plan.notes  # nothing folded: the table is an embedding, the readout a hooked input
    assert model.embed.weight.std().item() == pytest.approx(1.0, abs=0.02)
    assert plan.factors(plan["embed.weight"])[1].lr == pytest.approx(128**-0.5)
    logits = model(torch.randint(0, 256, (2, 32)))
    assert logits.std().item() == pytest.approx(128**-0.5, rel=0.3)  # 1/fan_in on a unit weight


def test_a_u_mup_checkpoint_loads_into_a_fresh_model_once_attach_adds_the_hooks(tmp_path):
    torch.manual_seed(0)
    shape = {"width": 64, "unit_scaled": True}
    plan = _quiet_plan(GPT, target=shape, parametrization="u-mup")
    model = plan.init_(GPT(**shape))
    idx = torch.randint(0, 256, (2, 16))
    torch.save(model.state_dict(), tmp_path / "ckpt.pt")
    fresh = GPT(**shape)
    fresh.load_state_dict(torch.load(tmp_path / "ckpt.pt"))
    assert not torch.equal(fresh(idx), model(idx))  # the multipliers are hooks, not in the state_dict
    assert torch.equal(plan.attach_(fresh)(idx), model(idx))


def test_a_sweep_config_carries_fp8_to_its_trials():
    from mutransfer.sweep.experiment import Experiment

    config = SweepConfig(factory=GPT, proxy={"width": 32}, target={"width": 64}, data="shakespeare", fp8=True,
                         parametrization="u-mup", space={"lr": Range(1e-3, 1.0, log=True)})  # fmt: skip
    experiment = Experiment(config)
    assert experiment.training.fp8 is True and experiment.common["unit_scaled"] is True


def test_a_transformers_gpt2_takes_u_mup_through_the_plan_alone():
    from transformers import GPT2Config, GPT2LMHeadModel

    def make(width: int = 32) -> nn.Module:
        config = GPT2Config(n_embd=width, n_layer=1, n_head=4, vocab_size=64, n_positions=16, resid_pdrop=0,
                            embd_pdrop=0, attn_pdrop=0)  # fmt: skip
        return GPT2LMHeadModel(config)

    idx = torch.randint(0, 64, (4, 16))
    with pytest.warns(MutransferWarning, match="not unit-scaled"):
        plan = mutransfer.plan(make, base={"width": 32}, target={"width": 64}, parametrization="u-mup",
                               example=(idx,))  # fmt: skip
    text = plan.summary()
    assert "mlp.c_fc.weight" in text and "(hook)" in text and "tied readout" in text  # Conv1D hooked
    torch.manual_seed(0)
    model = plan.init_(make(64))
    optimizer = torch.optim.Adam(plan.param_groups(model, lr=0.1))
    losses = []
    for _ in range(5):
        loss = F.cross_entropy(model(idx).logits.flatten(0, 1), idx.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
