"""The muP scaling tables as data (Tensor Programs V, Table 3 form: no forward multipliers).

Every multiplier is relative to the base model, so at base shape all of them are 1.
``m`` is the model's width multiplier; ``m_in``/``m_out`` are a parameter's fan multipliers.

Adam-like (Adam, AdamW, RMSprop, Adagrad, Lion, other sign/normalised updates)::

    role              init std        lr             eps
    input / vector    sigma           eta            eps / m
    hidden            sigma/sqrt(m_in) eta / m_in     eps / m
    output            sigma / m_in    eta / m_in     eps

SGD-like::

    input / vector    lr eta * m_out
    hidden            lr eta * m_out / m_in
    output            lr eta / m_in

Muon (orthogonalised updates, spectral norm 1): a hidden matrix's step is multiplied by
``sqrt(m_out / m_in)`` (1 when both fans grow together); every other tensor is optimised by
Adam under the Adam rules. Muon's own shape factor (``torch.optim.Muon``'s "original"
``sqrt(max(1, fan_out / fan_in))``) depends on the aspect ratio only, so it is the same at every
width; nothing else is applied on top (Adam's ``1/m_in`` there would scale the step twice).

Adam's eps shrinks with width because, in this form, the gradient entries of every parameter
but the readout shrink like 1/width; a fixed eps would slowly take over Adam's denominator.

Depth (the CompleteP family, residual blocks ``h + a * F(h)`` with ``a = m_L**-alpha``,
``m_L`` = blocks at target over blocks at base, alpha in [1/2, 1]) multiplies, for every tensor
inside a block::

    lr   Adam-like, Muon: m_L**(alpha - 1)     SGD: m_L**(2 * alpha - 1)
    eps  Adam-like: m_L**-alpha

and the branch multiplier ``a`` moves into the branch's last layer (init x a; lr x a, or a**2
for SGD; eps / a), so the forward pass stays the user's. Embeddings, the final norm and the
readout take no depth factor. The SGD exponent follows from the same count as Adam's: a block's
gradient shrinks like ``a``, its step like ``lr * a`` and its effect like ``lr * a**2``, and L
of them must add up to a step of size 1 (alpha = 1/2 gives Depth-muP's constant SGD LR).

u-muP (Blake et al., ICLR 2025; Adam only) has no base shape: every factor is absolute, from the
tensor's own fans. Every matrix starts at std 1 and takes a forward multiplier, applied by a
hook on its layer (a Linear or Conv's output, bias excluded)::

    role                  init   multiplier      backward       Adam lr        eps
    input (embedding)     1      1               1              eta/sqrt(d)    eps
    input (linear, conv)  1      1/sqrt(fan_in)  = multiplier   eta/sqrt(fan_in)
    hidden                1      1/sqrt(fan_in)  = multiplier   eta/sqrt(fan_in)
    output                1      1/fan_in        1/sqrt(fan_out) eta
    vector                gains as built, biases 0              eta

It differs from muP in two places: the embedding's LR falls like 1/sqrt(width) (muP keeps it
constant; this is the paper's choice), and the readout's gradient is cut to unit
scale (its backward factor is not its forward one; Adam ignores such a constant). A tensor whose
layer is not a Linear, Conv or Embedding cannot take a hook: its multiplier is folded into its
init (std = multiplier) and its LR (x multiplier), with eps / multiplier, which trains the same
under Adam (abc-symmetry) but leaves that tensor off unit scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from mutransfer.errors import MutransferError
from mutransfer.scaling.roles import ParamRole, Role

__all__ = [
    "ALPHA_RANGE",
    "FAMILIES",
    "Multipliers",
    "UnitRule",
    "depth_multipliers",
    "init_multiplier",
    "is_embedding",
    "multipliers",
    "muon_takes",
    "unit_rule",
]

ALPHA_RANGE = (0.5, 1.0)


@dataclass(frozen=True)
class Multipliers:
    """Factors applied to the user's base learning rate and eps for one parameter.

    ``eps`` is None for families whose optimizers take no eps (SGD).
    """

    lr: float = 1.0
    eps: float | None = 1.0


def _adam(p: ParamRole, m: float) -> Multipliers:
    if p.role in (Role.INPUT, Role.VECTOR):
        return Multipliers(lr=1.0, eps=1.0 / m)
    if p.role is Role.HIDDEN:
        return Multipliers(lr=1.0 / p.m_in, eps=1.0 / m)
    if p.role is Role.OUTPUT:
        return Multipliers(lr=1.0 / p.m_in, eps=1.0)
    return Multipliers()


def _sgd(p: ParamRole, m: float) -> Multipliers:
    # input/vector: m_out; hidden: m_out / m_in; output: 1 / m_in; fixed: 1 (both fans are 1)
    return Multipliers(lr=p.m_out / p.m_in, eps=None)


def _muon(p: ParamRole, m: float) -> Multipliers:
    if muon_takes(p):
        return Multipliers(lr=(p.m_out / p.m_in) ** 0.5, eps=None)
    return _adam(p, m)


def muon_takes(p: ParamRole) -> bool:
    """Muon orthogonalises matrices: it takes the 2-D hidden tensors; Adam takes the rest (a
    conv kernel too, which ``torch.optim.Muon`` refuses)."""
    return p.role is Role.HIDDEN and len(p.target_shape) == 2


FAMILIES: dict[str, Callable[[ParamRole, float], Multipliers]] = {"adam": _adam, "sgd": _sgd, "muon": _muon}


def multipliers(p: ParamRole, m: float, family: str) -> Multipliers:
    """Learning-rate and eps multipliers of ``p`` for an optimizer family."""
    try:
        rule = FAMILIES[family]
    except KeyError:
        raise MutransferError(
            f"unknown optimizer_family {family!r}; choose one of {sorted(FAMILIES)} "
            "('adam' covers Adam, AdamW, RMSprop, Adagrad, Lion and other normalised updates; 'muon' "
            "is Muon on hidden matrices with Adam for the rest)."
        ) from None
    return rule(p, m)


def init_multiplier(p: ParamRole) -> float:
    """muP init std at target over the init std at base (the base std is sigma)."""
    if p.role is Role.HIDDEN:
        return p.m_in**-0.5
    if p.role is Role.OUTPUT:
        return 1.0 / p.m_in
    return 1.0


def depth_multipliers(
    family: str, m_depth: float, alpha: float, *, in_block: bool, branch_end: bool
) -> tuple[float, Multipliers]:
    """CompleteP's (init, lr and eps) factors for one tensor, with the branch multiplier absorbed.

    ``in_block``: the tensor belongs to a repeated residual block; ``branch_end``: it is a
    parameter of a branch's last layer, which carries the branch multiplier ``m_depth**-alpha``.
    """
    if not in_block or m_depth == 1.0:
        return 1.0, Multipliers()
    sgd = family == "sgd"
    lr = m_depth ** ((2 * alpha - 1) if sgd else (alpha - 1))
    eps = m_depth**-alpha
    init = 1.0
    if branch_end:  # a parameter used as a * W trains like W' = a * W with these settings
        a = m_depth**-alpha
        init, lr, eps = a, lr * (a**2 if sgd else a), eps / a
    return init, Multipliers(lr=lr, eps=None if sgd else eps)


@dataclass(frozen=True)
class UnitRule:
    """u-muP's factors for one tensor: ``init`` its std (None: as built, a bias zeroed),
    ``forward``/``backward`` what a hook multiplies its layer's output and that output's gradient
    by (``hooked``), ``lr`` and ``eps`` the optimizer's factors."""

    init: float | None
    forward: float = 1.0
    backward: float = 1.0
    lr: float = 1.0
    eps: float = 1.0
    hooked: bool = False


HOOKED_LAYERS = ("Linear", "Conv1D", "Conv1d", "Conv2d", "Conv3d")  # output = W x (+ b): a hook is exact
EMBEDDINGS = ("Embedding", "EmbeddingBag")


def is_embedding(p: ParamRole) -> bool:
    """An embedding table, tied to a readout or not (its first use is the lookup: "Embedding+Linear")."""
    return p.layer.split("+")[0] in EMBEDDINGS


def fans(p: ParamRole) -> tuple[int, int]:
    """(fan_in, fan_out) at the target: an embedding's fan-in is 1 (a lookup sums one row),
    transformers' Conv1D stores (in, out), everything else PyTorch's (out, in, *kernel)."""
    shape = p.target_shape
    if is_embedding(p):
        return 1, shape[-1]
    if p.layer == "Conv1D":
        return shape[0], shape[1]
    return math.prod(shape[1:]), shape[0]


def unit_rule(p: ParamRole) -> UnitRule:
    """u-muP's rule for ``p`` (the table above)."""
    if p.role in (Role.VECTOR, Role.FIXED):
        return UnitRule(init=None)
    fan_in, fan_out = fans(p)
    if is_embedding(p):
        forward = backward = 1.0
        lr = fan_out**-0.5 if p.role is Role.INPUT else 1.0
    elif p.role is Role.OUTPUT:
        forward, backward, lr = 1.0 / fan_in, fan_out**-0.5, 1.0
    else:  # hidden, or an input layer with a fixed fan-in
        forward = backward = lr = fan_in**-0.5
    if is_embedding(p) or (p.layer in HOOKED_LAYERS and not p.aliases and p.name.endswith("weight")):
        return UnitRule(init=1.0, forward=forward, backward=backward, lr=lr, hooked=not is_embedding(p))
    return UnitRule(init=forward, lr=lr * forward, eps=1.0 / forward)  # folded: abc-symmetry under Adam
