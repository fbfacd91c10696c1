"""What the demo measured, as plain data, and the summary computed from it (never stored twice)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from mutransfer.coord import CoordCheck
from mutransfer.errors import MutransferError
from mutransfer.files import check_format, load_json, number, save_json
from mutransfer.grid import Cell, Grid, Optimum
from mutransfer.parametrizations import label
from mutransfer.text import table

__all__ = ["FORMAT_VERSION", "PARAMETRIZATIONS", "PHASES", "QUICK", "DemoResult", "Sizes"]

PARAMETRIZATIONS = ("mup", "sp")  # the demo sets muP against standard parametrization

FORMAT_VERSION = 2  # 2 keeps each LR scan as a grid; version 1 files still load
PHASES = ("coordinate check", "proxy sweeps", "target runs", "LR scans")


@dataclass(frozen=True)
class Sizes:
    """How big the demo is. The defaults take 8 to 9 minutes on 2 CPU cores (2026-12-05);
    ``QUICK`` takes seconds, for tests."""

    proxy: int = 32
    target: int = 256
    coord_widths: tuple[int, ...] = (32, 64, 128, 256)
    coord_seeds: int = 3
    block_size: int = 64
    batch_size: int = 16
    steps: int = 200
    trials: int = 24  # muP: lr, input_mult, output_mult
    sp_trials: int = 12  # standard: lr
    workers: int = 1  # one: the sampler is seeded, so a rerun reproduces every number
    lr_range: tuple[float, float] = (2.0**-12, 2.0**-3)
    mult_range: tuple[float, float] = (1 / 16, 16.0)
    scan_span: int = 3  # the scan: log2 LRs from the sweep's best -span to +span, a factor 2 apart


QUICK = Sizes(
    proxy=16,
    target=128,
    coord_widths=(16, 32, 64),
    block_size=32,
    batch_size=8,
    steps=30,
    trials=4,
    sp_trials=3,
    scan_span=1,
)


@dataclass
class DemoResult:
    """Everything the demo measured, as plain data (``demo.json``), keyed by parametrization
    (``"mup"``, ``"sp"``). The summary's numbers (``summary()``, ``table()``, the report) are
    computed from it, never stored twice."""

    settings: dict[str, Any]
    provenance: dict[str, Any] = field(default_factory=dict)
    coord: dict[str, dict[str, Any]] = field(default_factory=dict)  # CoordCheck.to_dict()
    sweep: dict[str, dict[str, Any]] = field(default_factory=dict)  # trials, best
    transfer: dict[str, dict[str, Any]] = field(default_factory=dict)  # Transfer.to_dict(), with the cost
    target: dict[str, dict[str, Any]] = field(default_factory=dict)  # one run each
    scan: dict[str, dict[str, Any]] = field(default_factory=dict)  # Grid.to_dict(): proxy and target
    complete: bool = False

    # ---- the numbers the summary shows --------------------------------------------------
    def best_log2_lr(self, parametrization: str) -> float:
        """The sweep's best learning rate, log2: what the target trained with."""
        return math.log2(self.sweep[parametrization]["best"]["params"]["lr"])

    def scan_grid(self, parametrization: str) -> Grid:
        """The LR scan of a parametrization at the proxy and the target width, as a grid."""
        return Grid.from_dict(self.scan[parametrization])

    def optimum(self, parametrization: str, where: str) -> Optimum:
        """The best LR of a scan (``where``: proxy or target); see ``grid.fit_optimum``."""
        return self.scan_grid(parametrization).optimum(parametrization, self.settings["sizes"][where])

    def summary(self) -> dict[str, Any]:
        """Per parametrization: the sweep, its cost, the target's loss with the proxy's values,
        the target scan's best, the gap between the two and the drift of the optimum."""
        out: dict[str, Any] = {}
        for p in PARAMETRIZATIONS:
            proxy, target = self.optimum(p, "proxy"), self.optimum(p, "target")
            loss = _loss(self.target[p])
            sweep, cost = self.sweep[p], self.transfer[p]["cost"]
            check = CoordCheck.from_dict(self.coord[p])
            out[p] = {
                "coord_passed": check.passed,
                "coord_failures": len(check.failures),
                "trials": len(sweep["trials"]),
                "searched": sweep["searched"],
                "best": sweep["best"]["params"],
                "tuning_cost": cost["proxy_flops"] / cost["target_flops"],
                "sweep_seconds": cost["proxy_seconds"],
                "target_loss": loss,
                "target_seconds": self.target[p]["seconds"],
                "diverged": self.target[p]["diverged"],
                "proxy_optimum": proxy.log2_lr,
                "target_optimum": target.log2_lr,
                "target_best_loss": target.loss,
                "target_method": target.method,
                "gap": loss / target.loss - 1
                if math.isfinite(loss) and math.isfinite(target.loss)
                else math.inf,
                "drift": target.log2_lr - proxy.log2_lr,
            }
        mup, sp = out["mup"]["target_loss"], out["sp"]["target_loss"]
        out["mup_vs_sp"] = mup / sp - 1 if math.isfinite(mup) and math.isfinite(sp) else math.nan
        target = self.settings["sizes"]["target"]
        out["scan_runs"] = sum(
            c.size == target and not c.transfer for p in self.scan for c in self.scan_grid(p).cells
        )
        return out

    def rows(self) -> list[tuple[str, str, str]]:
        """The summary table: (what, muP, standard), as the terminal and the report show it."""
        s = self.summary()

        def each(fmt: Callable[[dict[str, Any]], str]) -> tuple[str, str]:
            return fmt(s["mup"]), fmt(s["sp"])

        return [
            ("coordinate check", *each(_coord_text)),
            ("proxy sweep", *each(lambda p: f"{p['trials']} trials: {', '.join(p['searched'])}")),
            ("tuning cost, FLOPs / one target run", *each(lambda p: f"{p['tuning_cost']:.0%}")),
            ("target loss with the proxy's best values", *each(_target_text)),
            ("target's own best in its LR scan", *each(_scan_text)),
            ("gap to the target's own best", *each(lambda p: _percent(p["gap"]))),
            ("optimum drift, proxy -> target (log2 LR)", *each(_drift_text)),
        ]

    def verdict(self) -> str:
        """One sentence: which target is better, by how much, and the honest caveat."""
        change = self.summary()["mup_vs_sp"]
        if math.isnan(change):
            diverged = [label(p) for p in PARAMETRIZATIONS if self.target[p]["diverged"]]
            return f"The {' and '.join(diverged)} target diverged with the proxy's values."
        if abs(change) < 0.0005:
            which = "The two targets' losses agree within 0.05%"
        elif change < 0:
            which = f"The muP target's loss is {-change:.1%} lower than the standard target's"
        else:
            which = f"The standard target's loss is {change:.1%} lower than the muP target's"
        return f"{which} (one seed each)."

    def table(self) -> str:
        """The terminal summary."""
        lines = table([("", "muP", "standard"), *self.rows()], align="lr")
        sz = self.settings["sizes"]
        head = (
            f"muTransfer demo: GPT width {sz['proxy']} -> {sz['target']} on {self.settings['data']}, "
            f"{sz['steps']} steps of {sz['batch_size']}x{sz['block_size']} tokens"
        )
        return "\n".join([head, *lines, self.verdict()])

    # ---- file ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = {"format": FORMAT_VERSION, **asdict(self)}
        if self.complete:
            data["summary"] = self.summary()  # for readers of the file; recomputed on load
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DemoResult:
        check_format(data, FORMAT_VERSION, "demo results", "rerun mutransfer demo without --resume.")
        fields = {k: v for k, v in data.items() if k not in ("format", "summary")}
        if data.get("format") == 1:  # scans kept as "mup/proxy" -> log2 LR -> run before grids held them
            fields["scan"] = _scans_as_grids(fields.get("scan", {}), fields["settings"]["sizes"])
        return cls(**fields)

    def save(self, path: str | os.PathLike) -> None:
        save_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> DemoResult:
        data = load_json(path, "demo result file", "rerun mutransfer demo without --resume.")
        try:
            return cls.from_dict(data)
        except KeyError as exc:
            raise MutransferError(f"{path} is not a demo result file (no {exc}).") from None


def _loss(record: Mapping[str, Any]) -> float:
    return number(record.get("val_loss"))


def _coord_text(p: Mapping[str, Any]) -> str:
    return "passed" if p["coord_passed"] else f"FAILED ({p['coord_failures']} points fail)"


def _target_text(p: Mapping[str, Any]) -> str:
    return f"diverged ({p['diverged']})" if p["diverged"] else f"{p['target_loss']:.4f}"


def _scan_text(p: Mapping[str, Any]) -> str:
    if p["target_method"] == "none":
        return "every LR diverged"
    edge = ", at the scan's edge" if p["target_method"] == "edge" else ""
    return f"{p['target_best_loss']:.4f} at 2^{p['target_optimum']:.2f}{edge}"


def _drift_text(p: Mapping[str, Any]) -> str:
    return "n/a" if not math.isfinite(p["drift"]) else f"{p['drift']:+.2f}"


def _percent(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:+.1%}"


def _scans_as_grids(scans: Mapping[str, Mapping[str, Any]], sizes: Mapping[str, int]) -> dict[str, Any]:
    """Version 1's scans ("mup/proxy" -> log2 LR -> run) as version 2's grids."""
    grids: dict[str, Any] = {}
    for key, runs in scans.items():
        p, where = key.split("/")
        cells = [
            Cell(p, sizes[where], 2.0 ** float(k), 0, number(r["val_loss"]), number(r["train_loss"]),
                 r["steps"], r["seconds"], r["diverged"], False, r.get("curve", []))
            for k, r in runs.items()
        ]  # fmt: skip
        entry = grids.setdefault(p, {"cells": []})
        entry["cells"] += cells
    out = {}
    for p, entry in grids.items():
        lrs = tuple(sorted({c.lr for c in entry["cells"]}))
        grid = Grid({}, (sizes["proxy"], sizes["target"]), lrs, (p,), 1, tuple(entry["cells"]))
        out[p] = grid.to_dict()
    return out
