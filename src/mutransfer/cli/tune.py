"""The commands on a sweep config file: ``sweep``, ``worker``, ``transfer``, ``validate`` and
``dashboard``. Their flags override the config's fields of the same name."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mutransfer.errors import MutransferError
from mutransfer.parametrizations import NAMES as PARAMETRIZATIONS
from mutransfer.sweep import SweepConfig, load_config, sweep
from mutransfer.sweep.runner import open_study, run_worker
from mutransfer.sweep.status import leaderboard
from mutransfer.sweep.storage import open_storage, redact
from mutransfer.transfer import transfer

from .options import duration

__all__ = ["add_commands"]


def _config(args: argparse.Namespace) -> SweepConfig:
    overrides = {k: getattr(args, k, None) for k in ("storage", "study", "trials", "device")}
    return load_config(args.config, **overrides)


def _sweep(args: argparse.Namespace) -> int:
    config = _config(args)
    print(
        f"sweep {config.study!r}: trials are saved in {redact(config.storage_url)} as they finish; "
        "rerun the same command to resume",
        file=sys.stderr,
    )
    start = time.monotonic()

    def progress(status: Any) -> None:
        elapsed = time.monotonic() - start
        left = ""
        if 0 < status.finished < status.trials:
            left = f", ~{duration(elapsed / status.finished * (status.trials - status.finished))} left"
        print(f"sweep: {status.line()} [{duration(elapsed)}{left}]", file=sys.stderr, flush=True)

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
    config = _config(args)
    print(f"worker joined study {config.study!r} in {redact(config.storage_url)}", file=sys.stderr)
    try:
        result = run_worker(config, progress=lambda s: print(f"worker: {s.line()}", file=sys.stderr))
    except KeyboardInterrupt:
        print("\ninterrupted: the trial in flight is queued again.", file=sys.stderr)
        return 130
    print(result.line())
    return 0


def _transfer(args: argparse.Namespace) -> int:
    config = _config(args)
    result = transfer(config, parametrization=args.parametrization)
    print(result.summary())
    out = args.out or f"{config.study}-target.json"
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    result.save(out)
    print(f"target settings written to {out}; in Python: mutransfer.load_transfer({out!r})")
    return 0


def _validate(args: argparse.Namespace) -> int:
    config = _config(args)
    print(f"{args.config}: ok (study {config.study!r}, storage {redact(config.storage_url)})")
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    try:  # an optional extra: only this command needs it
        import optuna_dashboard
    except ImportError:
        raise MutransferError("the dashboard needs optuna-dashboard: pip install optuna-dashboard") from None
    config = _config(args)
    print(
        f"serving {redact(config.storage_url)} on http://127.0.0.1:{args.port} (Ctrl-C stops)",
        file=sys.stderr,
    )
    optuna_dashboard.run_server(open_storage(config.storage_url, config.heartbeat), port=args.port)
    return 0


def add_commands(sub: Any) -> None:
    def command(
        name: str, run: Callable[..., int], help: str, description: str = ""
    ) -> argparse.ArgumentParser:
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

    s = command(
        "sweep",
        _sweep,
        "tune hyperparameters on the proxy with Optuna; resumable",
        "Runs the config's search on the proxy model until it has its budget of finished trials. "
        "Trials are saved as they finish; a rerun resumes, and a dead worker's trial is queued again.",
    )
    s.add_argument("--workers", type=int, default=1, help="local worker processes (default 1)")
    s.add_argument("--trials", type=int, help="finished trials wanted (overrides the config)")
    s.add_argument("--device", help="cpu, cuda, ... (overrides the config)")
    w = command(
        "worker", _worker, "join a running sweep (e.g. from another machine, with --storage postgresql://...)"
    )
    w.add_argument("--device", help="cpu, cuda, ... (overrides the config)")
    t = command(
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
    command("validate", _validate, "check a config file and report every problem")
    d = command("dashboard", _dashboard, "open optuna-dashboard on the study (when installed)")
    d.add_argument("--port", type=int, default=8080)
