"""The coordinate check's power: muP bugs planted in models written outside the library.

    python benchmarks/verdict.py             # ~15 min on 2 CPU cores
    python benchmarks/verdict.py --quick     # two models, two bugs, 2 seeds: under a minute

Four models a user might write (``foreign.py``: an MLP with biases, a transformer with its own
SDPA attention, one built from ``nn.TransformerEncoderLayer``, a CNN), each checked at the
recommended setting (the check's defaults: 4 sizes spanning 8x, 4 steps, 3 seeds, Adam lr 3e-3)
with every bug that applies to it planted, then correct muP over 20 disjoint seed sets for the
false-failure rate. A bug is *caught* when the check fails; *located* when one of the points
it names as a cause is where the bug lives. Results: results/verdict.json and a table printed.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import importlib
import json
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

import mutransfer
from mutransfer.errors import MutransferWarning
from mutransfer.scaling import init_law

sys.path.insert(0, str(Path(__file__).parent))
from foreign import CNN, MLP, MHATransformer, Transformer
from transfer import RESULTS, first_available, provenance

plan = importlib.import_module("mutransfer.scaling.plan")  # the module (the package exports a function)

LR = 3e-3  # the check's default


def models(quick: bool) -> dict[str, dict]:
    text = first_available("stdlib", block_size=32)
    images = first_available("mnist-5k", "digits")
    found = {
        "MLP": dict(factory=MLP, data=images, shape={"in_features": images.in_features}, batch_size=32),
        "Transformer (own SDPA)": dict(
            factory=Transformer, data=text, shape={"block_size": 32, "base_d_head": 8}
        ),
        "Transformer (nn.MultiheadAttention)": dict(
            factory=MHATransformer, data=text, shape={"block_size": 32}
        ),
        "CNN": dict(
            factory=CNN, data=images, shape={"in_channels": 1}, widths=[16, 32, 64, 128], batch_size=8
        ),
    }
    return {k: found[k] for k in ("MLP", "Transformer (own SDPA)")} if quick else found


# ---- the bugs ------------------------------------------------------------------------------------
# Each: (name, models it applies to, how it is planted, where it lives as point patterns).
# Planting goes through what a user controls (the optimizer built from the plan's groups, the
# model's own switches, the plan's options) or, for the two faults of the library's own past
# (biases, MHA), by switching off the library's fix for the duration of the check.


def _optimizer(change: Callable[[dict], list[dict]]) -> Callable[[list[dict]], torch.optim.Optimizer]:
    return lambda groups: torch.optim.Adam([h for g in groups for h in change(g)])


def _hidden_lr_not_scaled(base: int):
    return _optimizer(lambda g: [{**g, "lr": LR} if "hidden" in g["roles"] else g])


def _readout_lr_not_scaled(base: int):
    return _optimizer(lambda g: [{**g, "lr": LR} if g["roles"] == ["output"] else g])


def _input_lr_over_width(base: int):
    """The input layer's (or embedding's) LR divided by the width multiplier, as if it were hidden."""

    def change(g: dict) -> list[dict]:
        if "input" not in g["roles"]:
            return [g]
        matrices = [p for p in g["params"] if p.dim() > 1]  # the input tensors; the rest are vectors
        width = max(len(p) for p in g["params"] if p.dim() == 1)  # a vector's length is the width
        rest = [p for p in g["params"] if p.dim() == 1]
        return [{**g, "params": matrices, "lr": g["lr"] * base / width}] + (
            [{**g, "params": rest}] if rest else []
        )

    return _optimizer(change)


def _readout_init_not_scaled(base: int):
    def change(g: dict) -> list[dict]:
        if "output" in g["roles"]:
            with torch.no_grad():
                for p in g["params"]:
                    if p.dim() == 2:
                        p.mul_((p.shape[1] / base) ** 0.5)  # undo the plan's 1/sqrt(m_in): SP's init again
        return [g]

    return _optimizer(change)


@contextlib.contextmanager
def _library_fix_off(what: str) -> Iterator[None]:
    """Run the check as if the library did not make biases Theta(1) or MHA's logits 1/d_head."""
    if what == "bias":
        original = init_law.user_growth
        patched = lambda p, law, params, measured: (  # noqa: E731
            1.0 if p.role.value in ("vector", "fixed") else original(p, law, params, measured=measured)
        )
        with _swap(plan, "user_growth", patched):
            yield
    else:
        with _swap(plan, "fix_", lambda model, sites: None):
            yield


@contextlib.contextmanager
def _swap(module, name, value) -> Iterator[None]:
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)


SDPA = "Transformer (own SDPA)"
ALL = ("MLP", SDPA, "Transformer (nn.MultiheadAttention)", "CNN")
TRANSFORMERS = ("Transformer (own SDPA)", "Transformer (nn.MultiheadAttention)")
HIDDEN = {"MLP": ["layers.1", "layers.2"], "CNN": ["convs.1", "convs.2"]}
HIDDEN_T = ["blocks.*.attn.qkv", "blocks.*.attn.out", "blocks.*.up", "blocks.*.down", "blocks.*.self_attn",
            "blocks.*.linear*", "layers.*", "convs.*"]  # fmt: skip
READOUT = ["out", "head", "<output>"]
BUGS = [
    ("hidden LR not scaled", ALL, {"optimizer": _hidden_lr_not_scaled}, HIDDEN_T),
    ("readout LR not scaled", ALL, {"optimizer": _readout_lr_not_scaled}, READOUT),
    ("readout init not scaled", ALL, {"optimizer": _readout_init_not_scaled}, READOUT),
    ("input LR divided by width", ALL, {"optimizer": _input_lr_over_width},
     ["layers.0", "convs.0", "embed", "pos"]),
    ("Adam's rules under SGD", ALL, {"optimizer": lambda groups: torch.optim.SGD(groups), "lr": 0.1}, ["*"]),
    ("attention 1/sqrt(d) via SDPA", ("Transformer (own SDPA)",), {"shape": {"base_d_head": None}},
     ["blocks.*.attn.sdpa"]),
    ("attention 1/sqrt(d) via MHA", ("Transformer (nn.MultiheadAttention)",), {"library": "mha"},
     ["blocks.*.self_attn.mha"]),
    ("factor on the embeddings in forward", (SDPA,), {"shape": {"embedding_factor": "sqrt"}},
     ["<input of blocks.0>"]),
    ("factor on the logits in forward", (SDPA,), {"shape": {"logit_factor": "sqrt"}}, ["<output>"]),
    ("tied readout without its 1/m", (SDPA,), {"shape": {"tie": "functional"}}, ["<output>"]),
    ("biases left shrinking with fan_in", ("MLP", "CNN", "Transformer (nn.MultiheadAttention)"),
     {"library": "bias"}, ["layers.*", "convs.*", "blocks.*"]),
    ("constant-std init read as fan_in", ("Transformer (own SDPA)",),
     {"shape": {"init_std": 0.02}, "init_law": "fan_in"}, HIDDEN_T + READOUT),
]  # fmt: skip


def check(model: dict, seed: int = 0, seeds: int = 3, **bug) -> mutransfer.CoordCheck:
    widths = model.get("widths", [32, 64, 128, 256])
    settings = dict(widths=widths, data=model["data"], seeds=seeds, seed=seed)
    if callable(bug.get("optimizer")) and bug["optimizer"].__name__.startswith("_"):
        bug["optimizer"] = bug["optimizer"](widths[0])  # a bug that needs the base width to plant
    settings |= {k: model[k] for k in ("batch_size",) if k in model}
    shape = {**model["shape"], **bug.pop("shape", {})}
    shape = {k: v for k, v in shape.items() if v is not None}
    library = bug.pop("library", None)
    with _library_fix_off(library) if library else contextlib.nullcontext(), warnings.catch_warnings():
        warnings.simplefilter("ignore", MutransferWarning)  # the plan's own warnings are not the verdict
        return mutransfer.coord_check(model["factory"], shape=shape, **settings, **bug)


def located(result: mutransfer.CoordCheck, patterns: list[str]) -> bool:
    causes = [m.name for m in result.failures if m.cause] or [m.name for m in result.failures]
    return any(fnmatch.fnmatchcase(n, p) for n in causes for p in patterns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="two models, two bugs, 2 seed sets")
    parser.add_argument("--out", type=Path, help="results folder (default: benchmarks/results)")
    parser.add_argument("--seed-sets", type=int, default=20, help="correct-muP checks per model (default 20)")
    args = parser.parse_args()
    out = args.out or RESULTS
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    found = models(args.quick)
    bugs = BUGS[:2] if args.quick else BUGS
    seed_sets = 2 if args.quick else args.seed_sets
    rows = []
    print(f"{'bug':38s} {'model':36s} caught located  cause named by the check")
    for name, applies, planted, where in bugs:
        for model_name in (m for m in applies if m in found):
            t0 = time.monotonic()
            result = check(found[model_name], **dict(planted))
            causes = sorted({m.name for m in result.failures if m.cause})
            row = dict(bug=name, model=model_name, caught=not result.passed, located=located(result, where),
                       causes=causes, seconds=round(time.monotonic() - t0, 1))  # fmt: skip
            rows.append(row)
            named = ", ".join(causes)[:60]
            print(
                f"{name:38s} {model_name:36s} {row['caught']!s:6s} {row['located']!s:7s}  {named}", flush=True
            )
    correct = []
    for model_name, model in found.items():
        failures = []
        for k in range(seed_sets):
            result = check(model, seed=100 + 3 * k)  # 3 seeds a set, no seed shared between sets
            if not result.passed:
                failures.append({"seed": 100 + 3 * k, "failed": [m.name for m in result.failures]})
        correct.append({"model": model_name, "checks": seed_sets, "false_failures": len(failures),
                        "failed": failures})  # fmt: skip
        print(f"correct muP, {model_name}: {len(failures)} false failures in {seed_sets} checks", flush=True)
    record = {
        **provenance(start),
        "setting": "coord_check defaults: 4 sizes over 8x (CNN 16..128), 4 steps, 3 seeds, adam lr 3e-3",
        "threshold": mutransfer.coord.GROWTH_THRESHOLD,
        "bugs": rows,
        "correct": correct,
    }
    name = "verdict-quick.json" if args.quick else "verdict.json"
    (out / name).write_text(json.dumps(record, indent=1))
    caught = sum(r["caught"] for r in rows)
    located_ = sum(r["located"] for r in rows)
    false = sum(c["false_failures"] for c in correct)
    checks = sum(c["checks"] for c in correct)
    print(f"\ncaught {caught}/{len(rows)}, located {located_}/{len(rows)}; false failures {false}/{checks}")
    print(f"results in {out / name} ({time.monotonic() - start:.0f} s)")


if __name__ == "__main__":
    main()
