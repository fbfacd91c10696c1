"""`mutransfer demo --quick` end to end: the command, its report, its results file, resuming."""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser

import pytest
import torch

import mutransfer
from mutransfer import demo
from mutransfer.demo.run import _sweep_config
from mutransfer.errors import MutransferError
from mutransfer.grid import Grid, fit_optimum
from mutransfer.sweep.experiment import Experiment

PNG = b"\x89PNG\r\n\x1a\n"


class _Page(HTMLParser):
    """The report's tables (by their data-table name) as lists of cell texts, and its images."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[str] = []
        self._table: list[list[str]] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("data-table", ""), [])
        elif tag == "tr" and self._table is not None and "data-row" in attrs:
            self._table.append([])
        elif tag == "td" and self._table:
            self._cell = []
        elif tag == "img":
            self.images.append(attrs["src"])

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self._table[-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """One run of the command, as a user types it (in a subprocess)."""
    out = tmp_path_factory.mktemp("demo")
    done = subprocess.run(
        [sys.executable, "-m", "mutransfer", "demo", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


def test_demo_writes_results_report_and_summary(quick_demo):
    out, done = quick_demo
    result = demo.DemoResult.load(out / "demo.json")
    assert result.complete
    # every phase ran, with progress on stderr for each
    for i, phase in enumerate(demo.PHASES, start=1):
        assert f"[{i}/4] {phase}:" in done.stderr
    assert result.coord["sp"]["sizes"] == list(demo.QUICK.coord_widths)
    # two sweeps in one journal: muP searches the multipliers too, standard the LR alone
    assert (out / "sweep.journal").exists()
    assert result.sweep["mup"]["searched"] == ["lr", "input_mult", "output_mult"]
    assert result.sweep["sp"]["searched"] == ["lr"]
    assert len(result.sweep["mup"]["trials"]) >= demo.QUICK.trials
    assert len(result.sweep["sp"]["trials"]) >= demo.QUICK.sp_trials
    # each target trained with its sweep's best values, as mutransfer transfer wrote them
    for p in ("mup", "sp"):
        best = result.sweep[p]["best"]["params"]
        saved = mutransfer.load_transfer(out / f"target-{p}.json")
        assert saved.hparams == {**best, "warmup": 0.1} == result.transfer[p]["hparams"]
        assert result.target[p]["lr"] == best["lr"]
        assert saved.shape["width"] == demo.QUICK.target
    assert result.transfer["sp"]["shape"]["base_d_head"] is None  # standard attention at the target
    assert result.transfer["mup"]["shape"]["base_d_head"] == demo.QUICK.proxy // 4
    # the scans are centred on each sweep's best LR, at both widths
    for p in ("mup", "sp"):
        centre = round(result.best_log2_lr(p))
        for where in ("proxy", "target"):
            size = getattr(demo.QUICK, where)
            lrs = [c.lr for c in result.scan_grid(p).cells if c.size == size and not c.transfer]
            assert sorted(lrs) == [2.0 ** (centre + k) for k in (-1, 0, 1)]
    # the terminal summary is the report's table
    for what, mup, sp in result.rows():
        assert what in done.stdout and mup in done.stdout and sp in done.stdout
    assert result.verdict() in done.stdout
    assert "report: file://" in done.stdout


def test_report_numbers_match_the_results_file(quick_demo):
    out, _ = quick_demo
    raw = json.loads((out / "demo.json").read_text())
    result = demo.DemoResult.from_dict(raw)
    page = _Page()
    page.feed((out / "report.html").read_text())
    # four figures, embedded as PNG, each also saved beside the page
    assert len(page.images) == 4
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        data = base64.b64decode(src.split(",", 1)[1])
        assert data.startswith(PNG) and len(data) > 10_000
    for name in ("coord", "sweep", "scan", "target"):
        assert (out / f"{name}.png").read_bytes().startswith(PNG)
    # the summary table shows the rows the result computes ...
    summary = page.tables["summary"]
    assert [tuple(r) for r in summary] == [tuple(r) for r in result.rows()]
    # ... and those agree with the raw numbers of the file, recomputed here
    cells = {row[0]: row[1:] for row in summary}
    for col, p in enumerate(("mup", "sp")):
        grow = [m["name"] for m in raw["coord"][p]["modules"] if m["status"] != "ok"]
        assert cells["coordinate check"][col] == (f"FAILED ({len(grow)} points fail)" if grow else "passed")
    for col, p in enumerate(("mup", "sp")):
        target = raw["target"][p]
        shown = cells["target loss with the proxy's best values"][col]
        assert shown == (
            f"diverged ({target['diverged']})" if target["diverged"] else f"{target['val_loss']:.4f}"
        )
        optima = {}
        for where in ("proxy", "target"):
            runs = _scan_runs(raw, p, where)
            ks = sorted(runs)
            optima[where] = fit_optimum(0, ks, [runs[k] for k in ks])
        target_best = optima["target"]
        assert cells["target's own best in its LR scan"][col].startswith(f"{target_best.loss:.4f} at 2^")
        drift = optima["target"].log2_lr - optima["proxy"].log2_lr
        assert cells["optimum drift, proxy -> target (log2 LR)"][col] == f"{drift:+.2f}"
        if not target["diverged"]:
            gap = target["val_loss"] / target_best.loss - 1
            assert cells["gap to the target's own best"][col] == f"{gap:+.1%}"
        cost = raw["transfer"][p]["cost"]
        assert (
            cells["tuning cost, FLOPs / one target run"][col]
            == f"{cost['proxy_flops'] / cost['target_flops']:.0%}"
        )
    # the scan and leaderboard tables hold the file's values
    for row in page.tables["scan"]:
        k = float(row[0].removeprefix("2^"))
        for cell, (p, where) in zip(row[1:], [(p, w) for p in ("mup", "sp") for w in ("proxy", "target")],
                                    strict=True):  # fmt: skip
            loss = _scan_runs(raw, p, where).get(k)
            assert cell == ("" if loss is None else "diverged" if loss == math.inf else f"{loss:.4f}")
    for p in ("mup", "sp"):
        top = page.tables[f"leaderboard-{p}"][0]
        best = raw["sweep"][p]["best"]
        assert top[:2] == [f"#{best['number']}", f"{best['value']:.4f}"]
    # the file's own summary is the one recomputed from its raw data
    assert raw["summary"]["mup"]["target_loss"] == pytest.approx(result.summary()["mup"]["target_loss"])
    assert raw["summary"]["sp"]["drift"] == pytest.approx(result.summary()["sp"]["drift"])


def _scan_runs(raw: dict, parametrization: str, where: str) -> dict[float, float]:
    """log2 LR -> validation loss (inf: diverged) of one scan, read from the file by hand."""
    size = raw["settings"]["sizes"][where]
    cells = raw["scan"][parametrization]["cells"]
    return {
        math.log2(c["lr"]): math.inf if c["val_loss"] is None else c["val_loss"]
        for c in cells
        if c["size"] == size and not c["transfer"]
    }


def test_the_scan_trains_as_the_sweep_and_the_target_run_do(quick_demo):
    """The gap compares the target run with the scan's best: the two must share one protocol.
    Trained through the transfer file at a scan LR, the target lands on the scan's loss."""
    out, _ = quick_demo
    result = demo.DemoResult.load(out / "demo.json")
    for p in ("mup", "sp"):
        t = mutransfer.load_transfer(out / f"target-{p}.json")
        lr = 2.0 ** round(result.best_log2_lr(p))
        t = dataclasses.replace(t, hparams={**t.hparams, "lr": lr})
        config = _sweep_config(p, demo.QUICK, result.settings["data"], out, "cpu")
        model, optimizer = t.build(seed=config.seed)
        run = Experiment(config).fit(model, optimizer, t.hparams)
        assert run.val_loss == pytest.approx(result.scan_grid(p).loss(p, demo.QUICK.target, lr), rel=1e-6)


def _chromium() -> str:
    path = os.environ.get("MUTRANSFER_TEST_CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
    )
    if not path:
        pytest.skip("no Chromium here (.ci/run installs the Debian package chromium: scripts/chromium-up)")
    return path


def test_report_renders_in_headless_chromium(quick_demo, tmp_path):
    import matplotlib.image

    out, _ = quick_demo
    shot = tmp_path / "report.png"
    command = [
        _chromium(),
        "--headless",
        "--no-sandbox",  # root in CI containers
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=1200,2400",
        f"--screenshot={shot}",
        (out / "report.html").resolve().as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    pixels = matplotlib.image.imread(shot)[..., :3]  # floats in [0, 1]
    ink = (pixels.min(axis=2) < 0.9).mean()  # share of pixels that are not (near) white
    assert ink > 0.03, f"the rendered report is nearly blank ({ink:.1%} ink)"
    assert pixels.std() > 0.05
    # the figures are drawn: colour (the green/red of muP/standard lines) appears on the page
    colourful = (pixels.max(axis=2) - pixels.min(axis=2) > 0.3).mean()
    assert colourful > 0.001


def test_an_interrupted_demo_resumes_without_redoing_work(tmp_path, quick_demo):
    calls: list[tuple[str, int]] = []

    def stop_in_the_scan(phase: str, done: int, total: int, what: str, left: float | None) -> None:
        calls.append((phase, done))
        if phase == demo.PHASES[3] and done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        demo.run(tmp_path, quick=True, progress=stop_in_the_scan)
    saved = demo.DemoResult.load(tmp_path / "demo.json")
    assert not saved.complete and not saved.scan  # the scan's cells are in its own file till it ends
    assert len(Grid.load(tmp_path / "scan-mup.json").cells) == 2
    assert not (tmp_path / "report.html").exists()

    again: list[tuple[str, int, int]] = []
    result = demo.run(tmp_path, quick=True, resume=True, progress=lambda *a: again.append(a[:3]))
    assert result.complete and (tmp_path / "report.html").exists()
    working = {phase for phase, done, total in again if done < total}
    assert working == {demo.PHASES[3]}  # the coordinate check, sweeps and target runs were kept
    assert min(done for phase, done, _ in again if phase == demo.PHASES[3]) == 2  # on from the third
    assert result.coord == saved.coord and result.target == saved.target
    # and it measured what the uninterrupted command measured: the sweeps are seeded
    whole = demo.DemoResult.load(quick_demo[0] / "demo.json")
    for p in ("mup", "sp"):
        assert result.sweep[p]["best"]["params"] == pytest.approx(whole.sweep[p]["best"]["params"])
        assert result.target[p]["val_loss"] == pytest.approx(whole.target[p]["val_loss"], rel=1e-6)
    assert result.rows() == whole.rows()


def test_a_fresh_run_replaces_the_previous_results_and_nothing_else(tmp_path):
    (tmp_path / "demo.json").write_text('{"format": 1, "settings": {}}')
    (tmp_path / "mine.txt").write_text("keep")
    sizes = dataclasses.replace(demo.QUICK, trials=2, sp_trials=2)
    result = demo.run(tmp_path, sizes=sizes)
    assert result.complete and (tmp_path / "mine.txt").read_text() == "keep"
    assert demo.DemoResult.load(tmp_path / "demo.json").settings["sizes"]["trials"] == 2


def test_the_demo_refuses_data_that_is_not_text(tmp_path):
    with pytest.raises(MutransferError, match="not a text source"):
        demo.run(tmp_path, quick=True, data="digits")
    with pytest.raises(MutransferError, match="unknown data source"):
        demo.run(tmp_path, quick=True, data="wikipedia")
    if not torch.cuda.is_available():
        with pytest.raises(MutransferError, match="sees no CUDA GPU"):
            demo.run(tmp_path, quick=True, device="cuda")
