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

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mutransfer.errors import MutransferError
from mutransfer.scaling.roles import canonical_name

__all__ = [
    "AttentionCall",
    "AttentionLogits",
    "AttentionSite",
    "attention_scale",
    "fix_",
    "fixed_modules",
    "logits",
]

_FIXED = "_mutransfer_attention_fixed"  # set on a module by fix_: a second fix would scale twice


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
    fix: str = (
        ""  # how a plan can change it: "query" (nn.MultiheadAttention), "*name" / "/name" (an attribute)
    )
    q: torch.Tensor | None = None
    k: torch.Tensor | None = None

    @property
    def name(self) -> str:
        """How the coordinate check names it: ``blocks.0.attn.sdpa`` (``#2`` for a second call)."""
        where = f"{self.module}." if self.module else ""
        return f"{where}{self.function}" + (f"#{self.index + 1}" if self.index else "")


@dataclass(frozen=True)
class AttentionSite:
    """One attention of the model, at base and at target shape: its head size and logit scale.

    ``fix`` is how ``Plan.attach_`` makes it muP when it is not: ``"query"`` (an
    ``nn.MultiheadAttention``: its queries are multiplied), ``"*name"`` / ``"/name"`` (the scale
    is a float attribute of the module, or its inverse, as Hugging Face's ``scaling`` and Bloom's
    ``inv_norm_factor`` are: the attribute is multiplied or divided), or ``""`` (the scale is
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


def fixed_modules(model: nn.Module) -> list[str]:
    """Modules whose attention a plan already fixed (``fix_``)."""
    return [n for n, m in model.named_modules() if getattr(m, _FIXED, False)]


def fix_(model: nn.Module, sites: Sequence[AttentionSite]) -> None:
    """Make every fixable non-muP site muP, exactly: the queries, or the attribute the scale is
    read from (``*name``: the scale itself, multiplied; ``/name``: a divisor, divided)."""
    modules = {canonical_name(n): m for n, m in model.named_modules()}
    for site in sites:
        if site.is_mup or not site.fix:
            continue
        module = modules.get(site.module)
        if site.fix == "query" and isinstance(module, nn.MultiheadAttention):
            module.__class__ = _query_scaled(type(module))
            module.mup_query_scale = site.factor
        else:
            how, name = site.fix[0], site.fix[1:]
            value = getattr(module, name, None)
            if not isinstance(value, float):
                what = "no such module" if module is None else f"{site.module} has no attribute {name!r}"
                raise MutransferError(
                    f"the plan fixes the attention {site.name} through its attribute {name!r}, but in this "
                    f"model {what} ({type(module).__name__} there). Fix: build the model with the plan's "
                    "factory at its target shape, or make the plan again for this model."
                )
            setattr(module, name, value * site.factor if how == "*" else value / site.factor)
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
