"""Every causal-LM family of the installed transformers, planned and checked as a new user would.

    python benchmarks/zoo.py                 # ~30 min on 2 CPU cores
    python benchmarks/zoo.py --quick         # six families: about a minute
    python benchmarks/zoo.py --only llama gpt2

For each model type in transformers' causal-LM mapping, a tiny config (2 layers, 4 heads, a
256-token vocabulary) whose width keys scale with ``width`` (the hidden size, every
intermediate/FFN size at twice it, a stored head size at width/heads) gives a raw factory,
``AutoModelForCausalLM.from_config`` and nothing of ``mutransfer.hf``. Each family then goes
through what a user runs: ``mutransfer.plan`` (base 32, target 128) and the coordinate check,
muP and standard, at the reliable setting (widths 32..256, 3 steps, 2 seeds; stdlib bytes).

The attention's truth is read apart from the library's own interception: each model is also
built with an attention function registered through transformers' ``AttentionInterface`` that
records the scale it is called with, so a family is *silently wrong* when the muP check passes
while the planned model's attention at the target is not ``1/d_head`` (``scale * d_head``
differs from the base's). Families whose attention never calls the interface are counted apart.

Counts: builds, plans, refused loudly (a ``MutransferError`` naming the problem), muP passes,
standard fails, silently wrong. Results: results/zoo.json and a table printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import resource
import signal
import sys
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import torch

import mutransfer
from mutransfer.errors import MutransferError

sys.path.insert(0, str(Path(__file__).parent))
from transfer import RESULTS, first_available, provenance

BASE, TARGET, HEADS = 32, 128, 4
WIDTHS = [32, 64, 128, 256]
MEMORY = 8 * 2**30  # bytes of address space per process
QUICK = ["gpt2", "llama", "qwen2", "mistral", "gemma", "phi"]
FIXED = dict(
    num_hidden_layers=2, num_attention_heads=HEADS, num_key_value_heads=2, vocab_size=256,
    max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2, use_cache=False,
)  # fmt: skip
FFN = ("intermediate", "ffn_dim", "d_ff", "n_inner", "ffn_hidden_size", "dim_feedforward", "d_inner")
HEAD_DIM = ("head_dim", "kv_channels", "attention_head_dim")


def transformers_module():
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers


class Family:
    """``make(width)``: the family's tiny model at ``width``, raw, as transformers builds it."""

    def __init__(self, model_type: str, attn: str | None = None) -> None:
        self.model_type, self.attn = model_type, attn
        self.__name__ = self.__qualname__ = f"zoo:{model_type}"

    def config(self, width: int):
        t = transformers_module()
        config = t.AutoConfig.for_model(self.model_type)
        for key, value in {**FIXED, "hidden_size": width}.items():
            _set(config, key, value)
        for key, value in list(config.to_dict().items()):
            if isinstance(value, int) and not isinstance(value, bool):
                if any(k in key for k in FFN):
                    _set(config, key, 2 * width)
                elif key in HEAD_DIM:
                    _set(config, key, width // HEADS)
        return config

    def __call__(self, width: int = BASE, vocab_size: int | None = None, block_size: int | None = None):
        t = transformers_module()
        kwargs = {"attn_implementation": self.attn} if self.attn else {}
        return t.AutoModelForCausalLM.from_config(self.config(width), **kwargs)

    def __repr__(self) -> str:
        return f"zoo:{self.model_type}"


def _set(config, key: str, value) -> None:
    names = getattr(config, "attribute_map", {})
    if hasattr(config, key) or key in names:
        with contextlib.suppress(Exception):
            setattr(config, key, value)


# ---- the truth about the attention: what transformers' attention interface is called with --------
SEEN: list[tuple[float | None, int]] = []


def _recording(module, query, key, value, attention_mask, scaling=None, **kwargs):
    SEEN.append((scaling, query.shape[-1]))
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)


def register_recorder() -> None:
    t = transformers_module()
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    t.AttentionInterface.register("zoo_recording", _recording)
    AttentionMaskInterface.register("zoo_recording", ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def attention_truth(model_type: str, plan) -> str:
    """``1/d_head``, ``not 1/d_head`` or ``not through the interface``: the planned target's scale
    against the base model's, as the attention function is called with them."""
    family = Family(model_type, attn="zoo_recording")
    scales = []
    for width, p in ((BASE, None), (TARGET, plan)):
        torch.manual_seed(0)
        try:
            model = family(width)
        except Exception:
            return "not through the interface"
        if p is not None:
            p.init_(model)
        SEEN.clear()
        try:
            with torch.no_grad():
                model(torch.zeros(1, 8, dtype=torch.long))
        except Exception as exc:
            return f"unknown: the forward failed ({type(exc).__name__})"
        if not SEEN:
            return "not through the interface"
        scale, d = SEEN[0]
        scales.append((d**-0.5 if scale is None else scale) * d)
    return "1/d_head" if math.isclose(scales[0], scales[1], rel_tol=1e-4) else "not 1/d_head"


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Raise TimeoutError in the block after ``seconds``; nests (an outer limit keeps running)."""

    def stop(signum, frame):
        raise TimeoutError(f"over {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    start, outer = time.monotonic(), signal.alarm(seconds)
    if outer and outer < seconds:  # the outer limit comes first: keep it
        signal.alarm(outer)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        if outer:
            signal.alarm(max(1, round(outer - (time.monotonic() - start))))


def one(model_type: str, data, limit: int) -> dict:
    row: dict = {"model_type": model_type}
    family = Family(model_type)
    try:
        with torch.device("meta"):
            family(BASE)
    except Exception as exc:
        return row | {"stage": "build", "reason": f"{type(exc).__name__}: {str(exc)[:160]}"}
    row["builds"] = True
    for width in (BASE, TARGET):  # the tiny config itself must run: a family's quirks are not muP's
        try:
            with torch.no_grad():
                family(width)(torch.zeros(1, 8, dtype=torch.long))
        except Exception as exc:
            return row | {
                "stage": "forward",
                "reason": f"width {width}: {type(exc).__name__}: {str(exc)[:160]}",
            }
    row["runs"] = True
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            plan = mutransfer.plan(family, base={"width": BASE}, target={"width": TARGET})
        row["plan_warnings"] = [
            str(w.message)[:200] for w in caught if "mutransfer" in type(w.message).__module__
        ]
    except MutransferError as exc:
        return row | {"stage": "plan", "refused": str(exc)[:300]}
    except Exception as exc:
        crashed = f"{type(exc).__name__}: {str(exc)[:200]}"
        where = traceback.format_exc(limit=-2)[-400:]
        return row | {"stage": "plan", "crashed": crashed, "where": where}
    row["plans"] = True
    row["attention_sites"] = [
        f"{s.name}: {s.law}" + (f" (fixed by {s.fix})" if s.fix and not s.is_mup else "")
        for s in plan.attention or ()
    ]
    row["attention_unfixed"] = any(not s.is_mup and not s.fix for s in plan.attention or ())
    try:
        row["attention_truth"] = attention_truth(model_type, plan)
    except Exception as exc:  # a family's own quirk must not stop the survey
        row["attention_truth"] = f"unknown: {type(exc).__name__}: {str(exc)[:100]}"
    for parametrization in ("mup", "sp"):
        start = time.monotonic()
        try:
            with time_limit(limit), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = mutransfer.coord_check(
                    family, widths=WIDTHS, data=data, steps=3, seeds=2, parametrization=parametrization
                )
        except MutransferError as exc:
            row[parametrization] = {"refused": str(exc)[:300]}
            continue
        except Exception as exc:
            row[parametrization] = {"crashed": f"{type(exc).__name__}: {str(exc)[:200]}"}
            continue
        causes = sorted({m.name for m in result.failures if m.cause})
        row[parametrization] = {"passed": result.passed, "causes": causes[:8],
                                "seconds": round(time.monotonic() - start, 1)}  # fmt: skip
    mup = row.get("mup", {})
    row["silently_wrong"] = bool(mup.get("passed")) and row["attention_truth"] == "not 1/d_head"
    row["stage"] = "checked" if "passed" in mup else "check"
    return row


def main() -> None:
    # a family whose tiny config still allocates gigabytes must fail alone, not take the machine
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (min(MEMORY, hard) if hard > 0 else MEMORY, hard))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    parser.add_argument("--only", nargs="+", help="these model types")
    parser.add_argument("--out", type=Path, help="results folder (default: benchmarks/results)")
    parser.add_argument("--limit", type=int, default=60, help="seconds per coordinate check (default 60)")
    parser.add_argument("--shard", help="K/N: every N-th family from the K-th (run N at once, then --merge)")
    parser.add_argument("--merge", type=int, metavar="N", help="merge the N shard files into zoo.json")
    args = parser.parse_args()
    transformers = transformers_module()
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    register_recorder()
    out = args.out or RESULTS
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    data = first_available("stdlib", block_size=32)
    if args.merge:
        merged = [json.loads((out / f"zoo-{k}-of-{args.merge}.json").read_text()) for k in range(args.merge)]
        rows = sorted((r for m in merged for r in m["rows"]), key=lambda r: r["model_type"])
        seconds = sum(m["seconds_this_run"] for m in merged)
        record = {**merged[0], "rows": rows, "counts": counts(rows), "seconds_all_shards": seconds}
        (out / "zoo.json").write_text(json.dumps(record, indent=1, default=str))
        print(json.dumps(counts(rows), indent=1))
        return
    types = args.only or (QUICK if args.quick else sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES))
    name = "zoo-quick.json" if args.quick else "zoo.json" if not args.only else "zoo-only.json"
    if args.shard:
        k, n = (int(x) for x in args.shard.split("/"))
        types, name = types[k::n], f"zoo-{k}-of-{n}.json"
    rows = []
    if (out / name).exists() and not args.quick:  # resume: a killed run keeps what it measured
        rows = json.loads((out / name).read_text())["rows"]
        done = {r["model_type"] for r in rows}
        types = [t for t in types if t not in done]
    for i, model_type in enumerate(types):
        try:
            with time_limit(4 * args.limit):  # a family's plan and both checks together
                row = one(model_type, data, args.limit)
        except TimeoutError as exc:
            row = {"model_type": model_type, "stage": "timeout", "reason": str(exc)}
        except Exception as exc:  # MemoryError under the address-space cap, or anything else of a family's
            row = {
                "model_type": model_type,
                "stage": "crashed",
                "reason": f"{type(exc).__name__}: {str(exc)[:160]}",
            }
        rows.append(row)
        print(f"[{i + 1}/{len(types)}] {model_type:28s} {_line(row)}", flush=True)
        record = {**provenance(start), "transformers": transformers.__version__, "widths": WIDTHS,
                  "base": BASE, "target": TARGET, "rows": rows, "counts": counts(rows)}  # fmt: skip
        (out / name).write_text(json.dumps(record, indent=1, default=str))
    print(json.dumps(counts(rows), indent=1))
    print(f"results in {out / name} ({time.monotonic() - start:.0f} s)")


def _line(row: dict) -> str:
    """One family's outcome in a line."""
    if not row.get("plans"):
        return (
            "refused: " + row["refused"][:80]
            if "refused" in row
            else row.get("reason", row.get("crashed", ""))[:80]
        )
    parts = []
    for name, label in (("mup", "muP"), ("sp", "standard")):
        r = row.get(name, {})
        if "passed" in r:
            parts.append(f"{label} {'passes' if r['passed'] else 'fails: ' + ','.join(r['causes'])[:40]}")
        else:
            parts.append(f"{label} {next(iter(r.values()), '')[:50]}")
    parts.append(
        f"attention {row['attention_truth']}" + ("; SILENTLY WRONG" if row["silently_wrong"] else "")
    )
    return "; ".join(parts)


def counts(rows: list[dict]) -> dict:
    c = Counter()
    for r in rows:
        c["families"] += 1
        c["build from a tiny config"] += bool(r.get("builds"))
        c["run at base and target width"] += bool(r.get("runs"))
        c["plan"] += bool(r.get("plans"))
        c["plan refused loudly"] += "refused" in r
        c["plan crashed"] += "crashed" in r
        mup, sp = r.get("mup", {}), r.get("sp", {})
        stopped = f"{mup.get('refused', '')}{mup.get('crashed', '')}"
        slow = "TimeoutError" in stopped or "can't allocate memory" in stopped  # the survey's limits
        c["muP check ran"] += "passed" in mup
        c["muP passes"] += bool(mup.get("passed"))
        c["muP fails loudly, naming points"] += "passed" in mup and not mup["passed"]
        c["muP check over the time or memory limit"] += slow
        c["muP check refused loudly"] += "refused" in mup and not slow
        c["muP check crashed"] += "crashed" in mup and not slow
        c["standard fails"] += "passed" in sp and not sp["passed"]
        c["attention through the interface"] += r.get("attention_truth") in ("1/d_head", "not 1/d_head")
        c["attention muP after the plan"] += r.get("attention_truth") == "1/d_head"
        c["silently wrong"] += bool(r.get("silently_wrong"))
    return dict(c)


if __name__ == "__main__":
    main()
