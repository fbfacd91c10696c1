"""Small-scale proxies for training instabilities (Wortsman et al., 2023), reproduced on this CPU.

    python benchmarks/stability.py                    # 4 variants x 2 parametrizations, ~25 min on 2 cores
    python benchmarks/stability.py --variants none qk # a subset (run two at once: they resume apart)
    python benchmarks/stability.py --report           # the table and plot from the saved grids
    python benchmarks/stability.py --quick            # tiny budgets, seconds (CI)

The reference GPT (2 pre-norm blocks, 4 heads) at widths 32, 64, 128 on Shakespeare (else the
standard library's source), Adam at learning rates 2^-12 .. 2^0 (up to where the unfixed model
diverges), warmup then cosine, 200 steps of batch 8 x 64 bytes; standard parametrization and muP
(base width 32), each in four variants: as built, with qk-layernorm, with a 1e-4 z-loss, with
both. Every cell records the monitors every 10 steps (``mutransfer.monitor``). Per variant and
width: the LR sensitivity (the paper's definition, over this LR range and over 2^-12..2^-2, near
the paper's 3e-4..3e-1), the best loss, the
largest attention logit and |log Z| at the end of the highest-LR run that did not diverge, and
what rose first in the runs that did; and the forecast's held-out check (``mutransfer.forecast``:
the widest width's monitors from the narrower ones). It reports what reproduced and what did not:

- attention-logit growth at high LR without qk-layernorm (and none with it);
- output-logit divergence (|log Z| far from 0) at high LR without a z-loss (and less with it);
- sensitivity lower under muP than standard, and lower again with the fixes;
- muP with both fixes: "similar losses across orders of magnitude of learning rate".

Grids: results/stability-<variant>.json (a rerun resumes); summary results/stability.json and
results/stability.png.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import mutransfer
from mutransfer.forecast import forecast
from mutransfer.grid import Grid
from mutransfer.models import GPT

sys.path.insert(0, str(Path(__file__).parent))
from transfer import add_run_flags, first_available, provenance, results_dir, settings_json

VARIANTS = {  # name: (qk-layernorm, z-loss weight)
    "none": (False, 0.0),
    "qk": (True, 0.0),
    "z": (False, 1e-4),
    "qk+z": (True, 1e-4),
}
FULL = dict(widths=[32, 64, 128], log2_lrs=range(-12, 1), steps=200, batch_size=8, block_size=64, every=10)
QUICK = dict(widths=[16, 32], log2_lrs=[-8, -4, 0], steps=6, batch_size=4, block_size=16, every=2)
NEAR = 0.01  # "similar loss": within 1% of the row's best
PAPER_TOP = 2.0**-2  # Wortsman et al.'s LR range for Adam ends near 3e-1: the sensitivity there too


def run_variant(name: str, settings: dict, out: Path) -> Grid:
    qk, z = VARIANTS[name]
    data = first_available("shakespeare", "stdlib", block_size=settings["block_size"])
    shape = {"base_d_head": 8, "block_size": settings["block_size"], "qk_norm": qk}
    return mutransfer.grid(
        GPT,
        widths=settings["widths"],
        lrs=[2.0**k for k in settings["log2_lrs"]],
        data=data,
        shape=shape,
        sp_shape={"base_d_head": None},
        steps=settings["steps"],
        batch_size=settings["batch_size"],
        eval_batches=8,
        z_loss=z,
        monitor_every=settings["every"],
        path=out / f"stability-{name}.json",
        progress=lambda done, total, label, left: print(f"  [{name}] {done}/{total} {label}", flush=True),
    )


def last(cell, prefix: str) -> float:
    """The largest |value| among a cell's monitors named ``prefix...`` at its last record."""
    series = cell.monitors.get("series", {})
    values = [abs(v[-1]) for k, v in series.items() if k.startswith(prefix) and v and math.isfinite(v[-1])]
    return max(values) if values else math.nan


def row(grid: Grid, parametrization: str, width: int) -> dict:
    """What one width of one variant says."""
    cells = [
        c
        for c in grid.cells
        if (c.parametrization, c.size, c.transfer, c.seed) == (parametrization, width, False, 0)
    ]
    cells.sort(key=lambda c: c.lr)
    finite = [c for c in cells if math.isfinite(c.val_loss)]
    best = min((c.val_loss for c in finite), default=math.nan)
    top = finite[-1] if finite else None  # the highest LR that trained to the end
    diverged = [c for c in cells if not math.isfinite(c.val_loss)]
    paper = [lr for lr in grid.lrs if lr <= PAPER_TOP]
    within = replace(
        grid, lrs=tuple(paper), cells=tuple(c for c in grid.cells if c.lr in paper and not c.transfer)
    )
    return {
        "sensitivity": grid.sensitivity(parametrization, width),
        "sensitivity_to_2^-2": within.sensitivity(parametrization, width),
        "best_loss": best,
        "optimum_log2_lr": grid.optimum(parametrization, width).log2_lr,
        "near_best_lrs": sum(c.val_loss <= best * (1 + NEAR) for c in finite),
        "lrs": len(cells),
        "highest_trained_log2_lr": math.log2(top.lr) if top else math.nan,
        "attention_logit_max_at_highest": last(top, "attention/") if top else math.nan,
        "abs_log_z_at_highest": last(top, "output/log_z") if top else math.nan,
        "attention_logit_max_by_lr": {f"{math.log2(c.lr):g}": last(c, "attention/") for c in cells},
        "abs_log_z_by_lr": {f"{math.log2(c.lr):g}": last(c, "output/log_z") for c in cells},
        "diverged": {f"{math.log2(c.lr):g}": c.diverged for c in diverged},
    }


def report(grids: dict[str, Grid], start: float, out: Path, quick: bool) -> dict:
    rows = {
        f"{variant} {p} {w}": row(g, p, w)
        for variant, g in grids.items()
        for p in g.parametrizations
        for w in g.sizes
    }
    print(f"\n{'variant':6s} {'param':5s} {'width':>5s} {'sens.':>6s} {'to -2':>6s} {'best':>7s} {'opt':>6s} "
          f"{'near':>5s} "
          f"{'top lr':>6s} {'attn max':>9s} {'|logZ|':>7s}  first diverged")  # fmt: skip
    for key, r in rows.items():
        variant, p, w = key.split()
        first = next(iter(r["diverged"].items()), ("", ""))
        print(f"{variant:6s} {p:5s} {w:>5s} {r['sensitivity']:6.3f} {r['sensitivity_to_2^-2']:6.3f} "
              f"{r['best_loss']:7.4f} "
              f"{r['optimum_log2_lr']:6.2f} {r['near_best_lrs']:>2d}/{r['lrs']:<2d} "
              f"{r['highest_trained_log2_lr']:6g} "
              f"{r['attention_logit_max_at_highest']:9.3g} {r['abs_log_z_at_highest']:7.3g}  "
              f"{('2^' + first[0] + ': ' + first[1]) if first[0] else '-'}")  # fmt: skip
    held_out = {}  # the forecast's self-check: the widest width from the narrower ones
    for variant, g in grids.items():
        for p in g.parametrizations:
            found = forecast(g, 4 * g.sizes[-1], parametrization=p)
            held_out[f"{variant} {p}"] = {
                "log2_lr": math.log2(found.lr),
                "errors": {f.monitor: f.held_out_error for f in found.items},
            }
    print("\nforecast of the widest width from the narrower ones, at the LR nearest the narrowest optimum:")
    for key, h in held_out.items():
        errors = ", ".join(
            f"{m} {100 * e:+.0f}%" for m, e in h["errors"].items() if not m.startswith("update")
        )
        print(f"  {key} at 2^{h['log2_lr']:g}: {errors}")
    record = {**provenance(start), "settings": settings_json(QUICK if quick else FULL),
              "variants": {k: {"qk_norm": v[0], "z_loss": v[1]} for k, v in VARIANTS.items() if k in grids},
              "rows": rows, "forecast_held_out": held_out,
              "cell_seconds": round(sum(c.seconds for g in grids.values() for c in g.cells), 1)}  # fmt: skip
    name = "stability-quick.json" if quick else "stability.json"
    (out / name).write_text(json.dumps(record, indent=1, default=str))
    plot(grids, out / ("stability-quick.png" if quick else "stability.png"))
    plot_monitors(rows, grids, out / ("stability-monitors-quick.png" if quick else "stability-monitors.png"))
    print(f"results in {out / name}")
    return record


def plot(grids: dict[str, Grid], path: Path) -> None:
    """Loss against LR per width (columns), standard above muP; one line per variant."""
    from mutransfer.plot import pyplot

    plt = pyplot()
    any_grid = next(iter(grids.values()))
    widths, params = any_grid.sizes, any_grid.parametrizations
    fig, axes = plt.subplots(len(params), len(widths), figsize=(4.2 * len(widths), 3.4 * len(params)),
                             squeeze=False, sharey=True, layout="constrained")  # fmt: skip
    styles = {"none": "-o", "qk": "-s", "z": "--^", "qk+z": "-D"}
    for i, p in enumerate(params):
        for j, w in enumerate(widths):
            ax = axes[i][j]
            for variant, g in grids.items():
                xs = [math.log2(lr) for lr in g.lrs]
                ys = [g.loss(p, w, lr) for lr in g.lrs]
                init = [c.curve[0] for c in g.cells if (c.parametrization, c.size) == (p, w) and c.curve]
                cap = init[0] if init else max(y for y in ys if math.isfinite(y))
                ax.plot(xs, [min(y, cap) for y in ys], styles.get(variant, "-o"), ms=3, lw=1.2,
                        label=f"{variant} (sens. {g.sensitivity(p, w):.2f})")  # fmt: skip
            ax.set_title(f"{'muP' if p == 'mup' else 'standard'}, width {w}", fontsize=10)
            ax.set_xlabel("log2 learning rate")
            ax.grid(alpha=0.3, lw=0.4)
            ax.legend(fontsize=7)
        axes[i][0].set_ylabel("validation loss (clipped at init)")
    fig.suptitle("reference GPT: loss vs LR without and with qk-layernorm and z-loss", fontsize=10)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_monitors(rows: dict, grids: dict[str, Grid], path: Path) -> None:
    """At every width (line shade) and LR: the largest attention logit (top) and |log Z| (bottom)
    at the end of training, standard and muP, without (solid) and with (dashed) the fix."""
    from mutransfer.plot import pyplot

    plt = pyplot()
    any_grid = next(iter(grids.values()))
    widths, params = any_grid.sizes, any_grid.parametrizations
    fig, axes = plt.subplots(
        2, len(params), figsize=(5.2 * len(params), 6.4), squeeze=False, layout="constrained"
    )
    colours = plt.get_cmap("viridis")
    panels = (("attention_logit_max_by_lr", "largest attention logit", ("none", "qk")),
              ("abs_log_z_by_lr", "|log Z| of the output", ("none", "z")))  # fmt: skip
    for i, (key, title, (plain, fixed)) in enumerate(panels):
        for j, p in enumerate(params):
            ax = axes[i][j]
            for k, w in enumerate(widths):
                colour = colours(k / max(1, len(widths) - 1) * 0.9)
                for variant, style in ((plain, "-o"), (fixed, "--s")):
                    r = rows.get(f"{variant} {p} {w}")
                    if r is None:
                        continue
                    xs = [float(x) for x in r[key]]
                    ax.plot(xs, list(r[key].values()), style, color=colour, ms=3, lw=1.2,
                            label=f"width {w}, {variant}")  # fmt: skip
            ax.set_yscale("log")
            ax.set_title(f"{'muP' if p == 'mup' else 'standard'}: {title}", fontsize=10)
            ax.set_xlabel("log2 learning rate")
            ax.grid(alpha=0.3, lw=0.4)
            ax.legend(fontsize=7, ncol=2)
    fig.suptitle(
        "end of training: solid without the fix, dashed with it (qk-layernorm; z-loss 1e-4)", fontsize=10
    )
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    add_run_flags(parser, "only the summary, from the saved grids")
    args = parser.parse_args()
    out = results_dir(args)
    settings = QUICK if args.quick else FULL
    start = time.monotonic()
    grids = {}
    for name in VARIANTS:
        path = out / f"stability-{name}.json"
        if args.report:
            if path.exists():
                grids[name] = Grid.load(path)
        elif name in args.variants:
            grids[name] = run_variant(name, settings, out)
    if args.report or set(args.variants) == set(VARIANTS):
        report(grids, start, out, args.quick)


if __name__ == "__main__":
    main()
