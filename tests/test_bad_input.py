"""Every row of docs/bad-input.md, run: the input is refused with the error the table quotes,
and no file the user saved is changed by the failing run.

The table is the source of the expected messages, so it cannot drift from what users get.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from torch import nn

import mutransfer
from mutransfer.data import TokenData
from mutransfer.demo import DemoResult
from mutransfer.grid import Cell
from mutransfer.models import GPT, MLP
from mutransfer.sweep import Range, SweepConfig

DOC = Path(__file__).resolve().parents[1] / "docs" / "bad-input.md"
DIGITS = {"in_features": 64, "out_features": 10}
SWEEP_TOML = """factory = "{factory}"
data = "digits"
proxy = {proxy}
target = {target}
steps = 2
trials = 1
[space]
lr = {lr}
"""


def documented_rows() -> dict[str, str]:
    """Case id -> the error excerpt quoted in the table (its first and last columns)."""
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and re.fullmatch(r"`[a-z0-9-]+`", cells[0]):
            rows[cells[0].strip("`")] = cells[-1].strip("`").replace("\\|", "|")
    return rows


def message(fn: Callable[[], object]) -> str:
    with pytest.raises(mutransfer.MutransferError) as info:
        fn()
    return str(info.value)


def cli(tmp_path: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "mutransfer", *args], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert done.returncode == 2, done.stderr  # bad input: exit status 2, one line, no traceback
    assert "Traceback" not in done.stderr
    return done.stderr


def unchanged(path: Path, fn: Callable[[], str]) -> str:
    """Run ``fn`` and check that the user's file at ``path`` is byte for byte as before."""
    before = path.read_bytes()
    text = fn()
    assert path.read_bytes() == before, f"{path.name} was changed by a failing run"
    return text


def sweep_file(
    tmp_path: Path,
    factory: str = "mutransfer.models:MLP",
    lr: str = "[0.01, 0.1]",
    proxy: str = "{ width = 16 }",
    target: str = "{ width = 32 }",
) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(SWEEP_TOML.format(factory=factory, lr=lr, proxy=proxy, target=target))
    return path


def every_number_refused() -> str:
    """nan, inf and a negative number, for each of the plan's numbers: each one refused."""
    texts = []
    for key in ("lr", "weight_decay", "eps"):
        for bad in (math.nan, math.inf, -1.0):
            numbers = {"lr": 1e-3, key: bad}
            texts.append(message(lambda numbers=numbers: plan_mlp().param_groups(MLP(width=64), **numbers)))
            assert f"{key} must be a finite number >= 0, got {bad!r}" in texts[-1]
    return " ".join(texts)


def warned(fn: Callable[[], object]) -> str:
    with pytest.warns(mutransfer.errors.MutransferWarning) as caught:
        fn()
    return " ".join(str(w.message) for w in caught)


def narrow_factory(d_model: int) -> nn.Module:  # its width keyword is not "width"
    return MLP(width=d_model, in_features=64)


def bfloat16_mlp(width: int, in_features: int = 64, out_features: int = 10) -> nn.Module:
    return MLP(width=width, in_features=in_features, out_features=out_features).to(torch.bfloat16)


def frozen_init() -> None:
    model = MLP(width=64)
    model.input.weight.requires_grad_(False)
    plan_mlp().init_(model)


def reads_item(width: int) -> nn.Module:
    layer = nn.Linear(width, width)
    layer.weight.sum().item()  # a value read while building: impossible on the meta device
    return layer


class EmptySource:
    name, fingerprint = "empty", "0"

    def batch(self, index, batch_size, *, seed=0, split="train"):
        return torch.empty(0, 64), torch.empty(0, dtype=torch.long)


def damaged(tmp_path: Path, name: str, text: str = '{"format": 1, "cells": [') -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def plan_mlp():
    return mutransfer.plan(MLP, base={"width": 16}, target={"width": 64})


def plain_grid(tmp_path: Path) -> Path:
    """A grid file saved without monitors, as a user's older grids are."""
    cell = Cell("mup", 32, 1e-3, 0, 2.0, 2.0, 1, 0.1)
    path = tmp_path / "grid.json"
    mutransfer.Grid({}, (32, 64), (1e-3, 1e-2, 1e-1), ("mup",), 1, (cell,)).save(path)
    return path


def mlp_grid(lrs: Sequence[float] = (1e-3, 1e-2, 1e-1), **kwargs: object) -> object:
    """A small MLP grid on digits, with the keyword under test."""
    return mutransfer.grid(MLP, widths=[16, 32], lrs=list(lrs), data=mutransfer.data.digits(), **kwargs)


CASES: dict[str, Callable[[Path], str]] = {
    "factory-module": lambda t: cli(
        t, "plan", "nosuch.module:Model", "--base", "width=8", "--target", "width=16"
    ),
    "factory-name": lambda t: cli(t, "sweep", str(sweep_file(t, factory="mutransfer.models:Nope"))),
    "factory-meta": lambda t: message(
        lambda: mutransfer.plan(reads_item, base={"width": 8}, target={"width": 16})
    ),
    "no-width": lambda t: message(
        lambda: mutransfer.plan(lambda width: nn.Linear(4, 4), base={"width": 8}, target={"width": 16})
    ),
    "lr-plan": lambda t: every_number_refused(),
    "factory-keyword": lambda t: message(
        lambda: mutransfer.plan(MLP, base={"widht": 8}, target={"widht": 16})
    ),
    "factory-value": lambda t: message(
        lambda: mutransfer.plan(GPT, base={"width": 30}, target={"width": 60})
    ),
    "width-key": lambda t: message(
        lambda: mutransfer.coord_check(narrow_factory, widths=[16, 32, 64], data=mutransfer.data.digits())
    ),
    "model-data": lambda t: cli(t, "coord-check", "mutransfer.models:ResNet", "--steps", "1", "--seeds", "1"),
    "model-dtype": lambda t: message(
        lambda: mutransfer.coord_check(
            bfloat16_mlp, widths=[16, 32, 64], data=mutransfer.data.digits(), shape=DIGITS, steps=1, seeds=1
        )
    ),
    "validate-keyword": lambda t: cli(t, "validate", str(sweep_file(t, proxy="{ widht = 16 }"))),
    "validate-value": lambda t: cli(t, "validate", str(sweep_file(t, proxy='{ width = "16" }'))),
    "narrower-target": lambda t: cli(
        t, "validate", str(sweep_file(t, proxy="{ width = 32 }", target="{ width = 8 }"))
    ),
    "frozen": lambda t: warned(frozen_init),
    "lr-grid": lambda t: message(lambda: mlp_grid(lrs=[1e-3, 1e-2, math.inf])),
    "z-loss": lambda t: message(lambda: mlp_grid(z_loss=-1e-4)),
    "role-grid": lambda t: message(lambda: mlp_grid(role="readout", base_lr=1e-2)),
    "forecast-monitors": lambda t: unchanged(
        plain_grid(t), lambda: cli(t, "forecast", "grid.json", "--to", "256")
    ),
    "umup-sgd": lambda t: message(
        lambda: mutransfer.plan(
            GPT, base={"width": 32}, target={"width": 64}, parametrization="u-mup"
        ).param_groups(GPT(width=64), lr=1.0, optimizer_family="sgd")
    ),
    "umup-widths": lambda t: cli(
        t,
        "plan",
        "mutransfer.models:GPT",
        "--target",
        "width=64",
        "block_size=32",
        "--parametrization",
        "u-mup",
    ),
    "alphas-not-unit": lambda t: message(
        lambda: SweepConfig(
            factory="mutransfer.models:GPT",
            proxy={"width": 32},
            target={"width": 64},
            data="digits",
            space={"lr": Range(1e-3, 1e-1), "alpha_attn": Range(0.5, 2.0)},
        )
    ),
    "independent-lr": lambda t: message(
        lambda: SweepConfig(
            factory="mutransfer.models:GPT",
            proxy={"width": 32},
            target={"width": 64},
            data="digits",
            parametrization="u-mup",
            sampler="independent",
            space={"lr": 0.1, "alpha_attn": Range(0.5, 2.0)},
        )
    ),
    "lr-coord": lambda t: message(
        lambda: mutransfer.coord_check(MLP, widths=[16, 32, 64], data=mutransfer.data.digits(), lr=-1e-3)
    ),
    "lr-sweep": lambda t: message(
        lambda: SweepConfig(
            factory="mutransfer.models:MLP",
            proxy={"width": 16},
            target={"width": 32},
            data="digits",
            space={"lr": math.nan, "output_mult": Range(0.5, 2.0)},
        )
    ),
    "lr-sweep-range": lambda t: cli(
        t, "validate", str(sweep_file(t, lr="{ low = 1e-4, high = inf, log = true }"))
    ),
    "empty-source": lambda t: message(
        lambda: mutransfer.grid(
            MLP, widths=[16, 32], lrs=[1e-3, 1e-2, 1e-1], data=EmptySource(), shape=DIGITS
        )
    ),
    "empty-text": lambda t: message(
        lambda: TokenData(
            "my-text", torch.zeros(0, dtype=torch.uint8), torch.zeros(0, dtype=torch.uint8), "0"
        )
    ),
    "unknown-data": lambda t: cli(t, "coord-check", "mutransfer.models:MLP", "--data", "my_data.txt"),
    "missing-config": lambda t: cli(t, "sweep", "no-such.toml"),
    "damaged-journal": lambda t: unchanged(
        damaged(
            t, "s.journal", '{"op_code": 0, "worker_id": "w", "study_name": "s", "directions": [1]}\n{x\n{}\n'
        ),
        lambda: cli(t, "sweep", str(sweep_file(t)), "--storage", str(t / "s.journal")),
    ),
    "damaged-grid": lambda t: unchanged(
        damaged(t, "grid.json"),
        lambda: cli(t, "grid", "mutransfer.models:MLP", "--data", "digits", "--json", "grid.json"),
    ),
    "grid-protocol": lambda t: unchanged(
        grid_with_steps(t, 3),
        lambda: message(lambda: small_grid(t, steps=4)),
    ),
    "damaged-plan": lambda t: unchanged(
        damaged(t, "plan.json"), lambda: message(lambda: mutransfer.load_plan(t / "plan.json"))
    ),
    "damaged-transfer": lambda t: unchanged(
        damaged(t, "target.json"), lambda: message(lambda: mutransfer.load_transfer(t / "target.json"))
    ),
    "damaged-demo": lambda t: unchanged(
        damaged(t, "demo.json"), lambda: message(lambda: DemoResult.load(t / "demo.json"))
    ),
    "transfer-before-sweep": lambda t: cli(t, "transfer", str(sweep_file(t))),
    "postgres-refuses": lambda t: cli(
        t, "sweep", str(sweep_file(t)), "--storage", "postgresql://me:secret@127.0.0.1:1/db"
    ),
    "no-gpu": lambda t: message(lambda: mlp_grid(shape=DIGITS, device="cuda")),
}


def small_grid(tmp_path: Path, steps: int):
    return mutransfer.grid(
        MLP,
        widths=[8, 16],
        lrs=[1e-2, 3e-2, 1e-1],
        data=mutransfer.data.digits(),
        shape=DIGITS,
        steps=steps,
        batch_size=8,
        eval_batches=1,
        parametrizations=["mup"],
        path=tmp_path / "grid.json",
    )


def grid_with_steps(tmp_path: Path, steps: int) -> Path:
    small_grid(tmp_path, steps)
    return tmp_path / "grid.json"


def test_the_table_and_the_cases_list_the_same_inputs():
    assert sorted(documented_rows()) == sorted(CASES)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gets_the_documented_error(case, tmp_path, monkeypatch):
    if case == "no-gpu" and torch.cuda.is_available():
        pytest.skip("a GPU is here")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(sys.path))
    got = CASES[case](tmp_path)
    assert documented_rows()[case] in " ".join(got.split()), got
    assert "secret" not in got  # a password never reaches a message
