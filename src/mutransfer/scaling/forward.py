"""The two muP factors that live in the forward pass, and the library's mechanism for each.

1. Attention logits: muP uses ``1/d_head`` instead of ``1/sqrt(d_head)``. The model owns its
   attention, so it asks for the scale::

       scale = mutransfer.attention_scale(d_head, base_d_head=64)
       y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)

   At ``d_head == base_d_head`` this is the usual ``1/sqrt(d_head)``. Fused attention never
   materialises the logits, so a model that wants them checked (``mutransfer.coord_check``)
   holds an ``AttentionLogits`` hook point and calls ``observe(q, k, scale)`` beside SDPA.

2. Tied input/output embeddings: one tensor cannot take the embedding's and the readout's
   optimizer settings at once, so the plan gives it the embedding's and multiplies the readout's
   input by ``1/m`` (TP5's Table 8 form for the readout). ``Plan.attach_`` registers a
   ``ScaleInput`` forward pre-hook on the readout module for this. It survives ``deepcopy``
   and ``torch.compile``; it is not in the ``state_dict``, so call ``attach_`` again after
   building a model to load a checkpoint into.

3. A residual branch whose last module is not a ``Linear``/``Conv`` (so its depth multiplier
   cannot move into a weight) gets a ``ScaleOutput`` forward hook from ``Plan.attach_``, with
   the same life cycle as ``ScaleInput``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["AttentionLogits", "ScaleInput", "ScaleOutput", "attention_scale", "plan_hooks", "readout_hooks"]


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
        if k.shape[-3] != q.shape[-3]:  # grouped-query attention: a key head serves a group of query heads
            k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
        return (q @ k.transpose(-2, -1)) * scale

    def observe(self, q: torch.Tensor, k: torch.Tensor, scale: float) -> None:
        if self._forward_hooks:
            self(q, k, scale)


class ScaleInput:
    """Forward pre-hook multiplying a module's first input by a constant."""

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return (args[0] * self.scale, *args[1:])

    def __repr__(self) -> str:
        return f"ScaleInput({self.scale:g})"


class ScaleOutput:
    """Forward hook multiplying a module's output (a tensor, or a tuple's first tensor) by a constant."""

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def __call__(self, module: nn.Module, args: tuple, output):
        if isinstance(output, tuple):
            return (output[0] * self.scale, *output[1:])
        return output * self.scale

    def __repr__(self) -> str:
        return f"ScaleOutput({self.scale:g})"


def plan_hooks(model: nn.Module) -> list[tuple[str, ScaleInput | ScaleOutput]]:
    """Every hook a plan registered in ``model`` (tied readouts, hooked residual branches)."""
    return readout_hooks(model) + [
        (name, hook)
        for name, module in model.named_modules()
        for hook in module._forward_hooks.values()
        if isinstance(hook, ScaleOutput)
    ]


def readout_hooks(model: nn.Module) -> list[tuple[str, ScaleInput]]:
    """Every ``ScaleInput`` hook registered in ``model``, with its module name."""
    return [
        (name, hook)
        for name, module in model.named_modules()
        for hook in module._forward_pre_hooks.values()
        if isinstance(hook, ScaleInput)
    ]
