"""Figures drawn from results: they only read the plain data that the checks return.

matplotlib is imported on first use (``pip install matplotlib``), so ``import mutransfer``
does not pay for it and a machine without it can still compute every result.
"""

from __future__ import annotations

import base64
import html
import math
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mutransfer.errors import MutransferError
from mutransfer.parametrizations import label as parametrization_label

if TYPE_CHECKING:
    from mutransfer.coord import CoordCheck
    from mutransfer.demo import DemoResult
    from mutransfer.grid import Grid

__all__ = ["plot_coord_check", "plot_grid", "write_report"]

# One colour per module kind, so a reader sees at a glance which part of the model moves.
_KIND_COLOURS = {
    "input": "#1f77b4",
    "hidden": "#2ca02c",
    "vector": "#7f7f7f",
    "attention": "#9467bd",
    "output": "#ff7f0e",
    "block": "#d62728",  # over depth: the blocks' outputs, the residual stream
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
                color=_KIND_COLOURS.get(m.kind, _KIND_COLOURS["other"]),
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


def plot_grid(result: Grid, path: str | os.PathLike) -> None:
    """Save a PNG: validation loss against log2 LR, one curve per width, one panel per
    parametrization. Stars mark each width's optimum; the dotted line is the narrowest width's
    optimum and the ring the widest width's loss there (the transfer run). Curves that keep
    their minimum on that line are what muP promises."""
    plt = _pyplot()
    colours = plt.get_cmap("viridis")
    names = result.parametrizations
    fig, axes = plt.subplots(
        1, len(names), figsize=(5.2 * len(names), 4.4), squeeze=False, sharey=True, layout="constrained"
    )
    xs = [math.log2(lr) for lr in result.lrs]
    low, top = _loss_range(result)
    for ax, name in zip(axes[0], names, strict=True):
        s = result.summary(name)
        for i, o in enumerate(s.optima):
            colour = colours(i / max(1, len(s.optima) - 1) * 0.9)
            ys = [result.loss(name, o.size, lr) for lr in result.lrs]
            ax.plot(
                xs,
                [y if math.isfinite(y) else math.nan for y in ys],
                "-o",
                color=colour,
                ms=3,
                lw=1.4,
                label=f"{result.axis} {o.size}",
            )
            bad = [x for x, y in zip(xs, ys, strict=True) if math.isinf(y)]
            if bad:  # drawn on the top edge
                ax.plot(bad, [top] * len(bad), "x", color=colour, ms=7, mew=1.5, clip_on=False)
            if o.method != "none":
                ax.plot(o.log2_lr, min(o.loss, top), "*", color=colour, ms=13, mec="black", mew=0.6, zorder=5)
        if not math.isnan(s.transfer_log2_lr):
            ax.axvline(s.transfer_log2_lr, color="grey", ls=":", lw=1)
            if math.isfinite(s.transfer_loss):
                ax.plot(s.transfer_log2_lr, min(s.transfer_loss, top), "o", mfc="none", mec="black", ms=9)
        title = parametrization_label(name, result.axis)
        drift = "n/a" if math.isnan(s.drift) else f"{s.drift:.2f}"
        regret = "n/a" if math.isnan(s.regret) else f"{100 * s.regret:.1f}%"
        ax.set_title(f"{title}: optimum drift {drift} log2, regret {regret}", fontsize=10)
        ax.set_xlabel("log2 learning rate")
        ax.grid(alpha=0.3, lw=0.4)
        ax.set_ylim(low, top)
    axes[0][0].set_ylabel("validation loss")
    axes[0][-1].legend(fontsize=8, loc="upper right")
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


# ---- the demo's report ----------------------------------------------------------------------
_PARAM_COLOURS = {"mup": "#2ca02c", "sp": "#d62728"}


def write_report(result: DemoResult, folder: str | os.PathLike) -> Path:
    """Write the demo's figures (PNG) and ``report.html`` into ``folder``; return the report's
    path. The page embeds every figure, so it can be mailed or archived as one file."""
    from mutransfer.coord import CoordCheck

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    checks = [CoordCheck.from_dict(result.coord[p]) for p in ("sp", "mup")]
    figures = {
        "coord": (plot_coord_check, checks),
        "sweep": (_plot_sweep, result),
        "scan": (_plot_scan, result),
        "target": (_plot_target_runs, result),
    }
    images = {}
    for name, (draw, data) in figures.items():
        draw(data, folder / f"{name}.png")
        images[name] = base64.b64encode((folder / f"{name}.png").read_bytes()).decode("ascii")
    path = folder / "report.html"
    path.write_text(_html(result, checks, images))
    return path


def _plot_sweep(result: DemoResult, path: Path) -> None:
    """Each proxy sweep's trials: validation loss against log2 LR (muP's other searched values
    vary from trial to trial); diverged trials sit on the top edge."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.0), sharey=True, layout="constrained")
    finite = [t["value"] for p in ("mup", "sp") for t in result.sweep[p]["trials"] if t["value"] is not None]
    top, limits = _edge_and_limits(finite)
    for ax, p in zip(axes, ("mup", "sp"), strict=True):
        sweep = result.sweep[p]
        done = [t for t in sweep["trials"] if t["state"] == "complete"]
        xs = [math.log2(t["params"]["lr"]) for t in done]
        ax.plot(
            xs,
            [t["value"] for t in done],
            "o",
            color=_PARAM_COLOURS[p],
            ms=5,
            alpha=0.8,
            label=f"trial ({len(done)})",
        )
        stopped = [
            math.log2(t["params"]["lr"]) for t in sweep["trials"] if t["state"] in ("diverged", "pruned")
        ]
        if stopped:
            ax.plot(
                stopped, [top] * len(stopped), "x", color="#555555", ms=7, label=f"diverged ({len(stopped)})"
            )
        best = sweep["best"]
        values = ", ".join(f"{k} {v:.3g}" for k, v in best["params"].items())
        ax.plot(
            math.log2(best["params"]["lr"]),
            best["value"],
            "*",
            color="#ff7f0e",
            ms=16,
            mec="black",
            label=f"best: {values}",
        )
        ax.set_title(f"{parametrization_label(p)}: TPE over {', '.join(sweep['searched'])}", fontsize=10)
        ax.set_xlabel("log2 learning rate")
        ax.grid(alpha=0.3, lw=0.4)
        ax.legend(fontsize=8, loc="upper left")
        ax.set_ylim(*limits)
    axes[0].set_ylabel("validation loss")
    fig.suptitle(f"Proxy sweeps at width {result.settings['sizes']['proxy']}", fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_scan(result: DemoResult, path: Path) -> None:
    """The muTransfer picture: per parametrization, loss against LR at the proxy and at the
    target (other values as transferred); stars at each optimum, the sweep's best LR dotted,
    the target trained there ringed."""
    plt = _pyplot()
    sz = result.settings["sizes"]
    summary = result.summary()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True, layout="constrained")
    finite = [
        r["val_loss"] for runs in result.scan.values() for r in runs.values() if r["val_loss"] is not None
    ]
    top, limits = _edge_and_limits(finite)
    for ax, p in zip(axes, ("mup", "sp"), strict=True):
        colour = _PARAM_COLOURS[p]
        for where, style, alpha in (("proxy", "--o", 0.45), ("target", "-o", 1.0)):
            runs = result.scan[f"{p}/{where}"]
            keys = sorted(runs, key=float)
            xs = [float(k) for k in keys]
            ys = [runs[k]["val_loss"] for k in keys]
            ax.plot(
                xs,
                [math.nan if y is None else y for y in ys],
                style,
                color=colour,
                alpha=alpha,
                ms=4,
                label=f"{where}, width {sz[where]}",
            )
            bad = [x for x, y in zip(xs, ys, strict=True) if y is None]
            if bad:
                ax.plot(bad, [top] * len(bad), "x", color=colour, alpha=alpha, ms=8, mew=1.5)
            o = result.optimum(p, where)
            if o.method != "none":
                ax.plot(o.log2_lr, o.loss, "*", color=colour, alpha=alpha, ms=15, mec="black", mew=0.6)
        s = summary[p]
        best = result.best_log2_lr(p)
        ax.axvline(best, color="grey", ls=":", lw=1.2)
        if math.isfinite(s["target_loss"]):
            ax.plot(
                best,
                s["target_loss"],
                "o",
                mfc="none",
                mec="black",
                ms=11,
                label=f"target with the sweep's best: {s['target_loss']:.4f}",
            )
        drift = "n/a" if not math.isfinite(s["drift"]) else f"{s['drift']:+.2f}"
        ax.set_title(
            f"{parametrization_label(p)}: optimum drift {drift} log2, gap {_signed(s['gap'])}", fontsize=10
        )
        ax.set_xlabel("log2 learning rate (other values as transferred)")
        ax.grid(alpha=0.3, lw=0.4)
        ax.legend(fontsize=8, loc="upper center")
        ax.set_ylim(*limits)
    axes[0].set_ylabel("validation loss")
    fig.suptitle(
        f"Does the best LR at width {sz['proxy']} (pale) stay best {sz['target'] // sz['proxy']}x wider? "
        "(x: diverged; *: optimum; dotted: the sweep's best)",
        fontsize=11,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_target_runs(result: DemoResult, path: Path) -> None:
    """Training loss of the two targets, each trained with its proxy sweep's best values."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), layout="constrained")
    for p in ("mup", "sp"):
        r = result.target[p]
        steps = [i * r["curve_every"] for i in range(len(r["curve"]))]
        end = f"validation {r['val_loss']:.4f}" if r["val_loss"] is not None else f"diverged: {r['diverged']}"
        ax.plot(
            steps, r["curve"], color=_PARAM_COLOURS[p], lw=1.4, label=f"{parametrization_label(p)} ({end})"
        )
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3, lw=0.4)
    ax.legend(fontsize=8)
    sz = result.settings["sizes"]
    ax.set_title(f"Target (width {sz['target']}) trained with the proxy's values", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _edge_and_limits(losses: Sequence[float]) -> tuple[float, tuple[float, float]]:
    """Where diverged runs are drawn (just above the highest finite loss), and y limits that
    show every finite loss and that edge."""
    low, high = min(losses), max(losses)
    pad = high - low or 1.0
    edge = high + 0.05 * pad
    return edge, (low - 0.04 * pad, edge + 0.03 * pad)


def _signed(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:+.1%}"


_STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
  color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
.meta { color: #666; font-size: 13px; }
table { border-collapse: collapse; margin: 0.8em 0; }
td, th { border: 1px solid #ddd; padding: 4px 10px; text-align: right; }
td:first-child, th:first-child { text-align: left; }
th { background: #f4f4f4; }
.verdict { background: #f6f8fa; border-left: 4px solid #2ca02c; padding: 0.6em 1em; }
img { max-width: 100%; border: 1px solid #eee; }
pre { background: #f6f8fa; padding: 0.8em; overflow-x: auto; font-size: 12px; }
.pass { color: #2ca02c; font-weight: 600; } .fail { color: #d62728; font-weight: 600; }
"""


def _html(result: DemoResult, checks: Sequence[CoordCheck], images: dict[str, str]) -> str:
    from mutransfer.transfer import Transfer

    sz, prov, summary = result.settings["sizes"], result.provenance, result.summary()
    e = html.escape

    def figure(name: str, alt: str) -> str:
        return f'<img src="data:image/png;base64,{images[name]}" alt="{e(alt)}">'

    def table(head: Sequence[str], rows: Sequence[Sequence[str]], key: str = "") -> str:
        cells = "".join(f"<th>{e(h)}</th>" for h in head)
        body = "".join(
            f'<tr data-row="{i}">' + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>"
            for i, row in enumerate(rows)
        )
        return f'<table data-table="{key}"><tr>{cells}</tr>{body}</table>'

    leaders = {}
    for p in ("mup", "sp"):
        done = sorted(
            (t for t in result.sweep[p]["trials"] if t["value"] is not None), key=lambda t: t["value"]
        )
        keys = result.sweep[p]["searched"]
        leaders[p] = table(
            ["trial", "validation loss", *keys, "seconds"],
            [
                [
                    f"#{t['number']}",
                    f"{t['value']:.4f}",
                    *(f"{t['params'][k]:.4g}" for k in keys),
                    f"{t['seconds']:.1f}",
                ]
                for t in done[:5]
            ],
            f"leaderboard-{p}",
        )
    columns = [(p, where) for p in ("mup", "sp") for where in ("proxy", "target")]
    log2_lrs = sorted({int(k) for runs in result.scan.values() for k in runs})
    scan_rows = [
        [f"2^{k}", *(_cell(result.scan[f"{p}/{w}"].get(str(k))) for p, w in columns)] for k in log2_lrs
    ]
    scan_head = ["lr", *(f"{parametrization_label(p)}, width {sz[w]}" for p, w in columns)]
    transfers = "\n\n".join(Transfer.from_dict(result.transfer[p]).summary() for p in ("mup", "sp"))
    seconds = ", ".join(f"{k} {v:.0f} s" for k, v in prov.get("phase_seconds", {}).items())
    ratio = sz["target"] // sz["proxy"]
    engine = (
        "Optuna TPE, seeded: a rerun on this machine reproduces every number"
        if sz["workers"] == 1
        else f"Optuna TPE, {sz['workers']} worker processes"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mutransfer demo report</title>
<style>{_STYLE}</style></head><body>
<h1>muTransfer, end to end</h1>
<p class="meta">{e(prov.get("date", ""))} &middot; {e(prov.get("machine", ""))} &middot;
<code>{e(prov.get("command", ""))}</code> &middot; {prov.get("seconds", 0):.0f} s ({e(seconds)})</p>
<p>The reference GPT ({e(result.settings["model"])}, 2 blocks, 4 heads) on <b>{e(result.settings["data"])}</b>
(next-byte prediction, {sz["block_size"]}-byte context): tuned at width <b>{sz["proxy"]}</b>, trained at
width <b>{sz["target"]}</b> ({ratio}x wider), {sz["steps"]} steps of {sz["batch_size"]} sequences, Adam
with warmup and cosine decay, one seed per run.</p>

<h2>Summary</h2>
{table(["", "muP", "standard"], result.rows(), "summary")}
<p class="verdict">{e(result.verdict())}</p>

<h2>1. Coordinate check</h2>
<p>Each model is trained {checks[0].steps} steps at widths {", ".join(map(str, sz["coord_widths"]))}
({sz["coord_seeds"]} seeds). Each line is one module: the size of the change its own update made to its
output, against width. muP promises flat lines; a module whose line rises grows with width and would
blow up (or force a smaller learning rate) in the wide model.
Standard: <span class="{_verdict_class(checks[0])}">{_verdict_word(checks[0])}</span>;
muP: <span class="{_verdict_class(checks[1])}">{_verdict_word(checks[1])}</span>.</p>
{figure("coord", "coordinate check, standard above muP")}
<details><summary>Verdicts per module</summary><pre>{e(checks[0].table())}

{e(checks[1].table())}</pre></details>

<h2>2. Proxy sweeps</h2>
<p>At width {sz["proxy"]}, muP's base, muP and standard parametrization are the same model. muP tunes the
learning rate with the input and output multipliers, the values muTransfer carries to wider models;
standard practice tunes the learning rate alone. Both sweeps run in the sweep engine ({engine})
and are kept in <code>{e(result.sweep["mup"]["storage"])}</code>, an Optuna
journal that an interrupted sweep resumes from.</p>
{figure("sweep", "proxy sweep trials")}
<p>Best trials, muP ({e(result.sweep["mup"]["line"])}):</p>
{leaders["mup"]}
<p>Best trials, standard ({e(result.sweep["sp"]["line"])}):</p>
{leaders["sp"]}

<h2>3. Transfer to width {sz["target"]}</h2>
<p>muP carries the best values through the plan (per-layer learning rates and initialisation, the
multipliers absorbed); standard parametrization copies them unchanged. Each target then trains once.
The same files as <code>mutransfer transfer</code> writes are beside this page
(<code>target-mup.json</code>, <code>target-sp.json</code>).</p>
<pre>{e(transfers)}</pre>
{figure("target", "training loss of both targets")}

<h2>4. Did the optimum move?</h2>
<p>To check the transfer, proxy and target are trained at {2 * sz["scan_span"] + 1} learning rates each, a
factor 2 apart around the sweep's best, the other values held at the transferred ones: the target runs
alone are {summary["scan_runs"]} target trainings, the expense muTransfer exists to avoid. Stars mark each
width's optimum (parabola through the best three points); the drift is how far the target's moved from the
proxy's, and the gap what training at the sweep's best (ring) lost against the target's own best.</p>
{figure("scan", "LR scans at the proxy and the target, muP and standard")}
{table(scan_head, scan_rows, "scan")}

<h2>Files and next steps</h2>
<p>Every number above is in <code>demo.json</code> beside this page; the sweep's trials are in
<code>sweep.journal</code>. Your own model: <code>mutransfer coord-check your.module:factory</code>, then a
sweep config like <code>examples/sweep-mlp.toml</code> and <code>mutransfer sweep</code> /
<code>mutransfer transfer</code> (README).</p>
</body></html>
"""


def _cell(run: dict[str, Any] | None) -> str:
    if run is None:
        return ""
    return "diverged" if run["val_loss"] is None else f"{run['val_loss']:.4f}"


def _verdict_word(check: CoordCheck) -> str:
    return "passed" if check.passed else f"failed ({len(check.failures)} points fail)"


def _verdict_class(check: CoordCheck) -> str:
    return "pass" if check.passed else "fail"
