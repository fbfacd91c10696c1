"""Where to put the coordinate check's threshold, and the smallest check whose verdict holds.

    python benchmarks/coord_thresholds.py            # ~4 min on one thread
    python benchmarks/coord_thresholds.py --quick    # one learning rate, one setting: a minute

Correct muP on six models (the reference MLP, GPT and tied GPT; from ``foreign.py`` a
transformer with its own SDPA attention, one of ``nn.TransformerEncoderLayer`` blocks, a CNN)
and a fault for each direction the verdict judges, at Adam learning rates 1e-3..3e-2 and at
several sizes of the check (sizes and their span, steps, seeds). For every run it records the
exponents the verdict compares with the threshold, in both directions: the largest growth
(``rms``, ``change``, ``update``, ``scale``, the parameters' init against muP's law, and a
stream point's move against the point before it) and the largest shrink (a module's own
``update``, the init, a stream point's move). A threshold works where every correct run stays
inside it on both sides and every fault lies outside where it lives. Over depth: the GPT at
width 32 with 2..16 blocks, CompleteP (alpha 1 and 1/2) against standard parametrization.

Results: results/coord_thresholds.json; the tables in benchmarks/README.md come from it.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import sys
import time
import warnings
from pathlib import Path

import torch

import mutransfer
from mutransfer.coord import GROWTH_THRESHOLD
from mutransfer.data import stdlib
from mutransfer.errors import MutransferWarning
from mutransfer.models import GPT, MLP

sys.path.insert(0, str(Path(__file__).parent))
import foreign
from transfer import RESULTS, first_available, provenance

# (sizes, steps, seeds): the default first, then smaller checks down to one seed and one step
SETTINGS = [
    ((32, 64, 128, 256), 4, 3),
    ((32, 64, 128, 256), 3, 2),
    ((32, 64, 128, 256), 2, 2),
    ((32, 64, 128, 256), 3, 1),
    ((32, 64, 128, 256), 1, 3),
    ((32, 64, 128), 3, 2),
]
DEPTHS = [2, 4, 8, 16]
NARROW_CNN = (8, 16, 32, 64)  # channels: below the range where muP's limit shows for this CNN


def hidden_lr_not_scaled(lr: float):
    """muP everywhere except hidden matrices, which keep the base learning rate."""
    return lambda groups: torch.optim.Adam([{**g, "lr": lr} if "hidden" in g["roles"] else g for g in groups])


def scenarios(lr: float) -> list[tuple]:
    """(name, factory, data, settings, where a fault lives or None when correct, CNN sizes)."""
    images, text = first_available("mnist-5k", "digits"), stdlib(block_size=32)
    mlp = {"batch_size": 32}
    gpt = {"shape": {"base_d_head": 8, "block_size": 32}}
    own = {"shape": {"block_size": 32, "base_d_head": 8}}
    sgd = {"optimizer": lambda groups: torch.optim.SGD(groups), "lr": 30 * lr}
    return [
        ("MLP muP", MLP, images, mlp, None),
        ("GPT muP", GPT, text, gpt, None),
        ("GPT muP tied", GPT, text, {"shape": {**gpt["shape"], "tie_embeddings": True}}, None),
        ("own-SDPA transformer muP", foreign.Transformer, text, own, None),
        ("MHA transformer muP", foreign.MHATransformer, text, {"shape": {"block_size": 32}}, None),
        ("CNN muP", foreign.CNN, images, {"batch_size": 8, "sizes": (16, 32, 64, 128)}, None),
        ("MLP standard", MLP, images, {**mlp, "parametrization": "sp"}, ["readout"]),
        ("MLP hidden lr not scaled", MLP, images, {**mlp, "optimizer": hidden_lr_not_scaled(lr)},
         ["hidden.*"]),
        ("own-SDPA attention 1/sqrt(d)", foreign.Transformer, text, {"shape": {"block_size": 32}},
         ["*.attn.sdpa"]),
        ("MLP Adam's rules under SGD", MLP, images, {**mlp, **sgd}, ["input", "hidden.*"]),
        ("own-SDPA factor on logits", foreign.Transformer, text,
         {"shape": {**own["shape"], "logit_factor": "sqrt"}}, ["<output>"]),
    ]  # fmt: skip


def extremes(result: mutransfer.CoordCheck, where: list[str] | None) -> tuple[float, float, str]:
    """The largest growth and largest shrink the verdict judges, among ``where`` (all if None),
    and the point of the one further from 0."""
    judged = [
        m for m in result.modules if where is None or any(fnmatch.fnmatchcase(m.name, p) for p in where)
    ]
    high, low, at_high, at_low = -math.inf, math.inf, "", ""
    for m in judged:
        ups = [m.rms_slope, m.update_slope, m.scale_slope, m.init_slope]
        # shrinking is judged at the last step, on a module's own update (a stream point's move
        # against the point before it is judged too, but a result does not keep that pair)
        downs = [result.slopes(m.name, "update")[-1], m.init_slope]
        if result.axis != "depth" or m.kind == "block":  # over depth, change is judged on the stream only
            ups.append(m.change_slope)
        up = max((s for s in ups if s == s), default=-math.inf)
        down = min((s for s in downs if s == s), default=math.inf)
        if up > high:
            high, at_high = up, m.name
        if down < low:
            low, at_low = down, m.name
    return high, low, at_high if abs(high) >= abs(low) else at_low


def _setting(sizes, steps, seeds) -> str:
    return f"{len(sizes)} sizes over {sizes[-1] // sizes[0]}x, {steps} steps, {seeds} seeds"


def run(name, factory, data, settings, lr, sizes, steps, seeds):
    settings = dict(settings)
    own_sizes = settings.pop("sizes", None)
    if own_sizes is not None:  # the CNN's channels: the same span and count, smaller
        sizes = own_sizes[: len(sizes)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MutransferWarning)
        return mutransfer.coord_check(
            factory, widths=list(sizes), data=data, steps=steps, seeds=seeds, **{"lr": lr, **settings}
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one learning rate, the default setting")
    parser.add_argument("--out", type=Path, help="results folder (default: benchmarks/results)")
    args = parser.parse_args()
    out = args.out or RESULTS
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    lrs = [1e-2] if args.quick else [1e-3, 3e-3, 1e-2, 3e-2]
    settings = SETTINGS[:1] if args.quick else SETTINGS
    rows = []
    print(f"{'scenario':30s} {'lr':>6s} {'setting':>22s} {'grow':>6s} {'shrink':>7s}  verdict  where")
    for sizes, steps, seeds in settings:
        for lr in lrs:
            for name, factory, data, kwargs, fault in scenarios(lr):
                result = run(name, factory, data, kwargs, lr, sizes, steps, seeds)
                high, low, at = extremes(result, fault)
                flagged = fault is None or any(
                    not m.passed and any(fnmatch.fnmatchcase(m.name, p) for p in fault)
                    for m in result.modules
                )
                setting = f"{len(sizes)}x{sizes[-1] // sizes[0]} {steps}st {seeds}sd"
                rows.append(dict(scenario=name, lr=lr, setting=_setting(sizes, steps, seeds),
                                 sizes=list(result.sizes), steps=steps, seeds=seeds, correct=fault is None,
                                 grow=high, shrink=low, at=at, passed=result.passed,
                                 flagged_where_expected=flagged))  # fmt: skip
                verdict = "pass" if result.passed else "FAIL"
                print(
                    f"{name:30s} {lr:6.0e} {setting:>22s} {high:+6.2f} {low:+7.2f}  {verdict:7s}  {at}",
                    flush=True,
                )
    for lr in [] if args.quick else lrs:  # a CNN too narrow for muP's limit to show: not in the counts
        sizes, steps, seeds = NARROW_CNN, *SETTINGS[0][1:]
        images = first_available("mnist-5k", "digits")
        result = run("CNN muP", foreign.CNN, images, {"batch_size": 8}, lr, sizes, steps, seeds)
        high, low, at = extremes(result, None)
        rows.append(dict(scenario="CNN muP, 8 to 64 channels", lr=lr, setting="below muP's reach",
                         sizes=list(result.sizes), steps=steps, seeds=seeds, correct=True, grow=high,
                         shrink=low, at=at, passed=result.passed, flagged_where_expected=True))  # fmt: skip
        print(f"{'CNN muP, 8 to 64 channels':30s} {lr:6.0e} {'':>22s} {high:+6.2f} {low:+7.2f}  "
              f"{'pass' if result.passed else 'FAIL':7s}  {at}", flush=True)  # fmt: skip
    text = stdlib(block_size=32)
    for lr in lrs:
        for name, kw, fault in (
            ("GPT CompleteP alpha 1", {"alpha": 1.0}, None),
            ("GPT CompleteP alpha 1/2", {"alpha": 0.5}, None),
            ("GPT standard over depth", {"parametrization": "sp"}, ["blocks.*"]),
        ):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", MutransferWarning)
                shape = {"width": 32, "block_size": 32}
                result = mutransfer.coord_check(
                    GPT,
                    depths=DEPTHS,
                    residual=GPT.residual,
                    data=text,
                    shape=shape,
                    steps=4,
                    seeds=3,
                    lr=lr,
                    **kw,
                )
            high, low, at = extremes(result, fault)
            flagged = fault is None or not result.passed
            rows.append(dict(scenario=name, axis="depth", lr=lr, correct=fault is None, grow=high, shrink=low,
                             at=at, passed=result.passed, flagged_where_expected=flagged))  # fmt: skip
            verdict = "pass" if result.passed else "FAIL"
            setting = "depths 2..16 4st 3sd"
            print(f"{name:30s} {lr:6.0e} {setting:>22s} {high:+6.2f} {low:+7.2f}  {verdict:7s}  {at}")
    summary = {}
    for sizes, steps, seeds in settings:
        here = [r for r in rows if r.get("setting") == _setting(sizes, steps, seeds)]
        correct = [r for r in here if r["correct"]]
        faults = [r for r in here if not r["correct"]]
        key = _setting(sizes, steps, seeds)
        summary[key] = {
            "correct_largest_growth": max(r["grow"] for r in correct),
            "correct_largest_shrink": min(r["shrink"] for r in correct),
            "false_failures": sum(not r["passed"] for r in correct),
            "correct_runs": len(correct),
            "faults_missed": sum(r["passed"] or not r["flagged_where_expected"] for r in faults),
            "fault_runs": len(faults),
        }
        s = summary[key]
        span = f"[{s['correct_largest_shrink']:+.2f}, {s['correct_largest_growth']:+.2f}]"
        false, missed = (
            f"{s['false_failures']}/{s['correct_runs']}",
            f"{s['faults_missed']}/{s['fault_runs']}",
        )
        print(f"\n{key}: correct muP within {span}; false failures {false}, faults missed {missed}")
    record = {**provenance(start), "threshold": GROWTH_THRESHOLD, "rows": rows, "summary": summary}
    name = "coord_thresholds-quick.json" if args.quick else "coord_thresholds.json"
    (out / name).write_text(json.dumps(record, indent=1))
    print(f"results in {out / name} ({time.monotonic() - start:.0f} s)")


if __name__ == "__main__":
    main()
