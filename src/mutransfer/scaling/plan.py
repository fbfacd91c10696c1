"""A muP plan: per-parameter scaling as plain data, applied through init and param groups.

    >>> import torch, mutransfer
    >>> from mutransfer.models import MLP
    >>> plan = mutransfer.plan(MLP, base={"width": 64}, target={"width": 512})
    >>> model = plan.init_(MLP(width=512))
    >>> opt = torch.optim.AdamW(plan.param_groups(model, lr=3e-3, weight_decay=0.1))

Depth (CompleteP) is one more keyword and the residual branches' last modules::

    >>> from mutransfer.models import GPT
    >>> plan = mutransfer.plan(
    ...     GPT, base={"width": 64, "depth": 2}, target={"width": 256, "depth": 8},
    ...     depth="depth", residual=GPT.residual,
    ... )
    >>> plan.depth.branch_multiplier
    0.25

Nothing is attached to tensors and nothing changes the forward pass, except two documented
hooks (see ``attach_``): a tied embedding/readout weight gets a forward pre-hook that scales the
readout's input by ``1/m``, and a residual branch that does not end in a Linear or Conv layer
gets a forward hook that scales its output. The plan serialises to JSON and is restored without
the factory.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from torch import nn

from mutransfer.errors import MutransferError, check_number
from mutransfer.files import check_format, load_json, save_json
from mutransfer.scaling.depth import Depth, check_depth_arguments, find_depth
from mutransfer.scaling.forward import ScaleInput, ScaleOutput, plan_hooks
from mutransfer.scaling.roles import (
    ParamRole,
    Role,
    canonical_name,
    infer_roles,
    model_on_meta,
    parameter_layout,
    tied_readouts,
    unwrap,
)
from mutransfer.scaling.rules import Multipliers, depth_multipliers, init_multiplier, multipliers, muon_takes

__all__ = ["Plan", "load_plan", "plan", "plan_from_model"]

FORMAT_VERSION = 2  # 2 added depth; version 1 files (width only) still load
InitLaw = Literal["fan_in", "constant"]

# Set on the root module by init_ (a module attribute, never a tensor one, so deepcopy keeps it
# and a state_dict does not carry it): a second init_ would scale the weights twice.
_INITIALISED = "_mutransfer_initialised"
_INDEX = re.compile(r"(?<![^.])\d+(?![^.])")  # a whole numeric name segment: the 3 in blocks.3.fc


@dataclass(frozen=True)
class Plan:
    """Scaling for every parameter between a base shape and a target shape.

    ``width_multiplier`` is target width over base width; ``params`` holds one record per
    tensor (tied tensors once, with aliases); ``tied_readouts`` names the modules whose input
    is scaled by ``1/width_multiplier`` because their weight is also the input embedding;
    ``depth`` (None for width only) says how the residual blocks scale; ``init_law`` how the
    factory's own init scales with width (its ``init_law`` attribute, default ``"fan_in"``),
    which ``init_`` corrects unless told otherwise.
    """

    width_multiplier: float
    params: tuple[ParamRole, ...]
    base: Mapping[str, Any] = field(default_factory=dict)
    target: Mapping[str, Any] = field(default_factory=dict)
    tied_readouts: tuple[str, ...] = ()
    depth: Depth | None = None
    init_law: InitLaw = "fan_in"

    # ---- reading -------------------------------------------------------------------------
    def __getitem__(self, name: str) -> ParamRole:
        for p in self.params:
            if name in p.names:
                return p
        raise KeyError(name)

    def roles(self) -> dict[str, str]:
        """Role of every parameter name, aliases included."""
        return {n: p.role.value for p in self.params for n in p.names}

    @property
    def is_identity(self) -> bool:
        """True at base shape: the plan changes nothing."""
        same_width = self.width_multiplier == 1.0 and all(p.m_in == p.m_out == 1.0 for p in self.params)
        return same_width and not self._depth_scales()

    def factors(self, p: ParamRole, optimizer_family: str = "adam") -> tuple[float, Multipliers]:
        """The init factor and the optimizer multipliers of one tensor, width and depth combined."""
        mult = multipliers(p, self.width_multiplier, optimizer_family)
        init = init_multiplier(p)
        if self.depth is None:
            return init, mult
        d, place = self.depth, self.depth.place(p.name)
        depth_init, depth = depth_multipliers(
            optimizer_family, d.multiplier, d.alpha, in_block=bool(place), branch_end=place == "branch end"
        )
        eps = None if mult.eps is None else mult.eps * (depth.eps or 1.0)
        return init * depth_init, Multipliers(lr=mult.lr * depth.lr, eps=eps)

    # ---- applying ------------------------------------------------------------------------
    def init_(
        self,
        model: nn.Module,
        *,
        init_law: InitLaw | None = None,
        zero: Sequence[str] = (),
        scale: Mapping[str, float] | None = None,
    ) -> nn.Module:
        """Rescale a freshly initialised target model to muP init, then ``attach_`` it.

        Your code's init is taken as the standard parametrization at the target shape;
        ``init_law`` (default: the plan's, which the factory declares) says how that init
        scales with width, so the plan can correct it:

        - ``"fan_in"`` (PyTorch's Linear/Conv default, std ~ 1/sqrt(fan_in)): hidden tensors are
          already right; readouts are multiplied by ``1/sqrt(m_in)``.
        - ``"constant"`` (a fixed std such as 0.02 at every width): hidden tensors are multiplied
          by ``1/sqrt(m_in)``, readouts by ``1/m_in``.

        Vectors and input-like tensors keep your init. ``zero`` lists name patterns
        (``fnmatch``) to set to zero, e.g. ``["lm_head.weight", "*.q_proj.weight"]``: muP's
        recommended readout and query init. ``scale`` multiplies the init of every tensor of
        a role, e.g. ``{"output": 0.5}``: tuned constants that muP carries unchanged to every
        width. With depth, the residual branches' last layers are multiplied by the branch
        multiplier; the rest of your init is taken as right at every depth (a factory that
        already shrinks residual projections with depth, like GPT-2's ``1/sqrt(2 * depth)``,
        would be scaled twice). Call it once, on a fresh model, never after loading a
        checkpoint (a second call is an error).
        """
        init_law = check_init_law(init_law or self.init_law)
        role_scale = _role_factors(scale, "scale")
        tensors = self._tensors(model)
        root = unwrap(model)
        if getattr(root, _INITIALISED, False) or (self._hooked_modules() and plan_hooks(model)):
            raise MutransferError(
                "this model was already initialised (or attached) by a plan; a second init_ would "
                "scale it twice. Fix: call init_ once on a freshly built model (after loading a "
                "checkpoint, call plan.attach_(model) only)."
            )
        zeroed = _match_patterns(zero, [n for p in self.params for n in p.names], "zero")
        with torch.no_grad():
            for p in self.params:
                t = tensors[p.name]
                if any(n in zeroed for n in p.names):
                    t.zero_()
                    continue
                factor = self.factors(p)[0] * role_scale.get(p.role.value, 1.0)
                if init_law == "fan_in" and p.role in (Role.HIDDEN, Role.OUTPUT):
                    factor *= p.m_in**0.5  # the user's init already shrank by 1/sqrt(m_in)
                if factor != 1.0:
                    t.mul_(factor)
        setattr(root, _INITIALISED, True)
        self.attach_(model)
        return model

    def attach_(self, model: nn.Module) -> nn.Module:
        """Register the forward hooks the plan needs; a no-op for most models.

        For a tied embedding/readout tensor the plan uses the embedding's rules and scales the
        readout's input by ``1/m`` (the one forward multiplier that cannot move into the
        optimizer, since the tensor serves both roles). A residual branch ending in a module
        without its own Linear/Conv weight has its output scaled by the branch multiplier.
        Hooks are not in the ``state_dict``: call ``attach_`` after loading a checkpoint.
        """
        self._tensors(model)  # validates names and shapes
        hooked = self._hooked_modules()
        if not hooked:
            return model
        if plan_hooks(model):
            raise MutransferError(
                "this model already carries mutransfer's forward hooks; attaching them again would "
                "scale twice. Fix: call attach_ (or init_) once per model."
            )
        modules = {canonical_name(n): mod for n, mod in model.named_modules()}
        for name in self.tied_readouts:
            modules[name].register_forward_pre_hook(ScaleInput(1.0 / self.width_multiplier))
        for name in self.depth.hooked if self._depth_scales() else ():
            modules[name].register_forward_hook(ScaleOutput(self.depth.branch_multiplier))
        return model

    def param_groups(
        self,
        model: nn.Module,
        *,
        lr: float,
        weight_decay: float = 0.0,
        eps: float = 1e-8,
        optimizer_family: str = "adam",
        independent_weight_decay: bool = True,
        decay_vectors: bool = True,
        lr_scale: Mapping[str, float] | None = None,
    ) -> list[dict[str, Any]]:
        """Param groups for any ``torch.optim`` optimizer: one group per distinct multiplier set.

        Each group carries ``lr``, ``weight_decay`` and (Adam-like) ``eps`` already scaled, plus
        ``lr_scale`` and ``roles`` for reference; LR schedulers scale each group's lr by the
        same factor, so the ratios hold. With ``independent_weight_decay`` a group whose lr is
        multiplied by k gets weight decay divided by k, so the decay per step (lr * wd) is the
        same at every width; without it the decay per step follows the group's lr.
        ``decay_vectors=False`` puts biases and norm gains in groups without weight decay.
        ``lr_scale`` multiplies the LR of every tensor of a role (``{"output": 2.0}``), on top
        of muP's factor. Only parameters with ``requires_grad`` are included.

        ``optimizer_family="muon"`` tags every group with ``"optimizer": "muon"`` (2-D hidden
        matrices, no eps) or ``"adam"`` (the rest): build ``torch.optim.Muon`` and an Adam on
        the two sets, or let ``Plan.optimizer(model, "muon", ...)`` do it. With depth, a branch
        end's absorbed multiplier also divides its weight decay, so absorbing changes nothing.
        """
        lr, weight_decay, eps = (
            check_number(v, k) for k, v in (("lr", lr), ("weight_decay", weight_decay), ("eps", eps))
        )
        role_lr = _role_factors(lr_scale, "lr_scale")
        tensors = self._tensors(model)
        grouped: dict[tuple, dict[str, Any]] = {}
        for p in self.params:
            t = tensors[p.name]
            if not t.requires_grad:
                continue
            _, mult = self.factors(p, optimizer_family)
            if p.role.value in role_lr:
                mult = replace(mult, lr=mult.lr * role_lr[p.role.value])
            wd = weight_decay if (decay_vectors or p.role is not Role.VECTOR) else 0.0
            if independent_weight_decay:
                wd = wd / mult.lr
            elif self.depth is not None and self.depth.place(p.name) == "branch end":
                # the absorbed branch multiplier a: lr x a (a**2 for SGD) needs decay / a (a**2)
                wd = wd / self.depth.branch_multiplier ** (2 if optimizer_family == "sgd" else 1)
            group = {"lr": lr * mult.lr, "weight_decay": wd}
            if mult.eps is not None:
                group["eps"] = eps * mult.eps
            if optimizer_family == "muon":
                group["optimizer"] = "muon" if muon_takes(p) else "adam"
            key = tuple(group.values())
            entry = grouped.setdefault(key, {"params": [], **group, "lr_scale": mult.lr, "roles": []})
            entry["params"].append(t)
            if p.role.value not in entry["roles"]:
                entry["roles"].append(p.role.value)
        return list(grouped.values())

    def optimizer(
        self,
        model: nn.Module,
        name: str = "adamw",
        *,
        lr: float,
        weight_decay: float = 0.0,
        eps: float = 1e-8,
        independent_weight_decay: bool = True,
        decay_vectors: bool = True,
        lr_scale: Mapping[str, float] | None = None,
        **kwargs: Any,
    ) -> torch.optim.Optimizer:
        """The optimizer ``name`` (``adam``, ``adamw``, ``sgd``, ``muon``) over this plan's param
        groups, in one call; ``kwargs`` go to its constructor (see ``mutransfer.optim``)."""
        from mutransfer.optim import lookup

        builder, family = lookup(name)  # a bad name fails before any work
        groups = self.param_groups(
            model,
            lr=lr,
            weight_decay=weight_decay,
            eps=eps,
            optimizer_family=family,
            independent_weight_decay=independent_weight_decay,
            decay_vectors=decay_vectors,
            lr_scale=lr_scale,
        )
        return builder(groups, **kwargs)

    # ---- reporting -----------------------------------------------------------------------
    def summary(self, optimizer_family: str = "adam") -> str:
        """A table of every parameter: shapes, role, fan multipliers, init and optimizer factors.

        Tensors that differ only by a block number and share every factor take one row, e.g.
        ``blocks.{0..7}.attn.qkv.weight``."""
        head = ["parameter", "base -> target", "role", "m_in", "m_out", "init x", "lr x", "eps x"]
        if self.depth is not None:
            head.insert(3, "depth")
        rows = []
        for p in self.params:
            init, mult = self.factors(p, optimizer_family)
            names = p.name + "".join(f" = {a}" for a in p.aliases)
            shapes = f"{_shape(p.base_shape)} -> {_shape(p.target_shape)}"
            eps = "-" if mult.eps is None else f"{mult.eps:.4g}"
            role = p.role.value + (" (muon)" if optimizer_family == "muon" and muon_takes(p) else "")
            row = [names, shapes, role, f"{p.m_in:g}", f"{p.m_out:g}", f"{init:.4g}", f"{mult.lr:.4g}", eps]
            if self.depth is not None:
                row.insert(3, self.depth.place(p.name))
            rows.append(row)
        rows = _merge_repeated(rows)
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        lines = [
            f"muP plan: width x{self.width_multiplier:g} ({dict(self.base)} -> "
            f"{dict(self.target)}), optimizer family '{optimizer_family}'"
        ]
        lines += [
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in [head, ["-" * w for w in widths], *rows]
        ]
        counts = {r.value: sum(p.role is r for p in self.params) for r in Role}
        lines.append("roles: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v))
        if self.tied_readouts:
            lines.append(
                f"tied readout input scaled by 1/{self.width_multiplier:g}: " + ", ".join(self.tied_readouts)
            )
        if self.depth is not None:
            d = self.depth
            lines.append(
                f"depth: {d.key} {d.base} -> {d.target} blocks (m_L {d.multiplier:g}), alpha {d.alpha:g}: "
                f"branch multiplier {d.branch_multiplier:.4g}, absorbed into the branch ends"
                + (f"; output hooks on {', '.join(d.hooked)}" if d.hooked else "")
            )
        return "\n".join(lines)

    # ---- plain data ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "width_multiplier": self.width_multiplier,
            "base": dict(self.base),
            "target": dict(self.target),
            "tied_readouts": list(self.tied_readouts),
            "depth": None if self.depth is None else self.depth.to_dict(),
            "init_law": self.init_law,
            "params": [
                {
                    "name": p.name,
                    "aliases": list(p.aliases),
                    "role": p.role.value,
                    "base_shape": list(p.base_shape),
                    "target_shape": list(p.target_shape),
                    "m_in": p.m_in,
                    "m_out": p.m_out,
                    "layer": p.layer,
                }
                for p in self.params
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        check_format(data, (1, FORMAT_VERSION), "plan", "rebuild the plan with this version of mutransfer.")
        params = tuple(
            ParamRole(
                name=d["name"],
                role=Role(d["role"]),
                base_shape=tuple(d["base_shape"]),
                target_shape=tuple(d["target_shape"]),
                m_in=float(d["m_in"]),
                m_out=float(d["m_out"]),
                layer=d.get("layer", "raw"),
                aliases=tuple(d.get("aliases", ())),
            )
            for d in data["params"]
        )
        return cls(
            width_multiplier=float(data["width_multiplier"]),
            params=params,
            base=dict(data.get("base", {})),
            target=dict(data.get("target", {})),
            tied_readouts=tuple(data.get("tied_readouts", ())),
            depth=Depth.from_dict(data["depth"]) if data.get("depth") else None,
            init_law=data.get("init_law", "fan_in"),
        )

    def save(self, path: str | os.PathLike) -> None:
        """Write the plan as JSON, e.g. beside a checkpoint."""
        save_json(path, self.to_dict())

    # ---- internals -----------------------------------------------------------------------
    def _depth_scales(self) -> bool:
        return self.depth is not None and self.depth.multiplier != 1.0

    def _hooked_modules(self) -> list[str]:
        """Modules that get a forward hook from ``attach_``."""
        return [*self.tied_readouts, *(self.depth.hooked if self._depth_scales() else ())]

    def _tensors(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The model's tensors by plan name, after checking names and shapes match the plan."""
        found: dict[str, tuple[str, torch.Tensor]] = {}
        for name, t in model.named_parameters(remove_duplicate=False):
            found.setdefault(canonical_name(name), (name, t))
        expected = {n for p in self.params for n in p.names}
        if set(found) != expected:
            missing, extra = sorted(expected - set(found)), sorted(set(found) - expected)
            raise MutransferError(
                f"the model's parameters do not match the plan: missing {missing[:5]}, unexpected "
                f"{extra[:5]}. Fix: build the model with the same factory at the plan's target shape "
                f"{dict(self.target)}."
            )
        out = {}
        for p in self.params:
            t = found[p.name][1]
            if tuple(t.shape) != p.target_shape:
                raise MutransferError(
                    f"parameter '{p.name}' has shape {tuple(t.shape)} but the plan's target shape is "
                    f"{p.target_shape}. Fix: build the model at the plan's target {dict(self.target)}, "
                    "or make a plan for this shape: mutransfer.plan(make_model, base=..., target=...)."
                )
            out[p.name] = t
        return out


def plan(
    make_model: Callable[..., nn.Module],
    *,
    base: Mapping[str, Any],
    target: Mapping[str, Any],
    probe: Mapping[str, Any] | None = None,
    overrides: Mapping[str, str] | None = None,
    depth: str | None = None,
    residual: Sequence[str] = (),
    alpha: float = 1.0,
) -> Plan:
    """Build the muP plan for ``make_model`` between two shapes, on the meta device.

    ``base`` and ``target`` are keyword arguments of the factory (the width keywords that
    differ, plus any others it needs). When their widths are equal (planning at the base
    itself, or depth only) a ``probe`` shape tells which dimensions scale; when ``base`` has a
    single integer width keyword the default probe doubles it. ``overrides`` maps name patterns
    to a role for tensors the inference cannot read, e.g. a readout registered as a raw parameter.

    ``depth`` names the keyword that sets the number of residual blocks; ``residual`` lists
    name patterns of each branch's last module (``GPT.residual`` for the reference GPT) and
    ``alpha`` picks the CompleteP family member: 1 is CompleteP, 0.5 Depth-muP.
    """
    base, target = dict(base), dict(target)
    if depth is None:
        if residual:
            raise MutransferError("residual= needs depth=, the keyword that sets the number of blocks.")
        if probe is None and base == target:
            probe = _default_probe(base)
        layouts = [parameter_layout(model_on_meta(make_model, s)) for s in (base, target)]
        probe_layout = parameter_layout(model_on_meta(make_model, probe)) if probe is not None else None
        return _build(layouts[0], layouts[1], probe_layout, overrides, base, target, init_law_of(make_model))

    check_depth_arguments(depth, base, target, alpha)
    wide_base = {**base, depth: target[depth]}  # width roles compare two models of the target's depth
    if probe is not None:
        probe = {**probe, depth: target[depth]}
    elif wide_base == target:
        probe = {**_default_probe(base, exclude=depth), depth: target[depth]}
    deep = model_on_meta(make_model, target)
    other_depth = base[depth] if base[depth] != target[depth] else target[depth] + 1
    shallow = model_on_meta(make_model, {**target, depth: other_depth})
    found = find_depth(
        shallow, deep, key=depth, base=base[depth], target=target[depth], alpha=alpha, residual=residual
    )
    layouts = [parameter_layout(model_on_meta(make_model, wide_base)), parameter_layout(deep)]
    probe_layout = parameter_layout(model_on_meta(make_model, probe)) if probe is not None else None
    built = _build(layouts[0], layouts[1], probe_layout, overrides, base, target, init_law_of(make_model))
    return replace(built, depth=found)


def plan_from_model(
    model: nn.Module,
    *,
    base_dims: Mapping[int, int] | None = None,
    base_shapes: Mapping[str, Sequence[int]] | None = None,
    overrides: Mapping[str, str] | None = None,
) -> Plan:
    """Plan for an already-built model (frameworks, checkpoints), given its base description.

    Give exactly one of ``base_dims`` (target size -> base size for each dimension size that
    scales, e.g. ``{4096: 256, 11008: 688}``) or ``base_shapes`` (parameter name -> base shape).
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
    return _build(
        base_layout,
        target_layout,
        None,
        overrides,
        {"dims": {str(k): v for k, v in (base_dims or {}).items()}},
        {},
    )


def _default_probe(base: dict[str, Any], exclude: str | None = None) -> dict[str, Any]:
    ints = [k for k, v in base.items() if isinstance(v, int) and not isinstance(v, bool) and k != exclude]
    if len(ints) != 1:
        raise MutransferError(
            f"base and target are the same shape {base}, so the plan cannot tell which keywords are "
            f"widths (integer keywords: {ints}). Fix: pass probe= with the width keywords changed, "
            f"e.g. probe={{**base, {ints[0] if ints else 'width'!r}: 2 * base[...]}}."
        )
    return {**base, ints[0]: 2 * base[ints[0]]}


def load_plan(path: str | os.PathLike) -> Plan:
    """Read a plan written by ``Plan.save``; no factory needed."""
    data = load_json(path, "plan file", "pass the path Plan.save wrote, or save the plan again.")
    try:
        return Plan.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, MutransferError):
            raise
        raise MutransferError(f"{path} is not a plan file ({exc!r}). Fix: save the plan again.") from None


def init_law_of(make_model: Callable[..., nn.Module]) -> InitLaw:
    """How a factory's init scales with width: its ``init_law`` attribute, else ``"fan_in"``
    (PyTorch's own layers). ``mutransfer.hf`` factories say ``"constant"``."""
    return check_init_law(getattr(make_model, "init_law", "fan_in"))


def check_init_law(init_law: Any) -> InitLaw:
    if init_law not in ("fan_in", "constant"):
        raise MutransferError(f"init_law must be 'fan_in' or 'constant', got {init_law!r}.")
    return init_law


def _build(base, target, probe, overrides, base_shape, target_shape, init_law="fan_in") -> Plan:
    m, params = infer_roles(base, target, probe, _parse_overrides(overrides, list(base)))
    # at base shape the readout multiplier is 1: no hook, nothing changes
    tied = tied_readouts(base, target, params) if m != 1.0 else []
    return Plan(
        width_multiplier=m,
        params=tuple(params),
        base=base_shape,
        target=target_shape,
        tied_readouts=tuple(tied),
        init_law=init_law,
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
        for name in _match_patterns([pattern], names, "overrides"):
            out[name] = r
    return out


def _match_patterns(patterns: Iterable[str], names: list[str], what: str) -> set[str]:
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


def _role_factors(factors: Mapping[str, float] | None, what: str) -> dict[str, float]:
    """Per-role factors, keyed by role name, checked against the roles that exist."""
    factors = dict(factors or {})
    unknown = sorted(set(factors) - {r.value for r in Role})
    if unknown:
        raise MutransferError(f"{what} has unknown roles {unknown}; the roles are {[r.value for r in Role]}.")
    return factors


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
