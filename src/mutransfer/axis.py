"""What a coordinate check or a grid varies: one size along one axis.

    >>> from mutransfer.axis import axis_of
    >>> axis, sizes = axis_of([], [2, 4, 8], residual=["blocks.*.proj"])
    >>> axis.name, axis.plural, sizes
    ('depth', 'depths', [2, 4, 8])

The axes: ``width`` (a width keyword; muP's plan from the base width), ``depth`` (a depth
keyword and each residual branch's last module; CompleteP's plan with exponent ``alpha``), and,
for a grid only, the training axes ``steps``, ``batch_size`` and ``block_size`` (sequence
length), at one model width. Results call an axis's values *sizes*, whatever they measure.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from mutransfer.errors import MutransferError
from mutransfer.scaling.plan import Plan
from mutransfer.scaling.planning import plan as make_plan

__all__ = ["DEFAULT_WIDTHS", "TRAINING_AXES", "Axis", "axis_of", "depth_plan", "plural", "width_plan"]

# The widths compared when none are given: 4 over 8x, the smallest setting whose coordinate-check
# verdict benchmarks/coord_thresholds.py found reliable.
DEFAULT_WIDTHS = (32, 64, 128, 256)


def width_plan(
    make_model: Callable[..., nn.Module],
    shape: Mapping[str, Any],
    width_key: str,
    base: int,
    width: int,
    example: Any = None,
    parametrization: str = "mup",
) -> Plan:
    """The muP (or u-muP) plan from ``base`` to ``width`` with every other keyword held at
    ``shape``; ``example``: an input the model takes, so the plan sees its attention."""
    base_shape, target = {**shape, width_key: base}, {**shape, width_key: width}
    probe = {**shape, width_key: 2 * base} if width == base else None  # roles need two widths
    return make_plan(make_model, base=base_shape, target=target, probe=probe, example=example,
                     parametrization=parametrization)  # fmt: skip


def depth_plan(
    make_model: Callable[..., nn.Module],
    shape: Mapping[str, Any],
    depth_key: str,
    base: int,
    depth: int,
    residual: Sequence[str],
    alpha: float = 1.0,
    width_key: str = "width",
    example: Any = None,
) -> Plan:
    """CompleteP from ``base`` to ``depth`` blocks, at the width ``shape`` gives (the probe
    doubles ``width_key`` so the plan knows every tensor's role)."""
    probe = {**shape, width_key: 2 * shape[width_key]} if width_key in shape else None
    return make_plan(
        make_model,
        base={**shape, depth_key: base},
        target={**shape, depth_key: depth},
        probe=probe,
        depth=depth_key,
        residual=residual,
        alpha=alpha,
        example=example,
    )


TRAINING_AXES = ("steps", "batch_size", "block_size")


@dataclass(frozen=True)
class Axis:
    """The size a coordinate check or a grid varies: a width keyword (muP), a depth keyword with
    the residual branches' last modules (CompleteP with exponent ``alpha``), or, for a grid, a
    training axis (``steps``, ``batch_size``, ``block_size``) at one model width."""

    key: str = "width"
    residual: tuple[str, ...] = ()
    alpha: float = 1.0
    width_key: str = "width"
    kind: str = "width"  # "width", "depth", or one of TRAINING_AXES

    @property
    def name(self) -> str:
        return self.kind

    @property
    def plural(self) -> str:
        """How text names several sizes of this axis."""
        return plural(self.kind)

    @property
    def trains(self) -> bool:
        """A training axis: the model is the same at every size; the run changes."""
        return self.kind in TRAINING_AXES

    def plan(
        self,
        make_model: Callable[..., nn.Module],
        shape: Mapping[str, Any],
        base: int,
        size: int,
        example: Any = None,
        parametrization: str = "mup",
    ) -> Plan:
        """The plan at ``size``; over a training axis, from the base width to the model's."""
        if self.kind == "depth":
            if parametrization == "u-mup":
                raise MutransferError("u-muP's depth rules are not implemented: grid it over width.")
            return depth_plan(
                make_model, shape, self.key, base, size, self.residual, self.alpha, self.width_key, example
            )
        if self.trains:
            width = shape[self.width_key]
            return width_plan(make_model, shape, self.width_key, base, width, example, parametrization)
        return width_plan(make_model, shape, self.key, base, size, example, parametrization)


def axis_of(
    widths: Sequence[int],
    depths: Sequence[int],
    *,
    width_key: str = "width",
    depth_key: str = "depth",
    residual: Sequence[str] = (),
    alpha: float = 1.0,
    training: Mapping[str, Sequence[int]] | None = None,
) -> tuple[Axis, list[int]]:
    """The axis and its sorted sizes from ``widths=``, ``depths=`` or one ``training`` axis
    (``{"steps": [100, 200, 400]}``); at most one of them (none: ``DEFAULT_WIDTHS``)."""
    training = {k: v for k, v in (training or {}).items() if v}
    given = [n for n, v in (("widths", widths), ("depths", depths)) if v] + list(training)
    if not given:
        return Axis(width_key), list(DEFAULT_WIDTHS)
    if len(given) != 1:
        got = f"; got {', '.join(given)}" if given else ""
        raise MutransferError(
            "give exactly one of widths= (muP across widths) or depths= (CompleteP across depths, "
            "with residual= patterns of each branch's last module), or, for a grid, a list of steps=, "
            f"batch_size= or block_size= at one model width{got}."
        )
    if training:
        (kind, sizes), *_ = training.items()
        if kind not in TRAINING_AXES:
            raise MutransferError(f"training axis {kind!r} is not one of {list(TRAINING_AXES)}.")
        return Axis(kind, width_key=width_key, kind=kind), sorted({int(s) for s in sizes})
    if depths:
        if isinstance(residual, str):
            residual = [residual]
        if not residual:
            raise MutransferError(
                "depths= needs residual=, name patterns of each residual branch's last module, e.g. "
                "residual=GPT.residual or ['blocks.*.attn.proj', 'blocks.*.fc_proj']."
            )
        axis = Axis(depth_key, tuple(residual), float(alpha), width_key, kind="depth")
        return axis, sorted({int(d) for d in depths})
    return Axis(width_key), sorted({int(w) for w in widths})


def plural(axis: str) -> str:
    """How text names several sizes of an axis."""
    return {"steps": "training lengths", "batch_size": "batch sizes", "block_size": "sequence lengths"}.get(
        axis, f"{axis}s"
    )
