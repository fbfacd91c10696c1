"""Seeing the attention a model computes, whatever module computes it and however.

A ``TorchFunctionMode`` is active while a plan runs its one forward pass and while a coordinate
check runs its probe batches (never in training), with a stack of the modules running, kept by
global module hooks, so each call is named after the innermost one. It reads three kinds of
attention:

- ``sdpa``: ``F.scaled_dot_product_attention``, its ``scale`` (default ``1/sqrt(d_head)``);
- ``mha``: ``nn.MultiheadAttention`` through ``F.multi_head_attention_forward``, always
  ``1/sqrt(d_head)`` (times the queries' multiplier a plan may have given it);
- ``softmax``: attention written out, ``softmax(scale * q @ k^T + mask)``: the product of two
  activations of 3 dimensions or more (``matmul``, ``@``, ``bmm``, ``baddbmm``'s ``alpha``)
  followed through views, masks and multiplications or divisions by numbers into a softmax.
  The scale is the product of those numbers (GPT-2's eager ``/ sqrt(d)``, Bloom's ``alpha``).

On the way it notes the parameters used as ``F.linear`` weights, which tells a raw
``(out, in)`` tensor (a router) from an embedding-like one.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from mutransfer.scaling.attention import AttentionCall, AttentionSite
from mutransfer.scaling.roles import canonical_name

__all__ = ["calls", "extrapolate", "intercept", "pair", "static_sites"]

_MHA_ARGS = inspect.signature(F.multi_head_attention_forward)
T = torch.Tensor
_PRODUCTS = {torch.matmul, T.matmul, T.__matmul__, torch.bmm, T.bmm}
_SCALED_PRODUCTS = {torch.baddbmm, T.baddbmm}
_MULTIPLY = {torch.mul, T.mul, T.__mul__, T.__rmul__}
_DIVIDE = {torch.div, torch.true_divide, T.div, T.__truediv__}
_KEEP = {  # ops that carry the logits along unscaled: views, dtypes, masks
    T.view, T.reshape, torch.reshape, T.transpose, torch.transpose, T.permute, T.contiguous, T.to,
    T.float, T.type_as, T.masked_fill, torch.masked_fill, torch.add, T.add, T.__add__, T.__radd__,
    torch.sub, T.sub, T.__sub__, torch.where, T.__getitem__, T.view_as,
}  # fmt: skip
_SOFTMAX = {torch.softmax, F.softmax, T.softmax}


@dataclass
class _Product:
    """A product of two activations on its way to a softmax: its factors and the scale so far."""

    a: torch.Tensor  # (..., T, d)
    b: torch.Tensor  # (..., d, S)
    scale: float


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
        self.products: dict[int, tuple[weakref.ref, _Product]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.linear is not None and func is F.linear:  # a weight used as (out, in) whatever holds it
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            if id(weight) in self.params:
                self.linear.add(self.params[id(weight)])
        if self.paused:
            return func(*args, **kwargs)
        if func in (F.scaled_dot_product_attention, F.multi_head_attention_forward):
            module = self._module()
            read = _read_sdpa if func is F.scaled_dot_product_attention else _read_mha
            (q, k), scale, d_head, kind = read(module, args, kwargs, self.tensors)
            self._emit(module, kind, q, k, scale, d_head)
            return func(*args, **kwargs)
        if func in _SOFTMAX:
            found = self._product(args[0] if args else kwargs.get("input"))
            if found is not None:
                q, k = found.a, found.b.transpose(-2, -1)
                self._emit(self._module(), "softmax", q.detach(), k.detach(), found.scale, q.shape[-1])
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        self._follow(func, args, kwargs, out)
        return out

    def _follow(self, func, args, kwargs, out) -> None:
        """Carry a product of activations through the ops between it and a softmax."""
        if not isinstance(out, torch.Tensor):
            return
        product = None
        if func in _PRODUCTS and len(args) >= 2 and _activations(args[0], args[1]):
            product = _Product(args[0], args[1], 1.0)
        elif func in _SCALED_PRODUCTS:
            b1, b2 = (args[1], args[2]) if len(args) >= 3 else (kwargs.get("batch1"), kwargs.get("batch2"))
            if b1 is not None and _activations(b1, b2):
                product = _Product(b1, b2, float(kwargs.get("alpha", args[4] if len(args) > 4 else 1.0)))
        elif func in _MULTIPLY or func in _DIVIDE:
            tracked = [self._product(a) for a in args[:2]]
            numbers = [_number(a) for a in args[:2]]
            for i in (0, 1):
                if tracked[i] is not None and numbers[1 - i] is not None:
                    n = numbers[1 - i]
                    scale = tracked[i].scale * n if func in _MULTIPLY else tracked[i].scale / n
                    product = _Product(tracked[i].a, tracked[i].b, scale)
        elif func in _KEEP:
            product = next((p for p in map(self._product, args[:2]) if p is not None), None)
        elif func in (torch.cat, torch.concat) and args and isinstance(args[0], list | tuple) and args[0]:
            product = self._product(args[0][0])  # logits with an extra column (attention sinks)
        if product is not None:
            self.products[id(out)] = (weakref.ref(out), product)

    def _product(self, value: Any) -> _Product | None:
        entry = self.products.get(id(value)) if isinstance(value, torch.Tensor) else None
        return entry[1] if entry is not None and entry[0]() is value else None

    def _module(self) -> nn.Module | None:
        return next((m for m in reversed(self.stack) if id(m) in self.names), None)

    def _emit(self, module, kind: str, q, k, scale: float, d_head: int) -> None:
        name = self.names.get(id(module), "")
        index = self.counts[f"{name}:{kind}"]
        self.counts[f"{name}:{kind}"] += 1
        mha = kind == "mha" and isinstance(module, nn.MultiheadAttention)
        fix = "query" if mha else _attribute(module, scale)
        q, k = (q, k) if self.tensors else (None, None)
        self.on_call(AttentionCall(name, kind, index, d_head, scale, fix, q, k))

    @contextlib.contextmanager
    def pause(self) -> Iterator[None]:
        """Attention the caller computes itself (a coordinate check's copy of a module) is not the model's."""
        was, self.paused = self.paused, True
        try:
            yield
        finally:
            self.paused = was


def _activations(a: Any, b: Any) -> bool:
    """Two batched activations (not weights): the only products attention logits come from."""
    tensors = [t for t in (a, b) if isinstance(t, torch.Tensor) and not isinstance(t, nn.Parameter)]
    return len(tensors) == 2 and all(t.dim() >= 3 and t.is_floating_point() for t in tensors)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, torch.Tensor) and value.dim() == 0 and value.device.type != "meta":
        return float(value)
    return None


def _attribute(module: nn.Module | None, scale: float) -> str:
    """A float attribute of ``module`` that is the scale (``*name``) or its inverse (``/name``):
    the one a plan can change to make the attention muP without touching the code."""
    if module is None:
        return ""
    for name in ("scaling", *sorted(k for k, v in vars(module).items() if isinstance(v, float))):
        value = getattr(module, name, None)
        if isinstance(value, float) and value > 0:
            if math.isclose(value, scale, rel_tol=1e-9):
                return f"*{name}"
            if math.isclose(1 / value, scale, rel_tol=1e-9):
                return f"/{name}"
    return ""


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


def calls(
    model: nn.Module, example: Sequence[Any] | Mapping[str, Any], linear: set[str] | None = None
) -> dict[tuple, AttentionCall]:
    """The attention calls of one forward pass of ``example``, by (module, function, index);
    ``linear`` collects the parameters used as ``F.linear`` weights on the way."""
    found = _calls(model, example, linear)
    return (
        _confirmed(model, example, found)
        if any(c.fix[:1] in "*/" and c.fix for c in found.values())
        else found
    )


def _calls(model: nn.Module, example: Any, linear: set[str] | None = None) -> dict[tuple, AttentionCall]:
    seen: list[AttentionCall] = []
    with intercept(model, seen.append, linear=linear), torch.no_grad():
        model(**example) if isinstance(example, Mapping) else model(*example)
    return {(c.module, c.function, c.index): c for c in seen}


def _confirmed(
    model: nn.Module, example: Any, found: dict[tuple, AttentionCall]
) -> dict[tuple, AttentionCall]:
    """Keep an attribute as a call's fix only if doubling it really moves the call's scale, by 2
    (``*name``) or 1/2 (``/name``): an attribute that merely equals the scale is not touched."""
    modules = {canonical_name(n): m for n, m in model.named_modules()}
    attributes = {(c.module, c.fix[1:]) for c in found.values() if c.fix[:1] in ("*", "/")}
    saved = {key: getattr(modules[key[0]], key[1]) for key in attributes}
    try:
        for (module, name), value in saved.items():
            setattr(modules[module], name, 2 * value)
        moved = _calls(model, example)
    finally:
        for (module, name), value in saved.items():
            setattr(modules[module], name, value)
    out = {}
    for key, call in found.items():
        if call.fix[:1] in ("*", "/"):
            want = call.scale * (2 if call.fix[0] == "*" else 0.5)
            again = moved.get(key)
            if again is None or not math.isclose(again.scale, want, rel_tol=1e-6):
                call = replace(call, fix="")
        out[key] = call
    return out


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
