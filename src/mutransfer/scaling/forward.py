"""The forward multipliers a plan attaches with hooks, and how to find them again.

1. Tied input/output embeddings: one tensor cannot take the embedding's and the readout's
   optimizer settings at once, so the plan gives it the embedding's and multiplies the readout's
   input by ``1/m`` (TP5's Table 8 form for the readout). ``Plan.attach_`` registers a
   ``ScaleInput`` forward pre-hook on the readout module for this. It survives ``deepcopy``
   and ``torch.compile``; it is not in the ``state_dict``, so call ``attach_`` again after
   building a model to load a checkpoint into.

2. A residual branch whose last module is not a ``Linear``/``Conv`` (so its depth multiplier
   cannot move into a weight) gets a ``ScaleOutput`` forward hook from ``Plan.attach_``, with
   the same life cycle as ``ScaleInput``.

3. Under u-muP, every Linear and Conv layer's weight multiplier: a ``ScaleLayer`` forward hook
   scales the layer's output, its bias excluded (the weights stay at unit scale, which is what
   an FP8 cast needs), with the same life cycle.

The attention scale is the model's own: see ``attention.py``.
"""

from __future__ import annotations

import torch
from torch import nn

from mutransfer.unit import scale

__all__ = ["ScaleInput", "ScaleLayer", "ScaleOutput", "plan_hooks", "readout_hooks"]


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


class ScaleLayer(ScaleOutput):
    """Forward hook giving a layer ``W x + b`` the output ``forward * (W x) + b``, with the
    gradient of ``W x`` multiplied by ``backward`` (u-muP's weight multiplier on a unit weight).
    ``bias_dim``: where the bias lies in the output (-1 for Linear, 1 for Conv)."""

    def __init__(self, forward: float, backward: float, bias_dim: int = -1) -> None:
        super().__init__(forward)
        self.backward, self.bias_dim = backward, bias_dim

    def __call__(self, module: nn.Module, args: tuple, output):
        bias = getattr(module, "bias", None)
        if not isinstance(bias, nn.Parameter | torch.Tensor):
            return scale(output, self.scale, self.backward)
        view = [1] * output.dim()
        view[self.bias_dim] = -1
        bias = bias.view(view)
        return scale(output - bias, self.scale, self.backward) + bias

    def __repr__(self) -> str:
        return f"ScaleLayer({self.scale:.4g}, backward {self.backward:.4g})"


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
