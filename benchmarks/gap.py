"""muP's standing loss gap at the widest width, with the multipliers tuned on the proxy.

    python benchmarks/gap.py                    # sweep (~3 min on 2 CPU cores), then the grid (~10 min)
    python benchmarks/gap.py --sweep-only       # the proxy sweep alone: results/gap-sweep.json
    python benchmarks/gap.py --device cuda      # the grid, reusing results/gap-sweep.json when there
    python benchmarks/gap.py --quick            # tiny sizes, seconds

The width x LR grid of the reference GPT (``transfer.py --models gpt``: 2 blocks, widths 32..256,
Shakespeare, 300 steps of batch 8 x 128 bytes, Adam) found muP's best loss at width 256 1.2%
above standard parametrization's with the learning rate alone: muP carries the narrow model's
ratios between the layers' learning rates and init to every width, and at width 32 those
ratios are whatever standard parametrization happens to use. Tuning them is what the sweep is
for. This script tunes the learning rate with the input and output multipliers at width 32
(the proxy, where muP and standard parametrization are one model: 32 seeded TPE trials under
the grid's protocol), then trains the grid again: standard parametrization as before, and muP
with the tuned multipliers at every width. Targets: muP's best at the widest <= standard's,
with transfer intact (drift <= 0.5 log2, regret <= 1%).
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
from mutransfer.models import GPT
from mutransfer.plot import plot_grid

sys.path.insert(0, str(Path(__file__).parent))
from transfer import RESULTS, TARGETS, first_available, progress, provenance, verdicts

MULTIPLIERS = ("input_mult", "output_mult")


def protocol(quick: bool) -> dict:
    if quick:
        return dict(
            data="stdlib",
            block_size=32,
            widths=[16, 32, 64],
            lrs=[2.0**k for k in range(-9, -3)],
            shape={"base_d_head": 4},
            steps=15,
            batch_size=4,
            eval_batches=2,
            trials=4,
        )
    return dict(
        data="shakespeare",
        block_size=128,
        widths=[32, 64, 128, 256],
        lrs=[2.0**k for k in range(-11, -1)],  # up to 2^-2: the tuned multipliers favour a high LR
        shape={"base_d_head": 8},
        steps=300,
        batch_size=8,
        eval_batches=16,
        trials=32,
    )


def tune(p: dict, out: Path) -> dict:
    """The proxy sweep: lr, input_mult, output_mult at the narrowest width (muP's base)."""
    config = mutransfer.SweepConfig(
        factory="mutransfer.models:GPT",
        data=p["data"],
        block_size=p["block_size"],
        proxy={"width": p["widths"][0]},
        target={"width": p["widths"][-1]},
        shape=p["shape"],
        sp_shape={"base_d_head": None},
        steps=p["steps"],
        batch_size=p["batch_size"],
        eval_batches=p["eval_batches"],
        trials=p["trials"],
        pruner="none",
        space={
            "lr": mutransfer.Range(2.0**-11, 2.0**-4, log=True),
            "input_mult": mutransfer.Range(0.25, 16.0, log=True),
            "output_mult": mutransfer.Range(0.125, 8.0, log=True),
        },
        study="gap",
        storage=str(out / "gap.journal"),
    )
    status = mutransfer.sweep(config, progress=lambda s: print(f"sweep: {s.line()}", file=sys.stderr))
    return {
        "trials": status.finished,
        "trial_seconds": round(status.seconds, 1),
        "best_value": status.best_value,
        "best": status.best_params,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sweep-only", action="store_true", help="tune on the proxy and stop")
    parser.add_argument("--out", type=Path, help="results folder (default: benchmarks/results)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    out = args.out or RESULTS
    out.mkdir(parents=True, exist_ok=True)
    stem = "gap-quick" if args.quick else "gap"
    start = time.monotonic()
    p = protocol(args.quick)
    swept = out / f"{stem}-sweep.json"
    if not swept.exists():
        tuned = tune(p, out)
        swept.write_text(json.dumps({**provenance(start), **tuned}, indent=1))
    tuned = json.loads(swept.read_text())
    print(f"proxy sweep: best {tuned['best_value']:.4f} with {tuned['best']}", file=sys.stderr)
    if args.sweep_only:
        return
    if args.device == "cpu":
        torch.set_flush_denormal(True)
    data = first_available(p["data"], "stdlib", block_size=p["block_size"])
    multipliers = {k: v for k, v in tuned["best"].items() if k in MULTIPLIERS}
    result = mutransfer.grid(
        GPT,
        widths=p["widths"],
        lrs=p["lrs"],
        data=data,
        shape=p["shape"],
        sp_shape={"base_d_head": None},
        multipliers=multipliers,
        steps=p["steps"],
        batch_size=p["batch_size"],
        eval_batches=p["eval_batches"],
        path=out / f"{stem}-grid.json",
        device=args.device,
        progress=progress("gap"),
    )
    plot_grid(result, out / f"{stem}-grid.png")
    print(result.table(), end="\n\n")
    sp, mup = result.summary("sp"), result.summary("mup")
    checks = verdicts(sp, mup)
    for target, v in checks.items():
        print(f"  {target}: {v['measured']:+.4f} ({'met' if v['met'] else 'MISSED'})")
    record = {
        **provenance(start, args.device),
        "protocol": {k: v for k, v in p.items() if k != "lrs"}
        | {"log2_lrs": [math.log2(lr) for lr in p["lrs"]]},
        "sweep": tuned,
        "multipliers": multipliers,
        "summary": result.to_dict()["summary"],
        "targets": {
            k: {**v, "measured": v["measured"] if math.isfinite(v["measured"]) else None}
            for k, v in checks.items()
        },
        "target_values": TARGETS,
    }
    (out / f"{stem}.json").write_text(json.dumps(record, indent=1, allow_nan=False, default=str))
    print(f"results in {out / stem}.json ({record['seconds_this_run']:.0f} s)")


if __name__ == "__main__":
    main()
