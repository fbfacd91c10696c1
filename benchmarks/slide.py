"""Held-out proof of the width fit: fitted on widths 32..256, tried at 512, which no fit saw.

    python benchmarks/slide.py                  # after roles.py; ~15 min a model and seed, one thread
    python benchmarks/slide.py --models own     # one model
    python benchmarks/slide.py --quick          # tiny budgets, seconds (CI; needs roles.py --quick)

Reads the grids ``roles.py`` saved (the same protocol: 200 steps of 8 x 64 bytes, Adam, warmup
then cosine, one seed) and trains a standard-parametrization grid beside them. At width 512 it
trains an LR scan for each parametrization (the target's own best) and then the learning rates
each way of transferring would choose:

- muP, plain reuse: the narrowest width's optimum, unchanged;
- muP + global width fit: ``log2 lr* = a + e log2(width)`` over the muP grid's optima, at 512;
- muP + the narrowest width's per-role factors: each role's best factor at width 32 (where it
  lies inside the grid), as ``lr_scale``, on the reused LR: the role ratios, without a width fit;
- muP + per-role fit: each role's factor fitted along width (``roles.py``'s per-role grids) at
  512, on the reused LR (a role whose optima lie at the grid's edge keeps factor 1);
- standard parametrization with its own width fit;
- u-muP (the GPT, when ``unit_scaled.py`` has saved its u-muP grid in the same protocol, two
  seeds): plain reuse and its own width fit.

Beside them, when ``transfer.py`` has saved its MLP grid (fashion-mnist, widths 128..1024, two
seeds), the MLP at 2048: muP reuse and global width fit, standard's fit and reuse (its scans:
the grid's LRs within 2 octaves of each parametrization's fitted optimum; not in ``--quick``).

Each is scored, seed by seed (2 by default), against its own parametrization's best at 512 for
that seed (the scan's minimum, or the run itself when it beats the scan): the mean regret and its
standard error. Results: results/slide.json (results/slide-<model>-*.json hold
the grids and runs, so a rerun resumes).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import mutransfer
from mutransfer.fit import fit_optima
from mutransfer.grid import Grid, transfer_lr
from mutransfer.models import MLP
from mutransfer.setup import ModelSetup, TrainSetup

sys.path.insert(0, str(Path(__file__).parent))
from roles import FULL, MODELS, QUICK, ROLES
from transfer import RESULTS, first_available, provenance

TARGET = {"full": 512, "quick": 64}


class Target:
    """Training runs of one model at the held-out width, memoised in ``path`` (a rerun resumes):
    the data is loaded and the muP plan built once."""

    def __init__(
        self, name: str, factory, shape: dict, sp_shape: dict, training: TrainSetup, widths: tuple, path: Path
    ) -> None:
        (self.base_width, self.width), self.path = widths, path
        self.name, self.factory, self.sp_shape, self.training = name, factory, sp_shape, training
        self.shape = {**shape, "width": self.width}
        self.example = (training.data.batch(0, 2, seed=0)[0],)
        base = {**self.shape, "width": self.base_width}
        self.plan = mutransfer.plan(factory, base=base, target=self.shape, example=self.example)
        self.unit = {
            **{k: v for k, v in shape.items() if k == "block_size"},
            "width": self.width,
            "unit_scaled": True,
        }
        self.memo = json.loads(path.read_text()) if path.exists() else {}

    @classmethod
    def of_roles(cls, name: str, settings: dict, width: int, path: Path) -> Target:
        """A model of ``roles.py``, under its protocol."""
        factory, shape = MODELS[name]
        data = first_available("shakespeare", "stdlib", block_size=settings["block_size"])
        training = TrainSetup(
            data=data, steps=settings["steps"], batch_size=settings["batch_size"], eval_batches=8
        )
        shape = {**shape, "block_size": settings["block_size"]}
        return cls(
            name, factory, shape, {"base_d_head": None}, training, (settings["widths"][0], width), path
        )

    def loss(self, parametrization: str, lr: float, lr_scale: dict | None = None, seed: int = 0) -> float:
        """The validation loss at ``lr`` (muP from the narrowest grid width, with ``lr_scale``)."""
        lr_scale = lr_scale or {}
        key = f"{parametrization} {self.width} {lr!r} {json.dumps(lr_scale, sort_keys=True)}"
        key += f" seed {seed}" if seed else ""
        if key not in self.memo:
            mup = parametrization == "mup"
            keywords = {**self.shape, **({} if mup else self.sp_shape)}
            plan = self.plan if mup else None
            if parametrization == "u-mup":  # the reference GPT's unit-scaled forward, u-muP's plan
                keywords, base = self.unit, {**self.unit, "width": self.base_width}
                plan = mutransfer.plan(self.factory, base=base, target=self.unit, example=self.example,
                                       parametrization="u-mup")  # fmt: skip
            model = ModelSetup(factory=self.factory, shape=keywords, lr_scale=lr_scale)
            built = model.build(keywords, tuned=plan is not None, plan=plan, lr=lr, training=self.training,
                                seed=seed)  # fmt: skip
            self.memo[key] = self.training.train(*built, seed=seed).val_loss
            self.path.write_text(json.dumps(self.memo, indent=1))
            print(f"  [{self.name}] seed {seed} {parametrization} width {self.width} "
                  f"lr 2^{math.log2(lr):.2f} {lr_scale or ''}: {self.memo[key]:.4f}", flush=True)  # fmt: skip
        return self.memo[key]


def fitted_or_none(grid: Grid, parametrization: str):
    """The grid's width fit, or None (said) where its optima lie at the LR range's edge."""
    law = fit_optima(grid.axis, [grid.optimum(parametrization, w) for w in grid.sizes])
    if law is None:
        print(f"  no fit for {grid.protocol.get('role') or 'the grid'}: optima at the LR range's edge; "
              "that way reuses the narrowest optimum", flush=True)  # fmt: skip
    return law


def held_out(name: str, settings: dict, out: Path, target: int, seeds: int) -> dict:
    factory, shape = MODELS[name]
    mup = Grid.load(out / f"roles-{name}.json")
    roles = {r: Grid.load(out / f"roles-{name}-{r}.json") for r in ROLES}
    runs = Target.of_roles(name, settings, target, out / f"slide-{name}-runs.json")
    at = runs.loss
    sp = mutransfer.grid(
        factory,
        widths=settings["widths"],
        lrs=list(mup.lrs),
        parametrizations=["sp"],
        data=runs.training.data,
        shape={**shape, "block_size": settings["block_size"]},
        sp_shape={"base_d_head": None},
        steps=settings["steps"],
        batch_size=settings["batch_size"],
        eval_batches=8,
        path=out / f"slide-{name}-sp.json",
    )
    # per seed: the scan (each seed's own best) and each way's loss
    scans = [
        {p: {math.log2(lr): at(p, lr, seed=k) for lr in mup.lrs} for p in ("mup", "sp")} for k in range(seeds)
    ]
    reuse = transfer_lr(mup.optimum("mup", mup.sizes[0]))
    law, sp_law = fitted_or_none(mup, "mup"), fitted_or_none(sp, "sp")
    fitted = 2.0 ** law.predict(target).log2_lr if law else reuse
    base_lr = roles[ROLES[0]].protocol["base_lr"]
    factors, narrowest = {}, {}
    for role, g in roles.items():
        found = g.optimum("mup", g.sizes[0])  # the role's best factor at the narrowest width: no width fit
        narrowest[role] = 2.0**found.log2_lr / base_lr if found.method in ("parabola", "argmin") else 1.0
        role_law = fitted_or_none(g, "mup")  # log2 of the role's best LR along width, the rest at base_lr
        factors[role] = 2.0 ** role_law.predict(target).log2_lr / base_lr if role_law else 1.0
    sp_reuse = transfer_lr(sp.optimum("sp", sp.sizes[0]))
    ways = {
        "muP, plain reuse": ("mup", reuse, {}),
        "muP + global width fit": ("mup", fitted, {}),
        "muP + the narrowest width's per-role factors": ("mup", reuse, narrowest),
        "muP + per-role fit": ("mup", reuse, factors),
        "standard + its own width fit": (
            "sp",
            2.0 ** sp_law.predict(target).log2_lr if sp_law else sp_reuse,
            {},
        ),
        "standard, plain reuse": ("sp", sp_reuse, {}),
    }
    unit_path = out / "unit_scaled-grid-u-mup.json"
    if name == "gpt" and unit_path.exists():  # u-muP's own grid, same protocol (unit_scaled.py)
        unit = Grid.load(unit_path)
        unit_law = fitted_or_none(unit, "u-mup")
        unit_reuse = transfer_lr(unit.optimum("u-mup", unit.sizes[0]))
        for k in range(seeds):
            scans[k]["u-mup"] = {
                math.log2(lr): at("u-mup", lr, seed=k) for lr in unit.lrs if 2**-5 <= lr <= 1
            }
        ways["u-muP, plain reuse"] = ("u-mup", unit_reuse, {})
        ways["u-muP + its own width fit"] = ("u-mup", 2.0 ** unit_law.predict(target).log2_lr if unit_law
                                             else unit_reuse, {})  # fmt: skip
    rows = score(ways, scans, at, seeds)
    return {
        "target": target,
        "fitted_widths": list(mup.sizes),
        "mup_exponent": law.exponent if law else math.nan,
        "mup_exponent_se": law.exponent_se if law else math.nan,
        "sp_exponent": sp_law.exponent if sp_law else math.nan,
        "sp_exponent_se": sp_law.exponent_se if sp_law else math.nan,
        "role_factors_at_target": factors,
        "scans": scans,
        "seeds": seeds,
        "ways": rows,
    }


def score(ways: dict, scans: list[dict], at, seeds: int) -> dict:
    """Each way's loss per seed, against that seed's best at the target (its scan's minimum, or the
    way's own run when it beats the scan): the mean regret and its standard error."""
    rows = {}
    for way, (p, lr, lr_scale) in ways.items():
        losses = [at(p, lr, lr_scale, seed=k) for k in range(seeds)]
        bests = [
            min(min(v for v in scans[k][p].values() if math.isfinite(v)), losses[k]) for k in range(seeds)
        ]
        regrets = [loss / best - 1 for loss, best in zip(losses, bests, strict=True)]
        mean = sum(regrets) / seeds
        se = statistics.stdev(regrets) / math.sqrt(seeds) if seeds > 1 else math.nan
        rows[way] = {"log2_lr": math.log2(lr), "lr_scale": lr_scale, "losses": losses, "bests": bests,
                     "regrets": regrets, "regret": mean, "regret_se": se,
                     "loss": sum(losses) / seeds, "best": sum(bests) / seeds}  # fmt: skip
    return rows


def held_out_mlp(out: Path, seeds: int) -> dict | None:
    """The MLP of ``transfer.py`` (its muP and standard grid, widths 128..1024, two seeds) at 2048,
    which its fits never saw: muP reuse and fit, standard's fit and reuse."""
    path = out / "transfer-mlp.json"
    if not path.exists():
        print(f"  no {path.name} (python benchmarks/transfer.py --models mlp): no MLP held out", flush=True)
        return None
    grid, target = Grid.load(path), 2 * Grid.load(path).sizes[-1]
    p = grid.protocol
    data = first_available(p["data"])
    training = TrainSetup(
        data=data, steps=p["steps"], batch_size=p["batch_size"], eval_batches=p["eval_batches"]
    )
    runs = Target(
        "mlp", MLP, dict(p["shape"]), {}, training, (p["base"], target), out / "slide-mlp-runs.json"
    )
    laws = {n: fitted_or_none(grid, n) for n in ("mup", "sp")}
    # each scan: the grid's LRs within 2 octaves of that parametrization's own fitted optimum at the target
    near = {
        n: [lr for lr in grid.lrs if abs(math.log2(lr) - laws[n].predict(target).log2_lr) <= 2] for n in laws
    }
    scans = [
        {n: {math.log2(lr): runs.loss(n, lr, seed=k) for lr in near[n]} for n in laws} for k in range(seeds)
    ]
    reuse = transfer_lr(grid.optimum("mup", grid.sizes[0]))
    ways = {
        "muP, plain reuse": ("mup", reuse, {}),
        "muP + global width fit": ("mup", 2.0 ** laws["mup"].predict(target).log2_lr, {}),
        "standard + its own width fit": ("sp", 2.0 ** laws["sp"].predict(target).log2_lr, {}),
        "standard, plain reuse": ("sp", reuse, {}),
    }
    exponents = {f"{n}_exponent{e}": getattr(laws[n], f"exponent{e}") for n in laws for e in ("", "_se")}
    return {"target": target, "fitted_widths": list(grid.sizes), "seeds": seeds, "scans": scans, **exponents,
            "ways": score(ways, scans, runs.loss, seeds)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=["gpt", "own"])
    parser.add_argument("--quick", action="store_true", help="tiny budgets: checks that the script runs")
    parser.add_argument("--seeds", type=int, default=2, help="seeds of the runs at the held-out width")
    parser.add_argument("--out", type=Path, help="results folder (default: benchmarks/results)")
    args = parser.parse_args()
    out = args.out or RESULTS
    settings, target = (QUICK, TARGET["quick"]) if args.quick else (FULL, TARGET["full"])
    start = time.monotonic()
    models = {name: held_out(name, settings, out, target, args.seeds) for name in args.models}
    mlp = None if args.quick else held_out_mlp(out, args.seeds)
    if mlp:
        models["mlp"] = mlp
    for name, m in models.items():
        print(
            f"\n{name}: fitted on widths {m['fitted_widths']}, tried at {m['target']}; muP slope "
            f"{m['mup_exponent']:+.2f} +- {m['mup_exponent_se']:.2f}, standard {m['sp_exponent']:+.2f}"
        )
        for way, r in m["ways"].items():
            print(
                f"  {way:45s} lr 2^{r['log2_lr']:6.2f}  loss {r['loss']:.4f}  best {r['best']:.4f}  "
                f"regret {100 * r['regret']:+.2f}% +- {100 * r['regret_se']:.2f}"
            )
    name = "slide-quick.json" if args.quick else "slide.json"
    record = {**provenance(start), "models": models}
    (out / name).write_text(json.dumps(record, indent=1, default=str))
    print(f"results in {out / name}")


if __name__ == "__main__":
    main()
