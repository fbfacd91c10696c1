"""What to watch while a model trains, for the instabilities that stop large runs.

Wortsman et al. (*Small-scale proxies for large-scale Transformer training instabilities*, 2023)
name two: attention logits that grow until the softmax saturates (qk-layernorm fixes it), and
output logits whose log-normaliser ``log Z`` drifts far from 0 (a z-loss fixes it); and they
predict a third from how gradients scale: a gradient RMS that shrinks towards Adam's epsilon,
where updates stop. A ``Monitor`` records each of these every ``every`` optimizer steps:

- ``attention/<module>``: the largest ``|scale * q.k|`` of the attention that module computed
  (found by the same interception a plan and a coordinate check use, so any attention written
  with ``F.scaled_dot_product_attention``, ``nn.MultiheadAttention`` or a written-out softmax);
- ``output/log_z``: the mean ``log Z`` of the output logits;
- ``update/<role>``: the update RMS of a muP role's tensors (``hidden``, ``output``, ...) over
  their RMS, step by step (per param group, ``group0``..., for groups not from a plan);
- ``grad/<role>``: their gradient RMS (``eps`` holds each one's Adam epsilon, to compare).

It hooks the model and the optimizer, so a loop of your own needs no change::

    with Monitor(model, optimizer, every=10) as monitor:
        for step in range(steps):
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(); loss.backward(); optimizer.step()
    print(monitor.first_to_rise())

Nothing is hooked once it is closed; on the steps it skips, its four hooks return at once.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from mutransfer.errors import MutransferError
from mutransfer.losses import log_z
from mutransfer.scaling.attention import AttentionCall
from mutransfer.scaling.intercept import intercept

__all__ = ["RISE", "Monitor", "first_to_rise", "monitoring"]

RISE = 10.0  # a monitor "rises" when its size reaches this multiple of its first recorded size
_SAMPLE = 8  # attention logits are computed on this many sequences of the batch


class Monitor:
    """Records the monitors of ``model`` trained by ``optimizer`` every ``every`` steps (see
    the module docstring); ``attention=False`` skips the attention logits (the costliest)."""

    def __init__(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, *, every: int = 10, attention: bool = True
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise MutransferError(f"every must be an int >= 1 (steps between records), got {every!r}.")
        self.model, self.optimizer, self.every, self.attention = model, optimizer, every, attention
        self.step = 0  # optimizer steps taken since the monitor was attached
        self.steps: list[int] = []
        self.records: list[dict[str, float]] = []
        self.sets = _parameter_sets(optimizer.param_groups)
        self.eps = {name: max(e for _, e in members) for name, members in self.sets.items()
                    if all(e is not None for _, e in members)}  # fmt: skip
        self._record: dict[str, float] | None = None
        self._before: dict[str, list[torch.Tensor]] = {}
        self._intercepting: contextlib.ExitStack | None = None
        self._handles = [
            model.register_forward_pre_hook(self._forward_starts),
            model.register_forward_hook(self._forward_ends, always_call=True),
            optimizer.register_step_pre_hook(self._step_starts),
            optimizer.register_step_post_hook(self._step_ends),
        ]

    # ---- the hooks -------------------------------------------------------------------------
    def _recording(self) -> bool:
        return self.step % self.every == 0

    def _forward_starts(self, module: nn.Module, args: Any) -> None:
        if not (self.model.training and self._recording()) or self._record is not None:
            return  # evaluation, a skipped step, or a second forward of the same step
        self._record = {}
        if self.attention:
            self._intercepting = contextlib.ExitStack()
            self._intercepting.enter_context(intercept(self.model, self._attention, tensors=True))

    def _forward_ends(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._intercepting is not None:
            self._intercepting.close()
            self._intercepting = None
        if self._record is None or "output/log_z" in self._record:
            return
        logits = getattr(output, "logits", output)
        if isinstance(logits, torch.Tensor) and logits.is_floating_point():
            with torch.no_grad():
                self._record["output/log_z"] = log_z(logits.detach()).mean().item()

    def _attention(self, call: AttentionCall) -> None:
        q, k = call.q[:_SAMPLE], call.k[:_SAMPLE]
        if q.dim() == k.dim() and q.dim() >= 3 and q.shape[-3] != k.shape[-3] and k.shape[-3]:
            k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)  # grouped-query attention
        with torch.no_grad():
            largest = (call.scale * q.float() @ k.float().transpose(-2, -1)).abs().max().item()
        key = f"attention/{call.module}"
        assert self._record is not None
        self._record[key] = max(largest, self._record.get(key, -math.inf))

    def _step_starts(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self._record is None:
            return
        for name, members in self.sets.items():
            grads = [p.grad for p, _ in members if p.grad is not None]
            if grads:
                self._record[f"grad/{name}"] = _rms(grads)
            self._before[name] = [p.detach().clone() for p, _ in members]

    def _step_ends(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self._record is not None:
            for name, members in self.sets.items():
                before = self._before.get(name)
                if before:
                    moved = [p.detach() - b for (p, _), b in zip(members, before, strict=True)]
                    size = _rms(before)
                    self._record[f"update/{name}"] = _rms(moved) / size if size > 0 else math.nan
            self._before.clear()
            self.steps.append(self.step)
            self.records.append(self._record)
            self._record = None
        self.step += 1

    # ---- results ---------------------------------------------------------------------------
    @property
    def series(self) -> dict[str, list[float]]:
        """Each monitor's values at ``steps`` (nan where a step did not record it)."""
        names = sorted({k for r in self.records for k in r})
        return {n: [r.get(n, math.nan) for r in self.records] for n in names}

    def first_to_rise(self, rise: float = RISE) -> str:
        """Which monitor rose first, as a sentence (see ``first_to_rise``)."""
        return first_to_rise(self.steps, self.series, rise)

    def to_dict(self) -> dict[str, Any]:
        return {"every": self.every, "steps": list(self.steps), "series": self.series, "eps": dict(self.eps)}

    def close(self) -> None:
        """Remove every hook: the model and the optimizer are as they were."""
        if self._intercepting is not None:
            self._intercepting.close()
            self._intercepting = None
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def monitoring(model: nn.Module, optimizer: torch.optim.Optimizer, every: int) -> Iterator[Monitor | None]:
    """A monitor while the block runs when ``every`` > 0, else None (and no hooks at all)."""
    if not every:
        yield None
        return
    monitor = Monitor(model, optimizer, every=every)
    try:
        yield monitor
    finally:
        monitor.close()


def first_to_rise(steps: list[int], series: dict[str, list[float]], rise: float = RISE) -> str:
    """The monitor whose size first reached ``rise`` times its first recorded size, with where
    and how high ("attention logits in blocks.1.attn reached 310 at step 140, 25x step 0"); if
    none did, the one that rose the most. Empty when nothing was recorded."""
    found = []  # (step index of the rise or inf, -ratio at the end, name, index)
    for name, values in series.items():
        finite = [(i, abs(v)) for i, v in enumerate(values) if math.isfinite(v)]
        if len(finite) < 2 or finite[0][1] == 0:
            continue
        start = finite[0][1]
        crossed = next((i for i, v in finite if v >= rise * start), None)
        at = crossed if crossed is not None else max(finite, key=lambda f: f[1])[0]
        found.append((crossed if crossed is not None else math.inf, -abs(values[at]) / start, name, at))
    if not found:
        return ""
    crossed, ratio, name, at = min(found)
    value, start = series[name][at], steps[0]
    text = f"{_label(name)} reached {value:.3g} at step {steps[at]}, {-ratio:.0f}x step {start}"
    return text if math.isfinite(crossed) else f"no monitor rose {rise:g}x; the most: {text}"


def _label(name: str) -> str:
    kind, _, where = name.partition("/")
    return {
        "attention": f"attention logits in {where}",
        "output": "the output's log Z",
        "update": f"the {where} group's relative update",
        "grad": f"the {where} group's gradient RMS",
    }.get(kind, name)


def _parameter_sets(groups: list[dict[str, Any]]) -> dict[str, list[tuple[torch.Tensor, float | None]]]:
    """What the gradient and update monitors are taken over, with each tensor's epsilon: per muP
    role when the groups say each tensor's (a plan's do, so the names match at every width, where
    groups merge and split with the multipliers), else per group (``group0``, ...)."""
    sets: dict[str, list[tuple[torch.Tensor, float | None]]] = {}
    by_role = all(len(g.get("param_roles", ())) == len(g["params"]) for g in groups)
    for i, group in enumerate(groups):
        eps = group.get("eps") if isinstance(group.get("eps"), float) else None
        names = group["param_roles"] if by_role else [f"group{i}"] * len(group["params"])
        for p, name in zip(group["params"], names, strict=True):
            sets.setdefault(name, []).append((p, eps))
    return sets


def _rms(tensors: list[torch.Tensor]) -> float:
    total = sum(float(t.float().pow(2).sum()) for t in tensors)
    count = sum(t.numel() for t in tensors)
    return math.sqrt(total / count) if count else math.nan
