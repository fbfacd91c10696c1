"""Training-step overhead of muP applied by mutransfer, against plain PyTorch.

mutransfer makes a model muP without touching its code: ``plan.init_(model)`` rescales the
initial weights once, and ``plan.param_groups(...)`` hands the optimizer several param groups
(one per distinct learning-rate / eps / weight-decay multiplier) instead of one. With tied
embeddings the plan also registers one forward pre-hook that scales the readout's input. So
the only costs per training step can be

- the optimizer iterating over a few groups instead of one (with ``torch.optim.AdamW``'s
  default ``foreach=None`` that is the per-tensor loop on CPU and the multi-tensor ``foreach``
  kernels, launched once per group, on CUDA), and
- for tied embeddings, one extra multiply of the readout input plus a Python hook call.

This script times full training steps (zero_grad, forward, cross-entropy, backward, AdamW step)
of ``mutransfer.models.GPT`` in three forms built from the same seed and fed the same batch:

- ``plain``: the model as written, one param group, ``torch.optim.AdamW``;
- ``mutransfer``: the same model after ``plan.init_``, ``torch.optim.AdamW`` over
  ``plan.param_groups``;
- ``mup`` (only where the ``mup`` package imports): the model made muP the microsoft/mup way,
  with ``lm_head`` replaced by ``mup.MuReadout`` (``mup.MuSharedReadout`` when tied),
  ``mup.set_base_shapes`` against a small-width base model on the meta device, and
  ``mup.MuAdamW``.

The variants run interleaved in rounds (every round runs each variant for a block of steps,
starting with a different variant each round), so drift in the machine's speed hits all of
them alike; the medians over rounds are compared. Ratios:

- ``plain / mutransfer``: 1.0 means no overhead; >= 0.99 is the target;
- ``mup / mutransfer``: above 1.0 means microsoft/mup's step is slower than mutransfer's.

Every variant gets the same ``torch.set_num_threads`` and the same AdamW ``foreach`` setting.
On CPU the script flushes denormals (``torch.set_flush_denormal(True)``): subnormal floats
appear at different points of each variant's training and can slow whole rounds 2x, which
would measure the numbers rather than the parametrization (``--keep-denormals`` to see it).

Run ``python benchmarks/overhead.py`` (about 1-2 minutes on 2 CPU cores) or ``--quick`` for a
smoke run; results go to ``benchmarks/results/overhead.json``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

import mutransfer
from mutransfer.models import GPT

N_HEAD = 4  # GPT's default head count; widths must be multiples of it
LR = 1e-3
WEIGHT_DECAY = 0.1
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Variant:
    """One way of building the model and its optimizer, plus the step times measured for it."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    ms_per_step: list[float] = field(default_factory=list)  # one entry per round
    last_loss: float = float("nan")

    @property
    def n_groups(self) -> int:
        return len(self.optimizer.param_groups)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.ms_per_step)


def gpt_kwargs(args: argparse.Namespace, tied: bool, mup_attention: bool) -> dict[str, Any]:
    """GPT keywords shared by every variant, except ``width``."""
    base_d_head = args.base_width // N_HEAD if mup_attention else None
    return {
        "depth": args.depth,
        "n_head": N_HEAD,
        "block_size": args.seq,
        "tie_embeddings": tied,
        "base_d_head": base_d_head,
    }


def foreach_option(args: argparse.Namespace) -> bool | None:
    return {"default": None, "on": True, "off": False}[args.foreach]


def build_plain(args: argparse.Namespace, tied: bool, device: torch.device) -> Variant:
    torch.manual_seed(0)
    model = GPT(width=args.width, **gpt_kwargs(args, tied, mup_attention=False)).to(device)
    opt = torch.optim.AdamW(
        model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, foreach=foreach_option(args)
    )
    return Variant("plain", model, opt)


def build_mutransfer(args: argparse.Namespace, tied: bool, device: torch.device) -> Variant:
    kwargs = gpt_kwargs(args, tied, mup_attention=True)
    base, target = {"width": args.base_width, **kwargs}, {"width": args.width, **kwargs}
    plan = mutransfer.plan(GPT, base=base, target=target)
    torch.manual_seed(0)
    model = GPT(width=args.width, **kwargs)
    plan.init_(model)
    model.to(device)
    groups = plan.param_groups(model, lr=LR, weight_decay=WEIGHT_DECAY)
    opt = torch.optim.AdamW(groups, lr=LR, foreach=foreach_option(args))
    return Variant("mutransfer", model, opt)


def build_mup(mup: Any, args: argparse.Namespace, tied: bool, device: torch.device) -> Variant:
    """The same GPT made muP with microsoft/mup: MuReadout, set_base_shapes, MuAdamW."""
    kwargs = gpt_kwargs(args, tied, mup_attention=True)

    def make(width: int) -> GPT:
        model = GPT(width=width, **kwargs)
        if tied:
            model.lm_head = mup.MuSharedReadout(model.wte.weight, bias=False)
        else:
            model.lm_head = mup.MuReadout(width, model.lm_head.out_features, bias=False)
        return model

    with torch.device("meta"):
        base = make(args.base_width)
    torch.manual_seed(0)
    model = make(args.width)
    mup.set_base_shapes(model, base)  # also rescales the readout init and Linear biases
    model.to(device)  # after set_base_shapes: the infshape attributes stay on the same tensors
    opt = mup.MuAdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, foreach=foreach_option(args))
    return Variant("mup", model, opt)


def import_mup() -> tuple[Any | None, str]:
    """The ``mup`` module, or None and the reason it cannot be imported."""
    try:
        import mup
    except ImportError as exc:  # not installed, or one of its own imports is missing
        return None, f"{type(exc).__name__}: {exc}"
    version = getattr(mup, "__version__", None)
    if version is None:
        try:
            from importlib.metadata import version as dist_version

            version = dist_version("mup")
        except Exception:
            version = "unknown"
    return mup, f"mup {version}"


def train_steps(v: Variant, inputs: torch.Tensor, targets: torch.Tensor, n: int) -> None:
    for _ in range(n):
        v.optimizer.zero_grad(set_to_none=True)
        logits = v.model(inputs)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        loss.backward()
        v.optimizer.step()
    v.last_loss = loss.item()  # also waits for queued GPU work


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    variants: list[Variant],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    args: argparse.Namespace,
    device: torch.device,
) -> None:
    """Warm up every variant, then time them interleaved: rounds x (each variant, a block of steps)."""
    for v in variants:
        train_steps(v, inputs, targets, args.warmup)
    for r in range(args.rounds):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        for v in order:
            gc.collect()
            synchronize(device)
            start = time.perf_counter()
            train_steps(v, inputs, targets, args.steps)
            synchronize(device)
            v.ms_per_step.append(1000 * (time.perf_counter() - start) / args.steps)


def ratios(by_name: dict[str, Variant]) -> dict[str, dict[str, float]]:
    """Ratio of medians, and the median of per-round ratios (paired, so less sensitive to drift)."""

    def ratio(num: str, den: str) -> dict[str, float]:
        a, b = by_name[num], by_name[den]
        paired = [x / y for x, y in zip(a.ms_per_step, b.ms_per_step, strict=True)]
        return {"of_medians": a.median_ms / b.median_ms, "paired_median": statistics.median(paired)}

    out = {"plain/mutransfer": ratio("plain", "mutransfer")}
    if "mup" in by_name:
        out["mup/mutransfer"] = ratio("mup", "mutransfer")
    return out


def machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if hasattr(os, "getloadavg"):
        info["load_average_1_5_15_min_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def cpu_busy_fraction(interval: float = 1.0) -> float | None:
    """Share of all cores busy over ``interval`` seconds (Linux ``/proc/stat``), else None."""

    def read() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields) - idle, sum(fields)

    try:
        busy0, total0 = read()
        time.sleep(interval)
        busy1, total1 = read()
    except (OSError, ValueError, IndexError):
        return None
    return (busy1 - busy0) / max(total1 - total0, 1)


def warn_if_busy(busy: float | None, threads: int) -> None:
    """Other processes on the same cores make step times swing by up to 10x; say so up front."""
    if busy is not None and busy > 0.2:
        print(
            f"warning: the CPUs were {100 * busy:.0f}% busy before starting; other processes competing "
            f"for the {os.cpu_count()} cores (torch uses {threads} threads) make these timings noisy"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--base-width", type=int, default=64, help="muP base width (mutransfer plan and mup)")
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--steps", type=int, default=5, help="steps per variant per round")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per variant first")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch.set_num_threads")
    p.add_argument(
        "--foreach",
        choices=["default", "on", "off"],
        default="default",
        help="AdamW foreach for every variant; default (None) means foreach on CUDA, per-tensor on CPU",
    )
    p.add_argument(
        "--keep-denormals",
        action="store_true",
        help="do not call torch.set_flush_denormal(True) (CPU): subnormal floats then slow steps "
        "depending on where each variant's training has got to, not on its parametrization",
    )
    p.add_argument("--tied", choices=["both", "untied", "tied"], default="both")
    p.add_argument("--no-mup", action="store_true", help="skip microsoft/mup even where it imports")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny model, a few steps")
    p.add_argument("--out", type=Path, default=None, help="JSON results (default benchmarks/results/...)")
    args = p.parse_args(argv)
    if args.quick:
        args.width, args.base_width, args.depth, args.batch, args.seq = 32, 16, 1, 2, 16
        args.rounds, args.steps, args.warmup = 3, 2, 1
    if args.out is None:
        args.out = RESULTS / ("overhead-quick.json" if args.quick else "overhead.json")
    for name in ("width", "base_width"):
        if getattr(args, name) % N_HEAD:
            p.error(f"--{name.replace('_', '-')} must be a multiple of {N_HEAD}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)  # one setting for every variant
    flushing = False if args.keep_denormals else torch.set_flush_denormal(True)  # False if unsupported

    mup, mup_status = (None, "skipped (--no-mup)") if args.no_mup else import_mup()
    mup_line = mup_status if mup is not None else f"microsoft/mup not timed: {mup_status}"
    print(f"torch {torch.__version__}, {args.threads} threads, device {device}; {mup_line}")
    print(
        f"GPT width {args.width} (muP base {args.base_width}), depth {args.depth}, batch {args.batch}, "
        f"seq {args.seq}; {args.rounds} rounds x {args.steps} steps after {args.warmup} warm-up steps; "
        f"AdamW foreach={args.foreach}; flush denormals {flushing}"
    )

    busy = cpu_busy_fraction()
    warn_if_busy(busy, args.threads)

    gen = torch.Generator().manual_seed(1234)
    tokens = torch.randint(0, 256, (args.batch, args.seq + 1), generator=gen).to(device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]

    builders: list[Callable[[argparse.Namespace, bool, torch.device], Variant]] = [
        build_plain,
        build_mutransfer,
    ]
    if mup is not None:
        builders.append(lambda a, t, d: build_mup(mup, a, t, d))

    configs = {"both": [False, True], "untied": [False], "tied": [True]}[args.tied]
    results: dict[str, Any] = {}
    for tied in configs:
        label = "tied" if tied else "untied"
        variants = [build(args, tied, device) for build in builders]
        measure(variants, inputs, targets, args, device)
        by_name = {v.name: v for v in variants}
        results[label] = {
            "variants": {
                v.name: {
                    "median_ms_per_step": v.median_ms,
                    "min_ms_per_step": min(v.ms_per_step),
                    "ms_per_step_by_round": v.ms_per_step,
                    "param_groups": v.n_groups,
                    "final_loss": v.last_loss,
                }
                for v in variants
            },
            "ratios": ratios(by_name),
        }
        print_table(label, variants, results[label]["ratios"])

    report = {
        "benchmark": "training-step overhead: plain PyTorch vs mutransfer muP vs microsoft/mup",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(device),
        "cpu_busy_fraction_before_start": busy,
        "flush_denormal": flushing,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "flags": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "mup": mup_status,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwrote {args.out}")
    return 0


def print_table(label: str, variants: list[Variant], rat: dict[str, dict[str, float]]) -> None:
    print(f"\n{label} embeddings")
    print(f"  {'variant':<11} {'groups':>6} {'median ms/step':>15} {'min ms/step':>12}")
    for v in variants:
        print(f"  {v.name:<11} {v.n_groups:>6} {v.median_ms:>15.2f} {min(v.ms_per_step):>12.2f}")
    for name, r in rat.items():
        note = ""
        if name == "plain/mutransfer":
            note = "  (target >= 0.99)" + ("" if r["of_medians"] >= 0.99 else "  BELOW TARGET")
        print(f"  {name:<17} {r['of_medians']:.3f}  (paired per-round median {r['paired_median']:.3f}){note}")


if __name__ == "__main__":
    sys.exit(main())
