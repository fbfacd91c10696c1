"""What a coordinate check, a grid and a sweep trial share: the model to build, the way to train it.

    >>> from mutransfer.models import GPT
    >>> from mutransfer.setup import ModelSetup, TrainSetup
    >>> model = ModelSetup(factory=GPT, shape={"base_d_head": 8}, sp_shape={"base_d_head": None})
    >>> training = TrainSetup(data=mutransfer.data.stdlib(), steps=300, batch_size=32)  # doctest: +SKIP

``ModelSetup``: the factory and its keywords (the standard model's own where they differ), and
the muP plan's options (how the factory's init scales, tensors to zero, the tuned
multipliers). ``TrainSetup``: the data and one run's budget, its schedule, its optimizer and
loss, how many seeds, where. Both are frozen and checked when made, so a bad value fails before
any training; ``protocol()`` is what a saved grid or study records, so a rerun under other
settings is refused instead of mixing results. ``grid``, ``coord_check`` and the sweep keep
their keyword arguments as front doors and build these.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from mutransfer.data import factory_keywords
from mutransfer.data.batches import Batches
from mutransfer.errors import MutransferError, check_number
from mutransfer.factory import construct, keywords, name_of
from mutransfer.optim import lookup
from mutransfer.scaling.plan import Plan
from mutransfer.scaling.planning import BIASES, init_law_of
from mutransfer.scaling.roles import Role
from mutransfer.train import LossFn, OptimizerSpec, Run, check_budget, cross_entropy, train

__all__ = [
    "MULTIPLIERS",
    "ROLES",
    "ModelSetup",
    "TrainSetup",
    "check_device",
    "one",
    "optimizer_class",
    "role_multipliers",
]

MULTIPLIERS = ("init_scale", "input_mult", "output_mult")  # tuned on the proxy, carried by muP
ROLES = tuple(r.value for r in Role if r is not Role.FIXED)  # the roles a learning rate can follow


@dataclass(frozen=True, kw_only=True)
class ModelSetup:
    """The model: ``factory(**shape)`` plus the size keyword; see the module docstring."""

    factory: Callable[..., nn.Module]
    shape: Mapping[str, Any] = field(default_factory=dict)
    """The factory's other keywords."""
    sp_shape: Mapping[str, Any] = field(default_factory=dict)
    """Keywords for the standard-parametrization model only (e.g. ``{"base_d_head": None}``)."""
    init_law: str | None = None
    """How the factory's init scales with width (``Plan.init_``); None: the plan's."""
    zero: tuple[str, ...] = ()
    """Name patterns initialised to zero under muP (e.g. the readout)."""
    multipliers: Mapping[str, float] = field(default_factory=dict)
    """``init_scale``, ``input_mult``, ``output_mult`` as tuned on a proxy, for muP's runs."""
    lr_scale: Mapping[str, float] = field(default_factory=dict)
    """Per-role LR factors on top of muP's (``{"output": 2.0}``), for muP's runs: how a
    per-role grid moves one role's learning rate."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", dict(self.shape))
        object.__setattr__(self, "sp_shape", dict(self.sp_shape))
        object.__setattr__(self, "zero", tuple(self.zero))
        object.__setattr__(self, "multipliers", _factors(self.multipliers, "multipliers", MULTIPLIERS))
        object.__setattr__(self, "lr_scale", _factors(self.lr_scale, "lr_scale", ROLES))

    def with_data(self, data: Batches) -> ModelSetup:
        """The vocabulary or input size the data decides, where the shape leaves it open (a
        Hugging Face config's 50257-token GPT-2 vocabulary would otherwise train on bytes)."""
        implied = factory_keywords(data, self.factory)
        filled = {k: v for k, v in implied.items() if k not in self.shape and k != "block_size"}
        return replace(self, shape={**filled, **self.shape})

    def keywords(self, parametrization: str) -> dict[str, Any]:
        """The factory's keywords for a parametrization (the standard model's own over them; for
        u-muP, ``unit_scaled=True`` where the factory takes it)."""
        own = self.sp_shape if parametrization == "sp" else {}
        if parametrization == "u-mup" and "unit_scaled" in (keywords(self.factory) or ()):
            own = {"unit_scaled": True}
        return {**self.shape, **own}

    def build(
        self,
        shape: Mapping[str, Any],
        *,
        tuned: bool,
        plan: Plan | None,
        lr: float,
        training: TrainSetup,
        seed: int,
    ) -> tuple[nn.Module, torch.optim.Optimizer]:
        """``factory(**shape)`` from ``seed`` with its optimizer, under ``plan`` if given (else
        standard parametrization: the model as built, one learning rate and weight decay for
        every tensor); ``tuned``: with the init options and the tuned multipliers (muP's runs;
        standard parametrization's take none, only the identity plan Muon needs)."""
        builder, family = optimizer_class(training.optimizer, training.optimizer_family)
        check_device(training.device)
        torch.manual_seed(seed)
        model = construct(self.factory, shape, "cpu").to(training.device)
        init, lr_scale = role_multipliers(**(self.multipliers if tuned else {}), family=family)
        if tuned:
            lr_scale = {
                r: lr_scale.get(r, 1.0) * self.lr_scale.get(r, 1.0) for r in {*lr_scale, *self.lr_scale}
            }
        if plan is not None:
            options = dict(init_law=self.init_law, zero=self.zero) if tuned else {}
            plan.init_(model, scale=init, **options)
            groups = plan.param_groups(
                model, lr=lr, weight_decay=training.weight_decay, optimizer_family=family, lr_scale=lr_scale
            )
        elif family == "muon":
            raise MutransferError(
                "Muon takes the hidden matrices and Adam the rest, so it needs the parameters' roles: pass "
                "a plan (for standard parametrization, a plan at the model's own shape)."
            )
        elif init or lr_scale:
            raise MutransferError(
                "init_scale, input_mult and output_mult need the parameters' roles: pass a plan "
                "(for standard parametrization, a plan at the model's own shape)."
            )
        else:
            params = [p for p in model.parameters() if p.requires_grad]
            groups = [{"params": params, "lr": lr, "weight_decay": training.weight_decay}]
        return model, builder(groups)

    def protocol(self) -> dict[str, Any]:
        """What a saved grid records of the model (multipliers and LR factors only when there
        are some, so grids saved before they existed still resume)."""
        out = {
            "factory": name_of(self.factory),
            "shape": dict(self.shape),
            "sp_shape": dict(self.sp_shape),
            "init_law": self.init_law or init_law_of(self.factory),
            "biases": BIASES,
            "zero": list(self.zero),
        }
        out |= {"multipliers": dict(self.multipliers)} if self.multipliers else {}
        return out | ({"lr_scale": dict(self.lr_scale)} if self.lr_scale else {})


@dataclass(frozen=True, kw_only=True)
class TrainSetup:
    """One training run's data, budget and optimizer; see the module docstring."""

    data: Batches | None
    """The batches (None only to build, for a training function of your own)."""
    steps: int = 300
    batch_size: int = 32
    block_size: int | None = None
    """Sequence length for text data (default: the data's own)."""
    warmup: float = 0.1
    """Fraction of the steps with linear warmup."""
    schedule: str = "cosine"
    optimizer: OptimizerSpec = "adam"
    optimizer_family: str | None = None
    """The plan's rules for an optimizer given as a callable: ``adam`` (default), ``sgd``, ``muon``."""
    weight_decay: float = 0.0
    eval_batches: int = 16
    loss: LossFn = cross_entropy
    z_loss: float = 0.0
    """Weight of the z-loss (``mutransfer.losses.log_z``); Wortsman et al. use 1e-4."""
    monitor_every: int = 0
    """Record ``mutransfer.monitor``'s monitors every this many steps (0: off, no hooks)."""
    fp8: bool = False
    """Every matmul in simulated FP8 (``mutransfer.fp8``: E4M3 operands, E5M2 gradients, no scaling)."""
    seeds: int = 1
    device: str | torch.device = "cpu"

    def __post_init__(self) -> None:
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 1:
            raise MutransferError(f"seeds must be an int >= 1, got {self.seeds!r}.")
        check_budget(self.steps, self.batch_size, self.eval_batches, self.warmup, self.schedule)
        check_number(self.weight_decay, "weight_decay")
        check_number(self.z_loss, "z_loss")
        if not isinstance(self.fp8, bool):
            raise MutransferError(f"fp8 must be True or False, got {self.fp8!r}.")
        if (
            isinstance(self.monitor_every, bool)
            or not isinstance(self.monitor_every, int)
            or self.monitor_every < 0
        ):
            raise MutransferError(f"monitor_every must be an int >= 0 (0: off), got {self.monitor_every!r}.")
        optimizer_class(self.optimizer, self.optimizer_family)  # a bad name fails before any training

    @property
    def family(self) -> str:
        """The plan's optimizer family: ``adam``, ``sgd`` or ``muon``."""
        return optimizer_class(self.optimizer, self.optimizer_family)[1]

    def train(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        seed: int,
        data: Batches | None = None,
        steps: int | None = None,
        batch_size: int | None = None,
        eval_batch_size: int | None = None,
        on_step: Callable[[int, float], None] | None = None,
    ) -> Run:
        """Train under this setup; a training axis overrides ``steps``, ``batch_size`` or ``data``."""
        if data is None and self.data is None:
            raise MutransferError(
                "this training setup has no data: give data= to train with the built-in trainer."
            )
        return train(
            model,
            optimizer,
            data if data is not None else self.data,
            steps=steps or self.steps,
            batch_size=batch_size or self.batch_size,
            warmup=self.warmup,
            schedule=self.schedule,
            seed=seed,
            eval_batches=self.eval_batches,
            eval_batch_size=eval_batch_size,
            loss=self.loss,
            z_loss=self.z_loss,
            monitor_every=self.monitor_every,
            fp8=self.fp8,
            device=self.device,
            on_step=on_step,
        )

    def protocol(self) -> dict[str, Any]:
        """What a saved grid records of the training (the z-loss and FP8 only when set, so grids
        saved before they existed still resume)."""
        out = {
            "data": getattr(self.data, "name", type(self.data).__name__),
            "data_fingerprint": getattr(self.data, "fingerprint", ""),
            "block_size": self.block_size or getattr(self.data, "block_size", None),
            "steps": self.steps,
            "batch_size": self.batch_size,
            "warmup": self.warmup,
            "schedule": self.schedule,
            "optimizer": name_of(self.optimizer),
            "weight_decay": self.weight_decay,
            "eval_batches": self.eval_batches,
            "loss": name_of(self.loss),
        }
        return out | ({"z_loss": self.z_loss} if self.z_loss else {}) | ({"fp8": True} if self.fp8 else {})


def _factors(values: Mapping[str, float], field_name: str, known: Sequence[str]) -> dict[str, float]:
    """Positive factors under known names, refused otherwise with the names that are known."""
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise MutransferError(f"{field_name}: {unknown} unknown; the known ones are {', '.join(known)}.")
    return {k: check_number(v, f"{field_name}.{k}", positive=True) for k, v in values.items()}


def one(value: Any) -> Any:
    """A setting given as a one-element list is that element."""
    return value[0] if isinstance(value, Sequence) and not isinstance(value, str) and value else value


def optimizer_class(
    optimizer: OptimizerSpec, family: str | None = None
) -> tuple[Callable[[list[dict[str, Any]]], torch.optim.Optimizer], str]:
    """A name from ``OPTIMIZERS`` or a callable taking param groups -> (builder, plan family)."""
    if callable(optimizer) and not isinstance(optimizer, str):
        return optimizer, family or "adam"
    cls, default_family = lookup(optimizer)
    return cls, family or default_family


def role_multipliers(
    init_scale: float = 1.0, input_mult: float = 1.0, output_mult: float = 1.0, family: str = "adam"
) -> tuple[dict[str, float], dict[str, float]]:
    """The tuned multipliers as (init factor, LR factor) per role, for ``Plan.init_`` and
    ``Plan.param_groups``.

    ``init_scale`` multiplies the init of every matrix (input, hidden, output). A forward
    multiplier ``a`` on the readout (logits = a * W x) is absorbed into ``W``: init times ``a``
    and LR times ``a`` for Adam-like optimizers (their step size ignores the gradient's scale)
    or ``a**2`` for SGD; ``input_mult`` does the same for input tensors (embeddings). The
    forward pass stays untouched, so checkpoints and compiled graphs need nothing extra.
    """
    power = 2 if family == "sgd" else 1
    init = {"input": init_scale * input_mult, "hidden": init_scale, "output": init_scale * output_mult}
    lr = {"input": input_mult**power, "output": output_mult**power}
    return {k: v for k, v in init.items() if v != 1.0}, {k: v for k, v in lr.items() if v != 1.0}


def check_device(device: str | torch.device) -> None:
    """Refuse a CUDA device that this torch cannot reach, before any work is done."""
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise MutransferError(
            f"device {str(device)!r}: torch {torch.__version__} sees no CUDA GPU here. Fix: --device cpu, "
            "or install a CUDA build of torch on a machine with a GPU."
        )
