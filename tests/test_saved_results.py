"""The results saved in benchmarks/results/ still load with this version: grids (written with
"widths" and cells' "width" before sizes had their own name) and the demo's results with its
coordinate checks; and so do files in the formats of earlier versions (tests/data/saved/: the
demo's results of 2026-12-03, format 1, with format-2 plans). A reader that stopped
understanding them would orphan every figure in the READMEs and every file users saved."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import mutransfer
from mutransfer.coord import CoordCheck
from mutransfer.demo import DemoResult
from mutransfer.errors import MutransferError
from mutransfer.grid import Grid

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
OLD_DEMO = Path(__file__).resolve().parent / "data" / "saved" / "demo-2026-12-03.json"
GRIDS = sorted(p for p in RESULTS.rglob("*.json") if {"protocol", "cells"} <= set(json.loads(p.read_text())))


def test_there_are_saved_grids_to_read():
    assert len(GRIDS) >= 10


@pytest.mark.parametrize("path", GRIDS, ids=lambda p: str(p.relative_to(RESULTS)))
def test_a_saved_grid_loads_and_summarises(path):
    grid = Grid.load(path)
    raw = json.loads(path.read_text())
    assert grid.sizes == tuple(raw.get("sizes", raw.get("widths")))
    assert {c.size for c in grid.cells} <= set(grid.sizes)
    for name in grid.parametrizations:
        assert len(grid.summary(name).optima) == len(grid.sizes)
    assert grid.table()


@pytest.mark.parametrize("path", [RESULTS / "demo.json", OLD_DEMO], ids=["now", "format 1"])
def test_a_saved_demo_loads_with_its_coordinate_checks_and_scans(path):
    result = DemoResult.load(path)
    checks = [CoordCheck.from_dict(result.coord[p]) for p in ("mup", "sp")]
    assert checks[0].passed and not checks[1].passed
    assert checks[0].sizes == (32, 64, 128, 256) and checks[0].widths == checks[0].sizes
    assert "muTransfer demo" in result.table()
    for p in ("mup", "sp"):  # format 1 kept its scans as runs by log2 LR: read as grids
        scan = result.scan_grid(p)
        assert {c.size for c in scan.cells} == set(scan.sizes)
        assert result.optimum(p, "target").method != "none"


def test_a_coordinate_check_file_loads_and_a_wrong_file_says_so(tmp_path):
    saved = json.loads(OLD_DEMO.read_text())["coord"]["mup"]  # written before "sizes"
    (tmp_path / "c.json").write_text(json.dumps(saved))
    check = mutransfer.CoordCheck.load(tmp_path / "c.json")
    assert check.passed and check.sizes == tuple(saved["widths"])
    (tmp_path / "g.json").write_text(json.dumps({"cells": []}))
    with pytest.raises(MutransferError, match="not a coordinate check file"):
        mutransfer.CoordCheck.load(tmp_path / "g.json")
