"""Unit-scaled operations: the parts of u-muP only a model's forward pass can do.

u-muP (Blake et al., ICLR 2025) is muP with Unit Scaling: every weight starts at std 1, and every
activation and gradient should start near scale one, so a plain cast to FP8 loses little and the
hyperparameters (an LR and a few alphas, all 1 by default) mean the same at every width. A plan
with ``parametrization="u-mup"`` does the weights of any model (unit init, the multipliers as
hooks, the LR rules). What it cannot do is inside the forward pass: these functions are that
part, written so a model calls them where it would call the plain op::

    x = unit.residual(x, lambda h: self.attn(self.ln1(h)), tau=taus[i])
    h = unit.activation(self.fc(h), F.gelu, alpha=alpha_ffn_act)
    logits = unit.loss_input(self.lm_head(h), alpha=alpha_loss)

The reference ``GPT`` and ``Llama`` take ``unit_scaled=True`` and the ``ALPHAS`` as keywords.

Two scale factors per op: the forward one sets the output's scale, the backward one the
gradient's. Where they differ (the residual branch, the loss) the gradient is no longer the
loss's exact gradient but a per-tensor constant times it, which Adam's update ignores (it
divides by the gradient's own size); it matters for FP8, whose gradients must stay in range.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch

__all__ = [
    "ALPHAS",
    "activation",
    "attention_output",
    "blocks",
    "check_alphas",
    "gaussian_moments",
    "glu",
    "loss_input",
    "residual",
    "residual_taus",
    "scale",
]

# u-muP's hyperparameters beside the learning rate, each 1 by default (the paper's names:
# alpha_res, alpha_res-attn-ratio, alpha_attn-softmax, alpha_ffn-act, alpha_loss-softmax).
ALPHAS = {
    "alpha_res": 1.0,  # the residual branches' share of the stream against the embedding's
    "alpha_res_attn_ratio": 1.0,  # the attention branches' share against the MLP branches'
    "alpha_attn": 1.0,  # the attention logits' multiplier (over u-muP's 1/d_head)
    "alpha_ffn_act": 1.0,  # the MLP nonlinearity's input multiplier
    "alpha_loss": 1.0,  # the output logits' multiplier (the loss softmax's temperature)
}


def check_alphas(alphas: dict[str, float]) -> None:
    """Refuse alphas away from 1 on a model that is not unit-scaled (they would do nothing)."""
    moved = {k: v for k, v in alphas.items() if v != ALPHAS[k]}
    if moved:
        raise ValueError(
            f"{moved}: the alphas are u-muP's hyperparameters and act only on the unit-scaled model. "
            "Fix: pass unit_scaled=True (with a parametrization='u-mup' plan), or leave them at 1."
        )


def blocks(
    depth: int,
    d_head: int,
    unit_scaled: bool,
    alpha_res: float = 1.0,
    alpha_res_attn_ratio: float = 1.0,
    alpha_attn: float = 1.0,
    alpha_ffn_act: float = 1.0,
    alpha_loss: float = 1.0,
) -> tuple[float | None, list[tuple[float, float, float] | None]]:
    """A transformer's unit-scaled settings: its attention scale (``alpha_attn / d_head``) and, per
    block, (tau of the attention branch, tau of the MLP branch, ``alpha_ffn_act``). Not unit-scaled:
    (None, None per block), the alphas checked to be 1."""
    if not unit_scaled:
        given = (alpha_res, alpha_res_attn_ratio, alpha_attn, alpha_ffn_act, alpha_loss)
        check_alphas(dict(zip(ALPHAS, given, strict=True)))
        return None, [None] * depth
    taus = residual_taus(depth, alpha_res, alpha_res_attn_ratio)
    return alpha_attn / d_head, [(taus[2 * i], taus[2 * i + 1], alpha_ffn_act) for i in range(depth)]


def block(
    x: torch.Tensor,
    settings: tuple[float, float, float],
    attention: Callable[[torch.Tensor], torch.Tensor],
    mlp: Callable[[torch.Tensor, float], torch.Tensor],
) -> torch.Tensor:
    """A pre-norm block's two unit residual branches; ``mlp(h, alpha_ffn_act)``."""
    tau_attn, tau_mlp, alpha = settings
    x = residual(x, attention, tau_attn)
    return residual(x, lambda h: mlp(h, alpha), tau_mlp)


class _Scale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, forward: float, backward: float) -> torch.Tensor:  # type: ignore[override]
        ctx.backward = backward
        return x * forward

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        return grad * ctx.backward, None, None


def scale(x: torch.Tensor, forward: float, backward: float) -> torch.Tensor:
    """``x * forward`` whose gradient is multiplied by ``backward`` instead (equal: a plain product)."""
    if forward == backward:
        return x * forward
    return _Scale.apply(x, forward, backward)


@functools.lru_cache(maxsize=64)
def gaussian_moments(fn: Callable[[torch.Tensor], torch.Tensor], alpha: float = 1.0) -> tuple[float, float]:
    """The mean and RMS of ``fn(alpha * x) / alpha`` for x ~ N(0, 1), by quadrature: what a
    unit-scaled op divides by so a unit input gives a unit output."""
    x = torch.linspace(-12.0, 12.0, 48001, dtype=torch.float64)
    weight = torch.exp(-0.5 * x**2) / math.sqrt(2 * math.pi) * (x[1] - x[0])
    y = fn(alpha * x) / alpha
    return float((weight * y).sum()), float((weight * y**2).sum().sqrt())


def activation(
    x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], alpha: float = 1.0
) -> torch.Tensor:
    """``fn(alpha * x) / alpha`` divided by its std for a unit Gaussian input (GELU's is 0.588)."""
    mean, rms = gaussian_moments(fn, alpha)
    return fn(alpha * x) / (alpha * math.sqrt(rms**2 - mean**2))


def glu(
    up: torch.Tensor,
    gate: torch.Tensor,
    fn: Callable[[torch.Tensor], torch.Tensor] = torch.nn.functional.silu,
    alpha: float = 1.0,
) -> torch.Tensor:
    """A gated unit ``up * fn(alpha * gate) / alpha`` at unit scale: a unit Gaussian times an
    independent ``fn`` output has the RMS of that output (its mean multiplies a zero-mean ``up``)."""
    _, rms = gaussian_moments(fn, alpha)
    return up * fn(alpha * gate) / (alpha * rms)


def residual(x: torch.Tensor, branch: Callable[[torch.Tensor], torch.Tensor], tau: float) -> torch.Tensor:
    """``(x + tau * branch(x)) / sqrt(1 + tau**2)``: a unit stream stays unit. The branch sees a
    gradient without the ``tau / sqrt(1 + tau**2)`` factor, so a deep stack's branches all get
    unit gradients (Adam ignores the constant; FP8 does not)."""
    share = tau / math.sqrt(1.0 + tau**2)
    out = branch(scale(x, 1.0, share))
    return x / math.sqrt(1.0 + tau**2) + scale(out, share, 1.0)


def residual_taus(blocks: int, alpha_res: float = 1.0, alpha_res_attn_ratio: float = 1.0) -> list[float]:
    """Each branch's tau in a stack of ``blocks`` (attention, MLP) pairs, in order.

    u-muP's rule (its Appendix G): every attention branch adds the same variance to the stream,
    every MLP branch too; the attention branches' total over the MLP branches' is
    ``alpha_res_attn_ratio**2``, and their mean over the embedding's is ``alpha_res**2``. With both
    at 1, the embedding, all attention branches and all MLP branches weigh a third each. Kept as
    a running sum of variances, in units where the embedding brings ``blocks``.
    """
    mlp = alpha_res * math.sqrt(2.0 / (1.0 + alpha_res_attn_ratio**2))
    attn = alpha_res_attn_ratio * mlp
    total, taus = float(blocks), []
    for branch in range(2 * blocks):
        a = attn if branch % 2 == 0 else mlp
        taus.append(a / math.sqrt(total))
        total += a**2
    return taus


def attention_output(y: torch.Tensor, seq_len: int, causal: bool = True) -> torch.Tensor:
    """Attention's output times its inverse scale under flat attention (logits near 0, as
    u-muP's ``1/d_head`` gives at init): position i averages i unit values (variance 1/i), so a
    causal sequence of T has mean variance H_T / T (H_T the harmonic number); non-causal 1 / T."""
    return y * _flat_attention_gain(seq_len, causal)


@functools.lru_cache(maxsize=64)
def _flat_attention_gain(seq_len: int, causal: bool) -> float:
    mean_var = sum(1.0 / i for i in range(1, seq_len + 1)) / seq_len if causal else 1.0 / seq_len
    return 1.0 / math.sqrt(mean_var)


def loss_input(logits: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """The logits times ``alpha``, with a gradient made unit: a mean cross-entropy over N tokens
    and V classes sends back about ``1 / (N * sqrt(V))`` per entry, so the backward multiplies
    by ``N * V / sqrt(V - 1)`` (the gradient of a sum of per-token losses, unit-scaled)."""
    vocab = logits.shape[-1]
    tokens = logits.numel() // vocab
    return scale(logits, alpha, tokens * vocab / math.sqrt(max(vocab - 1, 1)))
