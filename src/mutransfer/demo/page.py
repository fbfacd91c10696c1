"""The demo's page: its figures (PNG) and ``report.html``, drawn from a ``DemoResult`` alone."""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Sequence
from pathlib import Path

from mutransfer.coord import CoordCheck
from mutransfer.demo.result import DemoResult
from mutransfer.parametrizations import label as parametrization_label
from mutransfer.plot import plot_coord_check, pyplot
from mutransfer.transfer import Transfer

__all__ = ["write_report"]

_PARAM_COLOURS = {"mup": "#2ca02c", "sp": "#d62728"}


def write_report(result: DemoResult, folder: str | os.PathLike) -> Path:
    """Write the demo's figures (PNG) and ``report.html`` into ``folder``; return the report's
    path. The page embeds every figure, so it can be mailed or archived as one file."""
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
    plt = pyplot()
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
    plt = pyplot()
    sz = result.settings["sizes"]
    summary = result.summary()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True, layout="constrained")
    finite = [c.val_loss for p in result.scan for c in result.scan_grid(p).cells if math.isfinite(c.val_loss)]
    top, limits = _edge_and_limits(finite)
    for ax, p in zip(axes, ("mup", "sp"), strict=True):
        colour, scan = _PARAM_COLOURS[p], result.scan_grid(p)
        xs = [math.log2(lr) for lr in scan.lrs]
        for where, style, alpha in (("proxy", "--o", 0.45), ("target", "-o", 1.0)):
            ys = [scan.loss(p, sz[where], lr) for lr in scan.lrs]
            ax.plot(xs, [y if math.isfinite(y) else math.nan for y in ys], style, color=colour, alpha=alpha,
                    ms=4, label=f"{where}, width {sz[where]}")  # fmt: skip
            bad = [x for x, y in zip(xs, ys, strict=True) if y == math.inf]
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
    plt = pyplot()
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


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], key: str = "") -> str:
    """An HTML table, named (``data-table``) so tests can read it back."""
    e = html.escape
    cells = "".join(f"<th>{e(h)}</th>" for h in head)
    body = "".join(
        f'<tr data-row="{i}">' + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>"
        for i, row in enumerate(rows)
    )
    return f'<table data-table="{key}"><tr>{cells}</tr>{body}</table>'


def _leaderboard(result: DemoResult, parametrization: str) -> str:
    """A sweep's five best trials."""
    sweep = result.sweep[parametrization]
    done = sorted((t for t in sweep["trials"] if t["value"] is not None), key=lambda t: t["value"])
    keys = sweep["searched"]
    rows = [
        [
            f"#{t['number']}",
            f"{t['value']:.4f}",
            *(f"{t['params'][k]:.4g}" for k in keys),
            f"{t['seconds']:.1f}",
        ]
        for t in done[:5]
    ]
    return _table(["trial", "validation loss", *keys, "seconds"], rows, f"leaderboard-{parametrization}")


def _scan_table(result: DemoResult) -> str:
    """Every scan's loss: one row per LR, one column per parametrization and width."""
    sz = result.settings["sizes"]
    columns = [(p, where) for p in ("mup", "sp") for where in ("proxy", "target")]
    scans = {p: result.scan_grid(p) for p in ("mup", "sp")}
    lrs = sorted({lr for scan in scans.values() for lr in scan.lrs})
    rows = [[f"2^{math.log2(lr):g}", *(_cell(scans[p].loss(p, sz[w], lr)) for p, w in columns)] for lr in lrs]
    return _table(["lr", *(f"{parametrization_label(p)}, width {sz[w]}" for p, w in columns)], rows, "scan")


def _html(result: DemoResult, checks: Sequence[CoordCheck], images: dict[str, str]) -> str:
    sz, prov, summary = result.settings["sizes"], result.provenance, result.summary()
    e, table = html.escape, _table

    def figure(name: str, alt: str) -> str:
        return f'<img src="data:image/png;base64,{images[name]}" alt="{e(alt)}">'

    leaders = {p: _leaderboard(result, p) for p in ("mup", "sp")}
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
width's optimum (parabola through the best three points), and the target trains once more at the proxy's
optimum (as <code>mutransfer grid</code> does); the drift is how far the target's moved from the
proxy's, and the gap what training at the sweep's best (ring) lost against the target's own best.</p>
{figure("scan", "LR scans at the proxy and the target, muP and standard")}
{_scan_table(result)}

<h2>Files and next steps</h2>
<p>Every number above is in <code>demo.json</code> beside this page; the sweep's trials are in
<code>sweep.journal</code>. Your own model: <code>mutransfer coord-check your.module:factory</code>, then a
sweep config like <code>examples/sweep-mlp.toml</code> and <code>mutransfer sweep</code> /
<code>mutransfer transfer</code> (README).</p>
</body></html>
"""


def _cell(loss: float) -> str:
    if math.isnan(loss):
        return ""  # not in this scan
    return "diverged" if loss == math.inf else f"{loss:.4f}"


def _verdict_word(check: CoordCheck) -> str:
    return "passed" if check.passed else f"failed ({len(check.failures)} points fail)"


def _verdict_class(check: CoordCheck) -> str:
    return "pass" if check.passed else "fail"
