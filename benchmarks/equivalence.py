"""mutransfer against microsoft/mup (PyPI ``mup`` 1.0.0), step by step, on the same models.

    pip install --no-deps mup==1.0.0     # (the Makefile's environment has it)
    python benchmarks/equivalence.py            # ~2 min on 2 CPU cores
    python benchmarks/equivalence.py --quick    # the MLP at 4x, a few steps: seconds

The same weights (PyTorch's default init at the target width, one seed) are made muP twice:
the microsoft/mup way (the readout replaced by ``MuReadout``, ``set_base_shapes`` against the
base width, which rescales the readout and every Linear bias, then ``MuAdam`` / ``MuSGD``) and
the mutransfer way (``plan.init_`` and ``plan.param_groups`` into ``torch.optim.Adam`` / ``SGD``;
the readout stays an ``nn.Linear``). Both train on the same batches; the table gives the largest
relative difference between their losses over the steps. Models: ``foreign.MLP`` (with biases)
on mnist-5k and the reference GPT with muP's ``1/d_head`` attention on text, at 4x and 16x the
base width 32.

Where the two differ on purpose: Adam's epsilon. mutransfer divides it by the width multiplier
for every tensor but the readout (their gradients shrink like 1/width in the Table 3 form), and
microsoft/mup leaves it as given (its readout, scaled by 1/m in the forward pass, then has an
epsilon m times larger in the Table 3 form). Each Adam row is run twice: as mutransfer's
defaults, and with its epsilons set to mup's (``eps as mup``), which must agree to float error.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

import mutransfer
from mutransfer.data.batches import fetch
from mutransfer.models import GPT

sys.path.insert(0, str(Path(__file__).parent))
from foreign import MLP
from transfer import RESULTS, first_available, provenance

BASE, LR, EPS = 32, {"adam": 3e-3, "sgd": 0.05}, 1e-8
AGREE = 1e-5  # the bar: relative difference of the losses


def models(quick: bool) -> dict[str, dict]:
    images = first_available("mnist-5k", "digits")
    text = first_available("stdlib", block_size=32)
    found = {
        "MLP": dict(
            make=MLP, shape={"in_features": images.in_features}, data=images, readout="out", batch=32
        ),
        "GPT (1/d_head attention)": dict(
            make=GPT, shape={"base_d_head": 8, "block_size": 32}, data=text, readout="lm_head", batch=8
        ),
    }
    return {"MLP": found["MLP"]} if quick else found


def as_mup(mup, model: nn.Module, spec: dict, width: int) -> nn.Module:
    """The microsoft/mup form: MuReadout with the same weights, base shapes set (rescaling)."""

    def with_mu_readout(m: nn.Module) -> nn.Module:
        old = getattr(m, spec["readout"])
        new = mup.MuReadout(old.in_features, old.out_features, bias=old.bias is not None)
        new.to(old.weight.device)
        with torch.no_grad():
            new.weight.copy_(old.weight)
            if old.bias is not None:
                new.bias.copy_(old.bias)
        setattr(m, spec["readout"], new)
        return m

    model = with_mu_readout(copy.deepcopy(model))
    base = with_mu_readout(spec["make"](width=BASE, **spec["shape"]))
    mup.set_base_shapes(model, base)  # also multiplies MuReadout's weight and every Linear bias
    return model


def losses(model: nn.Module, optimizer: torch.optim.Optimizer, spec: dict, steps: int) -> list[float]:
    out = []
    for step in range(steps):
        x, y = fetch(spec["data"], step, spec["batch"], seed=0)
        logits = model(x)
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        out.append(loss.item())
    return out


def compare(mup, spec: dict, width: int, optimizer: str, eps_as_mup: bool, steps: int) -> dict:
    torch.manual_seed(0)
    sp = spec["make"](width=width, **spec["shape"])
    reference = as_mup(mup, sp, spec, width)
    if optimizer == "adam":
        theirs = mup.MuAdam(reference.parameters(), lr=LR["adam"], eps=EPS)
    else:
        theirs = mup.MuSGD(reference.parameters(), lr=LR["sgd"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = mutransfer.plan(
            spec["make"], base={"width": BASE, **spec["shape"]}, target={"width": width, **spec["shape"]}
        )
    ours = plan.init_(copy.deepcopy(sp))
    groups = plan.param_groups(ours, lr=LR[optimizer], eps=EPS, optimizer_family=optimizer)
    if optimizer == "adam" and eps_as_mup:  # mup's eps on every tensor; its readout's is m times ours
        for g in groups:
            g["eps"] = EPS * (plan.width_multiplier if g["roles"] == ["output"] else 1.0)
    mine = torch.optim.Adam(groups) if optimizer == "adam" else torch.optim.SGD(groups)
    a, b = losses(reference, theirs, spec, steps), losses(ours, mine, spec, steps)
    worst = max(abs(x - y) / abs(x) for x, y in zip(a, b, strict=True))
    return {"width": width, "multiplier": width // BASE, "optimizer": optimizer, "eps_as_mup": eps_as_mup,
            "max_relative_difference": worst, "mup_losses": a, "mutransfer_losses": b}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the MLP at 4x, 5 steps")
    parser.add_argument("--out", type=Path, help="results folder (default: benchmarks/results)")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    try:
        import mup
    except ImportError as exc:
        sys.exit(f"needs microsoft's mup: pip install pyyaml && pip install --no-deps mup==1.0.0 ({exc})")
    out = args.out or RESULTS
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    steps = 5 if args.quick else args.steps
    widths = [4 * BASE] if args.quick else [4 * BASE, 16 * BASE]
    rows = []
    print(f"{'model':26s} {'width':>7s} {'optimizer':18s} {'max rel. diff':>14s}  agree to {AGREE:g}")
    for name, spec in models(args.quick).items():
        for width in widths:
            for optimizer, eps_as_mup in (("adam", False), ("adam", True), ("sgd", False)):
                row = {"model": name, **compare(mup, spec, width, optimizer, eps_as_mup, steps)}
                rows.append(row)
                label = optimizer + (" (eps as mup)" if eps_as_mup else "")
                agree = row["max_relative_difference"] <= AGREE
                worst = row["max_relative_difference"]
                print(
                    f"{name:26s} {width:5d} {row['multiplier']:2d}x {label:16s} {worst:14.2e}  {agree}",
                    flush=True,
                )
    record = {**provenance(start), "base_width": BASE, "steps": steps, "lr": LR, "eps": EPS, "rows": rows,
              "mup_version": getattr(mup, "__version__", "1.0.0")}  # fmt: skip
    name = "equivalence-quick.json" if args.quick else "equivalence.json"
    (out / name).write_text(json.dumps(record, indent=1))
    print(f"results in {out / name} ({time.monotonic() - start:.0f} s)")


if __name__ == "__main__":
    main()
