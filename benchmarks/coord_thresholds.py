"""Where to put the coordinate check's growth threshold: measure correct muP against known faults.

    python benchmarks/coord_thresholds.py            # ~3 min on 2 CPU cores
    python benchmarks/coord_thresholds.py --quick    # one learning rate, seconds

For the reference MLP (mnist-5k) and GPT (stdlib bytes), widths 32..256, 4 steps, 3 seeds,
at several Adam learning rates, it runs correct muP and each fault the check must catch, and
prints the largest growth exponent over all modules of every correct model, and for every
fault the largest exponent among the modules where the fault lives. A good threshold sits
between the two columns. The same over depth: the GPT at width 32 with 2..16 blocks, CompleteP
(alpha 1 and 1/2) against standard parametrization, whose residual stream grows with depth. It
also times the check of the reference GPT at its default block size (the issue's budget: under
60 s). Results go to benchmarks/results/coord_thresholds.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import torch

import mutransfer
from mutransfer.coord import GROWTH_THRESHOLD
from mutransfer.data import mnist_5k, stdlib
from mutransfer.models import GPT, MLP

WIDTHS = [32, 64, 128, 256]
DEPTHS = [2, 4, 8, 16]
RESULTS = Path(__file__).parent / "results"


def hidden_lr_not_scaled(lr: float):
    """muP everywhere except hidden matrices, which keep the base learning rate."""
    return lambda groups: torch.optim.Adam([{**g, "lr": lr} if "hidden" in g["roles"] else g for g in groups])


def scenarios(lr: float):
    """(name, factory, data, settings, modules where the fault lives or None when correct)."""
    images, text = mnist_5k(), stdlib(block_size=64)
    mlp = {"batch_size": 32}
    gpt_mup = {"shape": {"base_d_head": 8}}
    hidden_gpt = ["*.qkv", "*.proj", "*.fc", "*.fc_proj"]
    return [
        ("MLP muP", MLP, images, mlp, None),
        ("MLP standard", MLP, images, {**mlp, "parametrization": "sp"}, ["readout"]),
        (
            "MLP hidden lr not scaled",
            MLP,
            images,
            {**mlp, "optimizer": hidden_lr_not_scaled(lr)},
            ["hidden.*"],
        ),
        ("GPT muP", GPT, text, gpt_mup, None),
        ("GPT muP tied", GPT, text, {"shape": {"base_d_head": 8, "tie_embeddings": True}}, None),
        ("GPT standard", GPT, text, {"parametrization": "sp"}, ["lm_head"]),
        ("GPT attention 1/sqrt(d)", GPT, text, {}, ["*.attn.logits"]),
        (
            "GPT hidden lr not scaled",
            GPT,
            text,
            {**gpt_mup, "optimizer": hidden_lr_not_scaled(lr)},
            hidden_gpt,
        ),
    ]


def depth_scenarios():
    """(name, settings, modules where the fault lives or None when correct), over DEPTHS."""
    return [
        ("GPT CompleteP alpha 1", {"alpha": 1.0}, None),
        ("GPT CompleteP alpha 1/2", {"alpha": 0.5}, None),
        ("GPT standard over depth", {"parametrization": "sp"}, ["blocks.*"]),
    ]


def judged_slope(m) -> float:
    """The worst exponent the verdict looks at: over depth, 'change' inside the blocks is not judged."""
    slopes = [m.rms_slope, m.update_slope, m.scale_slope]
    if "*" not in m.name or m.kind == "block":
        slopes.append(m.change_slope)
    return max(s for s in slopes if s == s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one learning rate, 2 seeds, 2 steps")
    args = parser.parse_args()
    lrs = [1e-2] if args.quick else [1e-3, 3e-3, 1e-2, 3e-2]
    seeds, steps = (2, 2) if args.quick else (3, 4)
    from fnmatch import fnmatchcase

    rows = []
    print(f"{'scenario':28s} {'lr':>7s}  {'largest exponent':>16s}  passed  where")
    for lr in lrs:
        for name, factory, data, settings, fault in scenarios(lr):
            result = mutransfer.coord_check(
                factory, widths=WIDTHS, data=data, steps=steps, seeds=seeds, lr=lr, **settings
            )
            where = [m for m in result.modules if fault is None or any(fnmatchcase(m.name, p) for p in fault)]
            worst = max(where, key=lambda m: m.slope)
            rows.append(
                {
                    "scenario": name,
                    "lr": lr,
                    "correct": fault is None,
                    "largest_exponent": worst.slope,
                    "module": worst.name,
                    "passed": result.passed,
                    "flagged_where_expected": fault is None or any(not m.passed for m in where),
                }
            )
            print(
                f"{name:28s} {lr:7.0e}  {worst.slope:+16.2f}  {result.passed!s:6s}  {worst.name}", flush=True
            )

    text = stdlib(block_size=64)
    for lr in lrs:
        for name, settings, fault in depth_scenarios():
            result = mutransfer.coord_check(
                GPT,
                depths=DEPTHS,
                residual=GPT.residual,
                data=text,
                shape={"width": 32},
                steps=steps,
                seeds=seeds,
                lr=lr,
                **settings,
            )
            where = [m for m in result.modules if fault is None or any(fnmatchcase(m.name, p) for p in fault)]
            worst = max(where, key=judged_slope)
            rows.append(
                {
                    "scenario": name,
                    "axis": "depth",
                    "lr": lr,
                    "correct": fault is None,
                    "largest_exponent": judged_slope(worst),
                    "module": worst.name,
                    "passed": result.passed,
                    "flagged_where_expected": fault is None or any(not m.passed for m in where),
                }
            )
            print(
                f"{name:28s} {lr:7.0e}  {judged_slope(worst):+16.2f}  {result.passed!s:6s}  {worst.name}",
                flush=True,
            )

    correct = [r["largest_exponent"] for r in rows if r["correct"]]
    faults = [r["largest_exponent"] for r in rows if not r["correct"]]
    print(f"\ncorrect muP, largest exponent anywhere:  {max(correct):+.2f}")
    print(f"faults, smallest exponent where the fault lives: {min(faults):+.2f}")
    print(f"threshold in mutransfer.coord: {GROWTH_THRESHOLD}")
    misjudged = [r for r in rows if r["passed"] != r["correct"] or not r["flagged_where_expected"]]
    print(f"misjudged: {len(misjudged)} of {len(rows)}" + "".join(f"\n  {r}" for r in misjudged))

    start = time.perf_counter()
    result = mutransfer.coord_check(
        GPT, widths=WIDTHS, data=stdlib(block_size=128), steps=4, shape={"base_d_head": 8}
    )
    seconds = time.perf_counter() - start
    print(
        f"\nreference GPT check, widths {WIDTHS}, 4 steps, 3 seeds, block 128, batch 8: {seconds:.1f} s "
        f"(budget 60 s), passed={result.passed}"
    )
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        out = {
            "date": date.today().isoformat(),
            "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
            "torch": torch.__version__,
            "widths": WIDTHS,
            "depths": DEPTHS,
            "steps": steps,
            "seeds": seeds,
            "threshold": GROWTH_THRESHOLD,
            "rows": rows,
            "gpt_check_seconds": seconds,
        }
        (RESULTS / "coord_thresholds.json").write_text(json.dumps(out, indent=1))
        print(f"written to {RESULTS / 'coord_thresholds.json'}")


if __name__ == "__main__":
    main()
