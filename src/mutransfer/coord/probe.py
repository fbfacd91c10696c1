"""One run of a coordinate check: train a few steps, and before each, measure a probe batch.

What is watched (a *point* each):

- every module that holds parameters, and every ``AttentionLogits`` hook point;
- every attention the model computes through PyTorch (``F.scaled_dot_product_attention``,
  ``nn.MultiheadAttention``), found by interception: ``blocks.0.attn.sdpa``, ``...self_attn.mha``;
- the residual stream: the output of every block of a ``ModuleList``/``Sequential`` of blocks,
  and the input of the first (``<input of blocks.0>``);
- the model's output, what the loss sees (``<output>``).

The last two catch what no module owns: a multiplier written in a ``forward``.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mutransfer.data.batches import Batches, fetch
from mutransfer.errors import MutransferError
from mutransfer.scaling.attention import AttentionCall, AttentionLogits, logits
from mutransfer.scaling.forward import ScaleOutput
from mutransfer.scaling.intercept import intercept
from mutransfer.scaling.roles import canonical_name

__all__ = ["MEASURES", "OUTPUT", "Run", "run"]

OUTPUT = "<output>"
MEASURES = ("rms", "change", "update", "input", "scale")


def input_of(block: str) -> str:
    """The point that watches the residual stream entering ``block``."""
    return f"<input of {block}>"


@dataclass
class Run:
    """What one run measured. ``series["measure:point"]``: the value before each step (nan: not
    measured); ``kinds``: points that are not modules with a role (``attention``, ``block``,
    ``stream``, ``model``); ``previous``: for stream and output points, the point the forward
    pass reached just before (what a multiplier between them would act on); ``functions``: how
    each attention point computes (``sdpa``, ``mha``, ``logits``)."""

    series: dict[str, list[float]]
    losses: list[float]
    order: list[str]
    kinds: dict[str, str] = field(default_factory=dict)
    previous: dict[str, str] = field(default_factory=dict)
    functions: dict[str, str] = field(default_factory=dict)


def run(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: Batches,
    *,
    steps: int,
    seed: int,
    batch_size: int,
    loss_fn: Callable[[Any, torch.Tensor], torch.Tensor],
    patterns: Sequence[str] | None,
    device: str | torch.device,
    extra: Sequence[str] = (),
) -> Run:
    """Train ``steps`` steps; before each (and after the last) measure every point on batch 0."""
    points = _Points(model, patterns, extra)
    probe = fetch(data, 0, batch_size, seed=seed, device=device)
    for step in range(steps + 1):
        points.last.clear()
        with points.hooks(), torch.no_grad():
            output = _forward(model, probe[0], data)
            loss = _loss(loss_fn, output, probe[1]).item()
        points.end_pass()
        points.out.losses.append(loss)
        if step == steps:
            break
        x, y = fetch(data, step + 1, batch_size, seed=seed, device=device)
        optimizer.zero_grad(set_to_none=True)
        _loss(loss_fn, _forward(model, x, data), y).backward()
        optimizer.step()
    return points.out


class _Points:
    """The points one check watches in one model, and what each probe pass records of them."""

    def __init__(self, model: nn.Module, patterns: Sequence[str] | None, extra: Sequence[str]) -> None:
        named = {canonical_name(n): m for n, m in model.named_modules()}
        self.model, self.everything = model, patterns is None
        self.watched = _watched(named, patterns) | {n: named[n] for n in extra}
        self.streams = (
            [s for s in _stream_points(named) if s[0] not in self.watched] if self.everything else []
        )
        initial = copy.deepcopy(model)  # before any hook: calling its modules records nothing
        self.initial = {canonical_name(n): m for n, m in initial.named_modules()}
        self.inside = {n.rpartition(".")[0] for n, m in named.items() if isinstance(m, AttentionLogits)}
        self.out = Run({}, [], [])
        self.first: dict[str, torch.Tensor] = {}
        self.last: list[str] = []  # the points recorded so far in this forward pass, in order
        self.passes = 0
        for name, module in self.watched.items():
            if isinstance(module, AttentionLogits):
                self.out.kinds[name], self.out.functions[name] = "attention", "logits"
        for (before, _, _), (name, _, where) in zip(
            [(None, None, None), *self.streams], self.streams, strict=False
        ):
            self.out.kinds[name] = "stream" if where == "pre" else "block"
            if where == "post":  # a block's output against its input: the stream it adds its branches to
                self.out.previous[name] = before
        self.out.kinds[OUTPUT] = "model"

    def end_pass(self) -> None:
        """One value per point per pass: a point this pass did not reach (a model whose path
        depends on its input or its step, as sparse attention's does) reads nan there."""
        self.passes += 1
        for series in self.out.series.values():
            series += [math.nan] * (self.passes - len(series))

    def record(self, name: str, value: torch.Tensor, extra_values: dict[str, float]) -> None:
        if name in self.last:  # called again in one pass (a shared module): its first call stands
            return
        out, value = self.out, value.detach().float()
        values = {"rms": _rms(value), "change": math.nan, "update": math.nan, **extra_values}
        if name not in self.first:
            self.first[name] = value
            out.order.append(name)
            if self.last and out.kinds.get(name) in ("stream", "model") and name not in out.previous:
                out.previous[name] = self.last[-1]  # what ran just before: a factor between is in a forward
        elif self.first[name].shape == value.shape:
            values["change"] = _rms(value - self.first[name])
        for measure in MEASURES:
            series = out.series.setdefault(f"{measure}:{name}", [math.nan] * self.passes)
            series.append(values.get(measure, math.nan))
        self.last.append(name)

    def module_hook(self, name: str, module: nn.Module, interceptor: Any) -> Callable[..., None]:
        is_logits, owns = isinstance(module, AttentionLogits), _owns_parameters(module)

        def hook(mod: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            out_t = _first_tensor(output)
            if out_t is None:
                return
            values = {"input": _input_rms(args, is_logits)}
            if is_logits:  # muP's scale is 1/d_head: scale * d_head stays fixed
                scale = args[2] if len(args) > 2 else kwargs["scale"]
                values["scale"] = float(scale) * args[0].shape[-1]
            if owns and name in self.first:  # the initial module on today's input: what the updates did
                with interceptor.pause():
                    before = _first_tensor(_planned_forward(self.initial[name], args, kwargs))
                values["update"] = _rms(out_t.detach().float() - before.detach().float())
            self.record(name, out_t, values)

        return hook

    def on_attention(self, call: AttentionCall) -> None:
        if call.module in self.inside:  # its own AttentionLogits hook point reports it
            return
        self.out.kinds[call.name] = "attention"
        self.out.functions[call.name] = call.function
        q, k = call.q.float(), call.k.float()
        values = {"input": _rms(q) * _rms(k), "scale": call.scale * call.d_head}
        self.record(call.name, logits(q, k, call.scale), values)

    def hooks(self) -> contextlib.AbstractContextManager[Any]:
        return _hooks(self.model, self.watched, self.streams, self.everything, self.module_hook, self.record,
                      self.on_attention)  # fmt: skip


@contextlib.contextmanager
def _hooks(model, watched, streams, output, module_hook, record, on_attention) -> Iterator[Any]:
    """Every point's hook, and attention interception, for one probe forward pass."""
    handles = []
    with intercept(model, on_attention, tensors=True) as interceptor:
        try:
            for name, module in watched.items():
                handles.append(
                    module.register_forward_hook(module_hook(name, module, interceptor), with_kwargs=True)
                )
            for name, module, where in streams:
                if where == "pre":
                    handles.append(module.register_forward_pre_hook(_pre_recorder(name, record)))
                else:
                    handles.append(module.register_forward_hook(_post_recorder(name, record)))
            if output:
                handles.append(model.register_forward_hook(_post_recorder(OUTPUT, record)))
            yield interceptor
        finally:
            for h in handles:
                h.remove()


def _pre_recorder(name: str, record):
    def hook(module, args):
        t = _first_tensor(args)
        if t is not None and t.is_floating_point():
            record(name, t, {})

    return hook


def _post_recorder(name: str, record):
    def hook(module, args, output):
        t = _first_tensor(output)
        if t is not None and t.is_floating_point():
            record(name, t, {})

    return hook


def _forward(model: nn.Module, x: torch.Tensor, data: Batches) -> Any:
    """The model on ``x``; an exception in user code becomes "the model failed on this data"."""
    try:
        return model(x)
    except (MutransferError, KeyboardInterrupt):
        raise
    except Exception as exc:
        name = getattr(data, "name", type(data).__name__)
        raise MutransferError(
            f"the model failed on this data: {name} gives inputs of shape {tuple(x.shape)} and dtype "
            f"{x.dtype}, and {type(model).__name__}.forward raised {type(exc).__name__}: {exc}. Fix: check "
            "that the data suits the model (text for a language model, images of the size it expects; "
            "--data / data=), that its dtype matches the model's, and that shape= sets the keywords it needs."
        ) from exc


def _loss(
    loss_fn: Callable[[Any, torch.Tensor], torch.Tensor], output: Any, target: torch.Tensor
) -> torch.Tensor:
    """The loss; one that cannot take this output names both shapes."""
    try:
        return loss_fn(output, target)
    except (MutransferError, KeyboardInterrupt):
        raise
    except Exception as exc:
        got = _first_tensor(output)
        shape = tuple(got.shape) if got is not None else type(output).__name__
        raise MutransferError(
            f"the loss failed on the model's output: output {shape}, targets {tuple(target.shape)}: "
            f"{type(exc).__name__}: {exc}. Fix: a loss= that takes this model's output, or data whose "
            "targets match it (classes (B,) for logits (B, classes); tokens (B, T) for (B, T, vocab))."
        ) from exc


def _stream_points(named: dict[str, nn.Module]) -> list[tuple[str, nn.Module, str]]:
    """The residual stream: each block's output and the first block's input, for every
    ``ModuleList``/``Sequential`` whose elements are blocks (modules holding no parameters of
    their own), outermost containers only."""
    points, seen = [], []
    for name, container in named.items():
        if not isinstance(container, nn.ModuleList | nn.Sequential) or not len(container):
            continue
        if any(name.startswith(f"{s}.") for s in seen):  # inside a block already watched
            continue
        blocks = [(f"{name}.{i}" if name else str(i), m) for i, m in enumerate(container)]
        if any(_owns_parameters(m) or not any(True for _ in m.parameters()) for _, m in blocks):
            continue
        seen.append(name)
        points.append((input_of(blocks[0][0]), blocks[0][1], "pre"))
        points += [(n, m, "post") for n, m in blocks]
    return points


def _watched(named: dict[str, nn.Module], patterns: Sequence[str] | None) -> dict[str, nn.Module]:
    named = {n: m for n, m in named.items() if n}
    if patterns is None:
        return {n: m for n, m in named.items() if isinstance(m, AttentionLogits) or _owns_parameters(m)}
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in named)]
    if unmatched:
        raise MutransferError(
            f"modules= patterns {unmatched} match no module. Modules are named like "
            f"{list(named)[:6]}. Fix: use fnmatch patterns over these names, e.g. 'blocks.*.attn.*'."
        )
    return {n: m for n, m in named.items() if any(fnmatch.fnmatchcase(n, p) for p in patterns)}


def _planned_forward(module: nn.Module, args: tuple, kwargs: dict) -> Any:
    """The module's forward with the plan's output hooks (u-muP's weight multipliers, a depth
    branch's factor) but not its pre-hooks: ``args`` already went through those."""
    out = module.forward(*args, **kwargs)
    for hook in module._forward_hooks.values():
        if isinstance(hook, ScaleOutput):
            out = hook(module, args, out)
    return out


def _owns_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def _first_tensor(value: Any) -> torch.Tensor | None:
    """A module's output: a tensor, a tuple's first, or a Hugging Face output's logits."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, tuple | list) and value:
        return _first_tensor(value[0])
    found = getattr(value, "logits", None)
    if isinstance(found, torch.Tensor):
        return found
    if hasattr(value, "to_tuple") and value.to_tuple():
        return _first_tensor(value.to_tuple()[0])
    return None


def _rms(t: torch.Tensor) -> float:
    return t.detach().float().pow(2).mean().sqrt().item()


def _input_rms(args: tuple, is_logits: bool) -> float:
    """RMS of the module's input; for attention logits the product of the q and k sizes."""
    tensors = [a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]
    if not tensors:
        return 1.0  # token ids or no tensor input: nothing upstream can grow
    return math.prod(_rms(t) for t in tensors[:2]) if is_logits else _rms(tensors[0])
