"""The coordinate check passes correct muP and names the fault in each broken variant."""

from __future__ import annotations

import json
import math

import pytest
import torch

import mutransfer
from mutransfer.data import mnist_5k, stdlib
from mutransfer.models import GPT, MLP, Llama, ResNet

WIDTHS = [32, 64, 128, 256]
LR = 3e-3  # the default


@pytest.fixture(scope="module")
def text():
    return stdlib(block_size=32)


@pytest.fixture(scope="module")
def images():
    return mnist_5k()


def check(make_model, data, **kwargs):
    kwargs.setdefault("widths", WIDTHS)
    kwargs.setdefault("steps", 3)
    kwargs.setdefault("seeds", 2)
    kwargs.setdefault("lr", LR)
    return mutransfer.coord_check(make_model, data=data, **kwargs)


def causes(result) -> dict[str, str]:
    return {m.name: m.hint for m in result.modules if m.cause}


def test_mup_mlp_passes(images):
    result = check(MLP, images, batch_size=32)
    assert result.passed, result.table()
    assert [m.name for m in result.modules] == ["input", "hidden.0", "hidden.1", "readout", "<output>"]
    assert {m.kind for m in result.modules} == {"input", "hidden", "output", "model"}


@pytest.mark.parametrize("tie", [False, True])
def test_mup_gpt_passes(text, tie):
    result = check(GPT, text, shape={"base_d_head": 8, "tie_embeddings": tie})
    assert result.passed, result.table()
    kinds = {m.name: m.kind for m in result.modules}
    assert kinds["blocks.0.attn.logits"] == "attention"
    assert kinds["lm_head"] == "output"  # also when it is the tied embedding
    assert math.isnan(result.modules[0].scale_slope)  # not attention: no scale measure
    logits = next(m for m in result.modules if m.name == "blocks.0.attn.logits")
    assert abs(logits.scale_slope) < 1e-9  # 1/d_head exactly


def test_llama_passes_under_mup_and_fails_in_standard(text):
    mup = check(Llama, text, shape={"base_d_head": 8, "block_size": 32}, widths=[32, 64, 128])
    assert mup.passed, mup.table()
    found = causes(check(Llama, text, shape={"block_size": 32}, parametrization="sp", widths=[32, 64, 128]))
    assert "readout is not scaled" in found["lm_head"]
    assert all("attention" in found[f"blocks.{i}.attn.logits"] for i in range(2))  # GQA logits observed


def test_resnet_passes_under_mup_and_fails_in_standard(images):
    small = {"widths": [8, 16, 32, 64], "steps": 2, "batch_size": 4}
    assert check(ResNet, images, **small).passed
    found = causes(check(ResNet, images, parametrization="sp", **small))
    assert {"blocks.0.conv1", "readout"} <= set(found)


def test_standard_mlp_fails_at_the_readout(images):
    result = check(MLP, images, parametrization="sp", batch_size=32)
    assert not result.passed
    found = causes(result)
    assert "readout" in found and "readout is not scaled" in found["readout"]
    assert "hidden learning rate" in found["hidden.0"]
    assert "readout" in result.table() and "FAILED" in result.table()


def test_standard_gpt_fails_at_logits_and_attention(text):
    result = check(GPT, text, parametrization="sp")
    found = causes(result)
    assert "readout is not scaled" in found["lm_head"]
    assert all("attention" in found[f"blocks.{i}.attn.logits"] for i in range(2))
    lm_head = next(m for m in result.modules if m.name == "lm_head")
    assert lm_head.slope > 0.4


def test_attention_scale_left_at_inverse_sqrt_is_flagged_there_only(text):
    from foreign import Transformer

    result = check(Transformer, text, shape={"block_size": 32})  # SDPA's default scale, in its code
    failing = {m.name for m in result.failures}
    assert failing == {"blocks.0.attn.sdpa", "blocks.1.attn.sdpa"}, result.table()
    for name in failing:
        m = next(m for m in result.modules if m.name == name)
        assert m.cause and m.scale_slope == pytest.approx(0.5, abs=1e-6)
        assert "attention_scale" in m.hint


def test_a_scale_the_model_keeps_in_an_attribute_is_made_muP_by_the_plan(text):
    result = check(GPT, text)  # without base_d_head GPT keeps 1/sqrt(d_head) in attn.scale
    assert result.passed, result.table()
    standard = causes(check(GPT, text, parametrization="sp"))
    assert "attention_scale" in standard["blocks.0.attn.logits"]


def test_unscaled_hidden_learning_rate_is_flagged(images):
    def hidden_at_base_lr(groups):
        return torch.optim.Adam([{**g, "lr": LR} if "hidden" in g["roles"] else g for g in groups])

    result = check(MLP, images, optimizer=hidden_at_base_lr, batch_size=32)
    found = causes(result)
    assert "hidden.0" in found and "hidden learning rate" in found["hidden.0"], result.table()
    assert "readout" not in found  # its own scaling is right; at most it inherits the growth


def test_divergence_is_recorded_not_raised(images):
    result = check(MLP, images, parametrization="sp", optimizer="sgd", lr=1e8, seeds=1)
    assert not result.passed
    assert any(m.status == "diverged" for m in result.modules)
    assert "diverged" in result.table()


def test_result_round_trips_through_json_and_plots(tmp_path, text):
    result = check(GPT, text, shape={"base_d_head": 8}, steps=1, seeds=1, widths=[32, 64, 128])
    path = tmp_path / "coord.json"
    result.save(path)
    again = mutransfer.CoordCheck.from_dict(json.loads(path.read_text()))
    as_json = json.dumps(result.to_dict(), sort_keys=True)  # NaN-safe comparison
    assert json.dumps(again.to_dict(), sort_keys=True) == as_json
    assert again.passed == result.passed and again.modules[0].name == result.modules[0].name

    png = tmp_path / "coord.png"
    mutransfer.plot_coord_check([result, result], png, measure="change")
    image = pytest.importorskip("matplotlib.pyplot").imread(png)
    assert image.shape[0] > 200 and image.std() > 0.05  # drawn, not blank


def test_watched_modules_can_be_chosen(images):
    result = check(MLP, images, modules=["hidden.*"], widths=[32, 64, 128], steps=1, seeds=1)
    assert [m.name for m in result.modules] == ["hidden.0", "hidden.1"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"widths": [32, 64]}, "at least 3 distinct widths"),
        ({"optimizer": "adagrad"}, "choose one of"),
        ({"modules": ["decoder.*"]}, "match no module"),
        ({"parametrization": "ntk"}, r"must be among \['mup', 'sp', 'u-mup'\]"),
    ],
)
def test_bad_input_is_named(images, kwargs, message):
    with pytest.raises(mutransfer.MutransferError, match=message):
        check(MLP, images, **kwargs)


def test_assert_coord_check(images):
    result = mutransfer.testing.assert_coord_check(
        MLP, widths=[32, 64, 128], data=images, steps=2, seeds=1, batch_size=32
    )
    assert result.passed
    with pytest.raises(AssertionError, match="readout"):
        mutransfer.testing.assert_coord_check(
            MLP, widths=[32, 64, 128], data=images, steps=2, seeds=1, parametrization="sp"
        )


# ---- models written elsewhere (benchmarks/foreign.py): what the check sees without any help ------
def test_attention_found_by_interception_fails_standard_and_passes_muP(text):
    from foreign import MHATransformer, Transformer

    bad = check(Transformer, text, shape={"block_size": 32})  # its own SDPA at 1/sqrt(d_head)
    found = causes(bad)
    assert set(found) == {"blocks.0.attn.sdpa", "blocks.1.attn.sdpa"}, bad.table()
    assert "attention_scale" in found["blocks.0.attn.sdpa"]
    assert check(Transformer, text, shape={"block_size": 32, "base_d_head": 8}).passed
    # nn.MultiheadAttention: the muP plan multiplies its queries; standard parametrization fails there
    assert check(MHATransformer, text, shape={"block_size": 32}).passed
    standard = causes(check(MHATransformer, text, shape={"block_size": 32}, parametrization="sp"))
    assert "nn.MultiheadAttention" in standard["blocks.0.self_attn.mha"]


@pytest.mark.parametrize(
    ("factor", "where"),
    [("embedding_factor", "between embed and <input of blocks.0>"), ("logit_factor", "after")],
)
def test_a_factor_written_in_forward_is_found_and_located(text, factor, where):
    from foreign import Transformer

    result = check(Transformer, text, shape={"block_size": 32, "base_d_head": 8, factor: "sqrt"})
    found = causes(result)
    assert len(found) == 1, result.table()
    ((point, hint),) = found.items()
    assert point.startswith("<") and where in hint and "forward pass" in hint


def test_updates_that_vanish_fail_the_check(images):
    sgd = lambda groups: torch.optim.SGD(groups)  # noqa: E731  (a callable: the plan assumes Adam)
    result = check(MLP, images, optimizer=sgd, lr=0.1, batch_size=32)
    found = causes(result)
    assert {"input", "hidden.0", "hidden.1"} <= set(found), result.table()
    assert all("optimizer_family='sgd'" in found[n] for n in ("input", "hidden.0"))
    assert {m.status for m in result.failures} == {"vanishes"}
    assert check(MLP, images, optimizer=sgd, optimizer_family="sgd", lr=0.1, batch_size=32).passed


def test_a_bias_left_shrinking_fails_on_its_init(images):
    def shrinking_biases(groups):  # undo the plan's bias correction, as PyTorch's init leaves them
        for g in groups:
            for p in g["params"]:
                if p.dim() == 1 and len(p) != 10:  # the hidden and input biases, not the readout's
                    with torch.no_grad():
                        p.mul_((32 / len(p)) ** 0.5)
        return torch.optim.Adam(groups)

    result = check(MLP, images, optimizer=shrinking_biases, batch_size=32)
    found = causes(result)
    assert "hidden.0" in found and "hidden.0.bias" in found["hidden.0"], result.table()


def test_a_model_that_fails_on_the_data_says_so(text):
    from foreign import CNN

    with pytest.raises(
        mutransfer.MutransferError, match=r"the model failed on this data: .* shape \(8, 32\)"
    ):
        check(CNN, text, widths=[8, 16, 32])


def test_a_check_below_the_reliable_setting_warns(images):
    with pytest.warns(mutransfer.errors.MutransferWarning, match="1 seed"):
        check(MLP, images, widths=[32, 64, 128], steps=2, seeds=1, batch_size=32)


def test_a_vision_transformer_with_multihead_attention_as_a_new_user_would(images):
    from foreign import ViT

    plan = mutransfer.plan(ViT, base={"width": 32}, target={"width": 128})
    assert {(s.law, s.fix) for s in plan.attention} == {("1/sqrt(d_head)", "query")}
    assert "queries x0.5" in plan.summary()
    assert check(ViT, images, widths=[32, 64, 128, 256], batch_size=8).passed
    found = causes(check(ViT, images, widths=[32, 64, 128, 256], batch_size=8, parametrization="sp"))
    assert "nn.MultiheadAttention" in found["blocks.0.self_attn.mha"]


def test_attention_written_out_is_seen_through_its_softmax(text):
    from foreign import Transformer

    shape = {"block_size": 32, "attention": "manual"}
    bad = check(Transformer, text, shape=shape)  # scores / sqrt(d) in its forward: the plan cannot fix it
    found = causes(bad)
    assert set(found) == {"blocks.0.attn.softmax", "blocks.1.attn.softmax"}, bad.table()
    assert "attention_scale" in found["blocks.0.attn.softmax"]
    assert check(Transformer, text, shape={**shape, "base_d_head": 8}).passed  # scores * muP's scale


class _Detour(torch.nn.Module):
    """An MLP whose forward path depends on the step, like sparse attention that picks its blocks
    at random, and that calls one module twice: big_bird's crash in benchmarks/zoo.py."""

    def __init__(self, width: int, in_features: int = 64, out_features: int = 10) -> None:
        super().__init__()
        self.inp, self.shared = torch.nn.Linear(in_features, width), torch.nn.Linear(width, width)
        self.rare, self.readout = torch.nn.Linear(width, width), torch.nn.Linear(width, out_features)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        h = self.shared(self.shared(torch.relu(self.inp(x.flatten(1)))).relu()).relu()
        if self.calls % 3 == 0:  # some passes only
            h = h + self.rare(h).relu()
        return self.readout(h)


def test_points_a_pass_does_not_reach_read_nan_and_the_rest_is_judged():
    result = check(_Detour, mutransfer.data.digits(), widths=[32, 64, 128, 256], seeds=1, lr=1e-3)
    curve = result.curves["rms"]["rare"][0]
    assert len(curve) == result.steps + 1 and any(math.isnan(v) for v in curve)
    assert all(len(c) == result.steps + 1 for m in result.curves.values() for cs in m.values() for c in cs)
    assert result.passed, result.table()
