"""How much of a full width x LR grid does successive halving need to find the same best LR?

    python benchmarks/pruning.py            # reference MLP, 4 widths x 8 LRs, ~4 min on 2 CPU cores
    python benchmarks/pruning.py --quick    # tiny, seconds (CI)

Both runs go through the sweep engine (``mutransfer.sweep``, grid search, journal storage):
once with no pruner (the full grid: every trial trains all its steps) and once per reduction
factor with successive halving among trials of the same width. Trials are deterministic (same
init, same batches), so a trial that survives pruning reports exactly the full grid's loss.
For each width it prints the best log2 LR found with pruning against the full grid's, and the
fraction of the full grid's compute (FLOPs counted per step, and wall time) pruning spent.
``rungs`` sets how early the first cut falls: at steps / reduction**rungs (the sweep's
default is 1). Each setting runs in several trial orders, since successive halving's cuts
depend on which trials came first. The target: the same best LR within one grid step at every
width; the script also prints the loss paid for the LR pruning picked (regret). Results go to
RESULTS/pruning.json with date, machine and command.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch
from transfer import first_available, provenance  # benchmarks/transfer.py, beside this script

from mutransfer.sweep import Range, SweepConfig, sweep
from mutransfer.sweep.runner import open_study
from mutransfer.sweep.space import grid_points
from mutransfer.sweep.storage import open_storage

RESULTS = Path(__file__).parent / "results"


def protocol(quick: bool) -> dict:
    if quick:
        return dict(data="digits", widths=[16, 64], log2_lrs=list(range(-9, -3)), steps=60, batch_size=32)
    return dict(
        data=first_available("fashion-mnist", "mnist-5k", "digits").name,
        widths=[128, 256, 512, 1024],
        log2_lrs=list(range(-11, -3)),
        steps=300,
        batch_size=128,
    )


def run(p: dict, storage: Path, reduction: int | None, rungs: int = 2, order: int = 0) -> dict:
    """One grid through the sweep engine; per width, the best log2 LR and the compute spent.
    Successive halving's cuts depend on the order trials arrive in: ``order`` seeds it."""
    lrs = p["log2_lrs"]
    config = SweepConfig(
        factory="mutransfer.models:MLP",
        data=p["data"],
        proxy={"width": p["widths"][0]},
        target={"width": 2 * p["widths"][-1]},
        steps=p["steps"],
        batch_size=p["batch_size"],
        sampler="grid",
        pruner="none" if reduction is None else "halving",
        reduction=reduction or 3,
        min_steps=max(1, p["steps"] // (reduction or 3) ** rungs),
        space={"width": p["widths"], "lr": Range(2.0 ** lrs[0], 2.0 ** lrs[-1], log=True, points=len(lrs))},
        storage=str(storage),
        study="pruning",
    )
    # queue the grid in this run's order first; the sweep then finds every point already queued
    study = optuna.create_study(study_name=config.study, storage=open_storage(str(storage)))
    points = grid_points(config.space)
    random.Random(order).shuffle(points)
    for point in points:
        study.enqueue_trial(point)
    label = (
        "full grid" if reduction is None else f"halving: reduction {reduction}, {rungs} rungs, order {order}"
    )
    end = "\r" if sys.stderr.isatty() else "\n"
    sweep(config, progress=lambda s: print(f"  {label}: {s.line()}", file=sys.stderr, end=end))
    print(file=sys.stderr)
    trials = open_study(config).get_trials()
    best = {}
    for width in p["widths"]:
        done = [t for t in trials if t.params["width"] == width and t.state.name == "COMPLETE"]
        top = min(done, key=lambda t: t.value)
        best[width] = {"log2_lr": round(math.log2(top.params["lr"]), 6), "loss": top.value}
    return {
        "best": best,
        "flops": sum(t.user_attrs.get("flops", 0.0) for t in trials),
        "seconds": sum(t.user_attrs.get("seconds", 0.0) for t in trials),
        "trials": len(trials),
        "pruned": sum(t.state.name == "PRUNED" for t in trials),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny widths and budgets: seconds, for CI")
    parser.add_argument("--reductions", nargs="+", type=int, default=[2, 3, 4])
    parser.add_argument(
        "--rungs",
        nargs="+",
        type=int,
        default=[1, 2],
        help="pruning points before the full budget: the first is at steps / reduction**rungs",
    )
    parser.add_argument("--orders", type=int, default=3, help="trial orders tried per setting (default 3)")
    parser.add_argument("--out", type=Path, help="results folder (default: benchmarks/results)")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    p = protocol(args.quick)
    out = args.out or (Path(tempfile.mkdtemp(prefix="pruning-")) if args.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="pruning-journals-"))
    print(
        f"MLP on {p['data']}: widths {p['widths']} x log2 LRs {p['log2_lrs']}, {p['steps']} steps",
        file=sys.stderr,
    )
    start = time.monotonic()
    full = run(p, work / "full.journal", None)
    rows = []
    settings = [(r, k) for k in args.rungs for r in args.reductions]
    for (reduction, rungs), order in itertools.product(settings, range(args.orders)):
        pruned = run(p, work / f"halving-{reduction}-{rungs}-{order}.journal", reduction, rungs, order)
        gaps = {w: pruned["best"][w]["log2_lr"] - full["best"][w]["log2_lr"] for w in p["widths"]}
        rows.append(
            {
                "reduction": reduction,
                "rungs": rungs,
                "order": order,
                "first_rung_step": max(1, p["steps"] // reduction**rungs),
                "flops_fraction": pruned["flops"] / full["flops"],
                "seconds_fraction": pruned["seconds"] / full["seconds"],
                "pruned_trials": pruned["pruned"],
                "trials": pruned["trials"],
                "best": pruned["best"],
                "log2_lr_gap": gaps,
                # the loss paid at each width for the LR pruning picked, against the full grid's best
                "loss_regret": {
                    w: pruned["best"][w]["loss"] / full["best"][w]["loss"] - 1 for w in p["widths"]
                },
                "same_best_within_one_step": all(abs(g) <= 1 + 1e-9 for g in gaps.values()),
            }
        )
    print(f"\nbest log2 LR per width, full grid: {[full['best'][w]['log2_lr'] for w in p['widths']]}")
    head = f"{'reduction':>9}  {'rungs':>5}  {'FLOPs':>6}  {'wall':>6}"
    print(f"{head}  within one step  worst regret  log2 LR gaps per width, each order")
    summary = []
    for reduction, rungs in settings:
        mine = [r for r in rows if (r["reduction"], r["rungs"]) == (reduction, rungs)]
        met = sum(r["same_best_within_one_step"] for r in mine)
        flops = statistics.mean(r["flops_fraction"] for r in mine)
        wall = statistics.mean(r["seconds_fraction"] for r in mine)
        worst = max(max(r["loss_regret"].values()) for r in mine)
        gaps = "; ".join(",".join(f"{r['log2_lr_gap'][w]:+g}" for w in p["widths"]) for r in mine)
        print(
            f"{reduction:>9}  {rungs:>5}  {flops:>6.1%}  {wall:>6.1%}  {met:>2}/{len(mine)} orders     "
            f"{worst:>+11.2%}  {gaps}"
        )
        summary.append(
            {
                "reduction": reduction,
                "rungs": rungs,
                "flops_fraction_mean": flops,
                "seconds_fraction_mean": wall,
                "orders_within_one_step": met,
                "worst_loss_regret": worst,
                "orders": len(mine),
            }
        )
    record = {
        **provenance(start),
        "protocol": p,
        "full_grid": full,
        "summary": summary,
        "halving": rows,
    }
    path = out / ("pruning-quick.json" if args.quick else "pruning.json")
    path.write_text(json.dumps(record, indent=1, default=str))
    print(f"results written to {path}")


if __name__ == "__main__":
    main()
