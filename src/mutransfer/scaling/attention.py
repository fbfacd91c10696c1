"""Attention under muP: logits scaled by 1/d_head, found in any model, fixed where that is exact.

    >>> import torch, mutransfer
    >>> from torch.nn import functional as F
    >>> q = k = v = torch.randn(2, 4, 16, 64)                  # (batch, heads, tokens, d_head)
    >>> y = F.scaled_dot_product_attention(q, k, v, scale=mutransfer.attention_scale(64, base_d_head=16))

In training, q and k become correlated, so ``q . k`` grows like ``d_head``: muP scales the logits
by ``1/d_head`` (Tensor Programs V, section 4), not the usual ``1/sqrt(d_head)``, with the
constant chosen so that at the base head size the model is unchanged. The model's own code owns
this factor, so the library looks for it instead of asking: ``intercept`` sees every attention
computed through PyTorch (``F.scaled_dot_product_attention``, and ``nn.MultiheadAttention``
through ``F.multi_head_attention_forward``) with a ``TorchFunctionMode``, and names the module
that ran it. A plan runs one forward pass of the base and target models on the meta device under
it (``calls``, ``pair``); a coordinate check runs its probe batches under it. Training never does, so
it costs nothing there.

What a plan can fix exactly, ``Plan.attach_`` fixes (``fix_``): an ``nn.MultiheadAttention``,
which has no scale argument, gets its queries multiplied by ``sqrt(base_d_head / d_head)``
(``(c q) . k / sqrt(d) = sqrt(base) q . k / d``), and a module that hands its own ``scaling``
attribute to the attention (Hugging Face's convention) gets that attribute multiplied. Any other
``1/sqrt(d_head)`` is reported by the plan and failed by the coordinate check, naming the module.

Attention written by hand (matmul, softmax) is invisible to interception: such a model holds an
``AttentionLogits`` hook point and calls ``observe(q, k, scale)`` beside it.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from mutransfer.scaling.roles import canonical_name

__all__ = [
    "AttentionCall",
    "AttentionLogits",
    "AttentionSite",
    "attention_scale",
    "calls",
    "extrapolate",
    "intercept",
    "pair",
]

_FIXED = "_mutransfer_attention_fixed"  # set on a module by fix_: a second fix would scale twice
_MHA_ARGS = inspect.signature(F.multi_head_attention_forward)


def attention_scale(d_head: int, base_d_head: int) -> float:
    """muP attention scale ``sqrt(base_d_head) / d_head``: 1/d_head, equal to SP at base."""
    if d_head <= 0 or base_d_head <= 0:
        raise ValueError(f"head sizes must be positive, got d_head={d_head}, base_d_head={base_d_head}")
    return math.sqrt(base_d_head) / d_head


class AttentionLogits(nn.Module):
    """Hook point for the pre-softmax attention logits ``scale * q @ k^T``, shape (B, heads, T, T);
    keys may have fewer heads than queries (grouped-query attention).

    ``observe`` computes them only while a forward hook is registered on this module (the
    coordinate check registers one), so training keeps the fused SDPA path and pays nothing.
    """

    def forward(self, q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
        return logits(q, k, scale)

    def observe(self, q: torch.Tensor, k: torch.Tensor, scale: float) -> None:
        if self._forward_hooks:
            self(q, k, scale)


def logits(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale * q @ k^T`` for q (..., heads, T, d) and k (..., kv_heads, S, d); a key head may
    serve a group of query heads (grouped-query attention)."""
    if k.dim() > 2 and k.shape[-3] != q.shape[-3]:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
    return (q @ k.transpose(-2, -1)) * scale


@dataclass(frozen=True)
class AttentionCall:
    """One attention computed during a forward pass: the innermost module running it, the
    function (``sdpa`` or ``mha``), which call of that module it was in this pass, the head size
    and the effective logit scale; ``q`` and ``k`` (B, heads, T, d_head) when asked for."""

    module: str
    function: str
    index: int
    d_head: int
    scale: float
    fix: str = ""  # how a plan can change it: "query" (an nn.MultiheadAttention), "scaling" (its attribute)
    q: torch.Tensor | None = None
    k: torch.Tensor | None = None

    @property
    def name(self) -> str:
        """How the coordinate check names it: ``blocks.0.attn.sdpa`` (``#2`` for a second call)."""
        where = f"{self.module}." if self.module else ""
        return f"{where}{self.function}" + (f"#{self.index + 1}" if self.index else "")


class _Interceptor(TorchFunctionMode):
    """Records attention calls with the module that ran them (a stack kept by global module hooks)."""

    def __init__(
        self,
        model: nn.Module,
        on_call: Callable[[AttentionCall], None],
        tensors: bool,
        linear: set[str] | None,
    ) -> None:
        super().__init__()
        self.names = {id(m): canonical_name(n) for n, m in model.named_modules()}
        self.on_call, self.tensors, self.linear = on_call, tensors, linear
        self.params = {id(p): canonical_name(n) for n, p in model.named_parameters(remove_duplicate=False)}
        self.stack: list[nn.Module] = []
        self.counts: Counter[str] = Counter()
        self.paused = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.linear is not None and func is F.linear:  # a weight used as (out, in) whatever holds it
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            if id(weight) in self.params:
                self.linear.add(self.params[id(weight)])
        if not self.paused and func in (F.scaled_dot_product_attention, F.multi_head_attention_forward):
            module = next((m for m in reversed(self.stack) if id(m) in self.names), None)
            read = _read_sdpa if func is F.scaled_dot_product_attention else _read_mha
            (q, k), scale, d_head, kind = read(module, args, kwargs, self.tensors)
            name = self.names.get(id(module), "")
            index = self.counts[f"{name}:{kind}"]
            self.counts[f"{name}:{kind}"] += 1
            scaling = getattr(module, "scaling", None)
            fix = ""
            if kind == "mha" and isinstance(module, nn.MultiheadAttention):
                fix = "query"
            elif isinstance(scaling, float) and math.isclose(scaling, scale, rel_tol=1e-9):
                fix = "scaling"
            self.on_call(AttentionCall(name, kind, index, d_head, scale, fix, q, k))
        return func(*args, **kwargs)

    @contextlib.contextmanager
    def pause(self) -> Iterator[None]:
        """Attention the caller computes itself (a coordinate check's copy of a module) is not the model's."""
        was, self.paused = self.paused, True
        try:
            yield
        finally:
            self.paused = was


@contextlib.contextmanager
def intercept(
    model: nn.Module,
    on_call: Callable[[AttentionCall], None],
    *,
    tensors: bool = False,
    linear: set[str] | None = None,
) -> Iterator[_Interceptor]:
    """Call ``on_call`` for every attention ``model`` computes through PyTorch inside the block;
    ``tensors=True`` hands over q and k too (detached); ``linear`` collects the names of the
    parameters used as an ``F.linear`` weight. Costs a Python call per torch function while
    active: used only by plans and checks, never in training."""
    mode = _Interceptor(model, on_call, tensors, linear)

    def enter(module: nn.Module, args: tuple) -> None:
        mode.stack.append(module)

    def leave(module: nn.Module, args: tuple, output: Any) -> None:  # returns None: output unchanged
        if mode.stack:
            mode.stack.pop()

    pre = torch.nn.modules.module.register_module_forward_pre_hook(enter)
    post = torch.nn.modules.module.register_module_forward_hook(leave, always_call=True)
    try:
        with mode:
            yield mode
    finally:
        pre.remove()
        post.remove()


def _read_sdpa(module, args, kwargs, tensors):
    q, k = args[0], args[1]
    scale = kwargs.get("scale", args[6] if len(args) > 6 else None)
    d_head = q.shape[-1]
    scale = d_head**-0.5 if scale is None else float(scale)
    return (q.detach(), k.detach()) if tensors else (None, None), scale, d_head, "sdpa"


def _read_mha(module, args, kwargs, tensors):
    a = _MHA_ARGS.bind(*args, **kwargs).arguments
    d_head = a["embed_dim_to_check"] // a["num_heads"]
    query_scale = getattr(module, "mup_query_scale", 1.0)  # already in the weights handed over
    scale = query_scale / math.sqrt(d_head)
    qk = (None, None)
    if tensors:
        qk = _mha_queries_and_keys(a, d_head)
        qk = (qk[0] / query_scale, qk[1])
    return qk, scale, d_head, "mha"


def _mha_queries_and_keys(a: Mapping[str, Any], d_head: int) -> tuple[torch.Tensor, torch.Tensor]:
    """q and k, (N, heads, L, d_head), as ``F.multi_head_attention_forward`` projects them."""
    E = a["embed_dim_to_check"]
    bias = a["in_proj_bias"]
    b_q, b_k = (None, None) if bias is None else (bias[:E], bias[E : 2 * E])
    if a.get("use_separate_proj_weight"):
        w_q, w_k = a["q_proj_weight"], a["k_proj_weight"]
    else:
        w_q, w_k = a["in_proj_weight"][:E], a["in_proj_weight"][E : 2 * E]
    out = []
    for x, w, b in ((a["query"], w_q, b_q), (a["key"], w_k, b_k)):
        x = x.detach().unsqueeze(1) if x.dim() == 2 else x.detach()  # unbatched (L, E) -> (L, 1, E)
        y = F.linear(x, w.detach(), None if b is None else b.detach())  # (L, N, E)
        out.append(y.reshape(y.shape[0], y.shape[1], -1, d_head).permute(1, 2, 0, 3))
    return out[0], out[1]


# ---- what a plan records and fixes ------------------------------------------------------------
@dataclass(frozen=True)
class AttentionSite:
    """One attention of the model, at base and at target shape: its head size and logit scale.

    ``fix`` is how ``Plan.attach_`` makes it muP when it is not: ``"query"`` (an
    ``nn.MultiheadAttention``: its queries are multiplied), ``"scaling"`` (the module hands its
    ``scaling`` attribute to the attention: the attribute is multiplied), or ``""`` (the scale is
    computed in the module's code: only its author can change it).
    """

    module: str
    function: str
    base_d_head: int
    target_d_head: int
    base_scale: float
    target_scale: float
    fix: str = ""
    index: int = 0

    @property
    def name(self) -> str:
        return AttentionCall(self.module, self.function, self.index, 0, 0.0).name

    @property
    def law(self) -> str:
        """``1/d_head`` (muP), ``1/sqrt(d_head)`` (standard), ``fixed`` (another constant), ``other``, or
        ``same head size`` when the head size does not change (nothing to scale)."""
        if self.base_d_head == self.target_d_head:
            return "same head size"
        for law, power in (("1/d_head", 1.0), ("1/sqrt(d_head)", 0.5), ("fixed", 0.0)):
            if math.isclose(self.base_scale * self.base_d_head**power,
                            self.target_scale * self.target_d_head**power, rel_tol=1e-6):  # fmt: skip
                return law
        return "other"

    @property
    def is_mup(self) -> bool:
        return self.law in ("1/d_head", "same head size")

    @property
    def factor(self) -> float:
        """What the target's scale must be multiplied by to be muP's ``base_scale * base_d / d``."""
        return self.base_scale * self.base_d_head / self.target_d_head / self.target_scale

    def describe(self) -> str:
        what = "nn.MultiheadAttention" if self.function == "mha" else "F.scaled_dot_product_attention"
        return f"{self.name} ({what}, d_head {self.base_d_head} -> {self.target_d_head}): {self.law}"

    def fix_text(self) -> str:
        """What the model's author writes instead, for a site the plan cannot fix."""
        return (
            f"pass scale=mutransfer.attention_scale(d_head, base_d_head={self.base_d_head}) to "
            "F.scaled_dot_product_attention in its forward"
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def calls(
    model: nn.Module, example: Sequence[Any] | Mapping[str, Any], linear: set[str] | None = None
) -> dict[tuple, AttentionCall]:
    """The attention calls of one forward pass of ``example``, by (module, function, index);
    ``linear`` collects the parameters used as ``F.linear`` weights on the way."""
    seen: list[AttentionCall] = []
    with intercept(model, seen.append, linear=linear), torch.no_grad():
        model(**example) if isinstance(example, Mapping) else model(*example)
    return {(c.module, c.function, c.index): c for c in seen}


def pair(
    base: Mapping[tuple, AttentionCall], target: Mapping[tuple, AttentionCall]
) -> tuple[AttentionSite, ...]:
    """Sites from the same calls at the base and at the target shape."""
    return tuple(
        AttentionSite(
            t.module, t.function, base[key].d_head, t.d_head, base[key].scale, t.scale, t.fix, t.index
        )
        for key, t in target.items()
        if key in base
    )


def extrapolate(
    base: Mapping[tuple, AttentionCall], other: Mapping[tuple, AttentionCall], ratio: float, multiplier: float
) -> tuple[AttentionSite, ...]:
    """Sites at the target from calls at the base and at another width ``ratio`` times wider: the
    head size as a power of the width, the scale as a power of the head size, carried to
    ``multiplier`` times the base (when the target itself cannot run a forward pass)."""
    sites = []
    for key, o in other.items():
        b = base.get(key)
        if b is None:
            continue
        d_power = math.log(o.d_head / b.d_head) / math.log(ratio)
        d_target = round(b.d_head * multiplier**d_power)
        scale_power = (
            math.log(o.scale / b.scale) / math.log(o.d_head / b.d_head) if o.d_head != b.d_head else 0.0
        )
        scale = b.scale * (d_target / b.d_head) ** scale_power
        sites.append(AttentionSite(o.module, o.function, b.d_head, d_target, b.scale, scale, o.fix, o.index))
    return tuple(sites)


def static_sites(base: nn.Module, target: nn.Module) -> tuple[AttentionSite, ...]:
    """The ``nn.MultiheadAttention`` modules, found without a forward pass (their scale is fixed)."""
    found = {canonical_name(n): m for n, m in base.named_modules() if isinstance(m, nn.MultiheadAttention)}
    sites = []
    for name, m in target.named_modules():
        name = canonical_name(name)
        if name in found and isinstance(m, nn.MultiheadAttention):
            d_b, d_t = found[name].head_dim, m.head_dim
            scale_b = getattr(found[name], "mup_query_scale", 1.0) * d_b**-0.5
            scale_t = getattr(m, "mup_query_scale", 1.0) * d_t**-0.5
            sites.append(AttentionSite(name, "mha", d_b, d_t, scale_b, scale_t, "query"))
    return tuple(sites)


def fixed_modules(model: nn.Module) -> list[str]:
    """Modules whose attention a plan already fixed (``fix_``)."""
    return [n for n, m in model.named_modules() if getattr(m, _FIXED, False)]


def fix_(model: nn.Module, sites: Sequence[AttentionSite]) -> None:
    """Make every fixable non-muP site muP, exactly: queries or ``scaling`` multiplied."""
    modules = {canonical_name(n): m for n, m in model.named_modules()}
    for site in sites:
        if site.is_mup or not site.fix or site.module not in modules:
            continue
        module = modules[site.module]
        if site.fix == "query":
            module.__class__ = _query_scaled(type(module))
            module.mup_query_scale = site.factor
        else:
            module.scaling = module.scaling * site.factor
            module.mup_attention_factor = getattr(module, "mup_attention_factor", 1.0) * site.factor
        setattr(module, _FIXED, True)


_SCALED_CLASSES: dict[type, type] = {}


def _query_scaled(cls: type) -> type:
    """``cls`` (an ``nn.MultiheadAttention``) with its queries multiplied by ``mup_query_scale``."""
    if getattr(cls, "_mutransfer_query_scaled", False):
        return cls
    if cls not in _SCALED_CLASSES:
        _SCALED_CLASSES[cls] = type(cls.__name__, (QueryScaled, cls), {"__module__": cls.__module__})
    return _SCALED_CLASSES[cls]


class QueryScaled:
    """Mixin for ``nn.MultiheadAttention``: the forward pass sees the query projection (weight
    rows and bias) multiplied by ``mup_query_scale``, a product with the parameters, so gradients
    reach them as usual. The parameters themselves and the ``state_dict`` are untouched."""

    _mutransfer_query_scaled = True
    mup_query_scale: float = 1.0

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        E, c = self.embed_dim, self.mup_query_scale
        params = self._parameters
        saved = dict(params)
        try:
            if self._qkv_same_embed_dim:
                w = params["in_proj_weight"]
                params["in_proj_weight"] = torch.cat([w[:E] * c, w[E:]])
            else:
                params["q_proj_weight"] = params["q_proj_weight"] * c
            if params.get("in_proj_bias") is not None:
                b = params["in_proj_bias"]
                params["in_proj_bias"] = torch.cat([b[:E] * c, b[E:]])
            return super().forward(*args, **kwargs)
        finally:
            params.update(saved)

    def __reduce_ex__(self, protocol: int):  # pickles as the user's class with the scale as state
        state = self.__dict__.copy()
        return (_rebuild_query_scaled, (type(self).__mro__[2], state))


def _rebuild_query_scaled(cls: type, state: dict) -> nn.Module:
    module = cls.__new__(_query_scaled(cls))
    module.__dict__.update(state)
    return module
