"""Tune on a narrow proxy, train the wide target once: how close does it get, for what cost?

    python benchmarks/sweep_transfer.py            # reference MLP, width 128 -> 1024, ~6 min on 2 cores
    python benchmarks/sweep_transfer.py --quick    # tiny, seconds (CI)

Four ways to get the target's hyperparameters, each scored by the target's validation loss
(mean over 2 seeds, the same protocol as benchmarks/transfer.py's MLP grid):

- **muP, tuned multipliers**: a TPE sweep on the proxy over the LR, the output and input
  multipliers and the init scale, transferred by ``mutransfer transfer``;
- **muP, LR only**: the same with the learning rate alone (multipliers 1);
- **standard, LR copied**: the proxy's best LR (the proxy is the muP base, so its sweep is the
  standard one too) reused unchanged at the target: what people do without muP;
- **standard, tuned at the target**: every LR of the grid trained at the target itself, the
  expensive reference.

The cost of each is the FLOPs its tuning spent as a fraction of one target run. Results go to
RESULTS/sweep_transfer.json with date, machine and command.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transfer import first_available, provenance  # benchmarks/transfer.py, beside this script

import mutransfer
from mutransfer.setup import ModelSetup, TrainSetup
from mutransfer.sweep import Range, SweepConfig, sweep
from mutransfer.train import train

RESULTS = Path(__file__).parent / "results"
END = "\r" if sys.stderr.isatty() else "\n"  # progress lines: rewritten in place on a terminal


def protocol(quick: bool) -> dict:
    if quick:
        return dict(data="digits", proxy=32, target=128, steps=60, batch_size=32, trials=8, log2_lrs=[-9, -3])
    return dict(
        data=first_available("fashion-mnist", "mnist-5k", "digits").name,
        proxy=128,
        target=1024,
        steps=300,
        batch_size=128,
        trials=60,
        log2_lrs=[-12, -3],
    )


def target_loss(make: callable, p: dict, data, seeds: int) -> float:
    """Mean validation loss of the target over ``seeds`` seeds; ``make(seed)`` builds it."""
    losses = []
    for seed in range(seeds):
        model, opt = make(seed)
        losses.append(
            train(model, opt, data, steps=p["steps"], batch_size=p["batch_size"], seed=seed).val_loss
        )
    return statistics.mean(losses)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny widths and budgets: seconds, for CI")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per target run (default 2)")
    parser.add_argument("--out", type=Path, help="results folder (default: benchmarks/results)")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    p = protocol(args.quick)
    out = args.out or (Path(tempfile.mkdtemp(prefix="sweep-transfer-")) if args.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="sweep-transfer-journals-"))
    data = mutransfer.data.load(p["data"])
    start = time.monotonic()
    lo, hi = (2.0**k for k in p["log2_lrs"])
    mults = Range(1 / 16, 16.0, log=True)
    spaces = {
        "muP, tuned multipliers": {
            "lr": Range(lo, hi, log=True),
            "output_mult": mults,
            "input_mult": mults,
            "init_scale": Range(0.25, 4.0, log=True),
        },
        "muP, LR only": {"lr": Range(lo, hi, log=True)},
    }
    rows = []
    transfers = {}
    for name, space in spaces.items():
        config = SweepConfig(
            factory="mutransfer.models:MLP",
            data=p["data"],
            proxy={"width": p["proxy"]},
            target={"width": p["target"]},
            steps=p["steps"],
            batch_size=p["batch_size"],
            trials=p["trials"] if len(space) > 1 else max(4, p["trials"] // 3),
            space=space,
            storage=str(work / f"{len(space)}.journal"),
        )
        sweep(config, progress=lambda s, n=name: print(f"  {n}: {s.line()}", file=sys.stderr, end=END))
        print(file=sys.stderr)
        t = mutransfer.transfer(config)
        transfers[name] = t
        loss = target_loss(lambda seed, t=t: t.build(seed=seed), p, data, args.seeds)
        rows.append(
            {"method": name, "hparams": dict(t.hparams), "cost": t.cost.fraction, "target_loss": loss}
        )
        print(
            f"{name}: target loss {loss:.4f}, tuning cost {t.cost.fraction:.1%} of one target run",
            file=sys.stderr,
        )
        if name == "muP, LR only":
            sp = mutransfer.transfer(config, parametrization="sp")
            loss = target_loss(lambda seed, t=sp: t.build(seed=seed), p, data, args.seeds)
            row = {"method": "standard, LR copied", "hparams": dict(sp.hparams), "cost": sp.cost.fraction}
            rows.append({**row, "target_loss": loss})
            print(f"standard, LR copied: target loss {loss:.4f}", file=sys.stderr)
    # the expensive reference: standard parametrization tuned on the target itself
    shape = {"width": p["target"], "in_features": data.in_features, "out_features": data.num_classes}
    grid = {}
    for k in range(p["log2_lrs"][0] + 1, p["log2_lrs"][1]):
        make = lambda seed, k=k: ModelSetup(factory=mutransfer.models.MLP).build(  # noqa: E731
            shape, tuned=False, plan=None, lr=2.0**k, training=TrainSetup(data=None), seed=seed
        )
        grid[k] = target_loss(make, p, data, args.seeds)
        print(f"  standard at the target, lr 2^{k}: {grid[k]:.4f}", file=sys.stderr)
    best = min(grid, key=grid.get)
    row = {
        "method": "standard, tuned at the target",
        "hparams": {"lr": 2.0**best},
        "cost": len(grid) * args.seeds,
    }
    rows.append({**row, "target_loss": grid[best]})
    reference = grid[best]
    print(
        f"\nMLP on {p['data']}, width {p['proxy']} -> {p['target']}, {p['steps']} steps, {args.seeds} seeds"
    )
    print(f"{'method':<32}{'target loss':>12}{'vs tuned at target':>20}{'tuning cost':>14}")
    for r in rows:
        r["vs_tuned_at_target"] = r["target_loss"] / reference - 1
        print(
            f"{r['method']:<32}{r['target_loss']:>12.4f}{r['vs_tuned_at_target']:>+20.2%}{r['cost']:>13.1%}"
        )
    record = {
        **provenance(start),
        "protocol": p,
        "seeds": args.seeds,
        "standard_grid_at_target": {f"2^{k}": v for k, v in grid.items()},
        "rows": rows,
    }
    path = out / ("sweep_transfer-quick.json" if args.quick else "sweep_transfer.json")
    path.write_text(json.dumps(record, indent=1, default=str))
    print(f"results written to {path}")


if __name__ == "__main__":
    main()
