"""Hugging Face ``transformers`` models in muP, without a line of their code changed.

    import mutransfer, mutransfer.hf
    make = mutransfer.hf.factory("gpt2", n_embd=64, n_layer=2, n_head=4)  # this config is the base
    plan = mutransfer.plan(make, base={"width": 64}, target={"width": 1024})
    model = plan.init_(make(width=1024))  # transformers' init, corrected for width
    optimizer = plan.optimizer(model, "adamw", lr=3e-3, weight_decay=0.1)
    ...
    mutransfer.hf.save_pretrained(model, plan, "target/")  # from_pretrained gives the same logits

``factory`` returns a callable ``make(width=..., depth=..., vocab_size=..., block_size=...)``
that builds the model transformers builds for the config with its width keys scaled, and does
three things to it, through what transformers exposes:

- every attention module's ``scaling`` (the logit scale its attention function is called with,
  eager and sdpa alike) is multiplied by ``sqrt(base_head_dim / head_dim)``: muP's ``1/d_head``,
  equal to the model's own ``1/sqrt(d_head)`` at the base head size (``mup_attention=False``
  leaves it, for standard parametrization);
- its attention functions are registered wrappers (``AttentionInterface``: "mutransfer_sdpa",
  "mutransfer_eager") that show ``q``, ``k`` and the scale to an ``AttentionLogits`` hook point,
  so the coordinate check's ``scale`` measure sees the logits; they compute nothing unless a
  check listens, then call transformers' own function;
- the KV cache is off (``use_cache=False``): training needs none.

Transformers initialises with a fixed std (``initializer_range``), so the factory declares
``init_law = "constant"`` and plans made from it correct the init accordingly. GPT-2's ``Conv1D``
stores its weight as (in, out); the roles read it that way round.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mutransfer.data.batches import digest
from mutransfer.errors import MutransferError
from mutransfer.scaling.attention import AttentionLogits
from mutransfer.scaling.forward import ScaleOutput, readout_hooks
from mutransfer.scaling.plan import Plan

__all__ = ["HFFactory", "factory", "load_pretrained", "save_pretrained"]

TESTED = "transformers>=5.25,<6"


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise MutransferError(
            f"mutransfer.hf needs transformers: pip install 'mutransfer[hf]' (or '{TESTED}')."
        ) from None
    major = int(transformers.__version__.split(".")[0])
    if major != 5:
        raise MutransferError(
            f"mutransfer.hf is tested with {TESTED}; this is transformers {transformers.__version__}. "
            f"Fix: pip install '{TESTED}'."
        )
    _register(transformers)
    return transformers


@dataclass(frozen=True)
class _Arch:
    """What the library knows of one model type: which config keys grow with the width, what
    counts layers and positions, each residual branch's last layer (for depth plans), and the
    module whose output only the readout reads (to fold a tied readout's multiplier into)."""

    width: tuple[str, ...]
    heads: tuple[str, ...]
    layers: str
    positions: str
    residual: tuple[str, ...]
    final_norm: str


_LLAMA_LIKE = _Arch(
    width=("hidden_size", "intermediate_size"),
    heads=("num_attention_heads", "num_key_value_heads"),
    layers="num_hidden_layers",
    positions="max_position_embeddings",
    residual=("model.layers.*.self_attn.o_proj", "model.layers.*.mlp.down_proj"),
    final_norm="model.norm",
)
ARCHITECTURES: dict[str, _Arch] = {
    "gpt2": _Arch(
        width=("n_embd",),  # n_inner joins when set; unset it is 4 * n_embd and grows by itself
        heads=("n_head",),
        layers="n_layer",
        positions="n_positions",
        residual=("transformer.h.*.attn.c_proj", "transformer.h.*.mlp.c_proj"),
        final_norm="transformer.ln_f",
    ),
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
}


class HFFactory:
    """``make(width=..., ...)`` -> a transformers model in muP form; see the module docstring.

    The config given is the base: at its own width the model is exactly transformers' model.
    """

    init_law = "constant"  # transformers' initializer_range: the same std at every width
    sp_shape: Mapping[str, Any] = {"mup_attention": False}  # standard parametrization's keywords

    def __init__(
        self,
        config: Any,
        *,
        width: Sequence[str] | None = None,
        heads: Sequence[str] | None = None,
        attn_implementation: str = "sdpa",
        model_class: Any = None,
    ) -> None:
        transformers = _transformers()
        if isinstance(config, str):
            config = transformers.AutoConfig.for_model(config)
        arch = _arch(getattr(config, "model_type", None))
        if attn_implementation not in ("sdpa", "eager"):
            raise MutransferError(
                f"attn_implementation must be 'sdpa' or 'eager', got {attn_implementation!r}."
            )
        self.config, self.arch = config, arch
        self.attn_implementation = attn_implementation
        self.model_class = model_class or transformers.AutoModelForCausalLM
        default = list(arch.width)
        if config.model_type == "gpt2" and config.n_inner is not None:
            default.append("n_inner")
        self.width_keys = tuple(width if width is not None else default)
        self.head_keys = tuple(heads or ())
        for key in (*self.width_keys, *self.head_keys):
            if not isinstance(getattr(config, key, None), int):
                raise MutransferError(
                    f"config key {key!r} is not an integer of this {type(config).__name__}."
                )
        self.base_width = config.hidden_size
        self.base_head_dim = _head_dim(config)
        self.residual = arch.residual  # mutransfer.plan(..., depth="depth", residual=make.residual)

    def __call__(
        self,
        width: int | None = None,
        depth: int | None = None,
        vocab_size: int | None = None,
        block_size: int | None = None,
        mup_attention: bool = True,
        base_head_dim: int | None = None,
    ) -> nn.Module:
        changes: dict[str, Any] = {"use_cache": False}
        if width is not None:
            ratio = Fraction(width, self.base_width)
            for key in (*self.width_keys, *self.head_keys):
                grown = getattr(self.config, key) * ratio
                if grown.denominator != 1:
                    raise MutransferError(
                        f"width {width}: {key} = {getattr(self.config, key)} x {width}/{self.base_width} "
                        "is not a whole number. Fix: widths that scale every width key to an integer."
                    )
                changes[key] = int(grown)
        if depth is not None:
            changes[self.arch.layers] = depth
        if vocab_size is not None:
            changes["vocab_size"] = vocab_size
            for token in ("bos_token_id", "eos_token_id", "pad_token_id"):
                if (
                    isinstance(getattr(self.config, token, None), int)
                    and getattr(self.config, token) >= vocab_size
                ):
                    changes[token] = None  # outside a small vocabulary (transformers warns otherwise)
        if block_size is not None:
            changes[self.arch.positions] = block_size
        if hasattr(self.config, "head_dim"):  # stored, not derived: follow the heads or the width
            heads = changes.get("num_attention_heads", self.config.num_attention_heads)
            derived = self.config.head_dim == self.config.hidden_size // self.config.num_attention_heads
            changes["head_dim"] = (
                changes.get("hidden_size", self.config.hidden_size) // heads if derived else None
            )
            if changes["head_dim"] is None:
                del changes["head_dim"]
        config = type(self.config).from_dict({**self.config.to_dict(), **_stored_keys(self.config, changes)})
        model = self.model_class.from_config(
            config, attn_implementation=f"mutransfer_{self.attn_implementation}"
        )
        factor = 1.0
        if mup_attention:
            factor = math.sqrt((base_head_dim or self.base_head_dim) / _head_dim(config))
        _prepare_attention(model, factor)
        return model

    def __repr__(self) -> str:
        """Names the config too (a digest of it): grids and sweeps record the factory by this, so
        a saved grid is not resumed under another config."""
        config = digest(json.dumps(self.config.to_dict(), sort_keys=True, default=str))
        return (
            f"mutransfer.hf.factory({self.config.model_type!r}, width={list(self.width_keys)}, "
            f"heads={list(self.head_keys)}, base width {self.base_width}, config {config})"
        )


def factory(
    config: Any,
    *,
    width: Sequence[str] | None = None,
    heads: Sequence[str] | None = None,
    attn_implementation: str = "sdpa",
    model_class: Any = None,
    **config_kwargs: Any,
) -> HFFactory:
    """A model factory for ``mutransfer.plan``, ``coord_check``, ``grid``, sweeps and transfers.

    ``config``: a transformers config, or a model type ("gpt2", "llama", "mistral", "qwen2",
    "qwen3") with ``config_kwargs``; it is the base shape. ``width``: the config keys that grow
    with the width (default: the hidden and FFN sizes). ``heads``: head-count keys that grow too,
    keeping the head size (default: none, so the head size grows). ``model_class``: default
    ``AutoModelForCausalLM``.
    """
    if isinstance(config, str):
        _arch(config)
        config = _transformers().AutoConfig.for_model(config, **config_kwargs)
    elif config_kwargs:
        config = type(config).from_dict({**config.to_dict(), **config_kwargs})
    return HFFactory(
        config, width=width, heads=heads, attn_implementation=attn_implementation, model_class=model_class
    )


def _arch(model_type: str | None) -> _Arch:
    arch = ARCHITECTURES.get(model_type)
    if arch is None:
        raise MutransferError(
            f"mutransfer.hf does not know how to scale model type {model_type!r}: which keys grow with "
            f"the width, where its query and final norm are. Known: {sorted(ARCHITECTURES)}. Fix: use one "
            "of them, or build the model yourself, plan it with mutransfer.plan_from_model(model, "
            "base_dims=...) and set its attention scale with mutransfer.attention_scale."
        )
    return arch


# ---- attention -------------------------------------------------------------------------------


def _head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _stored_keys(config: Any, changes: Mapping[str, Any]) -> dict[str, Any]:
    """Changes keyed as ``to_dict`` stores them (GPT-2 keeps ``hidden_size`` as ``n_embd``)."""
    names = getattr(config, "attribute_map", {})
    return {names.get(k, k): v for k, v in changes.items()}


def _attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if hasattr(m, "scaling") and hasattr(m, "head_dim")]


def _prepare_attention(model: nn.Module, factor: float) -> None:
    """muP's attention scale and the logits' hook point, on every attention module."""
    found = _attention_modules(model)
    if not found:
        raise MutransferError(f"{type(model).__name__} has no attention module with a `scaling` attribute.")
    for _, module in found:
        module.scaling = module.scaling * factor
        module.mup_attention_factor = factor  # what save_pretrained folds into the query
        module.mup_logits = AttentionLogits()


def _observed(inner: str):
    """An attention function that shows q, k and the scale to the module's ``mup_logits``, then
    runs transformers' own ``inner`` implementation (the model's eager function, or sdpa)."""

    def attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
        logits = getattr(module, "mup_logits", None)
        if logits is not None:
            logits.observe(query, key, query.shape[-1] ** -0.5 if scaling is None else scaling)
        if inner == "eager":
            function = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
            if function is None:
                raise MutransferError(
                    f"{type(module).__name__} has no module-level eager_attention_forward; use "
                    "attn_implementation='sdpa'."
                )
        else:
            from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

            function = ALL_ATTENTION_FUNCTIONS[inner]
        return function(module, query, key, value, attention_mask, scaling=scaling, **kwargs)

    return attention


def _register(transformers: Any) -> None:
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    if "mutransfer_sdpa" in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        return
    for inner in ("sdpa", "eager"):
        transformers.AttentionInterface.register(f"mutransfer_{inner}", _observed(inner))
        AttentionMaskInterface.register(f"mutransfer_{inner}", ALL_MASK_ATTENTION_FUNCTIONS[inner])


# ---- checkpoints -----------------------------------------------------------------------------


def save_pretrained(model: nn.Module, plan: Plan, path: str | Path, **kwargs: Any) -> None:
    """Write ``model`` with ``save_pretrained`` so that plain ``from_pretrained`` computes the
    same logits, and ``load_pretrained`` gives back the muP model and its plan.

    The two muP factors that live in the forward pass are folded into weights, exactly (each is
    a product with one tensor that nothing else reads): the attention factor into the query
    (the ``q_norm`` gain where there is one, else the query rows of the projection), a tied
    readout's ``1/m`` into the final norm's gain and bias. The plan and the factors go into the
    config as ``mutransfer``. The model itself is not changed.
    """
    arch = _arch(getattr(model.config, "model_type", None))
    if any(isinstance(h, ScaleOutput) for m in model.modules() for h in m._forward_hooks.values()):
        raise MutransferError(
            "save_pretrained: a residual branch multiplier lives in a forward hook, which no weight can take "
            "exactly. Fix: name the branches' last layers (residual=make.residual) so the plan absorbs it."
        )
    state = dict(model.state_dict())
    attention = {}
    for name, module in _attention_modules(model):
        factor = getattr(module, "mup_attention_factor", 1.0)
        attention[name] = factor
        if factor != 1.0:
            for key, index in _query_slices(name, module):
                state[key] = state[key].clone()
                state[key][index] *= factor
    readout = 1.0
    for _, hook in readout_hooks(model):  # the tied readout's 1/m, ahead of it the final norm
        readout = hook.scale
        for key in (f"{arch.final_norm}.weight", f"{arch.final_norm}.bias"):
            if key in state:
                state[key] = state[key] * readout
    model.config.mutransfer = {
        "plan": plan.to_dict(),
        "attention_factor": attention,
        "readout_scale": readout,
    }
    try:
        model.save_pretrained(path, state_dict=state, **kwargs)
    finally:
        del model.config.mutransfer


def load_pretrained(
    path: str | Path, *, attn_implementation: str = "sdpa", model_class: Any = None
) -> tuple[nn.Module, Plan]:
    """A checkpoint written by ``save_pretrained``, as the muP model it was (folded factors moved
    back out, hooks attached) and its plan: continue training with ``plan.optimizer(model, ...)``."""
    transformers = _transformers()
    cls = model_class or transformers.AutoModelForCausalLM
    model = cls.from_pretrained(path, attn_implementation=f"mutransfer_{attn_implementation}")
    meta = getattr(model.config, "mutransfer", None)
    if not isinstance(meta, Mapping):
        raise MutransferError(
            f"{path}: no mutransfer entry in its config; it was not written by mutransfer.hf.save_pretrained."
        )
    plan = Plan.from_dict(meta["plan"])
    arch = ARCHITECTURES[model.config.model_type]
    with torch.no_grad():
        for name, module in _attention_modules(model):
            factor = meta["attention_factor"].get(name, 1.0)
            for key, index in _query_slices(name, module):
                model.get_parameter(key)[index] /= factor
            module.scaling = module.scaling * factor
            module.mup_attention_factor = factor
            module.mup_logits = AttentionLogits()
        norm = model.get_submodule(arch.final_norm)
        for p in norm.parameters(recurse=False):
            p /= meta["readout_scale"]
    del model.config.mutransfer
    plan.attach_(model)
    return model, plan


def _query_slices(name: str, module: nn.Module) -> list[tuple[str, Any]]:
    """(state key, index) of every tensor the attention's queries are scaled by, alone."""
    if hasattr(module, "q_norm"):  # a norm after the projection would undo a factor before it
        return [(f"{name}.q_norm.{k}", ...) for k, _ in module.q_norm.named_parameters()]
    if hasattr(module, "q_proj"):
        return [(f"{name}.q_proj.{k}", ...) for k, _ in module.q_proj.named_parameters()]
    if hasattr(module, "c_attn") and hasattr(
        module, "split_size"
    ):  # GPT-2: [q | k | v] columns of (in, 3 out)
        q = slice(0, module.split_size)
        return [(f"{name}.c_attn.weight", (slice(None), q)), (f"{name}.c_attn.bias", q)]
    raise MutransferError(
        f"{type(module).__name__}: no query projection found to fold the attention factor into."
    )
