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

The third forward factor, the attention scale, is the model's own: see ``attention.py``.
"""

from __future__ import annotations

from torch import nn

__all__ = ["ScaleInput", "ScaleOutput", "plan_hooks", "readout_hooks"]


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
