"""Figures drawn from results: they only read the plain data that the checks return.

matplotlib is imported on first use (``pip install matplotlib``), so ``import mutransfer``
does not pay for it and a machine without it can still compute every result.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mutransfer.errors import MutransferError

if TYPE_CHECKING:
    from mutransfer.coord import CoordCheck

__all__ = ["plot_coord_check"]

# One colour per module kind, so a reader sees at a glance which part of the model moves.
_KIND_COLOURS = {
    "input": "#1f77b4",
    "hidden": "#2ca02c",
    "vector": "#7f7f7f",
    "attention": "#9467bd",
    "output": "#ff7f0e",
    "other": "#8c564b",
}
_NAMES = {"mup": "muP", "sp": "standard"}
_MEASURES = {
    "rms": "output RMS",
    "change": "RMS of the output's change since init",
    "update": "RMS of the change made by the module's own updates",
}


def plot_coord_check(
    results: CoordCheck | Sequence[CoordCheck],
    path: str | os.PathLike,
    *,
    measure: str = "update",
) -> None:
    """Save a PNG: one row per result (e.g. standard above muP), one column per step.

    Each panel shows, for every watched module, the RMS of the change its own updates made to
    its output (``measure="update"``, the sharpest view: SP's lines rise like width), of its
    output (``"rms"``, the classic view) or of its change since init (``"change"``), against
    width on log-log axes, coloured by kind. Flat lines are
    what muP promises; modules judged as causes of growth are drawn thick (names in the table).
    """
    if measure not in _MEASURES:
        raise MutransferError(f"measure must be one of {list(_MEASURES)}, got {measure!r}.")
    plt = _pyplot()
    results = [results] if not isinstance(results, Sequence) else list(results)
    steps = max(r.steps for r in results) + 1
    first = 0 if measure == "rms" else 1  # change and update start after the first step
    fig, axes = plt.subplots(
        len(results),
        steps - first,
        figsize=(2.6 * (steps - first) + 1.2, 2.6 * len(results) + 0.6),
        squeeze=False,
        sharex=True,
        sharey="row",
    )
    for row, result in zip(axes, results, strict=True):
        _draw_row(row, result, measure, first)
    handles = [
        plt.Line2D([], [], color=c, label=k)
        for k, c in _KIND_COLOURS.items()
        if any(m.kind == k for r in results for m in r.modules if m.name in r.curves[measure])
    ]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    what = _MEASURES[measure]
    fig.suptitle(f"Coordinate check: {what} against width (flat = width-independent)")
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _draw_row(row: Any, result: CoordCheck, measure: str, first: int) -> None:
    curves = result.curves[measure]
    verdicts = {m.name: m for m in result.modules}
    for t, ax in enumerate(row, start=first):
        for name, per_width in curves.items():
            m = verdicts[name]
            ys = [c[t] if t < len(c) else float("nan") for c in per_width]
            ax.plot(
                result.widths,
                ys,
                color=_KIND_COLOURS.get(m.kind, _KIND_COLOURS["other"]),
                lw=2.4 if m.cause else 0.9,
                alpha=1.0 if m.cause else 0.55,
                marker="o" if m.cause else None,
                ms=3,
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(result.widths, [str(w) for w in result.widths])
        ax.set_title(f"step {t}", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, which="both", lw=0.4)
    verdict = "PASSED" if result.passed else f"FAILED ({len(result.failures)} modules grow)"
    row[0].set_ylabel(f"{_NAMES.get(result.parametrization, result.parametrization)}\n{verdict}", fontsize=9)
    row[0].yaxis.label.set_color("#2ca02c" if result.passed else "#d62728")


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display on servers and CI
        import matplotlib.pyplot as plt
    except ImportError:
        raise MutransferError(
            "plotting needs matplotlib, which is not installed. Fix: pip install matplotlib "
            "(or pip install 'mutransfer[plot]'); every result can still be saved as JSON without it."
        ) from None
    return plt
