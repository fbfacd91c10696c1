"""The coordinate check's verdict: growth exponents, in both directions, and their likely cause.

For each point and measure the exponent ``s`` of ``value ~ width**s`` (least squares on log-log
axes, values averaged over seeds). muP (Tensor Programs V) asks two things of every layer as the
width grows: nothing blows up (no exponent above ``threshold``) and every layer keeps learning
(the effect of a layer's own updates, ``update``, and the change of the residual stream and of
the output, ``change``, do not vanish: no exponent below ``-threshold``). A failing point is a
*cause* when the fault is its own (its update, its attention scale, its initial output beyond
its input's, or a factor between it and the point before it in the forward pass); otherwise it
inherits the fault from upstream, and the verdict names where it starts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["ModuleCheck", "judge", "slope", "slopes"]

_FREE = ("stream", "block", "model")  # points no module owns: a factor between them lives in a forward


@dataclass(frozen=True)
class ModuleCheck:
    """The verdict for one watched point: its worst exponent per measure (nan where a measure
    does not apply; for ``change`` and ``update`` the one furthest from 0), ``status``
    ``ok``/``grows``/``vanishes``/``diverged``, whether it is a cause rather than an heir, and the
    likely reason."""

    name: str
    kind: str
    rms_slope: float
    change_slope: float
    update_slope: float
    scale_slope: float
    status: str
    cause: bool = False
    hint: str = ""
    init_slope: float = math.nan  # its parameters' init against muP's law (0: as muP says)

    @property
    def slope(self) -> float:
        """The worst exponent over all measures."""
        found = [self.rms_slope, self.change_slope, self.update_slope, self.scale_slope, self.init_slope]
        return max((s for s in found if not math.isnan(s)), key=abs, default=math.nan)

    @property
    def passed(self) -> bool:
        return self.status == "ok"


def judge(
    order: Sequence[str],
    kinds: Mapping[str, str],
    widths: Sequence[int],
    curves: Mapping[str, Mapping[str, list[list[float]]]],
    loss: list[list[float]],
    threshold: float,
    axis: str = "width",
    previous: Mapping[str, str] | None = None,
    functions: Mapping[str, str] | None = None,
    inits: Mapping[str, tuple[str, float]] | None = None,
    expected: Mapping[str, float] | None = None,
) -> tuple[ModuleCheck, ...]:
    """One ``ModuleCheck`` per point, in forward order. ``inits``: per module, the parameter whose
    init strays furthest from muP's law, and the exponent of that stray (``init_law``).
    ``expected``: points whose updates and changes follow another law by design (u-muP's
    embeddings: -0.5), judged relative to it, as is the stream point they feed."""
    previous, functions, inits = previous or {}, functions or {}, inits or {}
    diverged = _divergence(widths, loss)
    steps = len(loss[0])
    all_slopes = {name: {m: slopes(widths, curves[m].get(name, []), steps) for m in curves} for name in order}
    offsets = dict(expected or {})
    for name in order:  # a stream point carries what it sums: the embeddings' law
        if name not in offsets and kinds.get(name) == "stream" and previous.get(name) in offsets:
            offsets[name] = offsets[previous[name]]
    for name, offset in offsets.items():
        for m in ("change", "update"):
            if name in all_slopes:
                all_slopes[name][m] = [v - offset for v in all_slopes[name][m]]
    measured = []
    for name in order:
        kind = kinds.get(name, "other")
        prev = all_slopes.get(previous.get(name, ""))
        status, reason, shown = _status(kind, all_slopes[name], prev, inits.get(name, ("", math.nan)),
                                        bool(diverged), threshold, axis)  # fmt: skip
        measured.append((name, kind, shown, status, reason))
    # a block that grows past its input because a module inside it grows inherits that fault: the
    # factor-in-forward reading is for growth no module inside explains
    failing = {name for name, _, _, status, _ in measured if status in ("grows", "vanishes")}
    measured = [
        (name, kind, shown, status, None if reason == "forward" and _inside(name, failing) else reason)
        for name, kind, shown, status, reason in measured
    ]
    first_cause = {
        st: next((n for n, _, _, s, r in measured if r and s == st), None) for st in ("grows", "vanishes")
    }
    return tuple(
        ModuleCheck(name, kind, shown["rms"], shown["change"], shown["update"], shown["scale"], status=status,
                    cause=reason is not None, init_slope=shown["init"],
                    hint=_explain(name, kind, status, reason, diverged, axis, functions.get(name, ""),
                                  previous.get(name, ""), first_cause.get(status)))
        for name, kind, shown, status, reason in measured
    )  # fmt: skip


def _status(
    kind: str,
    s: Mapping[str, list[float]],
    prev: Mapping[str, list[float]] | None,
    init: tuple[str, float],
    diverged: bool,
    threshold: float,
    axis: str,
) -> tuple[str, str | None, dict[str, float]]:
    """One point's status, its own fault (None: it inherits its input's) and the exponents shown."""
    param, stray = init
    worst = {m: _extreme(s[m], max) for m in ("rms", "change", "update")}
    worst["scale"] = s["scale"][0]
    # shrinking is judged after the last step: one step's update is noisy, and a layer whose
    # learning rate is scaled down too far shrinks at every step, the last included
    low = {m: s[m][-1] for m in ("change", "update")}
    # a point no module owns moves against the point before it: a factor in a forward pass
    moved = _relative(s["change"], prev["change"]) if kind in _FREE and prev else [math.nan]
    if diverged or any(math.isinf(v) for m in ("rms", "change", "update") for v in s[m]):
        status = "diverged"
    else:
        judged = [v for m, v in worst.items() if m != "change" or _change_judged(kind, axis)]
        if max(_finite(v) for v in [*judged, _extreme(moved, max), stray]) > threshold:
            status = "grows"
        # over depth a block's own share shrinks like 1/L by design (CompleteP's branch multiplier)
        elif min(_finite(v) for v in [low["update"] if axis == "width" else math.nan,
                                      moved[-1], stray]) < -threshold:  # fmt: skip
            status = "vanishes"
        else:
            status = "ok"
    reason = _own_fault(status, kind, worst, s, moved, stray, threshold, axis)
    if reason is None and status in ("grows", "vanishes") and abs(_finite(stray)) > threshold:
        reason = f"param:{param}:{stray:+.2f}"
    shown = {m: (low[m] if status == "vanishes" and m in low else worst[m]) for m in worst}
    if kind in _FREE and reason == "forward":  # the change column shows the jump at the factor
        shown["change"] = _extreme(moved, max if status == "grows" else min)
    shown["init"] = stray
    return status, reason, shown


def _explain(name: str, kind: str, status: str, reason: str | None, diverged: str, axis: str, function: str,
             previous: str, first_cause: str | None) -> str:  # fmt: skip
    """The verdict's sentence: the fault and its fix, or where the growth it inherits starts."""
    if status == "diverged":
        return diverged or "its output is not finite at some width: training diverged. Fix: lower lr."
    if status == "ok":
        return ""
    if axis == "depth":  # one fault there: the branches or their LRs are not scaled
        return _DEPTH_HINT
    if reason:
        return _hint(kind, reason, function, previous, name)
    if first_cause:
        verb = "grows" if status == "grows" else "shrinks"
        return f"{verb} because its input {verb}; it starts at {first_cause}"
    return f"{status} a little in each of several modules; check that the plan covers every layer"


def _change_judged(kind: str, axis: str) -> bool:
    """Over depth, ``change`` is judged for the residual stream (the blocks' outputs) only, and
    shown elsewhere: at a few blocks the first block sees only the small embeddings, so how far
    normalised features move (inside the blocks, and after them in the final norm and the
    readout) grows with depth under CompleteP and standard alike (benchmarks/README.md). Depth
    theory speaks of the residual stream and of each module's own updates."""
    return axis != "depth" or kind == "block"


def _own_fault(status, kind, worst, s, moved, stray, threshold, axis) -> str | None:
    """What a failing point does itself, if anything; None: it inherits the fault."""
    if status == "grows":
        if _finite(worst["scale"]) > threshold:
            return "scale"
        at_init = _finite(s["rms"][0]) - _finite(s["input"][0]) > threshold
        if kind not in _FREE and at_init and abs(_finite(stray)) <= threshold:
            return "inside"  # its weights are muP's, its output is not: a factor in its own forward
        if _finite(worst["update"]) > threshold:
            return "update"
        if kind in _FREE:
            return "forward" if _finite(_extreme(moved, max)) > threshold else None
        if _finite(s["rms"][0]) - _finite(s["input"][0]) > threshold:  # larger than its input at init
            return "init" if abs(_finite(stray)) > threshold else "inside"
    elif status == "vanishes":
        if _finite(s["update"][-1]) < -threshold and axis == "width":
            return "vanish"
        if kind in _FREE and _finite(moved[-1]) < -threshold:
            return "forward"
    return None


def _inside(block: str, failing: set[str]) -> bool:
    """Whether a point inside ``block`` (named ``block.…``) fails."""
    return any(name.startswith(f"{block}.") for name in failing)


def _relative(own: list[float], prev: list[float]) -> list[float]:
    """Per step, how much faster a point's exponent is than the previous point's (nan: not both)."""
    pairs = zip(own, prev, strict=False)
    return [a - b if math.isfinite(a) and math.isfinite(b) else math.nan for a, b in pairs]


_DEPTH_HINT = (
    "grows with the number of blocks: the residual branches are not scaled. Fix: a depth plan, "
    "mutransfer.plan(..., depth='depth', residual=[each branch's last module]) (CompleteP: branch "
    "multiplier m_L**-alpha, blocks' lr x m_L**(alpha-1))."
)


def _hint(kind: str, reason: str, function: str, previous: str, name: str) -> str:
    """The likely fault; one text per fault, so the table lists every point it applies to once."""
    if reason == "scale" and function == "mha":
        return (
            "attention logits grow: nn.MultiheadAttention scales them by 1/sqrt(d_head), standard "
            "parametrization. Fix: plan the model (mutransfer.plan, then plan.init_ or plan.attach_), "
            "which makes it 1/d_head by multiplying its queries."
        )
    if reason == "scale":
        return (
            "attention logits grow: the scale is not 1/d_head (1/sqrt(d_head) is standard "
            "parametrization). Fix: scale=mutransfer.attention_scale(d_head, base_d_head)."
        )
    if reason == "forward":
        where = f"after {previous}" if name == "<output>" else f"between {previous} and {name}"
        return (
            f"changes size with width {where}, where no module is: a factor written in the forward pass "
            "(e.g. x * sqrt(d_model), logits / width). Fix: keep the factor at its base-width value at "
            "every width, or drop it; muP's width factors belong to the plan."
        )
    if reason.startswith("param:"):
        _, param, stray = reason.split(":")
        way = "shrinks faster" if float(stray) < 0 else "shrinks slower"
        return (
            f"the init of {param} {way} with width than muP's (width**{stray} against muP's law): "
            "e.g. a bias left at U(+-1/sqrt(fan_in)), or a std the plan took for another law. Fix: "
            "plan.init_ on a freshly built model; pass init_law= only if it says what your init does."
        )
    if reason == "inside":
        return (
            "its output grows with width from the start while its weights follow muP's init: a factor "
            "inside its forward (e.g. an embedding that multiplies by sqrt(hidden_size), as Gemma's does). "
            "Fix: keep the factor at its base-width value at every width, or drop it."
        )
    if reason == "init":
        return (
            "grows at initialisation: its init std does not shrink with fan_in as muP's does. Fix: "
            "plan.init_ on a freshly built model (with init_law= only if it says what your init does)."
        )
    if reason == "vanish":
        return (
            "its own updates shrink as the width grows: it stops learning. Fix: its learning rate is "
            "scaled down too far. muP with Adam keeps the input layers' and vectors' LR and divides hidden "
            "and readout LRs by m_in (plan.param_groups); an SGD-like optimizer passed as a callable needs "
            "optimizer_family='sgd'."
        )
    if kind == "output":
        return (
            "logits grow with the readout's own updates: the readout is not scaled. Fix: its learning "
            "rate and init shrink like 1/width (plan.param_groups and plan.init_)."
        )
    if kind == "hidden":
        return (
            "its own updates grow: the hidden learning rate is not scaled. Fix: with Adam a hidden "
            "matrix takes lr/m_in (plan.param_groups)."
        )
    return "its own updates grow: its learning rate is scaled up with width. Fix: use plan.param_groups."


def slopes(widths: Sequence[int], curve: list[list[float]], steps: int) -> list[float]:
    """Exponent at every step of ``curve[i][t]`` (width ``i``); nan where nothing was recorded."""
    if not curve:
        return [math.nan] * steps
    return [slope(widths, [c[t] for c in curve]) for t in range(steps)]


def slope(widths: Sequence[int], values: Sequence[float]) -> float:
    """Least-squares slope of log(values) on log(widths); nan when a value is 0, inf if not finite."""
    if any(math.isnan(v) for v in values):
        return math.nan  # not recorded at this step
    if any(math.isinf(v) for v in values):
        return math.inf
    if any(v <= 0 for v in values):
        return math.nan  # e.g. a zero-initialised readout at step 0: no size to compare
    xs = [math.log(w) for w in widths]
    ys = [math.log(v) for v in values]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def _finite(x: float) -> float:
    return x if math.isfinite(x) else 0.0


def _extreme(values: list[float], pick) -> float:
    return pick((v for v in values if math.isfinite(v)), default=math.nan)


def _divergence(widths: Sequence[int], loss: list[list[float]]) -> str:
    for w, series in zip(widths, loss, strict=True):
        for t, v in enumerate(series):
            if not math.isfinite(v):
                return f"training diverged at width {w} (loss not finite before step {t}). Fix: lower lr."
    return ""
