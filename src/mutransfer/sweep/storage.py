"""Where a sweep's trials live, and how a dead worker's trial gets back in the queue.

- A journal file (the default): no server, one machine, any number of local workers. It has
  no heartbeat, so each trial records its worker's host, pid and process start time, and any
  worker on that host fails and re-queues the trials of a process that no longer exists.
- PostgreSQL (``postgresql://user:password@host/db``): many machines. Optuna sends a heartbeat
  while a trial runs; a trial silent for three heartbeats is failed and re-queued by the next
  worker to start a trial.

A re-queued trial is a new WAITING trial with the same parameters and ``failed_trial`` /
``retry_history`` system attributes naming the trial it replaces (Optuna's convention), so
every trial is accounted for and none is run twice to completion.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import warnings
from pathlib import Path
from typing import Any

from mutransfer.errors import MutransferError

__all__ = ["open_storage", "reap_dead_workers", "redact", "requeue", "worker_identity"]


def open_storage(url: str, heartbeat: int = 10) -> Any:
    """An Optuna storage for a journal file path or a ``postgresql://`` URL."""
    import optuna

    if "://" not in url:
        path = Path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    scheme = url.split("://", 1)[0]
    if not scheme.startswith("postgresql"):
        raise MutransferError(
            f"storage: unknown scheme {scheme!r}; use a journal file path or postgresql://user@host/db."
        )
    url = _with_driver(url)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=heartbeat,
                grace_period=3 * heartbeat,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(),
                engine_kwargs={"pool_pre_ping": True},
            )
        except Exception as exc:  # sqlalchemy's OperationalError and friends
            raise MutransferError(
                f"storage: cannot open {redact(url)}: {str(exc).splitlines()[0]}. Is the server running "
                "and the database created?"
            ) from None


def _with_driver(url: str) -> str:
    """``postgresql://`` with the driver that is installed (psycopg 3, else psycopg2) named,
    since SQLAlchemy's default differs between its versions."""
    scheme, rest = url.split("://", 1)
    if "+" in scheme:
        return url
    for module, driver in (("psycopg", "psycopg"), ("psycopg2", "psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return f"{scheme}+{driver}://{rest}"
    raise MutransferError(
        "storage: postgresql:// needs a PostgreSQL driver and none is installed: "
        "pip install 'psycopg[binary]' (or: pip install 'mutransfer[postgres]')"
    )


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    head, at, tail = url.rpartition("@")
    if not at or ":" not in head.split("://", 1)[-1]:
        return url
    scheme, _, userpass = head.partition("://")
    return f"{scheme}://{userpass.split(':', 1)[0]}:***@{tail}"


def worker_identity() -> dict[str, Any]:
    """Host, pid and process start time: enough to tell, on this host, whether it still runs
    (the start time guards against a recycled pid)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _start_time(os.getpid())}


def reap_dead_workers(study: Any) -> list[int]:
    """Fail and re-queue every RUNNING trial whose worker ran on this host and is gone.
    Returns the numbers of the trials reaped. Safe to run from several workers at once: only
    the one whose FAIL lands re-queues."""
    import optuna
    from optuna.trial import TrialState

    host = socket.gethostname()
    reaped = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.user_attrs.get("worker")
        if not owner or owner.get("host") != host or _alive(owner):
            continue
        try:
            study.tell(trial.number, state=TrialState.FAIL)
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another worker reaped it first
        requeue(study, trial.number)
        reaped.append(trial.number)
    return reaped


def requeue(study: Any, number: int) -> None:
    """Queue a failed trial's parameters again, as Optuna's retry callback does."""
    import optuna

    trial = study.get_trials(deepcopy=False)[number]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.RetryHeartbeatStaleTrialCallback()(study, trial)


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (Linux), or None without /proc."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _start_time(pid: int) -> int | None:
    """Clock ticks since boot when ``pid`` started, or None where /proc is missing."""
    stat = _stat(pid)
    return int(stat[19]) if stat else None  # field 22 of proc(5)


def _alive(owner: dict[str, Any]) -> bool:
    pid = int(owner["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    stat = _stat(pid)
    if stat is None:
        return True  # no /proc: trust kill(0)
    if stat[0] == "Z":
        return False  # killed, not yet waited for by its parent
    started = owner.get("started")
    return started is None or int(stat[19]) == started
