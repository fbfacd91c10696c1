"""The benchmark scripts' quick modes, run as a user runs them: they must keep working."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_quick(script: str, out: Path, *args: str) -> tuple[dict, str]:
    """``python benchmarks/<script>.py --quick ... --out out``: its results file, and its output."""
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{script}.py"), "--quick", *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads((out / f"{script}-quick.json").read_text()), done.stdout
