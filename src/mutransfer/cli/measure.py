"""The commands that measure a model: ``plan``, ``coord-check``, ``grid`` and ``fit``. Each flag
is a parameter of the function the command calls, with that function's default."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mutransfer.axis import DEFAULT_WIDTHS
from mutransfer.coord import CoordCheck, coord_check
from mutransfer.errors import MutransferError
from mutransfer.factory import load
from mutransfer.files import save_json
from mutransfer.fit import fit
from mutransfer.forecast import forecast
from mutransfer.grid import Grid, grid
from mutransfer.parametrizations import NAMES as PARAMETRIZATIONS
from mutransfer.parametrizations import PLANNED
from mutransfer.plot import plot_coord_check, plot_grid
from mutransfer.scaling import plan as make_plan
from mutransfer.scaling.init_law import INIT_LAWS
from mutransfer.scaling.rules import FAMILIES
from mutransfer.setup import ROLES
from mutransfer.train import OPTIMIZERS, SCHEDULES

from .options import Flags, Progress, load_data, parse_shape, renamed

__all__ = ["add_commands"]

SEVERAL = "; several values make it the grid's axis, at the one width --shape gives"


# ---- what the commands do ----------------------------------------------------------------------
def _plan(args: argparse.Namespace) -> int:
    p = make_plan(
        load(args.factory),
        base=parse_shape(args.base) if args.base else None,
        target=parse_shape(args.target),
        depth=args.depth,
        residual=args.residual,
        alpha=args.alpha,
        init_law=args.init_law,
        overrides=parse_shape(args.overrides, "override"),
        parametrization=args.parametrization,
    )
    print(p.summary(optimizer_family=args.optimizer_family))
    if args.out:
        p.save(args.out)
        print(f"plan written to {args.out}")
    return 0


def _model(args: argparse.Namespace) -> dict[str, Any]:
    """The keywords every measuring command passes alike: the model, its data and its axis."""
    make_model = load(args.factory)
    data, shape = load_data(args.data, args.block_size, make_model, parse_shape(args.shape))
    if args.widths and args.depths:
        raise MutransferError("give --widths or --depths, not both.")
    return dict(
        make_model=make_model,
        data=data,
        shape=shape,
        sp_shape=parse_shape(args.sp_shape),
        widths=args.widths or (),
        depths=args.depths or (),
        width_key=args.width_key,
        depth_key=args.depth_key,
        residual=args.residual,
        alpha=args.alpha,
        base=args.base,
        init_law=args.init_law,
        zero=args.zero,
        optimizer=args.optimizer,
        optimizer_family=args.optimizer_family,
        seeds=args.seeds,
        device=args.device,
    )


def _coord_check(args: argparse.Namespace) -> int:
    parametrizations = args.parametrizations or ["mup"]
    names = ", ".join(parametrizations)
    results: list[CoordCheck] = coord_check(
        **_model(args),
        steps=args.steps,
        seed=args.seed,
        lr=args.lr,
        batch_size=args.batch_size,
        z_loss=args.z_loss,
        parametrizations=parametrizations,
        modules=args.modules,
        threshold=args.threshold,
        progress=Progress(f"coord-check {names}"),
    )
    for result in results:
        print(result.table(), end="\n\n")
    for path in (args.json, args.out):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    if args.json:
        for result in results:
            result.save(_suffixed(args.json, result.parametrization, len(results)))
    if args.out:
        plot_coord_check(results, args.out, measure=args.plot_measure)
        print(f"plot written to {args.out}")
    judged = [r for r in results if r.parametrization in PLANNED] or results
    return 0 if all(r.passed for r in judged) else 1


def _grid(args: argparse.Namespace) -> int:
    lrs = args.lrs or [2.0**k for k in args.log2_lrs]
    print(
        f"results are saved to {args.path} after every cell; rerun the same command to resume",
        file=sys.stderr,
    )
    try:
        result = grid(
            **_model(args),
            lrs=lrs,
            parametrizations=args.parametrizations,
            steps=args.steps,
            batch_size=args.batch_size,
            block_size=args.block_size,
            warmup=args.warmup,
            schedule=args.schedule,
            weight_decay=args.weight_decay,
            eval_batches=args.eval_batches,
            z_loss=args.z_loss,
            monitor_every=args.monitor_every,
            fp8=args.fp8,
            role=args.role,
            base_lr=args.base_lr,
            path=args.path,
            progress=Progress("grid", unit="cells"),
        )
    except KeyboardInterrupt:
        saved = len(Grid.load(args.path).cells) if Path(args.path).exists() else 0
        print(f"\ninterrupted: {saved} cells are saved in {args.path}; rerun to resume.", file=sys.stderr)
        return 130
    print(result.table())
    out = args.out or str(Path(args.path).with_suffix(".png"))
    try:
        plot_grid(result, out)
        print(f"plot written to {out}")
    except MutransferError as exc:  # no matplotlib: the JSON holds everything
        if args.out:
            raise
        print(f"no plot: {exc}", file=sys.stderr)
    return 0


def _fit(args: argparse.Namespace) -> int:
    result = Grid.load(args.grid)
    law = fit(result, args.parametrization)
    print(f"{result.axis} x LR grid {args.grid}: {result.protocol['factory']} on {result.protocol['data']}")
    print(law.text())
    for item in args.to:
        key, _, value = item.partition("=")
        if key != result.axis or not value:
            raise MutransferError(
                f"--to {item!r}: give the grid's axis and a size, e.g. --to {result.axis}=20000."
            )
        prediction = law.predict(float(value))
        print(prediction.text(result.axis))
        if prediction.extrapolates:
            print(
                f"warning: {result.axis} {value} is {prediction.outside:.3g}x beyond the measured range; "
                "the power law is an assumption there",
                file=sys.stderr,
            )
    if args.json:
        save_json(args.json, law.to_dict())
        print(f"fit written to {args.json}")
    return 0


def _forecast(args: argparse.Namespace) -> int:
    result = Grid.load(args.grid)
    found = forecast(result, args.to, lr=args.lr, parametrization=args.parametrization)
    p = result.protocol
    print(f"{result.axis} x LR grid {args.grid}: {p.get('factory', '?')} on {p.get('data', '?')}")
    print(found.text())
    if args.json:
        save_json(args.json, found.to_dict())
        print(f"forecast written to {args.json}")
    return 1 if found.warnings else 0


def _suffixed(path: str, tag: str, count: int) -> Path:
    """``out/coord.json`` -> ``out/coord-sp.json`` when several results share one --json path."""
    p = Path(path)
    return p if count == 1 else p.with_name(f"{p.stem}-{tag}{p.suffix}")


# ---- their flags -------------------------------------------------------------------------------
def add_commands(sub: Any) -> None:
    _plan_parser(sub)
    _coord_check_parser(sub)
    _grid_parser(sub)
    _fit_parser(sub)
    _forecast_parser(sub)


def _plan_parser(sub: Any) -> None:
    p = sub.add_parser("plan", help="classify a model's parameters and print the muP plan")
    flag = Flags(p, make_plan)
    p.add_argument("factory", help="module:factory, e.g. mutransfer.models:GPT")
    p.add_argument("--base", nargs="+", metavar="KEY=VALUE", help="base shape keywords (muP needs them)")
    p.add_argument("--target", nargs="+", required=True, metavar="KEY=VALUE", help="target shape keywords")
    flag("depth", "the keyword that sets the number of residual blocks", metavar="KEY")
    _depth_flags(flag)
    flag(
        "init_law",
        "how the factory's own init scales with width (default: measured)",
        choices=INIT_LAWS,
    )
    p.add_argument(
        "--overrides",
        nargs="+",
        default=[],
        metavar="PATTERN=ROLE",
        help="roles for tensors the inference cannot read, e.g. 'head=output'",
    )
    flag("parametrization", "mup, or u-mup (unit-scaled; no base shape)", choices=["mup", "u-mup"])
    p.add_argument("--optimizer-family", default="adam", choices=FAMILIES)
    p.add_argument("--out", help="write the plan as JSON here")
    p.set_defaults(run=_plan)


def _coord_check_parser(sub: Any) -> None:
    c = sub.add_parser(
        "coord-check",
        help="train a few steps at several widths and judge whether any activation grows with width",
        description="Exit status: 0 when the muP check passes, 1 when a point grows or vanishes with "
        "width, 2 on bad input.",
    )
    flag = Flags(c, coord_check)
    _model_flags(c, flag)
    flag("widths", f"at least 3 widths (default {' '.join(map(str, DEFAULT_WIDTHS))})", nargs="+", type=int)
    flag("steps", "training steps per width", type=int)
    flag("seed", "the first seed", type=int)
    flag("lr", "base learning rate", type=float)
    flag("batch_size", "examples per step", type=int)
    flag("z_loss", "weight of a z-loss on the output logits, e.g. 1e-4", type=float)
    flag("parametrizations", "mup (default), sp, u-mup, or several side by side", nargs="+",
         choices=list(PARAMETRIZATIONS), metavar="P")  # fmt: skip
    renamed(c, "--compare-sp", "--parametrizations", value=["sp", "mup"])
    flag("modules", "name patterns of the points to watch (default: all)", nargs="+")
    flag("threshold", "fail above this growth exponent", type=float)
    c.add_argument("--out", help="save the plot (PNG) here")
    c.add_argument(
        "--plot-measure",
        default="update",
        choices=["update", "rms", "change"],
        help="what the plot shows per point: the change its own updates made (default), its "
        "output RMS, or its change since init",
    )
    c.add_argument("--json", help="save the measurements and verdicts as JSON here")
    c.set_defaults(run=_coord_check)


def _grid_parser(sub: Any) -> None:
    g = sub.add_parser(
        "grid",
        help="train a width x learning-rate grid and measure how far the best LR moves with width",
        description="Trains every width at every LR, standard and muP, and reports the optimum per width, "
        "its drift across widths and the regret of reusing the narrowest width's optimum at the widest. "
        "Cells are saved as they finish; rerunning the same command resumes.",
    )
    flag = Flags(g, grid)
    _model_flags(g, flag, several=True)
    flag("widths", f"at least 2 widths (default {' '.join(map(str, DEFAULT_WIDTHS))})", nargs="+", type=int)
    lr = g.add_mutually_exclusive_group()
    lr.add_argument(
        "--log2-lrs",
        nargs="+",
        type=float,
        default=list(range(-12, -4)),
        metavar="K",
        help="base learning rates 2**K (default: -12 to -5)",
    )
    lr.add_argument("--lrs", nargs="+", type=float, help="base learning rates, instead of --log2-lrs")
    flag("parametrizations", "default: sp mup along width or depth, mup alone along a training axis",
         nargs="+", choices=list(PARAMETRIZATIONS), metavar="P")  # fmt: skip
    flag("steps", "training steps per cell" + SEVERAL, several=True, nargs="+", type=int)
    flag("warmup", "fraction of the steps with linear warmup", type=float)
    flag("schedule", "decay after warmup", choices=SCHEDULES)
    flag("weight_decay", "decoupled weight decay", type=float)
    flag("eval_batches", "validation batches per cell", type=int)
    flag("z_loss", "weight of a z-loss on the output logits, e.g. 1e-4", type=float)
    flag("monitor_every", "record attention logits, log Z, updates and gradients every N steps "
         "(0: off)", type=int)  # fmt: skip
    flag("fp8", "every matmul in simulated FP8 (E4M3 operands, E5M2 gradients, plain cast)",
         action="store_true")  # fmt: skip
    flag("role", "a per-role grid: the LRs are this role's, every other tensor's is --base-lr",
         choices=list(ROLES))  # fmt: skip
    flag("base_lr", "with --role: the other tensors' learning rate", type=float)
    flag("path", "results file, saved after every cell (default grid.json)")
    g.set_defaults(path="grid.json")
    renamed(g, "--json", "--path")
    g.add_argument("--out", help="the plot (PNG; default: the --path file with .png)")
    g.set_defaults(run=_grid)


def _fit_parser(sub: Any) -> None:
    f = sub.add_parser(
        "fit",
        help="fit how the best LR moves along a grid's axis (a power law) and extrapolate it",
        description="Fits log2(optimal LR) = a + e log2(size) to the optima of a grid over steps, batch "
        "size, sequence length (or width and depth, where muP's e should be near 0), with the exponent's "
        "standard error, and predicts the optimum at other sizes; beyond 10x the measured range it warns.",
    )
    f.add_argument("grid", help="a grid results file (mutransfer grid ... --path)")
    f.add_argument("--to", nargs="+", default=[], metavar="AXIS=SIZE", help="predict here, e.g. steps=20000")
    f.add_argument("--parametrization", choices=list(PARAMETRIZATIONS), help="default: mup")
    f.add_argument("--json", help="write the fit here")
    f.set_defaults(run=_fit)


def _forecast_parser(sub: Any) -> None:
    f = sub.add_parser(
        "forecast",
        aliases=["predict"],
        help="forecast the instability monitors (attention logits, log Z, gradients) at a target width",
        description="Fits how each monitor a grid recorded (mutransfer grid --monitor-every N) scales "
        "along its sizes at one learning rate, and extrapolates it to --to. Exit status 1 when a monitor "
        "is forecast to cross a level where a smaller run diverged, or a gradient to fall under 10x Adam's "
        "epsilon. With 3+ sizes it checks itself on the widest, held out.",
    )
    f.add_argument("grid", help="a grid results file recorded with --monitor-every")
    f.add_argument("--to", type=int, required=True, metavar="SIZE", help="the target's width (or depth)")
    f.add_argument("--lr", type=float, help="one of the grid's LRs (default: nearest the narrowest optimum)")
    f.add_argument("--parametrization", choices=list(PARAMETRIZATIONS), help="default: mup")
    f.add_argument("--json", help="write the forecast here")
    f.set_defaults(run=_forecast)


def _model_flags(parser: argparse.ArgumentParser, flag: Flags, several: bool = False) -> None:
    """The flags coord-check and grid share: the factory, its keywords, the axis and the data."""
    parser.add_argument("factory", help="module:factory, e.g. mutransfer.models:GPT")
    flag("shape", "the factory's fixed keywords", nargs="+", metavar="KEY=VALUE")
    flag("sp_shape", "factory keywords for standard runs only", nargs="+", metavar="KEY=VALUE")
    parser.set_defaults(shape=[], sp_shape=[])
    renamed(parser, "--set", "--shape", nargs="+")
    renamed(parser, "--sp-set", "--sp-shape", nargs="+")
    flag("width_key", "the factory keyword that sets the width")
    flag("depths", "compare depths instead of widths (CompleteP; needs --residual)", nargs="+", type=int)
    flag("depth_key", "the factory keyword that sets the number of blocks")
    _depth_flags(flag)
    flag("base", "base width (or depth) of the plan (default: the smallest compared)", type=int)
    flag(
        "init_law",
        "how the factory's own init scales with width (default: measured)",
        choices=INIT_LAWS,
    )
    flag("zero", "name patterns of tensors to start at zero", nargs="+")
    parser.add_argument(
        "--data", default="stdlib", help="stdlib (default), shakespeare, fashion-mnist, mnist-5k or digits"
    )
    if several:
        flag("block_size", "sequence length for text data (default 128)" + SEVERAL, nargs="+", type=int)
        flag("batch_size", "examples per step" + SEVERAL, several=True, nargs="+", type=int)
    else:
        parser.add_argument("--block-size", type=int, help="sequence length for text data (default 128)")
    flag("optimizer", "the optimizer", choices=sorted(OPTIMIZERS))
    flag(
        "optimizer_family",
        "what a custom optimizer is, for the plan (default adam)",
        choices=FAMILIES,
    )
    flag("seeds", "seeds averaged per run", type=int)
    flag("device", "cpu, cuda, ...")


def _depth_flags(flag: Flags) -> None:
    flag(
        "residual",
        "the last module of each residual branch, e.g. 'blocks.*.attn.proj' 'blocks.*.fc_proj'",
        nargs="+",
        metavar="PATTERN",
    )
    flag("alpha", "depth exponent in [0.5, 1]: 1 CompleteP, 0.5 Depth-muP", type=float)
