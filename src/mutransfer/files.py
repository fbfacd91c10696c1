"""The files this library saves (plans, transfers, grids, coordinate checks, demo results) and
the installed data packages it reads:
JSON written atomically, read back with errors that name the file and the fix; numbers that
are not finite (a diverged run's loss, an unknown error) written as null, which strict JSON
readers accept, and read back as what they stood for.

A run that fails or is killed while saving leaves the previous file whole, and reading a
damaged file never changes it: nothing a user saved is lost to a failing run.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mutransfer.errors import MutransferError

__all__ = [
    "changes",
    "check_format",
    "check_protocol",
    "jsonable",
    "load_json",
    "number",
    "package_dir",
    "save_json",
]


def save_json(path: str | os.PathLike, data: Mapping[str, Any], *, strict: bool = False) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``.
    ``strict`` refuses nan and inf (the file stays standard JSON)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=1, allow_nan=not strict, default=str if strict else None)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def load_json(path: str | os.PathLike, what: str, fix: str) -> dict[str, Any]:
    """Read a JSON object this library saved, naming the file and the fix when it is missing
    or damaged."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise MutransferError(f"no {what} at {os.fspath(path)!r}. Fix: {fix}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MutransferError(
            f"{os.fspath(path)!r} is not a readable {what} ({exc}); it was left as it is. Fix: {fix}"
        ) from None
    if not isinstance(data, dict):
        raise MutransferError(
            f"{os.fspath(path)!r} holds a JSON {type(data).__name__}, not a {what}. Fix: {fix}"
        )
    return data


def check_format(data: Mapping[str, Any], newest: int, what: str, fix: str) -> None:
    """Refuse a file saved in a format this version cannot read (newer than ``newest``, or not
    a format number at all), naming the fix. Every older format still loads."""
    found = data.get("format")
    if not isinstance(found, int) or isinstance(found, bool) or not 1 <= found <= newest:
        raise MutransferError(
            f"{what} format {found!r} is not supported (expected 1 to {newest}). Fix: {fix}"
        )


def jsonable(value: Any) -> Any:
    """``value`` with every nan and inf turned into None (null), through dicts, lists and tuples."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def number(value: float | None, missing: float = math.inf) -> float:
    """A number read back from a file: null is ``missing`` (inf for a diverged loss, nan for an
    unknown)."""
    return missing if value is None else float(value)


def changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``"key: saved X, now Y"`` for every setting of ``current`` that ``saved`` holds otherwise."""
    return [f"{k}: saved {saved.get(k)!r}, now {v!r}" for k, v in current.items() if saved.get(k) != v]


def check_protocol(saved: Mapping[str, Any], current: Mapping[str, Any], what: str, fix: str) -> None:
    """Refuse to reuse results made under other settings (a grid's cells, a study's trials),
    naming every setting that differs."""
    found = changes(saved, current)
    if found:
        raise MutransferError(
            f"{what} under another protocol ({'; '.join(found)}), so its results cannot be reused. Fix: {fix}"
        )


def package_dir(package: str, install: str) -> Path:
    """Where an installed package lives, found without importing it (importing can be slow or fail)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MutransferError(f"the package {package!r} is not installed; install it with: {install}")
    return Path(next(iter(spec.submodule_search_locations)))
