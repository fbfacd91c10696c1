"""Depth as data: which tensors sit in the repeated residual blocks, and where each branch ends.

A residual network ``h = h + a * F(h)`` is made deeper by repeating blocks. CompleteP (DESIGN.md
section 2) multiplies every branch by ``a = m_L**-alpha`` and rescales the blocks' learning rate
and eps. The plan needs two facts about the model for this, both read from its structure:

- the *blocks*: the tensors whose count grows with the depth keyword, found by building the
  model at two depths on the meta device (names with their numbers removed are counted);
- the *branch ends*: the modules whose output is added to the residual stream, declared by the
  user as name patterns, e.g. ``["blocks.*.attn.proj", "blocks.*.fc_proj"]``. A branch ending
  in a ``Linear`` or ``Conv`` absorbs ``a`` into its weight and bias (init and optimizer
  settings, no forward change); any other module gets a ``ScaleOutput`` forward hook.
"""

from __future__ import annotations

import fnmatch
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from torch import nn

from mutransfer.errors import MutransferError
from mutransfer.scaling.roles import canonical_name, is_conv1d
from mutransfer.scaling.rules import ALPHA_RANGE

__all__ = ["Depth", "check_depth_arguments", "find_depth"]

_NUMBER = re.compile(r"\d+")
_ABSORBING = (nn.Linear, nn.modules.conv._ConvNd)  # and transformers' Conv1D (GPT-2)


@dataclass(frozen=True)
class Depth:
    """How the plan scales depth: ``key`` (the factory keyword) goes from ``base`` to ``target``
    blocks. ``blocks`` names every tensor inside a repeated block; ``branch_ends`` the tensors
    that absorb the branch multiplier; ``hooked`` the modules whose output is multiplied instead;
    ``roots`` the blocks (children of a ModuleList or Sequential that grows with depth)."""

    key: str
    base: int
    target: int
    alpha: float
    residual: tuple[str, ...]
    blocks: tuple[str, ...]
    branch_ends: tuple[str, ...] = ()
    hooked: tuple[str, ...] = ()
    roots: tuple[str, ...] = ()  # the block modules themselves, e.g. blocks.0 .. blocks.7

    def place(self, name: str) -> str:
        """``"branch end"``, ``"block"`` or ``""`` (outside the blocks) for a parameter name."""
        ends, blocks = self._sets
        return "branch end" if name in ends else "block" if name in blocks else ""

    @cached_property
    def _sets(self) -> tuple[frozenset[str], frozenset[str]]:  # membership tests on big models
        return frozenset(self.branch_ends), frozenset(self.blocks)

    @property
    def multiplier(self) -> float:
        """``m_L``: target blocks over base blocks."""
        return self.target / self.base

    @property
    def branch_multiplier(self) -> float:
        """``a = m_L**-alpha``, the factor on every residual branch's output."""
        return self.multiplier**-self.alpha

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "base": self.base,
            "target": self.target,
            "alpha": self.alpha,
            "residual": list(self.residual),
            "blocks": list(self.blocks),
            "branch_ends": list(self.branch_ends),
            "hooked": list(self.hooked),
            "roots": list(self.roots),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Depth:
        return cls(
            key=data["key"],
            base=int(data["base"]),
            target=int(data["target"]),
            alpha=float(data["alpha"]),
            residual=tuple(data["residual"]),
            blocks=tuple(data["blocks"]),
            branch_ends=tuple(data["branch_ends"]),
            hooked=tuple(data["hooked"]),
            roots=tuple(data.get("roots", ())),
        )


def check_depth_arguments(key: str, base: Mapping[str, Any], target: Mapping[str, Any], alpha: float) -> None:
    """Fail early, naming the fix, on a depth keyword or alpha the plan cannot use."""
    for label, shape in (("base", base), ("target", target)):
        value = shape.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise MutransferError(
                f"depth={key!r}: the {label} shape must give {key!r} as a positive number of blocks, "
                f"got {value!r}. Fix: e.g. base={{..., {key!r}: 2}}, target={{..., {key!r}: 8}}."
            )
    low, high = ALPHA_RANGE
    if not low <= alpha <= high:
        raise MutransferError(
            f"alpha must lie in [{low}, {high}] (1: CompleteP, 0.5: Depth-muP), got {alpha}."
        )


def find_depth(
    shallow: nn.Module,
    deep: nn.Module,
    *,
    key: str,
    base: int,
    target: int,
    alpha: float,
    residual: Sequence[str],
) -> Depth:
    """Read the blocks and branch ends of ``deep`` (the model at target depth), comparing it with
    ``shallow`` (the same model at another depth)."""
    if isinstance(residual, str):
        residual = [residual]
    if not residual:
        raise MutransferError(
            "depth scaling needs the residual branches: pass residual= with a name pattern for the "
            "last module of each branch, e.g. residual=['blocks.*.attn.proj', 'blocks.*.fc_proj']."
        )
    counts = [Counter(_template(canonical_name(n)) for n, _ in m.named_parameters()) for m in (shallow, deep)]
    repeated = {t for t in counts[1] if counts[1][t] != counts[0].get(t, 0)}
    names = [canonical_name(n) for n, _ in deep.named_parameters()]
    blocks = tuple(n for n in names if _template(n) in repeated)
    if not blocks:
        raise MutransferError(
            f"no parameter is repeated with {key!r}: the models at {key}={base} and {key}={target} have "
            f"the same parameters. Fix: pass depth= the keyword that sets the number of residual blocks."
        )
    modules = {canonical_name(n): m for n, m in deep.named_modules() if n}
    roots = _block_roots(shallow, deep)
    branch_ends: list[str] = []
    hooked: list[str] = []
    matched: list[str] = []
    for pattern in residual:
        hits = [n for n in modules if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise MutransferError(
                f"residual pattern {pattern!r} matches no module. Modules are named like "
                f"{_examples(modules)}; a pattern names the last module of a residual branch, "
                "e.g. 'blocks.*.attn.proj' (fnmatch: '*' matches dots too)."
            )
        for name in hits:
            if name in roots:
                raise MutransferError(
                    f"residual pattern {pattern!r} matches the whole block {name!r}; scaling it would scale "
                    "the residual stream too. Fix: name each branch's last module inside the block."
                )
            nested = [m for m in matched if m.startswith(name + ".") or name.startswith(m + ".")]
            if nested:
                raise MutransferError(
                    f"residual patterns match both {name!r} and {nested[0]!r}, one inside the other: that "
                    "branch would be scaled twice. Fix: name only the branch's last module."
                )
            matched.append(name)
            own = [f"{name}.{p}" for p, _ in modules[name].named_parameters(recurse=False)]
            if any(n not in blocks for n in own) or not _inside(name, blocks):
                raise MutransferError(
                    f"residual pattern {pattern!r} matches {name!r}, which is not inside a block repeated "
                    f"with {key!r}. Fix: name modules inside the blocks, like {_examples(modules, blocks)}."
                )
            if isinstance(modules[name], _ABSORBING) or is_conv1d(modules[name]):
                branch_ends += [n for n in own if n not in branch_ends]
            elif name not in hooked:
                hooked.append(name)
    _check_every_block_has_a_branch(roots, branch_ends, hooked)
    return Depth(
        key,
        base,
        target,
        float(alpha),
        tuple(residual),
        blocks,
        tuple(branch_ends),
        tuple(hooked),
        tuple(roots),
    )


def _template(name: str) -> str:
    return _NUMBER.sub("#", name)


def _inside(module: str, blocks: Sequence[str]) -> bool:
    return any(b.startswith(module + ".") for b in blocks)


def _block_roots(shallow: nn.Module, deep: nn.Module) -> list[str]:
    """Names of the repeated blocks: the children of every ModuleList/Sequential whose length
    changes with depth (empty for a model that numbers its blocks some other way)."""
    containers = (nn.ModuleList, nn.Sequential)
    before = {canonical_name(n): len(m) for n, m in shallow.named_modules() if isinstance(m, containers)}
    roots = []
    for n, m in deep.named_modules():
        name = canonical_name(n)
        if isinstance(m, containers) and name in before and len(m) != before[name]:
            roots += [f"{name}.{i}" if name else str(i) for i in range(len(m))]
    return roots


def _check_every_block_has_a_branch(roots: Sequence[str], branch_ends: Sequence[str], hooked: Sequence[str]):
    ends = [*branch_ends, *hooked]
    bare = [r for r in roots if not any(e.startswith(r + ".") for e in ends)]
    if bare:
        raise MutransferError(
            f"blocks {bare[:3]} have no residual branch among the residual= patterns: their branches would "
            "keep a multiplier of 1 and grow with depth. Fix: add a pattern for every branch's last module."
        )


def _examples(modules: Mapping[str, nn.Module], within: Sequence[str] = ()) -> list[str]:
    names = [n for n in modules if not within or _inside(n, within)]
    return names[:6]
