"""scripts/flake-hunt's table: failures per test over N runs, and ids it cannot count."""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "flake-hunt"


def flake_hunt():
    loader = importlib.machinery.SourceFileLoader("flake_hunt", str(SCRIPT))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader("flake_hunt", loader))
    loader.exec_module(module)
    return module


def run(i: int, outcomes: dict[str, str]) -> dict:
    failed = sorted(t for t, o in outcomes.items() if o == "failed")
    return {
        "run": i,
        "returncode": 1 if failed else 0,
        "seconds": 10.0 + i,
        "passed": sum(o == "passed" for o in outcomes.values()),
        "skipped": 0,
        "failed": failed,
        "outcomes": outcomes,
    }


def test_the_table_counts_each_tests_failures_over_the_runs():
    runs = [
        run(1, {"a::x": "passed", "a::y": "failed"}),
        run(2, {"a::x": "passed", "a::y": "passed"}),
        run(3, {"a::x": "failed", "a::y": "failed"}),
    ]
    text = flake_hunt().report(runs, "abc1234", load=1)
    assert "3 runs beside 1 CPU-bound process(es); 1/3 green" in text
    lines = text.splitlines()
    assert lines.index(next(ln for ln in lines if ln.startswith("a::y"))) < lines.index(
        next(ln for ln in lines if ln.startswith("a::x"))
    )  # the flakiest first
    assert any(ln.split() == ["a::y", "2/3"] for ln in lines)
    assert any(ln.split() == ["a::x", "1/3"] for ln in lines)


def test_an_id_that_changes_between_runs_is_named_not_counted_silently():
    runs = [run(i, {"a::x": "passed", f"a::z[\x1f{i}]": "passed"}) for i in (1, 2)]  # e.g. gzip bytes
    text = flake_hunt().report(runs, "abc1234", load=0)
    assert "2/2 green" in text and "no test failed in any run" in text
    assert "2 test ids were not in every run" in text and "a::x" not in text.splitlines()[-1]
