"""The axes muP does not cover: how the best LR moves with training length and batch size, a
power-law fit of it, and whether the fit beats reusing the proxy's LR on a held-out size.

    python benchmarks/axes.py                  # the full protocol (~25 min on 2 CPU cores; resumes)
    python benchmarks/axes.py --quick          # tiny sizes, seconds (tests)
    python benchmarks/axes.py --device cuda

The reference GPT (2 blocks, 4 heads) at width 64, muP from base width 32, on Shakespeare (else the
CPython standard library's source), byte tokens in windows of 128, Adam, warmup then cosine:

- steps: 100, 200, 400, 800 steps of batch 8 (fitted) and 1600 (held out), 9 LRs 2^-12..2^-4;
- batch size: 4, 8, 16, 32 (fitted) and 64 (held out) for 200 steps, the same LRs, every cell
  scored on the same validation examples.

On each axis the optima of the fitted sizes give ``log2 lr* = a + e log2(size)``; then the held-out
size trains (a) at the smallest size's optimum, unchanged (the proxy's LR reused: the grid's
transfer run) and (b) at the fit's prediction, and each is scored against the held-out size's
best loss (the best of its grid row and the two runs). Results: RESULTS/axes-<axis>.json (the
grids, resumable), RESULTS/axes.json (fits and regrets, with date, machine and command).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

import mutransfer
from mutransfer.axis import width_plan
from mutransfer.fit import fit_power_law
from mutransfer.models import GPT
from mutransfer.plot import plot_grid
from mutransfer.setup import ModelSetup, TrainSetup
from mutransfer.train import train

sys.path.insert(0, str(Path(__file__).parent))
from transfer import RESULTS, first_available, progress, provenance


def protocol(quick: bool) -> dict:
    if quick:
        return dict(
            data=first_available("stdlib", block_size=32),
            shape={"width": 16, "base_d_head": 4, "block_size": 32},
            base=8,
            lrs=[2.0**k for k in range(-10, 0)],  # wide enough that short runs find an inner optimum
            axes={"steps": ([10, 20, 40], 80), "batch_size": ([2, 4, 8], 16)},
            steps=20,
            batch_size=4,
            eval_batches=2,
        )
    return dict(
        data=first_available("shakespeare", "stdlib", block_size=128),
        shape={"width": 64, "base_d_head": 8},  # muP's attention scale, standard's at width 32
        base=32,
        lrs=[2.0**k for k in range(-12, -3)],
        axes={"steps": ([100, 200, 400, 800], 1600), "batch_size": ([4, 8, 16, 32], 64)},
        steps=200,
        batch_size=8,
        eval_batches=16,
    )


def held_out_run(p: dict, axis: str, size: int, lr: float, device: str) -> float:
    """The held-out size at ``lr``, trained and scored as the grid's cells are (seed-mean)."""
    plan = width_plan(GPT, p["shape"], "width", p["base"], p["shape"]["width"])
    settings = {"steps": p["steps"], "batch_size": p["batch_size"], axis: size}
    largest = size if axis == "batch_size" else None  # the batch grid's evaluation batches
    losses = []
    for seed in range(p["seeds"]):
        setup, training = ModelSetup(factory=GPT), TrainSetup(data=None, device=device)
        model, opt = setup.build(p["shape"], tuned=True, plan=plan, lr=lr, training=training, seed=seed)
        run = train(
            model,
            opt,
            p["data"],
            seed=seed,
            eval_batches=p["eval_batches"],
            eval_batch_size=largest,
            device=device,
            **settings,
        )
        losses.append(run.val_loss)
    return sum(losses) / len(losses)


def one_axis(p: dict, axis: str, out: Path, device: str) -> dict:
    fitted, held = p["axes"][axis]
    settings = {"steps": p["steps"], "batch_size": p["batch_size"], axis: [*fitted, held]}
    result = mutransfer.grid(
        GPT,
        lrs=p["lrs"],
        data=p["data"],
        shape=p["shape"],
        base=p["base"],
        eval_batches=p["eval_batches"],
        seeds=p["seeds"],
        path=out / f"axes-{axis}.json",
        device=device,
        progress=progress(axis),
        **settings,
    )
    plot_grid(result, out / f"axes-{axis}.png")
    print(result.table(), end="\n\n")
    optima = [result.optimum("mup", s) for s in fitted]
    kept = [o for o in optima if o.method in ("parabola", "argmin")]
    law = fit_power_law(axis, [o.size for o in kept], [o.log2_lr for o in kept])
    predicted = law.predict(held)
    summary = result.summary("mup")
    reuse_log2 = summary.transfer_log2_lr  # the smallest size's optimum, reused at the held-out size
    reuse_loss = summary.transfer_loss
    fit_loss = held_out_run(p, axis, held, predicted.lr, device)
    own = result.optimum("mup", held)
    best = min(own.loss, reuse_loss, fit_loss)
    record = {
        "axis": axis,
        "machine": provenance(time.monotonic(), device)["machine"],  # where the held-out runs trained
        "seeds": p["seeds"],
        "fitted_sizes": fitted,
        "held_out": held,
        "optima_log2_lr": {str(o.size): o.log2_lr for o in [*optima, own]},
        "optimum_methods": {str(o.size): o.method for o in [*optima, own]},
        "fit": law.to_dict(),
        "left_out_of_fit": [o.size for o in optima if o not in kept],
        "prediction": {
            "log2_lr": predicted.log2_lr,
            "log2_lr_se": predicted.log2_lr_se,
            "outside": predicted.outside,
        },
        "held_out_best": {"log2_lr": own.log2_lr, "loss": own.loss, "method": own.method},
        "reuse": {"log2_lr": reuse_log2, "loss": reuse_loss, "regret": reuse_loss / best - 1},
        "fitted": {"log2_lr": predicted.log2_lr, "loss": fit_loss, "regret": fit_loss / best - 1},
    }
    r, f = record["reuse"], record["fitted"]
    print(law.text())
    print(
        f"held-out {axis} {held}: own optimum 2^{own.log2_lr:.2f} ({own.method}), loss {own.loss:.4f}\n"
        f"  reuse the proxy's 2^{reuse_log2:.2f}: {r['loss']:.4f}, regret {100 * r['regret']:+.2f}%\n"
        f"  fitted 2^{predicted.log2_lr:.2f} +- {predicted.log2_lr_se:.2f}: {f['loss']:.4f}, "
        f"regret {100 * f['regret']:+.2f}%\n"
    )
    return record


def _strict(value):
    """nan and inf (a diverged run, an unknown error) as null, for strict JSON readers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(v) for v in value]
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and budgets: seconds")
    parser.add_argument("--axes", nargs="+", default=["steps", "batch_size"], choices=["steps", "batch_size"])
    parser.add_argument("--out", type=Path, help="results folder (default: benchmarks/results)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per cell, losses averaged (default 1)")
    args = parser.parse_args()
    out = args.out or RESULTS
    out.mkdir(parents=True, exist_ok=True)
    if args.device == "cpu":
        torch.set_flush_denormal(True)
    start = time.monotonic()
    p = protocol(args.quick)
    p["seeds"] = args.seeds
    print(f"{p['data'].describe()}", file=sys.stderr)
    rows = [one_axis(p, axis, out, args.device) for axis in args.axes]
    record = {
        **provenance(start, args.device),
        "model": {"factory": "mutransfer.models:GPT", **p["shape"], "base_width": p["base"]},
        "data": p["data"].name,
        "log2_lrs": [math.log2(lr) for lr in p["lrs"]],
        "fixed": {"steps": p["steps"], "batch_size": p["batch_size"]},
        "axes": rows,
    }
    name = "axes-quick.json" if args.quick else "axes.json"
    if (out / name).exists():  # keep the other axes' records from an earlier run
        earlier = json.loads((out / name).read_text()).get("axes", [])
        record["axes"] = [r for r in earlier if r["axis"] not in args.axes] + rows
    (out / name).write_text(json.dumps(_strict(record), indent=1, allow_nan=False, default=str))
    print(f"results in {out / name} ({record['seconds_this_run']:.0f} s)")


if __name__ == "__main__":
    main()
