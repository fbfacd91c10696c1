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

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from mutransfer.errors import MutransferError, MutransferWarning, check_number
from mutransfer.files import check_format, load_json, save_json
from mutransfer.scaling.attention import AttentionSite, fix_, fixed_modules
from mutransfer.scaling.depth import Depth
from mutransfer.scaling.describe import describe
from mutransfer.scaling.forward import ScaleInput, ScaleOutput, plan_hooks
from mutransfer.scaling.init_law import InitLaw, check_init_law, user_growth
from mutransfer.scaling.roles import ParamRole, Role, canonical_name, match_patterns, unwrap
from mutransfer.scaling.rules import Multipliers, depth_multipliers, init_multiplier, multipliers, muon_takes
from mutransfer.scaling.unit_plan import attach_unit_, check_unit, unit_factors, unit_hooks, unit_init_

__all__ = ["Plan", "load_plan"]

FORMAT_VERSION = 3  # 2 added depth, 3 the measured init law and the attention; older files still load

# Set on the root module by init_ (a module attribute, never a tensor one, so deepcopy keeps it
# and a state_dict does not carry it): a second init_ would scale the weights twice.
_INITIALISED = "_mutransfer_initialised"


@dataclass(frozen=True)
class Plan:
    """Scaling for every parameter between a base shape and a target shape.

    ``width_multiplier`` is target width over base width; ``params`` holds one record per
    tensor (tied tensors once, with aliases); ``tied_readouts`` names the modules whose input
    is scaled by ``1/width_multiplier`` because their weight is also the input embedding;
    ``depth`` (None for width only) says how the residual blocks scale; ``init_law`` how the
    factory's own init scales with width (``"measured"``: per tensor, ``init_laws``), which
    ``init_`` corrects; ``attention`` the attention the plan saw (None: not inspected), which
    ``attach_`` makes muP where it can; ``notes`` what the plan could not check.
    """

    width_multiplier: float
    params: tuple[ParamRole, ...]
    base: Mapping[str, Any] = field(default_factory=dict)
    target: Mapping[str, Any] = field(default_factory=dict)
    tied_readouts: tuple[str, ...] = ()
    depth: Depth | None = None
    init_law: InitLaw = "fan_in"
    init_laws: Mapping[str, str] = field(default_factory=dict)
    attention: tuple[AttentionSite, ...] | None = None
    notes: tuple[str, ...] = ()
    parametrization: str = "mup"
    """``"mup"``, or ``"u-mup"``: u-muP's absolute rules (``rules.unit_rule``), no base shape."""

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
        if self.parametrization == "u-mup":
            return False
        same_width = self.width_multiplier == 1.0 and all(p.m_in == p.m_out == 1.0 for p in self.params)
        return same_width and not self._depth_scales()

    def factors(self, p: ParamRole, optimizer_family: str = "adam") -> tuple[float, Multipliers]:
        """The init factor and the optimizer multipliers of one tensor, width and depth combined
        (under u-muP: its absolute init std, 1 where the init is the model's, and its optimizer factors)."""
        if self.parametrization == "u-mup":
            return unit_factors(p, optimizer_family, self.depth)
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

    def init_factor(self, p: ParamRole, init_law: InitLaw | None = None) -> float:
        """What ``init_`` multiplies the user's init of ``p`` by: muP's std at the target over what
        the user's init already does there (``init_law``: default the plan's)."""
        law = check_init_law(init_law or self.init_law)
        measured = law == "measured"
        if measured:
            law = self.init_laws.get(p.name, "constant")
        by_name = {n: q for q in self.params for n in q.names}
        return self.factors(p)[0] / user_growth(p, law, by_name, measured=measured)

    def attention_fixes(self) -> tuple[AttentionSite, ...]:
        """The attention sites ``attach_`` makes muP (queries or ``scaling`` multiplied)."""
        return tuple(s for s in self.attention or () if not s.is_mup and s.fix)

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
        ``init_law`` (default: the plan's, measured from the factory) says how that init
        scales with width, so the plan can correct it:

        - ``"fan_in"`` (PyTorch's Linear/Conv default, std ~ 1/sqrt(fan_in)): hidden tensors are
          already right; readouts are multiplied by ``1/sqrt(m_in)``, and a Linear or Conv
          layer's bias by ``sqrt(m_in)`` of its weight (muP holds every bias Theta(1)).
        - ``"constant"`` (a fixed std such as 0.02 at every width): hidden tensors are multiplied
          by ``1/sqrt(m_in)``, readouts by ``1/m_in``.
        - ``"measured"``: each tensor as the plan measured it (``init_laws``).

        Other vectors and input-like tensors keep your init. ``zero`` lists name patterns
        (``fnmatch``) to set to zero, e.g. ``["lm_head.weight", "*.q_proj.weight"]``: muP's
        recommended readout and query init. ``scale`` multiplies the init of every tensor of
        a role, e.g. ``{"output": 0.5}``: tuned constants that muP carries unchanged to every
        width. With depth, the residual branches' last layers are multiplied by the branch
        multiplier; the rest of your init is taken as right at every depth (a factory that
        already shrinks residual projections with depth, like GPT-2's ``1/sqrt(2 * depth)``,
        would be scaled twice). Call it once, on a fresh model, never after loading a
        checkpoint (a second call is an error).
        """
        role_scale = _role_factors(scale, "scale")
        tensors = self._tensors(model)
        root = unwrap(model)
        if getattr(root, _INITIALISED, False) or plan_hooks(model) or fixed_modules(model):
            raise MutransferError(
                "this model was already initialised (or attached) by a plan; a second init_ would "
                "scale it twice. Fix: call init_ once on a freshly built model (after loading a "
                "checkpoint, call plan.attach_(model) only)."
            )
        zeroed = match_patterns(zero, [n for p in self.params for n in p.names], "zero")
        _say_frozen(tensors, "init_ leaves them as they are")
        if self.parametrization == "u-mup":
            check_unit("adam", self.depth)
            unit_init_(self.params, tensors, set(zeroed), role_scale)
        with torch.no_grad():
            for p in self.params if self.parametrization == "mup" else ():
                t = tensors[p.name]
                if not t.requires_grad:
                    continue
                if any(n in zeroed for n in p.names):
                    t.zero_()
                    continue
                factor = self.init_factor(p, init_law) * role_scale.get(p.role.value, 1.0)
                if factor != 1.0:
                    t.mul_(factor)
        setattr(root, _INITIALISED, True)
        self.attach_(model)
        return model

    def attach_(self, model: nn.Module) -> nn.Module:
        """Apply the forward multipliers the plan needs; a no-op for most models.

        For a tied embedding/readout tensor the plan uses the embedding's rules and scales the
        readout's input by ``1/m`` (the one forward multiplier that cannot move into the
        optimizer, since the tensor serves both roles). A residual branch ending in a module
        without its own Linear/Conv weight has its output scaled by the branch multiplier.
        Attention the plan found with ``1/sqrt(d_head)`` logits is made ``1/d_head`` where that is
        exact: an ``nn.MultiheadAttention``'s queries, or a module's ``scaling`` attribute. None
        of it is in the ``state_dict``: call ``attach_`` after loading a checkpoint.
        """
        self._tensors(model)  # validates names and shapes
        hooked, fixes = self._hooked_modules(), self.attention_fixes()
        if not hooked and not fixes:
            return model
        if plan_hooks(model) or fixed_modules(model):
            raise MutransferError(
                "this model already carries mutransfer's forward multipliers; attaching them again would "
                "scale twice. Fix: call attach_ (or init_) once per model."
            )
        modules = {canonical_name(n): mod for n, mod in model.named_modules()}
        if self.parametrization == "u-mup":
            attach_unit_(modules, self.params, self.tied_readouts)
            fix_(model, fixes)
            return model
        for name in self.tied_readouts:
            modules[name].register_forward_pre_hook(ScaleInput(1.0 / self._readout_multiplier(name)))
        for name in self.depth.hooked if self._depth_scales() else ():
            modules[name].register_forward_hook(ScaleOutput(self.depth.branch_multiplier))
        fix_(model, fixes)
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
        ``lr_scale``, ``roles`` and ``param_roles`` (each tensor's, in order) for reference; LR
        schedulers scale each group's lr by the same factor, so the ratios hold. With
        ``independent_weight_decay`` a group whose lr is multiplied by k gets weight decay
        divided by k, so the decay per step (lr * wd) is the same at every width; without it the
        decay per step follows the group's lr.
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
        _say_frozen(tensors, "param_groups gives the optimizer none of them")
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
            entry = grouped.setdefault(
                key, {"params": [], **group, "lr_scale": mult.lr, "roles": [], "param_roles": []}
            )
            entry["params"].append(t)
            entry["param_roles"].append(p.role.value)
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
        groups = self.param_groups(model, lr=lr, weight_decay=weight_decay, eps=eps, optimizer_family=family,
                                   independent_weight_decay=independent_weight_decay,
                                   decay_vectors=decay_vectors, lr_scale=lr_scale)  # fmt: skip
        return builder(groups, **kwargs)

    # ---- reporting -----------------------------------------------------------------------
    def summary(self, optimizer_family: str = "adam") -> str:
        """A table of every parameter: shapes, role, fan multipliers, init and optimizer factors,
        then the init law, the forward-pass factors, depth and notes (see ``describe``)."""
        return describe(self, optimizer_family)

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
            "init_laws": dict(self.init_laws),
            "attention": None if self.attention is None else [s.to_dict() for s in self.attention],
            "notes": list(self.notes),
            "parametrization": self.parametrization,
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
        check_format(data, FORMAT_VERSION, "plan", "rebuild the plan with this version of mutransfer.")
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
            init_laws=dict(data.get("init_laws", {})),
            attention=None
            if data.get("attention") is None
            else tuple(AttentionSite(**s) for s in data["attention"]),
            notes=tuple(data.get("notes", ())),
            parametrization=data.get("parametrization", "mup"),
        )

    def save(self, path: str | os.PathLike) -> None:
        """Write the plan as JSON, e.g. beside a checkpoint."""
        save_json(path, self.to_dict())

    # ---- internals -----------------------------------------------------------------------
    def _depth_scales(self) -> bool:
        return self.depth is not None and self.depth.multiplier != 1.0

    def _readout_multiplier(self, module: str) -> float:
        """The width multiplier of a tied readout's input: its tensor's embedding dimension's."""
        return next((p.m_out for p in self.params if f"{module}.weight" in p.names), self.width_multiplier)

    def _hooked_modules(self) -> list[str]:
        """Modules that get a forward hook from ``attach_``."""
        if self.parametrization == "u-mup":
            return list(unit_hooks(self.params, self.tied_readouts))
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


def load_plan(path: str | os.PathLike) -> Plan:
    """Read a plan written by ``Plan.save``; no factory needed."""
    data = load_json(path, "plan file", "pass the path Plan.save wrote, or save the plan again.")
    try:
        return Plan.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, MutransferError):
            raise
        raise MutransferError(f"{path} is not a plan file ({exc!r}). Fix: save the plan again.") from None


def _say_frozen(tensors: Mapping[str, torch.Tensor], what: str) -> None:
    """A frozen tensor (``requires_grad=False``) is the user's to keep: say what happens to it."""
    frozen = [n for n, t in tensors.items() if not t.requires_grad]
    if frozen:
        warnings.warn(
            f"{len(frozen)} tensor(s) are frozen (requires_grad=False): {', '.join(frozen[:5])}"
            f"{' ...' if len(frozen) > 5 else ''}; {what}. Unfreeze them before planning to train them "
            "under muP.",
            MutransferWarning,
            stacklevel=3,
        )


def _role_factors(factors: Mapping[str, float] | None, what: str) -> dict[str, float]:
    """Per-role factors, keyed by role name, checked against the roles that exist."""
    factors = dict(factors or {})
    unknown = sorted(set(factors) - {r.value for r in Role})
    if unknown:
        raise MutransferError(f"{what} has unknown roles {unknown}; the roles are {[r.value for r in Role]}.")
    return factors
