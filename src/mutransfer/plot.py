"""The figures of a coordinate check and a grid: result in, PNG out.

They only read the plain data the checks and grids return (compute, then draw). matplotlib is
imported on first use (``pip install matplotlib``), so ``import mutransfer`` does not pay for it
and a machine without it can still compute every result.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mutransfer.errors import MutransferError
from mutransfer.parametrizations import label as parametrization_label

if TYPE_CHECKING:
    from mutransfer.coord import CoordCheck
    from mutransfer.grid import Grid

__all__ = ["plot_coord_check", "plot_grid", "pyplot"]

# One colour per module kind, so a reader sees at a glance which part of the model moves.
KIND_COLOURS = {
    "input": "#1f77b4",
    "hidden": "#2ca02c",
    "vector": "#7f7f7f",
    "attention": "#9467bd",
    "output": "#ff7f0e",
    "block": "#d62728",  # the blocks' outputs: the residual stream
    "stream": "#d62728",
    "model": "#000000",  # the model's output
    "other": "#8c564b",
}
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
    plt = pyplot()
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
        for k, c in KIND_COLOURS.items()
        if any(m.kind == k for r in results for m in r.modules if m.name in r.curves[measure])
    ]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    what = _MEASURES[measure]
    axis = results[0].axis
    fig.suptitle(f"Coordinate check: {what} against {axis} (flat = {axis}-independent)")
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _draw_row(row: Any, result: CoordCheck, measure: str, first: int) -> None:
    curves = result.curves[measure]
    verdicts = {m.name: m for m in result.modules}
    # drawn thick: the causes, or every failure when none is a cause (as the table's hints)
    no_cause = not any(m.cause for m in result.failures)
    marked = {m.name for m in result.failures if m.cause or no_cause}
    for t, ax in enumerate(row, start=first):
        for name, per_width in curves.items():
            m = verdicts[name]
            ys = [c[t] if t < len(c) else float("nan") for c in per_width]
            ax.plot(
                result.sizes,
                ys,
                color=KIND_COLOURS.get(m.kind, KIND_COLOURS["other"]),
                lw=2.4 if name in marked else 0.9,
                alpha=1.0 if name in marked else 0.55,
                marker="o" if name in marked else None,
                ms=3,
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(result.sizes, [str(w) for w in result.sizes])
        ax.set_title(f"step {t}", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, which="both", lw=0.4)
    verdict = "PASSED" if result.passed else f"FAILED ({len(result.failures)} points fail)"
    label = parametrization_label(result.parametrization, result.axis)
    row[0].set_ylabel(f"{label}\n{verdict}", fontsize=9)
    row[0].yaxis.label.set_color("#2ca02c" if result.passed else "#d62728")


def pyplot() -> Any:
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


def plot_grid(result: Grid, path: str | os.PathLike) -> None:
    """Save a PNG: validation loss against log2 LR, one curve per width, one panel per
    parametrization. Stars mark each width's optimum (bars: its error over seeds), the legend
    each width's LR sensitivity; the dotted line is the narrowest width's
    optimum and the ring the widest width's loss there (the transfer run). Curves that keep
    their minimum on that line are what muP promises."""
    plt = pyplot()
    colours = plt.get_cmap("viridis")
    names = result.parametrizations
    fig, axes = plt.subplots(
        1, len(names), figsize=(5.2 * len(names), 4.4), squeeze=False, sharey=True, layout="constrained"
    )
    xs = [math.log2(lr) for lr in result.lrs]
    low, top = _loss_range(result)
    for ax, name in zip(axes[0], names, strict=True):
        s = result.summary(name)
        for i, (o, sensitivity) in enumerate(zip(s.optima, s.sensitivity, strict=True)):
            colour = colours(i / max(1, len(s.optima) - 1) * 0.9)
            ys = [result.loss(name, o.size, lr) for lr in result.lrs]
            ax.plot(
                xs,
                [y if math.isfinite(y) else math.nan for y in ys],
                "-o",
                color=colour,
                ms=3,
                lw=1.4,
                label=f"{result.axis} {o.size}"
                + ("" if math.isnan(sensitivity) else f", LR sens. {sensitivity:.3f}"),
            )
            bad = [x for x, y in zip(xs, ys, strict=True) if math.isinf(y)]
            if bad:  # drawn on the top edge
                ax.plot(bad, [top] * len(bad), "x", color=colour, ms=7, mew=1.5, clip_on=False)
            if o.method != "none":
                ax.plot(o.log2_lr, min(o.loss, top), "*", color=colour, ms=13, mec="black", mew=0.6, zorder=5)
                if math.isfinite(o.error):  # the seeds' spread of the optimum: a slide or a wobble
                    ax.errorbar(o.log2_lr, min(o.loss, top), xerr=o.error, color=colour, capsize=3, lw=1)
        if not math.isnan(s.transfer_log2_lr):
            ax.axvline(s.transfer_log2_lr, color="grey", ls=":", lw=1)
            if math.isfinite(s.transfer_loss):
                ax.plot(s.transfer_log2_lr, min(s.transfer_loss, top), "o", mfc="none", mec="black", ms=9)
        title = parametrization_label(name, result.axis)
        drift = "n/a" if math.isnan(s.drift) else f"{s.drift:.2f}"
        drift += "" if math.isnan(s.drift_error) else f" ± {s.drift_error:.2f}"
        regret = "n/a" if math.isnan(s.regret) else f"{100 * s.regret:.1f}%"
        slope = "" if math.isnan(s.exponent) else f", slope {s.exponent:+.2f}"
        slope += "" if slope == "" or math.isnan(s.exponent_se) else f" ± {s.exponent_se:.2f}"
        ax.set_title(f"{title}: optimum drift {drift} log2{slope}, regret {regret}", fontsize=10)
        ax.set_xlabel("log2 learning rate")
        ax.grid(alpha=0.3, lw=0.4)
        ax.set_ylim(low, top)
        ax.legend(fontsize=8, loc="upper right")  # each panel's own LR sensitivities
    axes[0][0].set_ylabel("validation loss")
    p = result.protocol
    ring = {"depth": "deepest at the shallowest", "width": "widest at the narrowest"}.get(
        result.axis, f"largest {result.axis} at the smallest"
    )
    budget = f"{p['steps']} steps, " if p["steps"] else ""
    heading = (
        f"{p['factory'].rpartition(':')[2]} on {p['data']}: {budget}{p['optimizer']} "
        f"(x: diverged; *: optimum; ring: {ring}'s optimum)"
    )  # a factory's repr can be long (a Hugging Face config's): wrapped, not cut off at the edge
    fig.suptitle(textwrap.fill(heading, 65 * len(names)), fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _loss_range(result: Grid) -> tuple[float, float]:
    """Y limits that show the valleys: from just under the lowest loss to a little above the
    fifth-lowest loss of every curve, so a diverged or stalled cell does not flatten the rest."""
    losses = [c.val_loss for c in result.cells if math.isfinite(c.val_loss)]
    if not losses:
        return 0.0, 1.0
    low = min(losses)
    near = []
    for name in result.parametrizations:
        for w in result.sizes:
            row = [result.loss(name, w, lr) for lr in result.lrs]
            finite = sorted(v for v in row if math.isfinite(v))
            near += finite[:5]
    top = min(max(losses), max(near))
    pad = 0.05 * (top - low) or 0.05 * abs(low) or 0.1
    return low - pad, top + pad
