"""Plain text for terminals and logs: the one table layout every table of the library uses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["short", "table"]


def table(
    rows: Sequence[Sequence[str]], *, align: str = "l", indent: str = "", rule: bool = False
) -> list[str]:
    """``rows`` in columns two spaces apart, one line each. ``align`` gives each column ``l`` or
    ``r`` (the last letter holds for the columns after it); ``rule`` puts dashes under the first
    row (a header)."""
    rows = [list(map(str, r)) for r in rows]
    if not rows:
        return []
    count = max(len(r) for r in rows)
    rows = [r + [""] * (count - len(r)) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(count)]
    if rule:
        rows.insert(1, ["-" * w for w in widths])
    sides = [align[min(i, len(align) - 1)] for i in range(count)]
    return [
        indent
        + "  ".join(
            c.rjust(w) if side == "r" else c.ljust(w) for c, w, side in zip(r, widths, sides, strict=True)
        ).rstrip()
        for r in rows
    ]


def short(value: Any) -> str:
    """A value in a table cell: 4 significant digits for a float, else as it prints."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)
