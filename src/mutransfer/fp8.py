"""Simulated FP8 training on any device: a plain cast of every matmul's operands, no scaling factors.

FP8 GEMMs take E4M3 activations and weights and E5M2 gradients. Without a per-tensor scale,
whatever lies outside a format's range is lost (clipped to its largest value, or flushed to zero
below its smallest subnormal); keeping tensors near unit scale so that a plain cast loses nothing
is what unit scaling (u-muP, Blake et al., ICLR 2025) is meant to buy. This module lets a test or
benchmark check that claim in float32 on a CPU::

    with simulated_fp8():
        loss = model(x).logsumexp(-1).mean()
        loss.backward()
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["E4M3", "E5M2", "CastE4M3", "CastGradE5M2", "SimulatedFP8Mode", "cast", "simulated_fp8"]

E4M3 = torch.float8_e4m3fn  # 3 mantissa bits, max 448, smallest subnormal 2**-9, no inf
E5M2 = torch.float8_e5m2  # 2 mantissa bits, max 57344, smallest subnormal 2**-16, has inf


def cast(x: torch.Tensor, dtype: torch.dtype, *, saturate: bool = True) -> torch.Tensor:
    """``x`` rounded to ``dtype`` and back to its own dtype: a plain cast, no scale.

    What torch 2.13 does on CPU (measured from float32, float64, bfloat16 and float16, contiguous
    and strided, short and long tensors; ``saturate=False`` gives exactly this):

    - both formats round to nearest, ties to even: in E4M3 1 + 2**-4 -> 1.0, 1 + 3 * 2**-4 -> 1.25;
    - E4M3 (``float8_e4m3fn``) *saturates*: any |x| > 448, even +-inf, becomes +-448, not NaN;
    - E5M2 overflows to inf: 57344 < |x| < 61440 rounds to +-57344, |x| >= 61440 (the midpoint
      to 2**16) and +-inf become +-inf;
    - below the smallest subnormal, values flush to signed zero: |x| <= 2**-10 in E4M3,
      |x| <= 2**-17 in E5M2 (half the smallest subnormal, a tie, rounds to even, i.e. 0);
    - NaN stays NaN.

    ``saturate=True`` (the default) first clamps to +-``finfo(dtype).max``, so E5M2 overflow and
    infinities give +-57344 as well, NaN still propagates, and E4M3 is unchanged. It is the default
    because it is what FP8 hardware does: NVIDIA's ``cvt`` to e4m3x2/e5m2x2 exists only with
    ``.satfinite`` (PTX ISA), and a simulation should not blow up in E5M2 where the GEMM it models
    would not. It also makes the result independent of how a torch version or device casts
    out-of-range values.
    """
    if saturate:
        bound = torch.finfo(dtype).max
        x = x.clamp(-bound, bound)
    return x.to(dtype).to(x.dtype)


class CastE4M3(torch.autograd.Function):
    """Forward: cast to E4M3. Backward: the gradient passes straight through (a straight-through
    estimator): rounding has zero derivative almost everywhere, and FP8 training treats the cast as
    the identity so that gradients reach the high-precision weights and activations."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, saturate: bool = True) -> torch.Tensor:
        return cast(x, E4M3, saturate=saturate)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class CastGradE5M2(torch.autograd.Function):
    """Forward: the identity. Backward: the incoming gradient cast to E5M2, which is what the
    backward GEMMs of the op that produced ``x`` then consume."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, saturate: bool = True) -> torch.Tensor:
        ctx.saturate = saturate
        # a detached alias, not ``x`` or a view of it: no copy, and later in-place ops on the
        # output stay legal (an input returned as-is counts as a view that may not be modified)
        return x.detach()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return cast(grad, E5M2, saturate=ctx.saturate), None


# func -> (counter name, positions of the operands to cast, their keyword names). Extra terms
# (bias, addmm's ``input``) are not cast: FP8 GEMMs add them in the higher output precision.
_MM = ("input", "mat2")
_OPS: dict[Callable[..., Any], tuple[str, tuple[int, ...], tuple[str, ...]]] = {
    F.linear: ("linear", (0, 1), ("input", "weight")),
    torch.matmul: ("matmul", (0, 1), ("input", "other")),
    torch.Tensor.matmul: ("matmul", (0, 1), ("input", "other")),
    torch.Tensor.__matmul__: ("matmul", (0, 1), ("other",)),
    torch.Tensor.__rmatmul__: ("matmul", (0, 1), ("other",)),
    torch.mm: ("mm", (0, 1), _MM),
    torch.Tensor.mm: ("mm", (0, 1), _MM),
    torch.bmm: ("bmm", (0, 1), _MM),
    torch.Tensor.bmm: ("bmm", (0, 1), _MM),
    torch.addmm: ("addmm", (1, 2), ("mat1", "mat2")),
    torch.Tensor.addmm: ("addmm", (1, 2), ("mat1", "mat2")),
    torch.baddbmm: ("baddbmm", (1, 2), ("batch1", "batch2")),
    torch.Tensor.baddbmm: ("baddbmm", (1, 2), ("batch1", "batch2")),
    F.conv1d: ("conv1d", (0, 1), ("input", "weight")),
    F.conv2d: ("conv2d", (0, 1), ("input", "weight")),
    F.scaled_dot_product_attention: ("sdpa", (0, 1, 2), ("query", "key", "value")),
    torch.einsum: ("einsum", (), ()),  # every tensor operand, whatever the call form
}


class SimulatedFP8Mode(TorchFunctionMode):
    """While active, every matmul-like call computes on E4M3-cast operands and its output's
    gradient is cast to E5M2.

    Intercepted: ``F.linear``, ``torch.matmul``/``Tensor.matmul``/``@`` (``__matmul__``,
    ``__rmatmul__``), ``mm``, ``bmm``, ``addmm``, ``baddbmm`` (functions and methods),
    ``F.conv1d``/``F.conv2d`` and ``torch.einsum``; biases and added terms are not cast. For
    ``F.scaled_dot_product_attention`` q, k and v are cast and its output's gradient, but not what
    runs inside it: the softmax probabilities (the second GEMM's input) and the gradients between
    its two GEMMs stay in full precision. Everything else runs unchanged.

    The product is computed in the operands' own dtype, modelling FP8 GEMMs that accumulate in
    higher precision. Only floating tensors are cast. Under ``torch.no_grad()`` the forward cast
    still applies, so evaluation runs in simulated FP8 too. Calls made by an intercepted op
    (einsum's bmm, say) are not cast again: torch disables the mode inside ``__torch_function__``.
    ``counts`` records how many calls had an operand cast, per op name (``"linear"``, ``"sdpa"``...).
    """

    def __init__(self, saturate: bool = True) -> None:
        super().__init__()
        self.saturate = saturate
        self.counts: Counter[str] = Counter()

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        op = _OPS.get(func)
        if op is None:
            return func(*args, **kwargs)
        name, positions, keywords = op
        n_cast = 0

        def fp8(t: Any) -> Any:
            nonlocal n_cast
            if not (isinstance(t, torch.Tensor) and t.is_floating_point()):
                return t
            n_cast += 1
            if t.requires_grad and torch.is_grad_enabled():
                return CastE4M3.apply(t, self.saturate)
            return cast(t, E4M3, saturate=self.saturate)

        if name == "einsum":  # "ij,jk", a, b / "ij,jk", [a, b] / a, [0, 1], b, [1, 2]
            args = tuple(type(a)(map(fp8, a)) if isinstance(a, (list, tuple)) else fp8(a) for a in args)
        else:
            args = tuple(fp8(a) if i in positions else a for i, a in enumerate(args))
            kwargs = {k: fp8(v) if k in keywords else v for k, v in kwargs.items()}
        if n_cast:
            self.counts[name] += 1
        out = func(*args, **kwargs)  # the mode is off in here: no recursion, no double cast
        if isinstance(out, torch.Tensor) and out.is_floating_point() and out.requires_grad:
            out = CastGradE5M2.apply(out, self.saturate)
        return out


def simulated_fp8(
    enabled: bool = True, *, saturate: bool = True
) -> SimulatedFP8Mode | contextlib.nullcontext:
    """A fresh :class:`SimulatedFP8Mode` to use as a context manager, or, when ``enabled`` is
    false, a ``contextlib.nullcontext()`` so that the switched-off path costs nothing."""
    return SimulatedFP8Mode(saturate=saturate) if enabled else contextlib.nullcontext()
