"""Which role's learning-rate rule is off? Per-role LR grids under muP, across width.

    python benchmarks/roles.py                          # 3 models, ~20 min on one thread
    python benchmarks/roles.py --models gpt own         # a subset (run two at once: they resume apart)
    python benchmarks/roles.py --report                 # the table from the saved grids
    python benchmarks/roles.py --quick                  # tiny budgets, seconds (CI)

muP's optimum still slides with width on some models (issue 26: about +0.67 log2 per doubling
on a transformer written outside this project, -0.13 to -0.32 on the reference GPT). Which
tensors' rule is off? For each model: a plain muP width x LR grid (base: the narrowest width)
gives the narrowest width's optimum and the global slope; then, at that base LR, one grid per
role (input, hidden, output, vector) moves only that role's learning rate by 2^-4 .. 2^4 (muP's
rule on top) at every width. The optimal factor per role and width, fitted along width, is the
role's residual exponent: 0 when muP's rule for it holds; +e means it wants width^e more. As the
mechanistic view, the plain grid's cells record the monitors: each role's relative update at the
end of training, fitted along width at the base LR (a role whose relative update shrinks with
width is undertrained wider).

Models: the reference GPT and LLaMA-style models, and ``foreign.Transformer`` (written as users
write one: its own SDPA attention with muP's scale, PyTorch's default init, no biases). Widths
32..256, Adam, 200 steps of 8 x 64 bytes of Shakespeare (else the standard library), warmup then
cosine, one seed. Grids: results/roles-<model>[-<role>].json; summary results/roles.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import mutransfer
from mutransfer.forecast import forecast
from mutransfer.grid import Grid, transfer_lr
from mutransfer.models import GPT, Llama

sys.path.insert(0, str(Path(__file__).parent))
import foreign
from transfer import add_run_flags, first_available, provenance, results_dir, settings_json

MODELS = {
    "gpt": (GPT, {"base_d_head": 8}),
    "llama": (Llama, {"base_d_head": 8}),
    "own": (foreign.Transformer, {"base_d_head": 8}),
}
ROLES = ("input", "hidden", "output", "vector")
FULL = dict(widths=[32, 64, 128, 256], log2_lrs=range(-11, -3), factors=range(-4, 5), steps=200,
            batch_size=8, block_size=64)  # fmt: skip
QUICK = dict(widths=[16, 32], log2_lrs=[-8, -6, -4], factors=[-1, 0, 1], steps=4, batch_size=4, block_size=16)


def grids_for(name: str, settings: dict, out: Path, report_only: bool) -> dict[str, Grid]:
    """The plain grid, then one per role at its narrowest optimum: trained, or loaded."""
    factory, shape = MODELS[name]
    data = first_available("shakespeare", "stdlib", block_size=settings["block_size"])
    common = dict(widths=settings["widths"], data=data, shape={**shape, "block_size": settings["block_size"]},
                  steps=settings["steps"], batch_size=settings["batch_size"], eval_batches=8)  # fmt: skip

    def tell(tag: str):
        return lambda done, total, label, left: print(f"  [{name} {tag}] {done}/{total} {label}", flush=True)

    found: dict[str, Grid] = {}
    path = out / f"roles-{name}.json"
    if report_only:
        found = {"all": Grid.load(path)} if path.exists() else {}
    else:
        lrs = [2.0**k for k in settings["log2_lrs"]]
        found["all"] = mutransfer.grid(factory, lrs=lrs, parametrizations=["mup"], monitor_every=20,
                                       path=path, progress=tell("all"), **common)  # fmt: skip
    if "all" not in found:
        return found
    base_lr = transfer_lr(found["all"].optimum("mup", settings["widths"][0]))
    for role in ROLES:
        path = out / f"roles-{name}-{role}.json"
        if report_only:
            if path.exists():
                found[role] = Grid.load(path)
            continue
        lrs = [base_lr * 2.0**k for k in settings["factors"]]
        found[role] = mutransfer.grid(factory, lrs=lrs, role=role, base_lr=base_lr, path=path,
                                      progress=tell(role), **common)  # fmt: skip
    return found


def summarize(name: str, grids: dict[str, Grid]) -> dict:
    plain = grids["all"].summary("mup")
    row = {"slope": plain.exponent, "slope_se": plain.exponent_se, "drift": plain.drift,
           "optima": [o.log2_lr for o in plain.optima], "roles": {}}  # fmt: skip
    base = math.log2(grids[ROLES[0]].protocol["base_lr"]) if ROLES[0] in grids else math.nan
    row["base_log2_lr"] = base
    for role in ROLES:
        if role not in grids:
            continue
        s = grids[role].summary("mup")
        row["roles"][role] = {
            "factors": [o.log2_lr - base for o in s.optima],  # the role's best LR over the base, log2
            "methods": [o.method for o in s.optima],
            "exponent": s.exponent,
            "exponent_se": s.exponent_se,
            "regret": s.regret,
        }
    nearest = min(grids["all"].lrs, key=lambda lr: abs(math.log2(lr) - base)) if math.isfinite(base) else None
    if nearest is not None and any(c.monitors for c in grids["all"].cells):
        found = forecast(grids["all"], grids["all"].sizes[-1], lr=nearest)
        row["update_exponents"] = {f.monitor.split("/")[1]: f.exponent for f in found.items
                                   if f.monitor.startswith("update/")}  # fmt: skip
    return row


def report(rows: dict, start: float, out: Path, quick: bool, settings: dict, seconds: float) -> None:
    print(
        f"\n{'model':6s} {'global slope':>14s}  "
        + "  ".join(f"{r:>16s}" for r in ROLES)
        + "   (log2 per doubling)"
    )
    for name, row in rows.items():
        cells = []
        for role in ROLES:
            r = row["roles"].get(role)
            cells.append("-" if r is None or math.isnan(r["exponent"])
                         else f"{r['exponent']:+.2f} +- {r['exponent_se']:.2f}")  # fmt: skip
        print(
            f"{name:6s} {row['slope']:+.2f} +- {row['slope_se']:.2f}  "
            + "  ".join(f"{c:>16s}" for c in cells)
        )
        if "update_exponents" in row:
            print(f"{'':6s} relative update's exponent at the base LR: "
                  + ", ".join(f"{k} {v:+.2f}" for k, v in row["update_exponents"].items()))  # fmt: skip
    record = {
        **provenance(start),
        "settings": settings_json(settings),
        "models": rows,
        "cell_seconds": round(seconds, 1),
    }
    name = "roles-quick.json" if quick else "roles.json"
    (out / name).write_text(json.dumps(record, indent=1, default=str))
    print(f"results in {out / name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    add_run_flags(parser, "only the summary, from the saved grids")
    args = parser.parse_args()
    out = results_dir(args)
    settings = QUICK if args.quick else FULL
    start = time.monotonic()
    rows, seconds = {}, 0.0
    for name in MODELS if args.report else args.models:
        grids = grids_for(name, settings, out, args.report)
        seconds += sum(c.seconds for g in grids.values() for c in g.cells)  # the training, in all
        if len(grids) == 1 + len(ROLES):
            rows[name] = summarize(name, grids)
    if args.report or set(args.models) == set(MODELS):
        report(rows, start, out, args.quick, settings, seconds)


if __name__ == "__main__":
    main()
