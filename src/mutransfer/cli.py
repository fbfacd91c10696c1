"""Command line: one subcommand per public function; flags mirror argument names.

mutransfer demo                          # the whole story on the reference GPT, ~8 min on 2 CPU cores
mutransfer plan mutransfer.models:GPT --base width=64 --target width=1024 --out plan.json
mutransfer coord-check mutransfer.models:GPT --widths 32 64 128 256 --set base_d_head=8 --out coord.png
mutransfer coord-check mutransfer.models:GPT --depths 2 4 8 16 --residual 'blocks.*proj' --compare-sp
mutransfer grid mutransfer.models:MLP --data fashion-mnist --widths 128 256 512 1024 --json grid.json
mutransfer grid mutransfer.models:GPT --set width=64 --steps 100 200 400 800 --json steps.json
mutransfer fit steps.json --to steps=20000
mutransfer sweep examples/sweep-mlp.toml --workers 2
mutransfer transfer examples/sweep-mlp.toml --out target.json
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from mutransfer._interrupt import ctrl_c_raises_interrupted
from mutransfer.coord import GROWTH_THRESHOLD, CoordCheck, coord_check
from mutransfer.data import Batches, factory_keywords, load_for_training
from mutransfer.errors import MutransferError
from mutransfer.factory import load
from mutransfer.grid import Grid, grid
from mutransfer.parametrizations import NAMES as PARAMETRIZATIONS
from mutransfer.parametrizations import label
from mutransfer.scaling import plan as make_plan
from mutransfer.train import OPTIMIZERS, SCHEDULES


def parse_shape(items: Sequence[str]) -> dict[str, object]:
    """``["width=64", "tie_embeddings=True"]`` -> ``{"width": 64, "tie_embeddings": True}``."""
    shape = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise MutransferError(f"shape item {item!r} must look like key=value, e.g. width=64.")
        try:
            shape[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            shape[key] = value
    return shape


def _plan(args: argparse.Namespace) -> int:
    p = make_plan(
        load(args.factory),
        base=parse_shape(args.base),
        target=parse_shape(args.target),
        depth=args.depth,
        residual=args.residual,
        alpha=args.alpha,
    )
    print(p.summary(optimizer_family=args.optimizer_family))
    if args.out:
        p.save(args.out)
        print(f"plan written to {args.out}")
    return 0


def _load_data(args: argparse.Namespace, make_model: Callable) -> tuple[Batches, dict[str, object]]:
    """The data source, and the factory keywords it decides (the input size, the context
    length) for those the factory takes and ``--set`` leaves open."""
    block_size = max(args.block_size) if isinstance(args.block_size, list) else args.block_size
    data = load_for_training(args.data, block_size)
    shape = parse_shape(args.set)
    filled = {k: v for k, v in factory_keywords(data, make_model).items() if k not in shape}
    if filled:
        print(f"from the data: {' '.join(f'{k}={v}' for k, v in filled.items())}", file=sys.stderr)
    return data, {**filled, **shape}


def _coord_check(args: argparse.Namespace) -> int:
    make_model = load(args.factory)
    data, shape = _load_data(args, make_model)
    settings = dict(
        **_axis(args, default_widths=[32, 64, 128, 256]),
        data=data,
        steps=args.steps,
        seeds=args.seeds,
        lr=args.lr,
        optimizer=args.optimizer,
        batch_size=args.batch_size,
        base=args.base,
        threshold=args.threshold,
        device=args.device,
    )
    runs = [("mup", shape)]
    if args.compare_sp:
        runs.insert(0, ("sp", {**shape, **parse_shape(args.sp_set)}))
    results: list[CoordCheck] = []
    for parametrization, shape in runs:
        name = label(parametrization)
        result = coord_check(
            make_model,
            parametrization=parametrization,
            shape=shape,
            progress=_Progress(f"coord-check {name}"),
            **settings,
        )
        print(result.table(), end="\n\n")
        results.append(result)
    for path in (args.json, args.out):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    if args.json:
        for result in results:
            result.save(_suffixed(args.json, result.parametrization, len(results)))
    if args.out:
        from mutransfer.plot import plot_coord_check

        plot_coord_check(results, args.out, measure=args.plot_measure)
        print(f"plot written to {args.out}")
    return 0 if results[-1].passed else 1


def _grid(args: argparse.Namespace) -> int:
    make_model = load(args.factory)
    data, shape = _load_data(args, make_model)
    lrs = args.lrs or [2.0**k for k in args.log2_lrs]
    training = any(len(set(v)) > 1 for v in (args.steps, args.batch_size, args.block_size))
    print(
        f"results are saved to {args.json} after every cell; rerun the same command to resume",
        file=sys.stderr,
    )
    try:
        result = grid(
            make_model,
            **_axis(args, default_widths=[] if training else [32, 64, 128, 256]),
            lrs=lrs,
            data=data,
            parametrizations=args.parametrizations,
            shape=shape,
            sp_shape=parse_shape(args.sp_set),
            base=args.base,
            steps=args.steps,
            batch_size=args.batch_size,
            block_size=args.block_size,
            warmup=args.warmup,
            schedule=args.schedule,
            optimizer=args.optimizer,
            weight_decay=args.weight_decay,
            seeds=args.seeds,
            eval_batches=args.eval_batches,
            path=args.json,
            device=args.device,
            progress=_Progress("grid", unit="cells"),
        )
    except KeyboardInterrupt:
        saved = len(Grid.load(args.json).cells) if Path(args.json).exists() else 0
        print(f"\ninterrupted: {saved} cells are saved in {args.json}; rerun to resume.", file=sys.stderr)
        return 130
    print(result.table())
    out = args.out or str(Path(args.json).with_suffix(".png"))
    try:
        from mutransfer.plot import plot_grid

        plot_grid(result, out)
        print(f"plot written to {out}")
    except MutransferError as exc:  # no matplotlib: the JSON holds everything
        if args.out:
            raise
        print(f"no plot: {exc}", file=sys.stderr)
    return 0


def _config(args: argparse.Namespace):
    from mutransfer.sweep import load_config

    overrides = {k: getattr(args, k, None) for k in ("storage", "study", "trials", "device")}
    return load_config(args.config, **overrides)


def _sweep(args: argparse.Namespace) -> int:
    from mutransfer.sweep.runner import leaderboard, open_study, sweep
    from mutransfer.sweep.storage import redact

    config = _config(args)
    print(
        f"sweep {config.study!r}: trials are saved in {redact(config.storage_url)} as they finish; "
        "rerun the same command to resume",
        file=sys.stderr,
    )
    start = time.monotonic()

    def progress(status) -> None:
        elapsed = time.monotonic() - start
        left = ""
        if 0 < status.finished < status.trials:
            left = f", ~{_duration(elapsed / status.finished * (status.trials - status.finished))} left"
        print(f"sweep: {status.line()} [{_duration(elapsed)}{left}]", file=sys.stderr, flush=True)

    try:
        result = sweep(config, workers=args.workers, progress=progress)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: finished trials are saved in {redact(config.storage_url)}, the one in "
            "flight is queued again; rerun to resume.",
            file=sys.stderr,
        )
        return 130
    print(leaderboard(open_study(config)))
    print(f"{result.line()}\nnext: mutransfer transfer {args.config}")
    return 0 if result.best_number is not None else 1


def _worker(args: argparse.Namespace) -> int:
    from mutransfer.sweep.runner import run_worker

    config = _config(args)
    from mutransfer.sweep.storage import redact

    print(f"worker joined study {config.study!r} in {redact(config.storage_url)}", file=sys.stderr)
    try:
        result = run_worker(config, progress=lambda s: print(f"worker: {s.line()}", file=sys.stderr))
    except KeyboardInterrupt:
        print("\ninterrupted: the trial in flight is queued again.", file=sys.stderr)
        return 130
    print(result.line())
    return 0


def _transfer(args: argparse.Namespace) -> int:
    from mutransfer.transfer import transfer

    config = _config(args)
    result = transfer(config, parametrization=args.parametrization)
    print(result.summary())
    out = args.out or f"{config.study}-target.json"
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    result.save(out)
    print(f"target settings written to {out}; in Python: mutransfer.load_transfer({out!r})")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from mutransfer.sweep.storage import redact

    config = _config(args)
    print(f"{args.config}: ok (study {config.study!r}, storage {redact(config.storage_url)})")
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    try:
        import optuna_dashboard
    except ImportError:
        raise MutransferError("the dashboard needs optuna-dashboard: pip install optuna-dashboard") from None
    from mutransfer.sweep.storage import open_storage, redact

    config = _config(args)
    print(
        f"serving {redact(config.storage_url)} on http://127.0.0.1:{args.port} (Ctrl-C stops)",
        file=sys.stderr,
    )
    optuna_dashboard.run_server(open_storage(config.storage_url, config.heartbeat), port=args.port)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from mutransfer import demo

    out = Path(args.out)
    bars: dict[str, _Progress] = {}

    def progress(phase: str, done: int, total: int, what: str, left: float | None = None) -> None:
        if phase not in bars:
            step = demo.PHASES.index(phase) + 1
            bars[phase] = _Progress(
                f"[{step}/{len(demo.PHASES)}] {phase}", unit="runs" if step != 2 else "trials"
            )
        bars[phase](done, total, what, left)

    sizes = demo.QUICK if args.quick else demo.Sizes()
    if args.workers:
        sizes = dataclasses.replace(sizes, workers=args.workers)
    what = "quick demo (tiny sizes)" if args.quick else "demo: about 8 minutes on 2 CPU cores"
    print(f"mutransfer {what}; results go to {out}/ as they are made", file=sys.stderr)
    try:
        result = demo.run(
            out,
            sizes=sizes,
            data=args.data,
            device=args.device,
            resume=args.resume,
            progress=progress,
            command=" ".join(["mutransfer", *args.argv]),
        )
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: finished runs are saved in {out}/demo.json and {out}/sweep.journal; "
            "add --resume to the same command to continue.",
            file=sys.stderr,
        )
        return 130
    print()
    print(result.table())
    report = out / "report.html"
    print(f"\nreport: {report.resolve().as_uri()}   (results: {out / 'demo.json'})")
    if args.open:
        import webbrowser

        webbrowser.open(report.resolve().as_uri())
    return 0


class _Progress:
    """One status line on stderr: runs done, elapsed time and an estimate of the time left."""

    def __init__(self, label: str, unit: str = "runs") -> None:
        self.label, self.unit, self.start = label, unit, time.monotonic()
        self.tty = sys.stderr.isatty()

    def __call__(self, done: int, total: int, what: str, left: float | None = None) -> None:
        """``left``: the caller's estimate of the seconds to go; else elapsed time per item."""
        elapsed = time.monotonic() - self.start
        if left is None and 0 < done < total:
            left = elapsed / done * (total - done)
        eta = f", ~{_duration(left)} left" if left and done < total else ""
        line = f"{self.label}: {done}/{total} {self.unit}, {_duration(elapsed)}{eta} ({what})"
        if self.tty:  # one line, rewritten in place
            print("\r" + line.ljust(78), end="\n" if done == total else "", file=sys.stderr, flush=True)
        else:  # logs (CI): one line per run
            print(line, file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s" if seconds < 10 else f"{secs}s"


def _suffixed(path: str, tag: str, count: int) -> Path:
    """``out/coord.json`` -> ``out/coord-sp.json`` when several results share one --json path."""
    p = Path(path)
    return p if count == 1 else p.with_name(f"{p.stem}-{tag}{p.suffix}")


def _axis(args: argparse.Namespace, default_widths: list[int]) -> dict[str, object]:
    """The sizes to compare: --depths with the residual branches, else --widths."""
    if args.depths:
        if args.widths:
            raise MutransferError("give --widths or --depths, not both.")
        return dict(
            depths=args.depths,
            depth_key=args.depth_key,
            residual=args.residual,
            alpha=args.alpha,
            width_key=args.width_key,
        )
    return dict(widths=args.widths or default_widths, width_key=args.width_key)


def _depth_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--residual",
        nargs="+",
        default=[],
        metavar="PATTERN",
        help="the last module of each residual branch, e.g. 'blocks.*.attn.proj' 'blocks.*.fc_proj'",
    )
    parser.add_argument(
        "--alpha", type=float, default=1.0, help="depth exponent in [0.5, 1]: 1 CompleteP, 0.5 Depth-muP"
    )


def _model_and_data_arguments(
    parser: argparse.ArgumentParser, batch_size: int, several: bool = False
) -> None:
    """The flags every training command shares: the factory, its keywords, the width and the data."""
    parser.add_argument("factory", help="module:factory, e.g. mutransfer.models:GPT")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="fixed factory keywords")
    parser.add_argument(
        "--sp-set", nargs="+", default=[], metavar="KEY=VALUE", help="factory keywords for standard runs only"
    )
    parser.add_argument("--width-key", default="width", help="the factory keyword that sets the width")
    parser.add_argument(
        "--depths", nargs="+", type=int, help="compare depths instead of widths (CompleteP; needs --residual)"
    )
    parser.add_argument(
        "--depth-key", default="depth", help="the factory keyword that sets the number of blocks"
    )
    _depth_arguments(parser)
    parser.add_argument(
        "--base", type=int, help="base width (or depth) of the plan (default: the smallest compared)"
    )
    parser.add_argument(
        "--data", default="stdlib", help="stdlib, shakespeare, fashion-mnist, mnist-5k or digits"
    )
    axis = dict(nargs="+", type=int) if several else dict(type=int)  # a grid may sweep these
    parser.add_argument(
        "--block-size",
        default=[128] if several else 128,
        help="sequence length for text data (default 128)" + (SEVERAL if several else ""),
        **axis,
    )
    parser.add_argument(
        "--batch-size",
        default=[batch_size] if several else batch_size,
        help=f"default {batch_size}" + (SEVERAL if several else ""),
        **axis,
    )
    parser.add_argument("--device", default="cpu")


SEVERAL = "; several values make it the grid's axis, at the one width --set gives"


def _fit(args: argparse.Namespace) -> int:
    from mutransfer.fit import fit

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
            print(f"warning: {result.axis} {value} is {prediction.outside:.3g}x beyond the measured range; "
                  "the power law is an assumption there", file=sys.stderr)  # fmt: skip
    if args.json:
        from mutransfer.files import save_json

        save_json(args.json, law.to_dict())
        print(f"fit written to {args.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mutransfer", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser(
        "demo",
        help="the whole story on the reference GPT: coordinate check, proxy sweep, transfer, report",
        description="Coordinate check (standard vs muP); proxy sweeps at width 32 (muP: the LR and both "
        "multipliers; standard: the LR); transfer to width 256 and one training run of each target; LR "
        "scans at both widths that measure the optimum's drift; then report.html (figures embedded) and "
        "a summary table. Results are saved as they are made: --resume continues a killed run.",
    )
    m.add_argument("--quick", action="store_true", help="tiny sizes: seconds, for tests and a first look")
    m.add_argument("--out", default="out/demo", help="results folder (default out/demo)")
    m.add_argument("--data", help="text source: shakespeare (default when installed) or stdlib")
    m.add_argument("--device", default="cpu", help="cpu (default), cuda, ...")
    m.add_argument(
        "--workers",
        type=int,
        help="sweep worker processes (default 1: seeded, reproducible; more: faster, not reproducible)",
    )
    m.add_argument(
        "--resume", action="store_true", help="continue an interrupted run from its results folder"
    )
    m.add_argument("--open", action="store_true", help="open the report in a web browser at the end")
    m.set_defaults(run=_demo)
    p = sub.add_parser("plan", help="classify a model's parameters and print the muP plan")
    p.add_argument("factory", help="module:factory, e.g. mutransfer.models:GPT")
    p.add_argument("--base", nargs="+", required=True, metavar="KEY=VALUE", help="base shape keywords")
    p.add_argument("--target", nargs="+", required=True, metavar="KEY=VALUE", help="target shape keywords")
    p.add_argument("--depth", metavar="KEY", help="the keyword that sets the number of residual blocks")
    _depth_arguments(p)
    p.add_argument("--optimizer-family", default="adam", choices=["adam", "sgd", "muon"])
    p.add_argument("--out", help="write the plan as JSON here")
    p.set_defaults(run=_plan)

    c = sub.add_parser(
        "coord-check",
        help="train a few steps at several widths and judge whether any activation grows with width",
        description="Exit status: 0 when the muP check passes, 1 when a module grows with width, "
        "2 on bad input.",
    )
    _model_and_data_arguments(c, batch_size=8)
    c.add_argument("--widths", nargs="+", type=int, help="at least 3 widths (default 32 64 128 256)")
    c.add_argument("--steps", type=int, default=4, help="training steps per width (default 4)")
    c.add_argument("--seeds", type=int, default=3, help="seeds averaged per width (default 3)")
    c.add_argument("--lr", type=float, default=3e-3, help="base learning rate (default 3e-3)")
    c.add_argument("--optimizer", default="adam", choices=sorted(OPTIMIZERS))
    c.add_argument(
        "--compare-sp", action="store_true", help="also run standard parametrization, side by side"
    )
    c.add_argument(
        "--threshold", type=float, default=GROWTH_THRESHOLD, help="fail above this growth exponent"
    )
    c.add_argument("--out", help="save the plot (PNG) here")
    c.add_argument(
        "--plot-measure",
        default="update",
        choices=["update", "rms", "change"],
        help="what the plot shows per module: the change its own updates made (default), its output "
        "RMS, or its change since init",
    )
    c.add_argument("--json", help="save the measurements and verdicts as JSON here")
    c.set_defaults(run=_coord_check)

    g = sub.add_parser(
        "grid",
        help="train a width x learning-rate grid and measure how far the best LR moves with width",
        description="Trains every width at every LR, standard and muP, and reports the optimum per width, "
        "its drift across widths and the regret of reusing the narrowest width's optimum at the widest. "
        "Cells are saved as they finish; rerunning the same command resumes.",
    )
    _model_and_data_arguments(g, batch_size=32, several=True)
    g.add_argument("--widths", nargs="+", type=int, help="at least 2 widths (default 32 64 128 256)")
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
    g.add_argument(
        "--parametrizations", nargs="+", default=["sp", "mup"], choices=list(PARAMETRIZATIONS), metavar="P"
    )
    g.add_argument(
        "--steps", nargs="+", type=int, default=[300], help="training steps per cell (default 300)" + SEVERAL
    )
    g.add_argument("--warmup", type=float, default=0.1, help="fraction of the steps with linear warmup")
    g.add_argument("--schedule", default="cosine", choices=SCHEDULES, help="decay after warmup")
    g.add_argument("--optimizer", default="adam", choices=sorted(OPTIMIZERS))
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--seeds", type=int, default=1, help="seeds per cell, losses averaged (default 1)")
    g.add_argument("--eval-batches", type=int, default=16, help="validation batches per cell (default 16)")
    g.add_argument(
        "--json", default="grid.json", help="results file, saved after every cell (default grid.json)"
    )
    g.add_argument("--out", help="the plot (PNG; default: the --json path with .png)")
    g.set_defaults(run=_grid)

    f = sub.add_parser(
        "fit",
        help="fit how the best LR moves along a grid's axis (a power law) and extrapolate it",
        description="Fits log2(optimal LR) = a + e log2(size) to the optima of a grid over steps, batch "
        "size, sequence length (or width and depth, where muP's e should be near 0), with the exponent's "
        "standard error, and predicts the optimum at other sizes; beyond 10x the measured range it warns.",
    )
    f.add_argument("grid", help="a grid results file (mutransfer grid ... --json)")
    f.add_argument("--to", nargs="+", default=[], metavar="AXIS=SIZE", help="predict here, e.g. steps=20000")
    f.add_argument("--parametrization", choices=list(PARAMETRIZATIONS), help="default: mup")
    f.add_argument("--json", help="write the fit here")
    f.set_defaults(run=_fit)

    def config_command(name: str, run: Callable, help: str, description: str = "") -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description or help)
        p.add_argument(
            "config", help="the experiment (TOML, or YAML with PyYAML); see examples/sweep-mlp.toml"
        )
        p.add_argument(
            "--storage", help="journal file path or postgresql://user@host/db (overrides the config)"
        )
        p.add_argument("--study", help="study name (default: the config file's name)")
        p.set_defaults(run=run)
        return p

    s = config_command(
        "sweep",
        _sweep,
        "tune hyperparameters on the proxy with Optuna; resumable",
        "Runs the config's search on the proxy model until it has its budget of finished trials. Trials "
        "are saved as they finish; a rerun resumes, and a dead worker's trial is queued again.",
    )
    s.add_argument("--workers", type=int, default=1, help="local worker processes (default 1)")
    s.add_argument("--trials", type=int, help="finished trials wanted (overrides the config)")
    s.add_argument("--device", help="cpu, cuda, ... (overrides the config)")
    w = config_command(
        "worker", _worker, "join a running sweep (e.g. from another machine, with --storage postgresql://...)"
    )
    w.add_argument("--device", help="cpu, cuda, ... (overrides the config)")
    t = config_command(
        "transfer",
        _transfer,
        "write the target's training settings from the proxy's best trial, with the tuning cost",
    )
    t.add_argument("--out", help="where to write them (default: STUDY-target.json)")
    t.add_argument(
        "--parametrization",
        choices=list(PARAMETRIZATIONS),
        help="sp copies the values without muP scaling, for comparison (default: the config's)",
    )
    config_command("validate", _validate, "check a config file and report every problem")
    d = config_command("dashboard", _dashboard, "open optuna-dashboard on the study (when installed)")
    d.add_argument("--port", type=int, default=8080)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command as typed, for run records
    with ctrl_c_raises_interrupted():
        try:
            return args.run(args)
        except MutransferError as exc:
            print(f"mutransfer: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:  # commands with work to keep say where it is; this is the rest
            print("\ninterrupted", file=sys.stderr)
            return 130
        except Exception:  # not the input's fault: a bug, shown whole; 1 stays "the check failed"
            traceback.print_exc()
            print("mutransfer: internal error (the traceback above); please report it", file=sys.stderr)
            return 3


if __name__ == "__main__":
    sys.exit(main())
