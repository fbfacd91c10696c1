"""Hugging Face models in muP: roles of GPT-2's Conv1D, tied and untied heads, the attention
scale in eager and sdpa, coordinate checks, and checkpoints that reload with from_pretrained.

Every model is built from a config with random init: nothing is downloaded.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mutransfer
from mutransfer.train import cross_entropy

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (pip install '.[hf]')"
)
hf = pytest.importorskip("mutransfer.hf")

SMALL = {"vocab_size": 256, "block_size": 32}
GPT2 = dict(n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # no dropout:
# a random mask per call would make every comparison below a comparison of masks
LLAMA = dict(
    hidden_size=32, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
)


def gpt2(**kwargs):
    return hf.factory("gpt2", **{**GPT2, **kwargs})


def llama(**kwargs):
    return hf.factory("llama", **{**LLAMA, **kwargs})


def tokens(n: int = 2, t: int = 16) -> torch.Tensor:
    return torch.randint(0, 256, (n, t), generator=torch.Generator().manual_seed(0))


def test_gpt2_conv1d_weights_are_read_as_in_by_out():
    """GPT-2's Conv1D stores (in, out). With the FFN size held fixed, c_fc's fan-in grows and its
    fan-out does not (output-like); the projection back is the reverse (input-like). Read in
    PyTorch's (out, in) order, the two roles would swap."""
    make = gpt2(n_inner=48, width=["n_embd"])  # n_inner fixed: one growing dimension per FFN matrix
    plan = mutransfer.plan(make, base={"width": 32, **SMALL}, target={"width": 64, **SMALL})
    roles = plan.roles()
    assert roles["transformer.h.0.mlp.c_fc.weight"] == "output"
    assert roles["transformer.h.0.mlp.c_proj.weight"] == "input"
    assert roles["transformer.h.0.attn.c_attn.weight"] == "hidden"
    assert plan["transformer.h.0.mlp.c_fc.weight"].layer == "Conv1D"


def test_tied_gpt2_readout_is_hooked_and_untied_llama_head_is_an_output():
    g = mutransfer.plan(gpt2(), base={"width": 32, **SMALL}, target={"width": 128, **SMALL})
    assert g.tied_readouts == ("lm_head",) and g.roles()["lm_head.weight"] == "input"
    assert g.init_law == "constant"  # transformers' initializer_range, declared by the factory
    lm = mutransfer.plan(llama(), base={"width": 32, **SMALL}, target={"width": 128, **SMALL})
    assert lm.tied_readouts == () and lm.roles()["lm_head.weight"] == "output"
    assert lm.roles()["model.layers.0.self_attn.k_proj.weight"] == "hidden"  # GQA: 2 of 4 heads, still grows
    assert lm.roles()["model.layers.0.input_layernorm.weight"] == "vector"


@pytest.mark.parametrize("make", [gpt2, llama], ids=["gpt2", "llama"])
def test_attention_scale_is_one_over_d_head_in_eager_and_sdpa(make):
    outputs = {}
    for impl in ("eager", "sdpa"):
        torch.manual_seed(0)
        model = make(attn_implementation=impl)(width=128, **SMALL)
        attn = next(m for m in model.modules() if hasattr(m, "mup_logits"))
        assert attn.head_dim == 32
        assert attn.scaling == pytest.approx(mutransfer.attention_scale(32, 8))  # base head size 32/4
        with torch.no_grad():
            outputs[impl] = model(tokens()).logits
    torch.testing.assert_close(outputs["eager"], outputs["sdpa"], rtol=1e-4, atol=1e-5)
    standard = make()(width=128, mup_attention=False, **SMALL)
    assert next(m for m in standard.modules() if hasattr(m, "mup_logits")).scaling == pytest.approx(32**-0.5)


def test_at_the_base_width_the_model_is_transformers_own():
    torch.manual_seed(0)
    ours = gpt2()(width=32, **SMALL)
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        **GPT2, vocab_size=256, n_positions=32, bos_token_id=None, eos_token_id=None
    )
    theirs = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens()).logits, theirs(tokens()).logits)


@pytest.mark.slow
@pytest.mark.parametrize("make", [gpt2, llama], ids=["gpt2", "llama"])
def test_coordinate_check_passes_for_mup_and_fails_for_standard(make):
    data = mutransfer.data.stdlib(block_size=32)
    settings = dict(widths=[32, 64, 128], data=data, steps=3, seeds=2, batch_size=8)
    mup = mutransfer.coord_check(make(), shape=SMALL, **settings)
    assert mup.passed, mup.table()
    sp = mutransfer.coord_check(
        make(), shape={**SMALL, "mup_attention": False}, parametrization="sp", **settings
    )
    assert not sp.passed
    logits = [m for m in sp.modules if m.name.endswith("mup_logits")]
    assert len(logits) == 2 and all(m.scale_slope > 0.35 for m in logits)  # the check sees the scale
    assert all(abs(m.scale_slope) < 0.05 for m in mup.modules if m.name.endswith("mup_logits"))


def qwen3(**kwargs):
    return hf.factory("qwen3", **{**LLAMA, "head_dim": 8, **kwargs})  # q_norm: the factor goes into its gain


@pytest.mark.parametrize("make", [gpt2, llama, qwen3], ids=["gpt2", "llama", "qwen3"])
def test_saved_target_reloads_with_from_pretrained_with_the_same_logits(make, tmp_path):
    factory = make()
    plan = mutransfer.plan(factory, base={"width": 32, **SMALL}, target={"width": 128, **SMALL})
    torch.manual_seed(0)
    model = plan.init_(factory(width=128, **SMALL))
    opt = plan.optimizer(model, "adamw", lr=1e-2)
    for _ in range(3):  # a trained target, not just an initialised one
        loss = cross_entropy(model(tokens()), tokens())
        opt.zero_grad()
        loss.backward()
        opt.step()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hf.save_pretrained(model, plan, tmp_path)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is untouched
    with torch.no_grad():
        expected = model(tokens()).logits
        plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
        torch.testing.assert_close(plain(tokens()).logits, expected, rtol=1e-4, atol=1e-5)
        # without folding, the reloaded model would differ: the factors are real
        unfolded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
        unfolded.load_state_dict(before, strict=False)
        assert not torch.allclose(unfolded(tokens()).logits, expected, atol=1e-3)
    again, saved_plan = hf.load_pretrained(tmp_path)
    assert saved_plan == plan
    with torch.no_grad():
        torch.testing.assert_close(again(tokens()).logits, expected, rtol=1e-4, atol=1e-5)
    for k, v in again.state_dict().items():  # unfolded back to the muP form the plan trains
        torch.testing.assert_close(v, before[k], rtol=1e-5, atol=1e-7, msg=k)


def test_an_architecture_it_cannot_scale_is_refused_with_the_known_ones():
    with pytest.raises(
        mutransfer.MutransferError, match=r"does not know how to scale model type 'bert'.*gpt2"
    ):
        hf.factory("bert")


def test_a_width_that_does_not_scale_every_key_to_an_integer_is_refused():
    with pytest.raises(
        mutransfer.MutransferError, match="intermediate_size = 100 x 36/32 is not a whole number"
    ):
        llama(intermediate_size=100)(width=36)


@pytest.mark.slow
def test_the_readme_flow_from_sweep_to_a_reloaded_checkpoint(tmp_path, monkeypatch):
    """examples/sweep-gpt2.toml and examples/hf_gpt2.py as the README runs them, on a tiny budget."""
    repo = Path(__file__).resolve().parents[1]
    text = (repo / "examples" / "sweep-gpt2.toml").read_text()
    small = text.replace("steps = 100", "steps = 6").replace("trials = 12", "trials = 2")
    config = tmp_path / "sweep-gpt2.toml"
    config.write_text(small.replace('pruner = "halving"', 'pruner = "none"'))
    storage = str(tmp_path / "gpt2.journal")
    for command in (["sweep"], ["transfer", "--out", str(tmp_path / "target.json")]):
        done = subprocess.run(
            [sys.executable, "-m", "mutransfer", command[0], str(config), "--storage", storage, *command[1:]],
            cwd=repo,  # the config names examples.hf_gpt2:make
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr
    monkeypatch.chdir(repo)
    monkeypatch.syspath_prepend(str(repo))
    from examples.hf_gpt2 import main

    gap = main(str(config), str(tmp_path / "target.json"), str(tmp_path / "gpt2-target"))
    assert gap < 1e-4
    assert (tmp_path / "gpt2-target" / "config.json").exists()


@pytest.mark.parametrize("make", [gpt2, llama], ids=["gpt2", "llama"])
def test_depth_plans_absorb_the_branch_multiplier_into_the_last_layers(make):
    factory = make()
    plan = mutransfer.plan(
        factory,
        base={"width": 32, "depth": 1, **SMALL},
        target={"width": 64, "depth": 4, **SMALL},
        depth="depth",
        residual=factory.residual,
    )
    assert plan.depth.hooked == ()  # Linear and GPT-2's Conv1D alike take the multiplier
    ends = [p.name for p in plan.params if plan.depth.place(p.name) == "branch end"]
    per_branch = 2 if make is gpt2 else 1  # GPT-2's c_proj has a bias, which takes the multiplier too
    assert len(ends) == 4 * 2 * per_branch  # 4 blocks, 2 branches each


def raw_gpt2(width: int, vocab_size: int = 256, block_size: int = 32):
    """transformers' GPT-2 as a new user writes the factory: nothing of mutransfer.hf."""
    config = transformers.GPT2Config(
        n_embd=width, n_layer=2, n_head=4, vocab_size=vocab_size, n_positions=block_size,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config)


def test_a_raw_gpt2_factory_gets_muP_from_the_plan_and_passes_the_check():
    """The init law is measured (transformers' constant 0.02, not fan_in) and the attention's
    `scaling` is found through SDPA and made 1/d_head: no argument needed."""
    data = mutransfer.data.stdlib(block_size=32)
    settings = dict(widths=[32, 64, 128, 256], data=data, steps=3, seeds=2)
    mup = mutransfer.coord_check(raw_gpt2, **settings)
    assert mup.passed, mup.table()
    standard = mutransfer.coord_check(raw_gpt2, parametrization="sp", **settings)
    causes = {m.name for m in standard.failures if m.cause}
    assert {"lm_head", "transformer.h.0.attn.sdpa"} <= causes, standard.table()


def test_a_factory_object_sweeps_and_transfers_through_the_python_api(tmp_path):
    """A mutransfer.hf factory is an object, not a function: the sweep's protocol and the
    transfer record it by its repr (it names the config). A drifted copy of the naming once
    raised AttributeError: 'HFFactory' object has no attribute '__qualname__'."""
    config = mutransfer.SweepConfig(
        factory=gpt2(),
        proxy={"width": 32},
        target={"width": 64},
        shape=SMALL,
        data="stdlib",
        block_size=32,
        steps=2,
        batch_size=2,
        eval_batches=1,
        trials=1,
        space={"lr": mutransfer.Range(1e-4, 1e-2, log=True)},
        storage=str(tmp_path / "hf.journal"),
        study="hf",
    )
    status = mutransfer.sweep(config)
    assert status.finished == 1
    assert mutransfer.transfer(config).factory.startswith("mutransfer.hf.factory('gpt2'")
