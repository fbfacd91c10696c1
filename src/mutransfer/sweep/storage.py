"""Where a sweep's trials live, and how a dead worker's trial gets back in the queue.

- A journal file (the default): no server, one machine, any number of local workers. Writes
  are serialised by ``flock`` on the file, which dies with its holder (``JournalLock``). It has
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
import json
import os
import socket
import warnings
from pathlib import Path
from typing import Any

from mutransfer.errors import MutransferError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

__all__ = ["open_storage", "reap_dead_workers", "redact", "requeue", "worker_identity"]


def open_storage(url: str, heartbeat: int = 10) -> Any:
    """An Optuna storage for a journal file path or a ``postgresql://`` URL."""
    import optuna

    if "://" not in url:
        path = Path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend

        lock = JournalLock(str(path)) if fcntl is not None else None  # None: Optuna's own lock file
        try:
            return optuna.storages.JournalStorage(JournalFileBackend(str(path), lock_obj=lock))
        except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
            raise MutransferError(_damaged_journal(path, exc)) from None
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


class JournalLock:
    """The journal's write lock, as ``flock(2)`` on the journal file itself.

    The kernel drops it when its holder dies, so a worker SIGKILLed while appending stalls no
    one. Optuna's default lock is a lock *file*, which a dead holder leaves behind: every other
    worker then waited 30 s (its grace period) before breaking it. Optuna calls ``acquire`` and
    ``release`` only (its ``BaseJournalFileLock`` protocol); writers of one journal must all use
    this lock, so do not mix mutransfer versions on one study.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self._path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # blocks; Ctrl-C while waiting lands below
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the lock


def _damaged_journal(path: Path, exc: Exception) -> str:
    """What is wrong with a journal Optuna could not replay, and the way out."""
    line = None
    with open(path, "rb") as f:
        for number, text in enumerate(f, start=1):
            try:
                json.loads(text)
            except ValueError:
                line = number
                break
    where = f"line {line} is not a journal record" if line else f"its records do not replay ({exc!r})"
    return (
        f"storage: the journal {str(path)!r} is damaged: {where}. Nothing was written to it. Fix: keep "
        "a copy, then restore it from a backup, or start a new study (another --storage or --study). "
        "Records are written whole under a lock: the damage came from outside (an edit, a copy cut "
        "short, a full disk)."
    )


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
