"""u-muP and simulated FP8 on the reference GPT: which of the paper's claims reproduce here.

    python benchmarks/unit_scaled.py                         # every part, ~45 min on one thread
    python benchmarks/unit_scaled.py --parts grids fp8       # a subset (run two at once: they resume apart)
    python benchmarks/unit_scaled.py --parts tuned search
    python benchmarks/unit_scaled.py --report                # the table and plot from the saved files
    python benchmarks/unit_scaled.py --quick                 # tiny budgets, seconds (CI)

u-muP (Blake et al., ICLR 2025) claims: its alphas' defaults (1) are near-optimal, so tuning the
LR alone reaches a loss equal to or lower than muP's with its multipliers tuned; its LR transfers
across width; its hyperparameters can be swept one at a time (independent search) instead of
jointly; and it trains in FP8 with a plain cast. Four parts, on the reference GPT (2 pre-norm
blocks, 4 heads) at widths 32..256, Adam, 200 steps of batch 8 x 64 bytes of Shakespeare (else
the standard library), warmup then cosine, two seeds:

- ``grids``: width x LR grids of standard parametrization (1/sqrt(d_head) attention), muP (LR
  only, base width 32) and u-muP (every alpha 1, LR only; ``unit_scaled=True``). Drift, slope
  and regret of the optimum, and each one's best loss at the widest width.
- ``tuned``: muP's LR and multipliers (init_scale, input_mult, output_mult) tuned by TPE on the
  width-32 proxy, then a muP grid with those multipliers across width: the muP a careful user
  gets, against u-muP's LR-only best at the widest width.
- ``fp8``: the three parametrizations at widths 64 and 256 with every matmul in simulated FP8
  (``mutransfer.fp8``: E4M3 operands, E5M2 gradients, no scaling), at their own FP32 optimum and
  a factor 2 either side: the loss gap to FP32, and which diverge or stall.
- ``embedding``: u-muP's embedding LR falls like 1/sqrt(width) where muP's is constant; a per-role
  grid (``grid(..., role="input")``) moves the embeddings' LR alone by 2^-2 .. 2^6 on top of
  u-muP's rule at every width, the rest at the u-muP grid's narrowest optimum (one seed): the
  best factor's slope in width is what the rule leaves (+0.5 would mean muP's constant rule).
- ``search``: on the u-muP proxy (width 64) the LR and the five alphas, searched by independent
  search (LR first, each alpha alone, the bests combined) and by TPE (two sampler seeds) with the
  same number of trials: the trials and FLOPs each needs to come within 0.5% of the best loss
  either found.

Files: results/unit_scaled-<part>*.json (grids resume; sweeps keep their journals under
results/unit_scaled-sweeps/), summary results/unit_scaled.json and results/unit_scaled.png.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

import optuna

import mutransfer
from mutransfer.errors import MutransferWarning
from mutransfer.grid import Grid, transfer_lr
from mutransfer.models import GPT
from mutransfer.sweep.config import SweepConfig
from mutransfer.sweep.runner import open_study, sweep
from mutransfer.sweep.space import Range
from mutransfer.unit import ALPHAS

sys.path.insert(0, str(Path(__file__).parent))
from transfer import add_run_flags, first_available, provenance, results_dir, settings_json

PARTS = ("grids", "tuned", "fp8", "search", "embedding")
NAMES = {"sp": "standard", "mup": "muP", "u-mup": "u-muP"}
FULL = dict(
    widths=[32, 64, 128, 256],
    seeds=2,
    steps=200,
    batch_size=8,
    block_size=64,
    eval_batches=8,
    log2_lrs={"sp": range(-12, -4), "mup": range(-11, -3), "u-mup": range(-6, 2)},
    fp8_widths=[64, 256],
    proxy=32,
    search_proxy=64,
    tuned_trials=30,
    tpe_seeds=[0, 1],
    lr_points=8,
    alpha_points=5,
    embedding_log2_factors=range(-2, 7),
)
QUICK = dict(
    widths=[16, 32],
    seeds=1,
    steps=4,
    batch_size=4,
    block_size=16,
    eval_batches=2,
    log2_lrs={"sp": [-8, -6, -4], "mup": [-8, -6, -4], "u-mup": [-4, -2, 0]},
    fp8_widths=[16, 32],
    proxy=16,
    search_proxy=16,
    tuned_trials=4,
    tpe_seeds=[0],
    lr_points=3,
    alpha_points=3,
    embedding_log2_factors=[-1, 0, 1],
)
SHAPES = {"sp": {}, "mup": {"base_d_head": 8}, "u-mup": {}}  # muP's 1/d_head attention; u-muP's is its own
WITHIN = 0.005  # "near the best": within 0.5%


# ---- the parts ---------------------------------------------------------------------------------
def common(s: dict) -> dict:
    data = first_available("shakespeare", "stdlib", block_size=s["block_size"])
    return dict(data=data, steps=s["steps"], batch_size=s["batch_size"], eval_batches=s["eval_batches"])


def shape_of(name: str, s: dict) -> dict:
    return {**SHAPES[name], "block_size": s["block_size"]}


def tell(tag: str):
    return lambda done, total, label, left: print(f"  [{tag}] {done}/{total} {label}", flush=True)


def run_grid(s: dict, out: Path, name: str, stem: str, lrs: list[float], **extra) -> Grid:
    """``name``'s grid of the GPT under this benchmark's protocol, saved (and resumed) as ``stem``."""
    settings = {"widths": s["widths"], "seeds": s["seeds"], **extra, **common(s)}
    path = out / f"unit_scaled-{stem}.json"
    return mutransfer.grid(GPT, lrs=lrs, parametrizations=[name], shape=shape_of(name, s), path=path,
                           progress=tell(stem), **settings)  # fmt: skip


def grids(s: dict, out: Path) -> dict[str, Grid]:
    """One width x LR grid per parametrization (resumed from its file)."""
    return {
        n: run_grid(s, out, n, f"grid-{n}", [2.0**k for k in s["log2_lrs"][n]])
        for n in ("sp", "mup", "u-mup")
    }


def sweep_config(s: dict, out: Path, study: str, **fields) -> SweepConfig:
    (out / "unit_scaled-sweeps").mkdir(parents=True, exist_ok=True)
    budget = {k: s[k] for k in ("block_size", "steps", "batch_size", "eval_batches")}
    storage = str(out / "unit_scaled-sweeps" / f"{study}.journal")
    return SweepConfig(
        factory=GPT, data="shakespeare", pruner="none", study=study, storage=storage, **budget, **fields
    )


def trials_of(config: SweepConfig) -> list[dict]:
    """The study's finished trials in order: value (inf when diverged), params, FLOPs."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = open_study(config, queue_grid=False)
    done = [
        t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED", "FAIL") and "flops" in t.user_attrs
    ]
    return [
        {
            "number": t.number,
            "value": t.value if t.value is not None and math.isfinite(t.value) else None,
            "params": t.params,
            "flops": t.user_attrs["flops"],
            "seconds": t.user_attrs.get("seconds", 0.0),
            "phase": t.user_attrs.get("phase", ""),
        }
        for t in sorted(done, key=lambda t: t.number)
    ]


def tuned(s: dict, out: Path) -> dict:
    """muP's LR and multipliers tuned on the proxy by TPE, then a muP grid with those multipliers."""
    space = {
        "lr": Range(2**-11, 2**-3, log=True),
        "init_scale": Range(0.25, 4.0, log=True),
        "input_mult": Range(0.25, 16.0, log=True),
        "output_mult": Range(0.0625, 4.0, log=True),
    }
    shapes = {
        "proxy": {"width": s["proxy"]},
        "target": {"width": s["widths"][-1]},
        "shape": shape_of("mup", s),
    }
    config = sweep_config(s, out, "mup-tuned", space=space, trials=s["tuned_trials"], seed=0, **shapes)
    sweep(config)
    trials = trials_of(config)
    best = min((t for t in trials if t["value"] is not None), key=lambda t: t["value"])
    multipliers = {k: float(v) for k, v in best["params"].items() if k != "lr"}
    lrs = [2.0**k for k in s["log2_lrs"]["mup"]]
    grid = run_grid(s, out, "mup", "grid-mup-tuned", lrs, multipliers=multipliers)
    return {"trials": trials, "best": best, "multipliers": multipliers, "grid": grid}


def fp8(s: dict, out: Path, found: dict[str, Grid]) -> dict[str, tuple[Grid, Grid]]:
    """Each parametrization in FP32 and in simulated FP8 at its FP32 optimum (widest width) and 2x
    either side: (FP32, FP8) grids on the same LRs."""
    pairs = {}
    for name, grid in found.items():
        best = transfer_lr(grid.optimum(name, grid.sizes[-1]))
        lrs = [best / 2, best, best * 2]
        runs = [
            run_grid(s, out, name, f"{k}-{name}", lrs, widths=s["fp8_widths"], fp8=k == "fp8")
            for k in ("fp32", "fp8")
        ]
        pairs[name] = (runs[0], runs[1])
    return pairs


def embedding(s: dict, out: Path, unit: Grid) -> Grid:
    """The embeddings' LR alone, on top of u-muP's 1/sqrt(width) rule, at every width (one seed)."""
    base_lr = transfer_lr(unit.optimum("u-mup", unit.sizes[0]))
    lrs = [base_lr * 2.0**k for k in s["embedding_log2_factors"]]
    return run_grid(s, out, "u-mup", "embedding", lrs, seeds=1, role="input", base_lr=base_lr)


def search(s: dict, out: Path) -> dict:
    """Independent search against TPE on the u-muP proxy, the same number of trials."""
    lr = Range(2**-6, 2**1, log=True, points=s["lr_points"])
    space = {"lr": lr, **{k: Range(0.25, 4.0, log=True, points=s["alpha_points"]) for k in ALPHAS}}
    fields = dict(
        proxy={"width": s["search_proxy"]},
        target={"width": s["widths"][-1]},
        shape=shape_of("u-mup", s),
        parametrization="u-mup",
        space=space,
    )
    independent = sweep_config(s, out, "u-mup-independent", sampler="independent", **fields)
    sweep(independent)
    runs = {"independent": trials_of(independent)}
    for seed in s["tpe_seeds"]:
        config = sweep_config(
            s, out, f"u-mup-tpe-{seed}", sampler="tpe", trials=len(runs["independent"]), seed=seed, **fields
        )
        sweep(config)
        runs[f"tpe-{seed}"] = trials_of(config)
    return runs


# ---- the report --------------------------------------------------------------------------------
def grid_row(grid: Grid, name: str) -> dict:
    summary = grid.summary(name)
    return {
        "drift": summary.drift,
        "drift_se": summary.drift_error,
        "slope": summary.exponent,
        "slope_se": summary.exponent_se,
        "regret": summary.regret,
        "best_widest": summary.best_loss,
        "optima_log2": [o.log2_lr for o in summary.optima],
    }


def fp8_row(grid32: Grid, grid8: Grid, name: str) -> dict:
    """Per width, at the same LRs (FP32's optimum and 2x either side): each one's best, the gap,
    and the FP8 runs that diverged or stalled (ended above 95% of their initial loss)."""
    rows = {}
    for width in grid8.sizes:
        best32 = min(grid32.loss(name, width, x) for x in grid32.lrs)
        best8 = min(grid8.loss(name, width, x) for x in grid8.lrs)
        cells = [c for c in grid8.cells if c.size == width and not c.transfer]
        stalled = [c.lr for c in cells if not c.diverged and c.curve and c.val_loss > 0.95 * c.curve[0]]
        rows[width] = {
            "lrs_log2": [math.log2(x) for x in grid8.lrs],
            "fp32": [grid32.loss(name, width, x) for x in grid32.lrs],
            "fp8": [grid8.loss(name, width, x) for x in grid8.lrs],
            "fp32_best": best32,
            "fp8_best": best8,
            "gap": best8 / best32 - 1,
            "diverged_lrs_log2": sorted({math.log2(c.lr) for c in cells if c.diverged}),
            "stalled_lrs_log2": sorted({math.log2(x) for x in stalled}),
        }
    return rows


def search_row(runs: dict) -> dict:
    finite = [t["value"] for r in runs.values() for t in r if t["value"] is not None]
    target = min(finite) * (1 + WITHIN)
    out = {"best_either": min(finite), "within": WITHIN}
    for name, trials in runs.items():
        reached, flops = None, 0.0
        for i, t in enumerate(trials):
            flops += t["flops"]
            if t["value"] is not None and t["value"] <= target:
                reached = (i + 1, flops)
                break
        best = min((t["value"] for t in trials if t["value"] is not None), default=math.nan)
        out[name] = {
            "trials": len(trials),
            "best": best,
            "trials_to_within": reached[0] if reached else None,
            "flops_to_within": reached[1] if reached else None,
            "best_params": next((t["params"] for t in trials if t["value"] == best), {}),
        }
    return out


def report(s: dict, found: dict, start: float, out: Path, quick: bool) -> dict:
    record = {
        **provenance(start),
        "settings": settings_json(s),
    }
    cells = []
    if "grids" in found:
        record["grids"] = {n: grid_row(g, n) for n, g in found["grids"].items()}
        cells += [c for g in found["grids"].values() for c in g.cells]
    if "tuned" in found:
        t = found["tuned"]
        record["tuned"] = {
            "multipliers": t["multipliers"],
            "proxy_best": t["best"],
            "trials": t["trials"],
            "grid": grid_row(t["grid"], "mup"),
        }
        cells += list(t["grid"].cells)
    if "fp8" in found:
        record["fp8"] = {n: fp8_row(g32, g8, n) for n, (g32, g8) in found["fp8"].items()}
        cells += [c for pair in found["fp8"].values() for g in pair for c in g.cells]
    if "search" in found:
        record["search"] = {"summary": search_row(found["search"]), "runs": found["search"]}
    if "embedding" in found:
        g = found["embedding"]
        row = grid_row(g, "u-mup")
        row["factors_log2"] = [o - math.log2(g.protocol["base_lr"]) for o in row["optima_log2"]]
        record["embedding"] = row
        cells += list(g.cells)
    trials = [
        *found.get("tuned", {}).get("trials", []),
        *(t for r in found.get("search", {}).values() for t in r),
    ]
    record["training_seconds"] = round(sum(c.seconds for c in cells) + sum(t["seconds"] for t in trials), 1)
    path = out / ("unit_scaled-quick.json" if quick else "unit_scaled.json")
    old = json.loads(path.read_text()) if path.exists() else {}
    merged = {**old, **record}  # parts run apart keep each other's sections
    path.write_text(json.dumps(merged, indent=1, default=float) + "\n")
    print_table(merged)
    return merged


def print_table(r: dict) -> None:
    if "grids" in r:
        print("width grids (LR only; drift and slope of the optimum in log2 units, regret at the widest):")
        for name, g in r["grids"].items():
            print(
                f"  {NAMES[name]:9} best@widest {g['best_widest']:.4f}  drift {g['drift']:.2f} +- "
                f"{g['drift_se']:.2f}  slope {g['slope']:+.2f} +- {g['slope_se']:.2f}  regret "
                f"{100 * g['regret']:+.2f}%"
            )
    if "tuned" in r and "grids" in r:
        mup_t, u = r["tuned"]["grid"]["best_widest"], r["grids"]["u-mup"]["best_widest"]
        print(
            f"muP, LR and multipliers tuned ({r['tuned']['multipliers']}): best@widest {mup_t:.4f}; "
            f"u-muP LR only {u:.4f}: {100 * (u / mup_t - 1):+.2f}%"
        )
    for name, rows in r.get("fp8", {}).items():
        for width, row in rows.items():
            print(
                f"  FP8 {NAMES[name]:8} width {width}: best {row['fp8_best']:.4f} FP32 {row['fp32_best']:.4f}"
                f" ({100 * row['gap']:+.2f}%); diverged at log2 lr {row['diverged_lrs_log2']}, stalled at "
                f"{row['stalled_lrs_log2']}"
            )
    if "embedding" in r:
        e = r["embedding"]
        print(
            f"  embedding LR factor on u-muP's rule, log2: {[round(f, 2) for f in e['factors_log2']]}; "
            f"slope {e['slope']:+.2f} +- {e['slope_se']:.2f} per doubling"
        )
    if "search" in r:
        s = r["search"]["summary"]
        for name in (k for k in s if isinstance(s[k], dict)):
            x = s[name]
            print(
                f"  search {name:12} best {x['best']:.4f} over {x['trials']} trials; within "
                f"{100 * s['within']:.1f}% of {s['best_either']:.4f} after {x['trials_to_within']} trials"
            )


def plot(r: dict, found: dict, path: Path) -> None:
    from mutransfer.plot import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    if "grids" in found:
        ax = axes[0]
        for name, style in (("mup", "--"), ("u-mup", "-")):
            grid = found["grids"][name]
            for width in grid.sizes:
                xs = [math.log2(lr) for lr in grid.lrs]
                ys = [grid.loss(name, width, lr) for lr in grid.lrs]
                ax.plot(xs, ys, style, marker="o", ms=3, label=f"{NAMES[name]} {width}")
        ax.set(xlabel="log2 base LR", ylabel="validation loss", title="LR transfer across width")
        lo = min(g["best_widest"] for g in r["grids"].values())
        ax.set_ylim(lo - 0.05, lo + 0.8)
        ax.legend(fontsize=6, ncol=2)
    if "fp8" in r:
        ax = axes[1]
        names = list(r["fp8"])
        widths = sorted({int(w) for rows in r["fp8"].values() for w in rows})
        for j, width in enumerate(widths):
            gaps = [
                100 * r["fp8"][n].get(str(width), r["fp8"][n].get(width, {})).get("gap", math.nan)
                for n in names
            ]
            ax.bar([i + 0.4 * j for i in range(len(names))], gaps, width=0.4, label=f"width {width}")
        ax.set_xticks([i + 0.2 for i in range(len(names))], [NAMES[n] for n in names])
        ax.axhline(0, color="k", lw=0.5)
        ax.set(ylabel="FP8 best loss over FP32 best (%)", title="simulated FP8, plain cast")
        ax.legend(fontsize=7)
    if "search" in r:
        ax = axes[2]
        for name, trials in r["search"]["runs"].items():
            best, ys = math.inf, []
            for t in trials:
                best = min(best, t["value"] if t["value"] is not None else math.inf)
                ys.append(best)
            ax.plot(range(1, len(ys) + 1), ys, label=name)
        ax.axhline(r["search"]["summary"]["best_either"] * (1 + WITHIN), color="k", lw=0.5, ls=":")
        ax.set(xlabel="trials", ylabel="best validation loss so far", title="independent search vs TPE")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    add_run_flags(parser, "every part's table and the plot (parts already complete train nothing)")
    args = parser.parse_args()
    args.out = results_dir(args)
    warnings.simplefilter("ignore", MutransferWarning)
    s, start = (QUICK if args.quick else FULL), time.monotonic()
    found: dict = {}
    parts = set(PARTS) if args.report else set(args.parts)
    if parts & {"grids", "fp8"}:
        found["grids"] = grids(s, args.out)
    if "tuned" in parts:
        found["tuned"] = tuned(s, args.out)
    if "fp8" in parts:
        found["fp8"] = fp8(s, args.out, found["grids"])
    if "search" in parts:
        found["search"] = search(s, args.out)
    if "embedding" in parts:
        unit = (
            found["grids"]["u-mup"]
            if "grids" in found
            else Grid.load(args.out / "unit_scaled-grid-u-mup.json")
        )
        found["embedding"] = embedding(s, args.out, unit)
    r = report(s, found, start, args.out, args.quick)
    if not args.quick or args.report:
        plot(r, found, args.out / "unit_scaled.png")


if __name__ == "__main__":
    main()
