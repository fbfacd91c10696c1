"""The plan as text: a table of every parameter and what the plan does beyond it.

``plan`` is a ``Plan``; it is not imported here, so this room stays below plan.py (which calls
``describe`` for ``Plan.summary``)."""

from __future__ import annotations

import re
from typing import Any

from mutransfer.scaling.roles import Role
from mutransfer.scaling.rules import muon_takes, unit_rule
from mutransfer.scaling.unit_plan import folded
from mutransfer.text import table

__all__ = ["describe"]

_INDEX = re.compile(r"(?<![^.])\d+(?![^.])")  # a whole numeric name segment: the 3 in blocks.3.fc


def describe(plan: Any, optimizer_family: str = "adam") -> str:
    """A table of every parameter: shapes, role, fan multipliers, init and optimizer factors.

    Tensors that differ only by a block number and share every factor take one row, e.g.
    ``blocks.{0..7}.attn.qkv.weight``."""
    if plan.parametrization == "u-mup":
        return _describe_unit(plan)
    head = ["parameter", "base -> target", "role", "m_in", "m_out", "init x", "lr x", "eps x"]
    if plan.depth is not None:
        head.insert(3, "depth")
    rows = []
    for p in plan.params:
        _, mult = plan.factors(p, optimizer_family)
        init = plan.init_factor(p)
        names = p.name + "".join(f" = {a}" for a in p.aliases)
        shapes = f"{_shape(p.base_shape)} -> {_shape(p.target_shape)}"
        eps = "-" if mult.eps is None else f"{mult.eps:.4g}"
        role = p.role.value + (" (muon)" if optimizer_family == "muon" and muon_takes(p) else "")
        row = [names, shapes, role, f"{p.m_in:g}", f"{p.m_out:g}", f"{init:.4g}", f"{mult.lr:.4g}", eps]
        if plan.depth is not None:
            row.insert(3, plan.depth.place(p.name))
        rows.append(row)
    rows = _merge_repeated(rows)
    lines = [
        f"muP plan: width x{plan.width_multiplier:g} ({dict(plan.base)} -> "
        f"{dict(plan.target)}), optimizer family '{optimizer_family}'"
    ]
    lines += table([head, *rows], rule=True)
    counts = {r.value: sum(p.role is r for p in plan.params) for r in Role}
    lines.append("roles: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v))
    law = plan.init_law
    if law == "measured":
        found = sorted(set(plan.init_laws.values()) - {"zero"})
        law = f"measured per tensor ({', '.join(found) or 'nothing to measure'})"
    lines.append(f"init law: {law}; 'init x' is what init_ multiplies your init by")
    for name in plan.tied_readouts:
        lines.append(f"tied readout input scaled by 1/{plan._readout_multiplier(name):g}: {name}")
    lines += _attention_lines(plan)
    if plan.depth is not None:
        d = plan.depth
        lines.append(
            f"depth: {d.key} {d.base} -> {d.target} blocks (m_L {d.multiplier:g}), alpha {d.alpha:g}: "
            f"branch multiplier {d.branch_multiplier:.4g}, absorbed into the branch ends"
            + (f"; output hooks on {', '.join(d.hooked)}" if d.hooked else "")
        )
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)


def _describe_unit(plan: Any) -> str:
    """u-muP's table: absolute init std, the forward multiplier (hooked or folded), LR and eps."""
    head = ["parameter", "shape", "role", "init std", "multiplier", "lr x", "eps x"]
    rows, lost = [], set(folded(plan.params))
    for p in plan.params:
        rule = unit_rule(p)
        init = "as built" if rule.init is None else f"{rule.init:.4g}"
        if rule.init is None and p.name.endswith("bias"):
            init = "0"
        how = "hook" if rule.hooked else ("folded" if p.name in lost else "")
        forward = "1" if not how else f"{rule.forward:.4g} ({how})"
        names = p.name + "".join(f" = {a}" for a in p.aliases)
        rows.append(
            [names, _shape(p.target_shape), p.role.value, init, forward, f"{rule.lr:.4g}", f"{rule.eps:.4g}"]
        )
    lines = [f"u-muP plan at {dict(plan.target)} (no base shape), optimizer family 'adam'"]
    lines += table([head, *_merge_repeated(rows)], rule=True)
    for name in plan.tied_readouts:
        lines.append(f"tied readout input scaled by 1/fan_in: {name}")
    lines += _attention_lines(plan)
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)


def _attention_lines(plan: Any) -> list[str]:
    if plan.attention is None:
        return []
    if not plan.attention:
        return ["attention: none found in one forward pass"]
    lines = []
    for site in plan.attention:
        if site.is_mup:
            verdict = "muP" if site.law == "1/d_head" else "nothing to scale"
        elif site.fix == "query":
            verdict = f"made 1/d_head by attach_: queries x{site.factor:.4g}"
        elif site.fix:
            way = "x" if site.fix[0] == "*" else "/"
            verdict = f"made 1/d_head by attach_: its attribute {site.fix[1:]} {way}{site.factor:.4g}"
        else:
            verdict = "NOT muP. Fix: " + site.fix_text()
        lines.append(f"attention {site.describe()}; {verdict}")
    return [row[0] for row in _merge_repeated([[line] for line in lines])]  # blocks.{0..7}.attn


def _merge_repeated(rows: list[list[str]]) -> list[list[str]]:
    """One row per name pattern (index segments -> ``{first..last}``) whose other columns agree."""
    merged: dict[tuple[str, ...], list] = {}
    for row in rows:
        numbers = _INDEX.findall(row[0])
        key = (_INDEX.sub("#", row[0]), len(numbers), *row[1:])
        merged.setdefault(key, [row, []])[1].append(numbers)
    out = []
    for (_, _, *rest), (first, numbers) in merged.items():
        if len(numbers) == 1:
            out.append(first)
            continue
        varying = [i for i in range(len(numbers[0])) if len({n[i] for n in numbers}) > 1]
        parts = iter(_INDEX.split(first[0]))
        name = next(parts)
        for i, part in enumerate(parts):
            column = sorted({int(n[i]) for n in numbers})
            name += f"{{{column[0]}..{column[-1]}}}" if i in varying else numbers[0][i]
            name += part
        out.append([name, *rest])
    return out


def _shape(s: tuple[int, ...]) -> str:
    return "x".join(map(str, s)) or "scalar"
