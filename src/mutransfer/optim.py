"""Optimizers from a plan: one call, and the param groups stay yours if you build your own.

    >>> import mutransfer
    >>> from mutransfer.models import GPT
    >>> plan = mutransfer.plan(GPT, base={"width": 32}, target={"width": 128})
    >>> model = plan.init_(GPT(width=128))
    >>> opt = plan.optimizer(model, "muon", lr=2e-2, weight_decay=0.1)   # Muon + AdamW, one object
    >>> sorted({g["optimizer"] for g in opt.param_groups})
    ['adam', 'muon']

Every optimizer here is a ``torch.optim.Optimizer``: LR schedulers, ``state_dict`` and
checkpoints work as usual. Muon's groups keep ``torch.optim.Muon``'s own shape factor
(``adjust_lr_fn="original"``: ``sqrt(max(1, fan_out / fan_in))``, the same at every width) and
nothing else; the "match_rms_adamw" factor grows like ``sqrt(width)`` and is refused, since on
top of a width-scaled plan it scales the step twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from mutransfer.errors import MutransferError

__all__ = ["OPTIMIZERS", "MuonWithAdam", "lookup"]


class MuonWithAdam(torch.optim.Optimizer):
    """``torch.optim.Muon`` on the groups tagged ``"optimizer": "muon"``, ``AdamW`` on the rest.

    One optimizer to the outside (its ``param_groups`` are the two inner optimizers' groups,
    the same dicts, so a scheduler's LR reaches them), two inside, sharing one ``state``.
    """

    def __init__(
        self, groups: Iterable[dict[str, Any]], *, muon: dict | None = None, adam: dict | None = None
    ):
        groups = list(groups)
        untagged = [g for g in groups if g.get("optimizer") not in ("muon", "adam")]
        if untagged:
            raise MutransferError(
                'MuonWithAdam needs every param group tagged "optimizer": "muon" or "adam". Fix: '
                'build the groups with plan.param_groups(model, ..., optimizer_family="muon").'
            )
        muon = {"adjust_lr_fn": "original", **(muon or {})}
        if muon["adjust_lr_fn"] != "original":
            raise MutransferError(
                f"adjust_lr_fn={muon['adjust_lr_fn']!r} grows Muon's step like sqrt(width), which the plan "
                "already scales: the step would be scaled twice. Fix: keep adjust_lr_fn='original'."
            )
        by_kind = {k: [g for g in groups if g["optimizer"] == k] for k in ("muon", "adam")}
        self._parts: dict[str, torch.optim.Optimizer] = {}
        if by_kind["muon"]:
            self._parts["muon"] = torch.optim.Muon(by_kind["muon"], **muon)
        if by_kind["adam"]:
            self._parts["adam"] = torch.optim.AdamW(by_kind["adam"], **(adam or {}))
        inner = [g for part in self._parts.values() for g in part.param_groups]
        super().__init__(inner, {})
        self._share()

    def _share(self) -> None:
        """Point the inner optimizers at this one's groups and state (again after a load)."""
        for kind, part in self._parts.items():
            part.param_groups = [g for g in self.param_groups if g["optimizer"] == kind]
            part.state = self.state

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for part in self._parts.values():
            part.step()
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._share()


# name -> (builder taking param groups and keyword arguments, the plan's optimizer family)
OPTIMIZERS: dict[str, tuple[Callable[..., torch.optim.Optimizer], str]] = {
    "adam": (torch.optim.Adam, "adam"),
    "adamw": (torch.optim.AdamW, "adam"),
    "sgd": (torch.optim.SGD, "sgd"),
    "muon": (MuonWithAdam, "muon"),
}


def lookup(name: str) -> tuple[Callable[..., torch.optim.Optimizer], str]:
    """The builder and the plan's optimizer family for a name, or an error that names the choices."""
    if name == "adafactor":
        raise MutransferError(
            "torch.optim.Adafactor multiplies each step by the parameter's RMS, which muP's init changes "
            "with width, so the plan's Adam rules do not hold for it (its hidden updates shrink with "
            "width). Fix: use adamw, or an Adafactor without relative steps through plan.param_groups."
        )
    if name not in OPTIMIZERS:
        raise MutransferError(
            f"optimizer {name!r} is not known; choose one of {sorted(OPTIMIZERS)}, or build your own from "
            "plan.param_groups(model, ..., optimizer_family=...) ('adam' covers Lion, Adafactor-style "
            "and other normalised updates)."
        )
    return OPTIMIZERS[name]
