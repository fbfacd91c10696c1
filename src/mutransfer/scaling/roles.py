"""Classify every parameter of a model by how its dimensions grow with width.

A parameter's *role* follows from which of its fan dimensions grow between the base and
the target shape (Tensor Programs V, section 2 of DESIGN.md):

- ``input``:  fan_in fixed, fan_out scales (embeddings, first layer, raw one-dimension-scaling tensors)
- ``hidden``: fan_in and fan_out scale
- ``output``: fan_in scales, fan_out fixed (readout / lm head, classifier)
- ``vector``: a 1-D tensor whose one dimension scales (biases, norm gains)
- ``fixed``:  nothing scales; left exactly as the user has it

Shapes come from the factory run on the meta device: no memory, no compute.
"""

from __future__ import annotations

import enum
import fnmatch
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from torch import nn

from mutransfer.errors import MutransferError

__all__ = [
    "ParamRole",
    "Role",
    "canonical_name",
    "infer_roles",
    "is_conv1d",
    "mark_linear",
    "match_patterns",
    "parameter_layout",
    "tied_readouts",
    "unwrap",
    "width_multiplier",
]

# Segments that wrappers insert into parameter names (DDP / DataParallel, torch.compile,
# FSDP1, activation checkpointing). A plan speaks of the unwrapped names.
_WRAPPER_SEGMENTS = ("module", "_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module")


class Role(str, enum.Enum):
    INPUT = "input"
    HIDDEN = "hidden"
    OUTPUT = "output"
    VECTOR = "vector"
    FIXED = "fixed"


@dataclass(frozen=True)
class ParamRole:
    """How one parameter tensor scales between the base and the target shape.

    ``m_in``/``m_out`` are target fan over base fan (1.0 when that fan does not scale).
    ``aliases`` lists further names of the same tensor (tied weights).
    """

    name: str
    role: Role
    base_shape: tuple[int, ...]
    target_shape: tuple[int, ...]
    m_in: float = 1.0
    m_out: float = 1.0
    layer: str = "raw"
    aliases: tuple[str, ...] = field(default=())

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


@dataclass(frozen=True)
class _Use:
    """One place a tensor is registered: the owning layer kind and its (fan_out, fan_in) dims."""

    name: str
    layer: str
    fan_out_dim: int | None
    fan_in_dim: int | None
    known_layer: bool


def canonical_name(name: str) -> str:
    """Drop the segments that DDP, torch.compile, FSDP and checkpoint wrappers add to names."""
    parts = [p for p in name.split(".") if p not in _WRAPPER_SEGMENTS]
    return ".".join(parts)


def is_conv1d(module: nn.Module) -> bool:
    """GPT-2's ``transformers`` Conv1D: a linear layer whose weight is stored (in, out). Checked
    without importing transformers: a model holding one has imported it already."""
    pytorch_utils = sys.modules.get("transformers.pytorch_utils")
    return pytorch_utils is not None and isinstance(module, pytorch_utils.Conv1D)


def _use_of(module: nn.Module, local: str, name: str, ndim: int) -> _Use:
    layer = type(module).__name__
    if is_conv1d(module) and local == "weight":
        return _Use(name, layer, 1, 0, True)  # (in, out)
    if isinstance(module, nn.Embedding | nn.EmbeddingBag) and local == "weight":
        return _Use(name, layer, 1, 0, True)  # (num_embeddings=in, embedding_dim=out)
    if isinstance(module, nn.modules.conv._ConvNd) and local == "weight":
        # (out, in/groups, *kernel), transposed convs store (in, out/groups, *kernel)
        return _Use(name, layer, *((1, 0) if module.transposed else (0, 1)), True)
    if isinstance(module, nn.Linear) and local == "weight":
        return _Use(name, layer, 0, 1, True)
    if ndim >= 2:  # registered directly: PyTorch's (out, in, *receptive) convention
        return _Use(name, layer, 0, 1, False)
    return _Use(name, layer, None, None, False)


def parameter_layout(model: nn.Module) -> dict[str, tuple[tuple[int, ...], list[_Use]]]:
    """Map each tensor's canonical name to its shape and every place it is registered.

    Tied tensors appear once, under their first name, with one use per name.
    """
    by_tensor: dict[int, tuple[str, tuple[int, ...], list[_Use]]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        cname = canonical_name(name)
        owner_path, _, local = name.rpartition(".")
        use = _use_of(model.get_submodule(owner_path), local, cname, param.dim())
        entry = by_tensor.setdefault(id(param), (cname, tuple(param.shape), []))
        entry[2].append(use)
    return {cname: (shape, uses) for cname, shape, uses in by_tensor.values()}


def mark_linear(layout: Mapping[str, tuple[tuple[int, ...], list[_Use]]], names: set[str]) -> dict:
    """``layout`` with the 2-D tensors a forward pass used as ``F.linear`` weights read as
    (out, in): a router or readout registered as a raw parameter is then an output, not an
    embedding (the reading a raw tensor gets by default)."""
    out = dict(layout)
    for name in names & set(layout):
        shape, uses = layout[name]
        if len(shape) == 2:
            out[name] = (shape, [replace(u, fan_out_dim=0, fan_in_dim=1, known_layer=True) for u in uses])
    return out


def _width_multiplier(ratios: Iterable[tuple[str, int, float]]) -> float:
    """The factor most scaling dimensions grow by: the model's width multiplier.

    A dimension may grow at its own ratio (a Mamba conv's ``d_inner + 2 * d_state``, an FFN
    sized ``8/3 * width`` and rounded): muP's rules are per fan, so it takes its own multiplier.
    Only a dimension that moves against the width (shrinks while the width grows) is an error.
    """
    ratios = list(ratios)
    if not ratios:
        return 1.0
    counts = Counter(round(r, 9) for _, _, r in ratios)
    m, _ = counts.most_common(1)[0]
    against = [(n, d, r) for n, d, r in ratios if (r - 1) * (m - 1) < 0]
    if against:
        name, dim, r = against[0]
        raise MutransferError(
            f"dimension {dim} of parameter '{name}' scales by {r:g} while the width scales by {m:g}: it "
            "moves against the width. Fix: make every dimension that changes grow with the width (keep "
            "head size or head count fixed, and size the FFN from the width)."
        )
    return float(m)


def width_multiplier(base: Mapping, target: Mapping) -> float:
    """The width multiplier between two layouts: the ratio most growing dimensions share."""
    ratios = [
        (name, d, t / b)
        for name, (bshape, _) in base.items()
        if name in target and len(target[name][0]) == len(bshape)
        for d, (b, t) in enumerate(zip(bshape, target[name][0], strict=True))
        if b != t
    ]
    return _width_multiplier(ratios)


def infer_roles(
    base: Mapping[str, tuple[tuple[int, ...], list[_Use]]],
    target: Mapping[str, tuple[tuple[int, ...], list[_Use]]],
    probe: Mapping[str, tuple[tuple[int, ...], list[_Use]]] | None = None,
    overrides: Mapping[str, Role] | None = None,
) -> tuple[float, list[ParamRole]]:
    """Return the width multiplier and one ``ParamRole`` per tensor.

    ``probe`` (a third shape whose width differs from base) decides which dimensions scale
    when base and target are the same shape; multipliers always come from base -> target.
    """
    _check_same_names(base, target, "base", "target")
    scaling_ref = target
    if probe is not None:
        _check_same_names(base, probe, "base", "probe")
        scaling_ref = probe
    overrides = dict(overrides or {})

    scaling: dict[str, list[int]] = {}
    ratios, probe_ratios = [], []
    for name, (bshape, _) in base.items():
        tshape, rshape = target[name][0], scaling_ref[name][0]
        for shape, label in ((tshape, "target"), (rshape, "probe")):
            if len(shape) != len(bshape):
                raise MutransferError(
                    f"parameter '{name}' has {len(bshape)} dimensions at base shape and {len(shape)} at "
                    f"{label} shape. Fix: a shape keyword must change sizes, not the structure."
                )
        scaling[name] = [d for d, (b, r) in enumerate(zip(bshape, rshape, strict=True)) if b != r]
        ratios += [(name, d, tshape[d] / bshape[d]) for d in scaling[name] if tshape[d] != bshape[d]]
        probe_ratios += [(name, d, rshape[d] / bshape[d]) for d in scaling[name]]
    _width_multiplier(probe_ratios)  # one factor for all growing dims, also at the probe
    m = _width_multiplier(ratios)
    if not any(scaling.values()):
        raise MutransferError(
            "no parameter changes shape between the base and the target: nothing scales. "
            "Fix: pass shape keywords that change the width (e.g. base={'width': 64}, "
            "target={'width': 1024}), or a probe shape when base and target are equal."
        )

    roles = []
    for name, (bshape, uses) in base.items():
        role = overrides.get(name) or _classify(name, bshape, uses, scaling[name])
        grown = [t / b for t, b in zip(target[name][0], bshape, strict=True)]
        m_in, m_out = _fan_multipliers(role, grown, uses)
        layer = "+".join(dict.fromkeys(u.layer for u in uses))
        roles.append(
            ParamRole(
                name=name,
                role=role,
                base_shape=bshape,
                target_shape=target[name][0],
                m_in=m_in,
                m_out=m_out,
                layer=layer,
                aliases=tuple(u.name for u in uses[1:]),
            )
        )
    return m, roles


def tied_readouts(
    base: Mapping[str, tuple[tuple[int, ...], list[_Use]]],
    target: Mapping[str, tuple[tuple[int, ...], list[_Use]]],
    roles: Iterable[ParamRole],
) -> list[str]:
    """Modules that read out through a tensor the plan treats as an input embedding.

    Their input needs the ``1/m`` forward multiplier (see ``forward.py``).
    """
    modules = []
    for p in roles:
        if p.role is not Role.INPUT or not p.aliases:
            continue
        shape, uses = base[p.name]
        scaling = [d for d, (b, t) in enumerate(zip(shape, target[p.name][0], strict=True)) if b != t]
        modules += [
            u.name.rpartition(".")[0]
            for u in uses
            if u.known_layer and _classify_use(shape, u, scaling) is Role.OUTPUT
        ]
    return modules


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DDP / torch.compile / FSDP1 wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "_fsdp_wrapped_module", None)
        if inner is None and isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            inner = model.module
        if inner is None:
            return model
        model = inner


def _check_same_names(a: Mapping, b: Mapping, la: str, lb: str) -> None:
    if set(a) == set(b):
        return
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    raise MutransferError(
        f"parameter names differ between the {la} and the {lb} shape: only at {la}: {only_a[:5]}, "
        f"only at {lb}: {only_b[:5]}. Fix: pass only width keywords as shape; a keyword that adds or "
        "removes layers must be the same in both shapes, unless it counts residual blocks: then name "
        "it with depth= (and the branches with residual=)."
    )


def _fan_multipliers(role: Role, grown: list[float], uses: list[_Use]) -> tuple[float, float]:
    """(m_in, m_out) of a tensor: how much its fan-in and fan-out dimensions grow, base to target.
    Each fan takes its own ratio (1 where it does not scale)."""
    moved = [r for r in grown if r != 1.0]
    if role is Role.FIXED or not moved:
        return 1.0, 1.0
    if role is not Role.HIDDEN:  # one fan scales: the growing dimension's ratio
        return (moved[0], 1.0) if role is Role.OUTPUT else (1.0, moved[0])
    use = next((u for u in uses if u.known_layer), uses[0])
    out_dim = 0 if use.fan_out_dim is None else use.fan_out_dim
    in_dim = 1 if use.fan_in_dim is None else use.fan_in_dim
    return grown[in_dim], grown[out_dim]


def _classify(name: str, shape: tuple[int, ...], uses: list[_Use], scaling: list[int]) -> Role:
    """Role of one tensor from the dimensions that scale."""
    if not scaling:
        return Role.FIXED
    for use in uses:
        _check_no_kernel_scaling(name, shape, use, scaling)
    if len(scaling) > 2:
        raise MutransferError(
            f"parameter '{name}' (shape {shape}) has {len(scaling)} dimensions that scale with width "
            f"(dims {scaling}); muP defines fan-in and fan-out only. Fix: keep all but two of them "
            "fixed, or reshape the tensor into (fan_out, fan_in)."
        )
    if len(shape) == 1:
        return Role.VECTOR
    roles = {_classify_use(shape, use, scaling) for use in uses}
    if roles == {Role.INPUT, Role.OUTPUT}:  # tied embedding + readout: embedding rules, readout hook
        return Role.INPUT
    if len(roles) > 1:
        raise MutransferError(
            f"tensor '{name}' is used as {sorted(r.value for r in roles)} under its names "
            f"{[u.name for u in uses]}; a tied tensor must be an embedding and a readout, nothing else. "
            "Fix: untie it, or give it one role with overrides={name: 'input'|'hidden'|'output'}."
        )
    return roles.pop()


def _classify_use(shape: tuple[int, ...], use: _Use, scaling: list[int]) -> Role:
    if not use.known_layer:
        # Registered directly: one scaling dim reads as an embedding-like tensor (positional
        # embeddings, class tokens); two as hidden. A raw readout needs an override.
        return Role.HIDDEN if len(scaling) == 2 else Role.INPUT
    fan_in, fan_out = use.fan_in_dim in scaling, use.fan_out_dim in scaling
    if fan_in and fan_out:
        return Role.HIDDEN
    return Role.OUTPUT if fan_in else Role.INPUT


def _check_no_kernel_scaling(name: str, shape: tuple[int, ...], use: _Use, scaling: list[int]) -> None:
    if not use.known_layer:
        return
    kernel = [d for d in scaling if d not in (use.fan_out_dim, use.fan_in_dim)]
    if kernel:
        raise MutransferError(
            f"dimension {kernel[0]} of '{name}' (shape {shape}, a {use.layer} weight) scales with "
            "width, but it is a kernel dimension, neither fan-in nor fan-out. Fix: keep kernel "
            "sizes fixed across shapes."
        )


def match_patterns(patterns: Iterable[str], names: list[str], what: str) -> set[str]:
    matched: set[str] = set()
    for pattern in patterns:
        hits = {n for n in names if fnmatch.fnmatchcase(n, pattern)}
        if not hits:
            raise MutransferError(
                f"{what} pattern {pattern!r} matches no parameter. Parameter names look like "
                f"{names[:4]}; patterns use fnmatch ('*' matches dots too)."
            )
        matched |= hits
    return matched
