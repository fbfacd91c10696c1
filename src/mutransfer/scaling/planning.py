"""Making a plan: shapes on the meta device, the init law measured, the attention found.

    >>> import mutransfer
    >>> from mutransfer.models import GPT
    >>> plan = mutransfer.plan(GPT, base={"width": 64}, target={"width": 1024})
    >>> plan.init_law, plan["blocks.0.fc.weight"].role.value
    ('measured', 'hidden')

Three readings, each of what the factory actually does rather than what it might declare:

1. roles: the factory built at base and target shape on the meta device (``roles.py``);
2. the init law: built at two small shapes on the CPU (``init_law.py``), unless the caller or
   the factory (its ``init_law`` attribute) says which;
3. the attention: one forward pass of an example input through both meta models under
   interception (``attention.py``). Without an example the plan guesses one only for a model
   whose first layer is an embedding (token ids) or a linear layer; ``nn.MultiheadAttention``
   needs no forward pass.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from mutransfer.errors import MutransferError, MutransferWarning
from mutransfer.factory import construct
from mutransfer.scaling.attention import AttentionSite
from mutransfer.scaling.depth import check_depth_arguments, find_depth
from mutransfer.scaling.init_law import check_init_law, check_measured, measure
from mutransfer.scaling.intercept import calls, extrapolate, pair, static_sites
from mutransfer.scaling.plan import Plan
from mutransfer.scaling.roles import (
    Role,
    canonical_name,
    infer_roles,
    mark_linear,
    match_patterns,
    parameter_layout,
    tied_readouts,
    width_multiplier,
)
from mutransfer.scaling.unit_plan import folded

__all__ = ["BIASES", "init_law_of", "plan", "plan_from_model"]

# How init_ treats biases, recorded in grids' and sweeps' protocols: results trained before biases
# were held Theta(1) (2026-12-05) are not resumed as if they had been.
BIASES = "Theta(1)"
_INDEX = re.compile(r"(?<![^.])\d+(?![^.])")  # a whole numeric name segment: the 3 in blocks.3.fc
_EXAMPLE_TOKENS = 8  # the guessed example: this many token ids, within any position table


def plan(
    make_model: Callable[..., nn.Module],
    *,
    base: Mapping[str, Any] | None = None,
    target: Mapping[str, Any],
    probe: Mapping[str, Any] | None = None,
    overrides: Mapping[str, str] | None = None,
    depth: str | None = None,
    residual: Sequence[str] = (),
    alpha: float = 1.0,
    init_law: str | None = None,
    example: Any = None,
    fix_attention: bool = True,
    parametrization: str = "mup",
) -> Plan:
    """Build the muP plan for ``make_model`` between two shapes.

    ``base`` and ``target`` are keyword arguments of the factory (the width keywords that
    differ, plus any others it needs). When their widths are equal (planning at the base
    itself, or depth only) a ``probe`` shape tells which dimensions scale; when ``base`` has a
    single integer width keyword the default probe doubles it. ``overrides`` maps name patterns
    to a role for tensors the inference cannot read, e.g. a readout registered as a raw parameter.

    ``init_law`` says how the factory's own init scales with width: ``"fan_in"`` (PyTorch's
    layers), ``"constant"`` (transformers' ``initializer_range``), or ``None``: the factory's
    ``init_law`` attribute if it has one, else measured per tensor. ``example`` is an input the
    model takes (a tensor, a tuple of positional inputs, or a dict of keyword inputs; any size
    will do, it only runs on meta) so the plan can see the attention; ``fix_attention=False``
    leaves an ``nn.MultiheadAttention`` or a ``scaling`` attribute as it is (and warns).

    ``depth`` names the keyword that sets the number of residual blocks; ``residual`` lists
    name patterns of each branch's last module (``GPT.residual`` for the reference GPT) and
    ``alpha`` picks the CompleteP family member: 1 is CompleteP, 0.5 Depth-muP.

    ``parametrization="u-mup"``: u-muP's rules (``mutransfer.unit``; Adam, width only), which need
    no base shape: ``base`` may be left out (the probe then tells the roles).
    """
    if parametrization not in ("mup", "u-mup"):
        raise MutransferError(
            f"parametrization must be 'mup' or 'u-mup' for a plan, got {parametrization!r}."
        )
    if base is None:
        if parametrization == "mup":
            raise MutransferError("base: required for muP (the shape where muP equals your model as built).")
        try:  # u-muP has no base; a second width tells the roles
            base = probe if probe is not None else _default_probe(dict(target))
        except MutransferError:
            raise MutransferError(
                f"u-muP needs no base shape, but the plan must see a second width to tell which keywords "
                f"of {dict(target)} are widths. Fix: pass base= (any other width, e.g. half the target's) or "
                "probe=."
            ) from None
    if parametrization == "u-mup" and depth is not None:
        raise MutransferError("u-muP's depth rules are not implemented. Fix: plan over width, or use 'mup'.")
    base, target = dict(base), dict(target)
    declared = check_init_law(init_law or getattr(make_model, "init_law", "measured"))
    if depth is None:
        if residual:
            raise MutransferError("residual= needs depth=, the keyword that sets the number of blocks.")
        if probe is None and base == target:
            probe = _default_probe(base)
        wide_base, measured_at = base, _small_pair(base, probe or target)
        models = [construct(make_model, s) for s in (base, target)]
    else:
        check_depth_arguments(depth, base, target, alpha)
        wide_base = {**base, depth: target[depth]}  # width roles compare two models of the target's depth
        if probe is not None:
            probe = {**probe, depth: target[depth]}
        elif wide_base == target:
            probe = {**_default_probe(base, exclude=depth), depth: target[depth]}
        measured_at = _small_pair(base, {**(probe or target), depth: base[depth]})  # at the base depth
        models = [construct(make_model, wide_base), construct(make_model, target)]
    found = None
    if depth is not None:  # the blocks first: their errors say more than a name mismatch would
        other_depth = base[depth] if base[depth] != target[depth] else target[depth] + 1
        shallow = construct(make_model, {**target, depth: other_depth})
        found = find_depth(
            shallow, models[1], key=depth, base=base[depth], target=target[depth], alpha=alpha,
            residual=residual,
        )  # fmt: skip
    layouts = [parameter_layout(m) for m in models]
    notes: list[str] = []
    linear: set[str] = set()  # raw tensors the forward pass uses as F.linear weights: (out, in)
    m = width_multiplier(layouts[0], layouts[1])
    sites = _find_attention(make_model, models, measured_at, m, example, notes, linear)
    layouts = [mark_linear(layout, linear) for layout in layouts]
    probe_layout = parameter_layout(construct(make_model, probe)) if probe is not None else None
    probe_layout = mark_linear(probe_layout, linear) if probe_layout is not None else None
    built = replace(_build(layouts[0], layouts[1], probe_layout, overrides, base, target), depth=found)
    laws: dict[str, str] = {}
    if declared == "measured" and parametrization == "mup":  # u-muP's init is absolute: no law to read
        declared, laws = _measure_init(make_model, measured_at, built, notes)
    if not fix_attention and sites:
        sites = tuple(replace(s, fix="") for s in sites)
    if parametrization == "u-mup":
        declared = "fan_in" if declared == "measured" else declared
        notes += _unit_notes(built, models[1])
    built = replace(built, init_law=declared, init_laws=laws, attention=sites, notes=tuple(notes),
                    parametrization=parametrization)  # fmt: skip
    _warn_attention(built)
    _warn_unseen(notes)
    return built


def _unit_notes(built: Plan, model: nn.Module) -> list[str]:
    """What u-muP could not do for this model, said in the plan (and warned)."""
    notes = []
    if not getattr(model, "unit_scaled", False):
        notes.append(
            "u-muP: the plan unit-scales the weights only; this model's nonlinearities, residual adds, "
            "attention output and loss input are not unit-scaled (it has no unit_scaled = True), so "
            "its activations and gradients will not start at scale 1 and an FP8 cast may lose them. Fix: "
            "call mutransfer.unit's functions in its forward pass (see docs/unit-scaling.md)"
        )
    lost = folded(built.params)
    if lost:
        notes.append(
            f"u-muP: {len(lost)} tensor(s) not in a Linear, Conv or Embedding layer ({', '.join(lost[:4])}"
            f"{' ...' if len(lost) > 4 else ''}): their multiplier is folded into init and LR (trains the "
            "same under Adam, but those weights are not at unit scale)"
        )
    for message in notes:
        warnings.warn(message, MutransferWarning, stacklevel=4)
    return notes


def _warn_unseen(notes: list[str]) -> None:
    """Loudly: a plan that could not look at the attention cannot say it is muP."""
    for note in notes:
        if note.startswith("attention not inspected"):
            warnings.warn(
                f"{note}. A 1/sqrt(d_head) attention would stay as it is; run mutransfer.coord_check, or "
                "pass example= to mutransfer.plan.",
                MutransferWarning,
                stacklevel=3,
            )


def plan_from_model(
    model: nn.Module,
    *,
    base_dims: Mapping[int, int] | None = None,
    base_shapes: Mapping[str, Sequence[int]] | None = None,
    overrides: Mapping[str, str] | None = None,
    init_law: str = "fan_in",
) -> Plan:
    """Plan for an already-built model (frameworks, checkpoints), given its base description.

    Give exactly one of ``base_dims`` (target size -> base size for each dimension size that
    scales, e.g. ``{4096: 256, 11008: 688}``) or ``base_shapes`` (parameter name -> base shape).
    With no factory nothing is measured: ``init_law`` says how the model's init scales.
    """
    if (base_dims is None) == (base_shapes is None):
        raise MutransferError("plan_from_model needs exactly one of base_dims= or base_shapes=.")
    target_layout = parameter_layout(model)
    if base_shapes is not None:
        shapes = {canonical_name(k): tuple(v) for k, v in base_shapes.items()}
        missing = sorted(set(target_layout) - set(shapes))
        if missing:
            raise MutransferError(f"base_shapes lacks {missing[:5]}; give a base shape for every parameter.")
    else:
        dims = dict(base_dims)
        shapes = {n: tuple(dims.get(d, d) for d in s) for n, (s, _) in target_layout.items()}
    base_layout = {n: (shapes[n], uses) for n, (_, uses) in target_layout.items()}
    built = _build(
        base_layout,
        target_layout,
        None,
        overrides,
        {"dims": {str(k): v for k, v in (base_dims or {}).items()}},
        {},
    )
    law = check_init_law(init_law)
    if law == "measured":
        raise MutransferError(
            "plan_from_model has no factory to measure the init with: pass 'fan_in' or 'constant'."
        )
    sites = static_sites(model, model) or None
    return replace(built, init_law=law, attention=sites)


def init_law_of(make_model: Callable[..., nn.Module]) -> str:
    """How a factory's init scales with width, as a plan of it will say: its ``init_law``
    attribute (``mutransfer.hf`` factories say ``"constant"``), else ``"measured"``."""
    return check_init_law(getattr(make_model, "init_law", "measured"))


def _default_probe(base: dict[str, Any], exclude: str | None = None) -> dict[str, Any]:
    ints = [k for k, v in base.items() if isinstance(v, int) and not isinstance(v, bool) and k != exclude]
    if len(ints) != 1:
        raise MutransferError(
            f"base and target are the same shape {base}, so the plan cannot tell which keywords are "
            f"widths (integer keywords: {ints}). Fix: pass probe= with the width keywords changed, "
            f"e.g. probe={{**base, {ints[0] if ints else 'width'!r}: 2 * base[...]}}."
        )
    return {**base, ints[0]: 2 * base[ints[0]]}


def _small_pair(base: dict[str, Any], other: Mapping[str, Any]) -> tuple[dict, dict]:
    """Two shapes to measure the init law on: the base, and the base with each integer keyword that
    grows toward ``other`` multiplied by 4 (or 2, or ``other`` itself when it is nearer)."""
    grows = {k: v for k, v in other.items() if _is_int(v) and _is_int(base.get(k)) and v > base[k]}
    for factor in (4, 2):
        if grows and all(v >= factor * base[k] for k, v in grows.items()):
            return base, {**other, **{k: factor * base[k] for k in grows}}
    return base, dict(other)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _build(base, target, probe, overrides, base_shape, target_shape) -> Plan:
    m, params = infer_roles(base, target, probe, _parse_overrides(overrides, list(base)))
    # at base shape the readout multiplier is 1: no hook, nothing changes
    tied = tied_readouts(base, target, params) if m != 1.0 else []
    return Plan(
        width_multiplier=m,
        params=tuple(params),
        base=base_shape,
        target=target_shape,
        tied_readouts=tuple(tied),
    )


def _parse_overrides(overrides: Mapping[str, str] | None, names: list[str]) -> dict[str, Role]:
    out: dict[str, Role] = {}
    for pattern, role in (overrides or {}).items():
        try:
            r = Role(role)
        except ValueError:
            raise MutransferError(
                f"override {pattern!r}: unknown role {role!r}; choose one of {[r.value for r in Role]}."
            ) from None
        for name in match_patterns([pattern], names, "overrides"):
            out[name] = r
    return out


# ---- the init law ------------------------------------------------------------------------------
def _measure_init(
    make_model: Callable[..., nn.Module], shapes: tuple[dict, dict], built: Plan, notes: list[str]
) -> tuple[str, dict[str, str]]:
    """("measured", per-tensor laws), or ("fan_in", {}) with a note when it cannot be measured."""
    small, other = shapes
    try:
        layouts = [parameter_layout(construct(make_model, s)) for s in shapes]
        ratio, params = infer_roles(layouts[0], layouts[1], None, {})
    except MutransferError as exc:
        notes.append(f"init law not measured ({exc}); taken as fan_in")
        return "fan_in", {}
    result = measure(make_model, (small, other), tuple(params), ratio) if ratio != 1.0 else "nothing scales"
    if isinstance(result, str):
        notes.append(f"init law not measured ({result}); taken as fan_in. Pass init_law= to say which")
        return "fan_in", {}
    check_measured(result)
    # tensors of deeper blocks than the measured ones follow their block-0 namesake
    by_pattern = {_INDEX.sub("#", n): law for n, law in result.laws.items()}
    laws = {}
    for p in built.params:
        law = result.laws.get(p.name) or by_pattern.get(_INDEX.sub("#", p.name))
        if law is not None:
            laws[p.name] = law
    return "measured", laws


# ---- the attention -----------------------------------------------------------------------------
def _find_attention(
    make_model: Callable[..., nn.Module],
    models: list[nn.Module],
    small: tuple[dict, dict],
    multiplier: float,
    example: Any,
    notes: list[str],
    linear: set[str],
) -> tuple[AttentionSite, ...] | None:
    """The attention sites of base and target, or None (with a note) when no forward could run.

    One forward pass on the meta device at base and target; where the model's forward needs
    tensor values (Hugging Face's mask code reads them), the same pass on the CPU at the two
    small shapes the init law is measured at, carried to the target's width."""
    static = static_sites(*models)
    if example is None:
        example = _guess_example(models[0])
    if example is None:
        notes.append(
            "attention not inspected beyond nn.MultiheadAttention: pass example= (an input the model "
            "takes) so the plan can see F.scaled_dot_product_attention calls"
        )
        return static or None
    try:
        sites = pair(calls(models[0], _on(example, "meta"), linear), calls(models[1], _on(example, "meta")))
    except Exception as meta_failure:
        try:
            sites = _attention_on_cpu(make_model, small, multiplier, example, models[1], linear)
        except Exception as exc:  # user code: say so, the coordinate check still sees every attention
            notes.append(
                f"attention not inspected: a forward pass failed on the meta device "
                f"({type(meta_failure).__name__}: {str(meta_failure)[:100]}) and on the CPU "
                f"({type(exc).__name__}: {str(exc)[:100]}); the coordinate check still sees every attention"
            )
            return static or None
    found = {s.name for s in sites}
    return tuple(sites) + tuple(s for s in static if s.name not in found)


def _attention_on_cpu(
    make_model: Callable[..., nn.Module],
    small: tuple[dict, dict],
    multiplier: float,
    example: Any,
    target: nn.Module,
    linear: set[str],
) -> tuple[AttentionSite, ...]:
    """Sites from real forward passes at two small shapes, carried to the target; the deeper blocks
    of a deeper target follow their first blocks' namesakes."""
    layouts = [parameter_layout(construct(make_model, s)) for s in small]
    ratio, _ = infer_roles(layouts[0], layouts[1], None, {})
    found = []
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        for shape in small:
            torch.manual_seed(0)
            found.append(calls(construct(make_model, shape, "cpu"), _on(example, "cpu"), linear))
    sites = {s.module: s for s in extrapolate(found[0], found[1], ratio, multiplier)}
    modules = {canonical_name(n): m for n, m in target.named_modules()}
    by_pattern = {(_INDEX.sub("#", s.module), type(modules.get(s.module))): s for s in sites.values()}
    for name, module in modules.items():  # a hybrid's other layers share the name, not the class
        twin = by_pattern.get((_INDEX.sub("#", name), type(module)))
        if twin is not None and name not in sites:
            sites[name] = replace(twin, module=name)
    return tuple(sites.values())


def _guess_example(model: nn.Module) -> Any:
    """Token ids for a model with an embedding table (wherever it is registered: a Hugging Face
    model may register its head first), features for one whose first layer is linear."""
    if any(isinstance(m, nn.Embedding) for m in model.modules()):
        return (torch.zeros(1, _EXAMPLE_TOKENS, dtype=torch.long),)
    first = next((m for m in model.modules() if isinstance(m, nn.Linear | nn.modules.conv._ConvNd)), None)
    if isinstance(first, nn.Linear):
        return (torch.zeros(2, first.in_features),)
    return None


def _on(example: Any, device: str) -> Any:
    """The example's tensors on ``device``, as positional or keyword inputs."""
    if isinstance(example, torch.Tensor):
        return (example.to(device),)
    if isinstance(example, Mapping):
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in example.items()}
    return tuple(v.to(device) if isinstance(v, torch.Tensor) else v for v in example)


def _warn_attention(built: Plan) -> None:
    """Loudly: attention that stays non-muP under this plan, one warning per kind of fault."""
    wrong: dict[tuple[str, str, int], list[str]] = {}
    for site in built.attention or ():
        if not site.is_mup and not site.fix:
            key = (site.function, site.law, site.base_d_head)
            wrong.setdefault(key, []).append(site.module or "the model")
    for (function, law, base_d_head), modules in wrong.items():
        where = ", ".join(dict.fromkeys(modules))
        if function == "mha":
            fix = (
                "plan with fix_attention=True (the default): attach_ then multiplies its queries by "
                "sqrt(base_d_head / d_head), exactly"
            )
        else:
            fix = (
                f"pass scale=mutransfer.attention_scale(d_head, base_d_head={base_d_head}) to "
                "F.scaled_dot_product_attention in the forward of each"
            )
        warnings.warn(
            f"not muP: {where} compute attention with {law} logits while d_head changes with the width "
            f"({base_d_head} at base); muP needs 1/d_head, or the logits grow as the model widens and the "
            f"coordinate check fails. Fix: {fix}.",
            MutransferWarning,
            stacklevel=3,
        )
