"""Run a proxy sweep: one study in a storage, any number of workers pulling trials from it.

    >>> from mutransfer.sweep import SweepConfig, Range, sweep
    >>> config = SweepConfig(factory="mutransfer.models:MLP", data="digits", proxy={"width": 32},
    ...     target={"width": 256}, steps=30, trials=4, space={"lr": Range(1e-3, 1e-1, log=True)},
    ...     storage="/tmp/doctest-sweep.journal")
    >>> status = sweep(config)  # doctest: +SKIP

A worker loops: re-queue trials of dead workers, stop when enough trials have finished, else
run one trial. ``sweep`` runs one worker in this process, or starts ``workers`` processes and
shows their progress; ``mutransfer worker`` joins a running sweep from another machine.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import random
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any

from mutransfer._interrupt import ctrl_c_raises_interrupted
from mutransfer.errors import MutransferError
from mutransfer.factory import load, name_of
from mutransfer.files import check_protocol
from mutransfer.scaling.planning import BIASES, init_law_of
from mutransfer.sweep.config import SweepConfig
from mutransfer.sweep.experiment import Experiment
from mutransfer.sweep.space import Range, grid_points, suggest
from mutransfer.sweep.status import Status, retried_numbers, status
from mutransfer.sweep.storage import open_storage, reap_dead_workers, redact, requeue, worker_identity

__all__ = ["SameShapePruner", "budget", "open_study", "run_worker", "sweep"]

Progress = Callable[[Status], None]

# config fields that change what a proxy trial measures: a saved study must agree on them
_PROTOCOL = (
    "factory", "proxy", "base", "shape", "parametrization", "data", "block_size", "train", "metric",
    "steps", "batch_size", "optimizer", "schedule", "eval_batches", "init_law", "zero", "seed", "space",
    "sampler", "pruner", "min_steps", "reduction",
)  # fmt: skip


def open_study(config: SweepConfig, *, parallel: bool = False, queue_grid: bool = True) -> Any:
    """Create (or load) the config's study, refusing one made under another protocol. With
    ``queue_grid``, grid points not yet in the study are queued (the launcher does this once;
    workers joining later only take from the queue). A ``parallel`` study's sampler is not
    seeded (seeded workers would propose the same points) and lies about running trials."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = open_storage(config.storage_url, config.heartbeat)
    if config.sampler == "tpe":
        sampler = optuna.samplers.TPESampler(
            seed=None if parallel else config.seed,
            n_startup_trials=max(2, min(10, config.trials // 3)),
            constant_liar=parallel,
        )
    elif config.sampler == "independent":  # lr alone, each other key alone, the bests combined
        from mutransfer.sweep.independent import IndependentSampler

        sampler = IndependentSampler(config.space, seed=None if parallel else config.seed)
    else:  # grid points are queued; random fills anything else
        sampler = optuna.samplers.RandomSampler(seed=None if parallel else config.seed)
    pruner: Any = optuna.pruners.NopPruner()
    if config.pruner == "halving":
        inner = optuna.pruners.SuccessiveHalvingPruner(
            min_resource=report_every(config), reduction_factor=config.reduction
        )
        pruner = SameShapePruner(inner)
    study = optuna.create_study(
        study_name=config.study,
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        direction="minimize",
        load_if_exists=True,
    )
    _check_protocol(study, config)
    if config.sampler == "grid" and queue_grid:
        points = grid_points(config.space)
        # a fixed shuffle: in grid order, a pruner's first comparisons would always be the smallest LRs
        random.Random(config.seed).shuffle(points)
        for point in points:
            study.enqueue_trial(point, skip_if_exists=True)
    return study


def report_every(config: SweepConfig) -> int:
    """Steps between reports to the pruner: the first rung of successive halving. The default
    cuts once, at steps / reduction: earlier cuts (steps / reduction**2) favoured too-small LRs
    under a decaying schedule and cost up to 10% of loss (benchmarks/pruning.py)."""
    return config.min_steps or max(1, config.steps // config.reduction)


def budget(config: SweepConfig) -> int:
    """Finished trials wanted: the grid's size for grid search, the plan's for independent search."""
    if config.sampler == "independent":
        from mutransfer.sweep.independent import plan_of

        return len(plan_of(config.space))
    return len(grid_points(config.space)) if config.sampler == "grid" else config.trials


def run_worker(config: SweepConfig, *, progress: Progress | None = None, parallel: bool = True) -> Status:
    """Run trials until the study has its budget of finished trials; other workers may share
    the study (``parallel=False`` when this is the only one: the sampler is then seeded, so a
    sweep is reproducible). Ctrl-C marks the trial in flight failed and queues it again, then
    re-raises: a rerun picks it up first."""
    import optuna

    experiment = Experiment(config)
    study = open_study(config, parallel=parallel, queue_grid=False)
    total = budget(config)
    current: dict[str, int] = {}

    def objective(trial: optuna.Trial) -> float:
        current["number"] = trial.number
        trial.set_user_attr("worker", worker_identity())
        if config.sampler == "grid":
            _check_grid_trial(study, trial)
        else:
            _claim_budget(study, trial, total)
        params = suggest(trial, config.space)
        shape = experiment.shape_of(params)
        trial.set_user_attr("shape", _shape_key(shape))
        start = time.perf_counter()
        window: list[float] = []
        every = report_every(config)
        taken = [0]  # steps trained, for the cost of a pruned trial

        def report(step: int, loss: float) -> None:
            taken[0] = step + 1
            window.append(loss)
            if (step + 1) % every == 0:
                trial.report(sum(window) / len(window), step + 1)
                window.clear()
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at step {step + 1}")

        try:
            outcome = experiment.run(params, report)
        except optuna.TrialPruned:
            steps = taken[0]
            _record(trial, steps, time.perf_counter() - start, steps * experiment.flops_per_step(shape))
            raise
        # seconds: the trial's whole wall time (build, train, evaluate), as for a pruned trial
        seconds = time.perf_counter() - start
        _record(trial, outcome.steps, seconds, outcome.flops, outcome.diverged, outcome.extra)
        return outcome.value

    while True:
        _recover_lost(study, config)
        s = status(study, total)
        if s.finished >= total and not s.waiting:
            return s
        if s.finished + s.running >= total and not s.waiting:
            time.sleep(1.0)  # the last trials run elsewhere; wait in case their worker dies
            continue
        current.clear()
        try:
            study.optimize(objective, n_trials=1, catch=())
        except _NotRun as skip:
            if skip.stop:
                return status(study, total)
            continue
        except KeyboardInterrupt:
            if "number" in current:
                requeue(study, current["number"])
            raise
        except MutransferError:
            raise
        except Exception as exc:  # a bug in the model or training code: stop, keep the traceback
            traceback.print_exc()
            raise MutransferError(
                f"trial {current.get('number')} raised {exc!r} (traceback above); it is recorded as "
                "failed. Fix the cause and rerun: finished trials are kept and this one is tried again."
            ) from exc
        if progress is not None:
            progress(status(study, total))


class SameShapePruner:
    """Successive halving (or any Optuna pruner) that compares a trial only with trials of
    the same proxy shape: wider models have lower loss at every step, so pooling shapes would
    prune the narrow ones for their width, not their hyperparameters."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def prune(self, study: Any, trial: Any) -> bool:
        return self.inner.prune(_SameShape(study, trial.user_attrs.get("shape")), trial)


class _SameShape:
    """A view of a study that lists only the trials of one shape."""

    def __init__(self, study: Any, shape: str | None) -> None:
        self._study, self._shape = study, shape

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[Any]:
        trials = self._study.get_trials(deepcopy=deepcopy, states=states)
        return [t for t in trials if t.user_attrs.get("shape") == self._shape]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


def sweep(config: SweepConfig, *, workers: int = 1, progress: Progress | None = None) -> Status:
    """Run the config's sweep to its budget with ``workers`` local processes and return where
    it stands. Results live in the config's storage: a rerun resumes, and more workers (here
    or on other machines, ``mutransfer worker``) may join at any time."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise MutransferError(f"workers must be an int >= 1, got {workers!r}.")
    study = open_study(config, parallel=workers > 1)
    total = budget(config)
    _recover_lost(study, config)
    _retry_failed(study)
    if workers == 1:
        run_worker(config, progress=progress, parallel=False)
        return status(study, total)
    try:
        pickle.dumps(config)
    except Exception as exc:
        raise MutransferError(
            f"workers > 1 start new processes, which need the factory and training function by "
            f"name ('package.module:name'), not a local object ({exc})."
        ) from None
    context = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // workers)
    procs = [context.Process(target=_worker_main, args=(config, threads)) for _ in range(workers)]
    for p in procs:
        p.start()
    reported: set[int] = set()
    last = ""
    try:
        while any(p.is_alive() for p in procs):
            time.sleep(0.5)
            for i, p in enumerate(procs):
                if p.exitcode not in (None, 0) and i not in reported:
                    reported.add(i)
                    print(
                        f"worker {i + 1} (pid {p.pid}) stopped with {_exit_reason(p.exitcode)}; "
                        "its trial goes back in the queue",
                        file=sys.stderr,
                    )
            s = status(study, total)
            if progress is not None and s.line() != last:
                last = s.line()
                progress(s)
    except KeyboardInterrupt:
        for p in procs:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, 2)  # SIGINT: each worker re-queues its trial and exits
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.terminate()
        raise
    s = status(study, total)
    if not s.done and all(p.exitcode != 0 for p in procs):
        raise MutransferError(
            f"every worker stopped before the sweep finished ({s.line()}); see their messages above. "
            "Rerun to resume."
        )
    return s


def _worker_main(config: SweepConfig, threads: int) -> None:
    """A worker process: one torch thread share per worker, so they do not fight for cores."""
    import torch

    torch.set_num_threads(threads)
    try:
        with ctrl_c_raises_interrupted():
            run_worker(config, parallel=True)
    except KeyboardInterrupt:
        sys.exit(130)
    except MutransferError as exc:
        print(f"mutransfer worker: error: {exc}", file=sys.stderr)
        sys.exit(2)


class _NotRun(Exception):
    """A trial that was opened but must not train; ``stop``: nothing is left for this worker."""

    def __init__(self, reason: str, stop: bool) -> None:
        super().__init__(reason)
        self.stop = stop


def _check_grid_trial(study: Any, trial: Any) -> None:
    """Refuse a grid trial that is not a queued point (every point was taken between this
    worker's check and its ask) or whose point another trial already holds (two launchers
    queued the grid at once). Either is recorded as a stray: failed, never retried, not counted."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    point = trials[trial.number].system_attrs.get("fixed_params")
    if point is None:
        reason, stop = "the grid was used up while this worker asked; nothing ran", True
    elif any(
        t.number < trial.number
        and t.state is not TrialState.FAIL
        and t.system_attrs.get("fixed_params") == point
        for t in trials
    ):
        reason, stop = f"grid point {point} was queued twice; trial of the first copy ran instead", False
    else:
        return
    trial.set_user_attr("stray", reason)
    raise _NotRun(reason, stop)


def _claim_budget(study: Any, trial: Any, total: int) -> None:
    """Let a new trial train only if it holds one of the budget's ``total`` slots.

    A slot is a trial that is neither a retry (``failed_trial``: it takes over the slot of the
    trial it replaces) nor a stray. The storage numbers trials in the order they were asked
    for, atomically, so counting the slots taken before this trial is one step with the ask:
    workers that all passed the budget check at once cannot overshoot it (they used to, by up
    to workers - 1 trials)."""
    trials = study.get_trials(deepcopy=False)
    if trials[trial.number].system_attrs.get("failed_trial") is not None:
        return
    taken = sum(
        1
        for t in trials[: trial.number]
        if t.system_attrs.get("failed_trial") is None and not t.user_attrs.get("stray")
    )
    if taken >= total:
        reason = f"the budget of {total} trials was taken by other workers while this one asked"
        trial.set_user_attr("stray", reason)
        raise _NotRun(reason, stop=False)  # wait: a running trial may yet be lost and re-queued


def _record(trial: Any, steps: int, seconds: float, flops: float, diverged: str = "", extra=None) -> None:
    trial.set_user_attr("steps", steps)
    trial.set_user_attr("seconds", round(seconds, 3))
    trial.set_user_attr("flops", flops)
    if diverged:
        trial.set_user_attr("diverged", diverged)
    for key, value in (extra or {}).items():
        trial.set_user_attr(key, value)


def _retry_failed(study: Any) -> None:
    """Queue again the trials that failed on an error (a bug since fixed, one hopes); lost
    trials were re-queued when they were reaped, and strays never ran."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    for t in trials:
        if t.state is TrialState.FAIL and t.number not in retried and not t.user_attrs.get("stray"):
            requeue(study, t.number)


def _recover_lost(study: Any, config: SweepConfig) -> None:
    """Fail and re-queue the trials of dead workers: by heartbeat with SQL storage (workers on
    any machine), by host and pid with the journal (which has no heartbeat)."""
    import optuna

    if "://" in config.storage_url:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # its retry callback re-queues them
    else:
        reap_dead_workers(study)


def _check_protocol(study: Any, config: SweepConfig) -> None:
    current = _protocol(config)
    saved = study.user_attrs.get("mutransfer")
    if saved is None:
        study.set_user_attr("mutransfer", current)
        return
    what = f"study {config.study!r} in {redact(config.storage_url)} was run"
    check_protocol(saved, current, what, "use another study name or storage, or restore the old settings.")


def _protocol(config: SweepConfig) -> dict[str, Any]:
    """The config's protocol fields as plain JSON data."""
    values = {f.name: getattr(config, f.name) for f in fields(config) if f.name in _PROTOCOL}
    values["init_law"] = config.init_law or init_law_of(load(config.factory))
    values["biases"] = BIASES
    if config.sp_shape:  # only then, so studies saved before the field existed still resume
        values["sp_shape"] = config.sp_shape
    if config.fp8:  # likewise
        values["fp8"] = True
    return json.loads(json.dumps(values, default=_plain))


def _plain(value: Any) -> Any:
    if isinstance(value, Range):
        return {k: v for k, v in vars(value).items() if v is not None}
    if callable(value):
        return name_of(value)
    if isinstance(value, Mapping):
        return dict(value)
    return str(value)


def _shape_key(shape: Mapping[str, Any]) -> str:
    return json.dumps(dict(shape), sort_keys=True, default=str)


def _exit_reason(code: int) -> str:
    return f"signal {-code}" if code < 0 else f"exit code {code}"
