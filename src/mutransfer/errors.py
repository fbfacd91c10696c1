"""The one exception type users need to catch."""

from collections.abc import Collection, Mapping
from typing import Any

__all__ = ["MutransferError", "check_format"]


class MutransferError(ValueError):
    """Raised for bad input or an inconsistent model/plan.

    Messages say what was received, what was expected, and how to fix it.
    """


def check_format(data: Mapping[str, Any], supported: Collection[int], what: str, fix: str) -> None:
    """Refuse a file saved in a format this version cannot read, naming the fix."""
    if data.get("format") not in supported:
        raise MutransferError(
            f"{what} format {data.get('format')!r} is not supported (expected {max(supported)}). Fix: {fix}"
        )
