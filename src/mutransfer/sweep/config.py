"""One description of a muTransfer experiment: what to build, how to train it, what to search.

    # sweep.toml
    factory = "mutransfer.models:MLP"
    data = "digits"
    proxy = { width = 64 }
    target = { width = 1024 }
    steps = 200
    trials = 24

    [space]
    lr = { low = 1e-4, high = 0.1, log = true }
    output_mult = { low = 0.25, high = 4.0, log = true }
    warmup = 0.1

The same in Python: ``SweepConfig(factory=MLP, data="digits", proxy={"width": 64}, ...,
space={"lr": Range(1e-4, 0.1, log=True), ...})``. Every key of the file is a field here;
validation reports every problem at once, each naming its key.
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


from mutransfer.errors import MutransferError
from mutransfer.factory import construct, keywords, load
from mutransfer.parametrizations import NAMES as PARAMETRIZATIONS
from mutransfer.scaling.roles import parameter_layout, width_multiplier
from mutransfer.setup import ROLES
from mutransfer.sweep.space import Range, grid_points, parse_space
from mutransfer.train import OPTIMIZERS, SCHEDULES
from mutransfer.unit import ALPHAS

__all__ = ["HPARAMS", "LR_AXES", "SHAPE_AXES", "ConfigError", "SweepConfig", "load_config"]

# What the built-in trainer understands in [space]; any factory keyword may be searched too.
HPARAMS = {
    "lr": "base learning rate (muP scales it per layer)",
    "init_scale": "multiplies the init of every weight matrix",
    "input_mult": "forward multiplier on the input layer / embeddings (absorbed into init and LR)",
    "output_mult": "forward multiplier on the readout (absorbed into init and LR)",
    "weight_decay": "weight decay, per step independent of width",
    "warmup": "fraction of the steps with linear warmup",
}
METRICS = ("val_loss", "train_loss")
LR_AXES = {"steps": "target_steps", "batch_size": "target_batch_size"}  # axis -> the target's field
SHAPE_AXES = ("width", "depth")  # where muP's LR should not move, and a fit may say it still does
SAMPLERS = ("tpe", "random", "grid", "independent")
PRUNERS = ("halving", "none")


class ConfigError(MutransferError):
    """Every problem found in a config, each naming its key."""

    def __init__(self, problems: list[str], source: str = "") -> None:
        self.problems = problems
        where = f" {source}" if source else ""
        super().__init__(f"bad sweep config{where}:\n  " + "\n  ".join(problems))


@dataclass(frozen=True, kw_only=True)
class SweepConfig:
    """A proxy sweep and its transfer target. Shapes are keyword arguments of ``factory``."""

    factory: str | Callable[..., Any]
    """The model factory, ``"package.module:name"`` or a callable: ``factory(**shape)``."""
    proxy: Mapping[str, Any]
    """Keywords of the small model that is tuned, e.g. ``{"width": 64}``."""
    target: Mapping[str, Any]
    """Keywords of the full-size model the hyperparameters go to, e.g. ``{"width": 1024}``."""
    base: Mapping[str, Any] | None = None
    """Where muP equals standard parametrization (default: the proxy)."""
    shape: Mapping[str, Any] = field(default_factory=dict)
    """Keywords shared by base, proxy and target (depth, heads, ...)."""
    sp_shape: Mapping[str, Any] = field(default_factory=dict)
    """Keywords for the standard-parametrization model only, applied over ``shape`` when
    ``parametrization`` is ``"sp"`` (e.g. the GPT's ``{"base_d_head": None}``: 1/sqrt(d) attention)."""
    parametrization: str = "mup"
    """``"mup"`` scales the tuned values to the target; ``"sp"`` copies them unchanged; ``"u-mup"``
    is unit-scaled muP (no base; ``unit_scaled = true`` where the factory takes it), whose LR and
    alphas (``alpha_attn``... in ``space``, default 1) carry to the target unchanged."""
    data: str | None = None
    """A built-in offline source (stdlib, shakespeare, fashion-mnist, mnist-5k, digits); the
    built-in trainer needs one, your own training function may do without."""
    block_size: int = 128
    """Sequence length for text data."""
    train: str | Callable[..., float] | None = None
    """Your training function (``"module:name"``), called with a ``ProxyRun``; default: built-in."""
    metric: str = "val_loss"
    """What the built-in trainer minimises: ``val_loss`` or ``train_loss``."""
    steps: int = 300
    """Training steps per proxy trial."""
    batch_size: int = 32
    optimizer: str = "adam"
    schedule: str = "cosine"
    eval_batches: int = 16
    z_loss: float = 0.0
    """Weight of a z-loss on the output logits (Wortsman et al. use 1e-4); 0: none."""
    monitor_every: int = 0
    """Record the monitors every this many steps, so a diverged trial says which rose first."""
    fp8: bool = False
    """Every matmul in simulated FP8 (``mutransfer.fp8``: E4M3 operands, E5M2 gradients, plain cast)."""
    init_law: str | None = None
    """How the factory's own init scales with width: ``fan_in`` (PyTorch default), ``constant`` or
    ``measured``; default: what the factory declares (its ``init_law`` attribute), else measured."""
    zero: tuple[str, ...] = ()
    """Parameter name patterns initialised to zero (e.g. the readout)."""
    depth: str | None = None
    """The factory keyword that counts residual blocks, when the target is deeper than the base
    too: the plan adds CompleteP's depth rules (see ``mutransfer.plan``)."""
    residual: tuple[str, ...] = ()
    """With ``depth``: name patterns of each residual branch's last module, e.g.
    ``["blocks.*.attn.proj", "blocks.*.fc_proj"]``."""
    alpha: float = 1.0
    """With ``depth``: the CompleteP exponent in [0.5, 1] (1 CompleteP, 0.5 Depth-muP)."""
    seed: int = 0
    """Seed of the model init and the batches, the same for every trial."""
    space: Mapping[str, Any] = field(default_factory=lambda: {"lr": Range(1e-4, 1e-1, log=True)})
    """Searched and fixed hyperparameters (see ``mutransfer.sweep.space``); after validation,
    ranges written as tables (``{low, high}``) are ``Range`` objects."""
    sampler: str = "tpe"
    """``tpe`` (default), ``random``, ``grid`` (every combination, once), or ``independent``
    (u-muP's independent search: ``lr`` alone over its range, each other key alone at the best
    ``lr``, then the bests combined; see ``mutransfer.sweep.independent``)."""
    trials: int = 20
    """Finished trials wanted (ignored by grid and independent search, which run their whole plan)."""
    pruner: str = "halving"
    """``halving``: successive halving among trials of the same proxy shape; ``none``."""
    min_steps: int | None = None
    """First rung of successive halving (default: steps / reduction, one cut before the end)."""
    reduction: int = 3
    """Keep the best 1/reduction of trials at each rung."""
    study: str = "sweep"
    """Name of the study in the storage."""
    storage: str | None = None
    """A journal file path (default ``<study>.journal``), or ``postgresql://user@host/db``."""
    heartbeat: int = 10
    """Seconds between heartbeats with SQL storage; a trial silent for 3 beats is re-queued."""
    target_steps: int | None = None
    """Steps of one target training run, for the cost report (default: ``steps``)."""
    target_batch_size: int | None = None
    """Batch size of the target run, for the cost report (default: ``batch_size``)."""
    lr_exponents: Mapping[str, float | str] = field(default_factory=dict)
    """How the best LR moves when the target trains longer (``steps``) or on larger batches
    (``batch_size``) than the proxy: an exponent ``e`` (the LR is multiplied by
    ``(target / proxy) ** e``), or a grid file over that axis to fit ``e`` from (see
    ``mutransfer fit``). muP says nothing of these axes; without an entry the LR is carried
    unchanged. ``width`` and ``depth`` correct what muP (CompleteP) leaves: the slide of the
    optimum a width (depth) grid measured, between the proxy's size and the target's;
    ``width.<role>`` (e.g. ``width.hidden``, from a per-role grid) scales that role's LR alone."""
    device: str = "cpu"

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError(problems)
        # one form whichever way it was written: a file's {low, high} tables become Ranges
        object.__setattr__(self, "space", parse_space(self.space)[0])
        object.__setattr__(self, "zero", tuple(self.zero))
        object.__setattr__(self, "residual", tuple(self.residual))

    def problems(self) -> list[str]:
        """Every problem with this config, each naming its key; empty when it is valid."""
        found: list[str] = []
        for key in ("proxy", "target", "shape", "sp_shape") + (("base",) if self.base is not None else ()):
            if not isinstance(getattr(self, key), Mapping):
                found.append(f"{key}: must be a table of factory keywords, e.g. {{ width = 64 }}")
        if not self.factory:
            found.append('factory: required, e.g. factory = "mutransfer.models:MLP"')
        for key, choices in (
            ("parametrization", tuple(PARAMETRIZATIONS)),
            ("metric", METRICS),
            ("optimizer", tuple(OPTIMIZERS)),
            ("schedule", SCHEDULES),
            ("sampler", SAMPLERS),
            ("pruner", PRUNERS),
            ("init_law", (None, "fan_in", "constant", "measured")),
        ):
            if getattr(self, key) not in choices:
                found.append(f"{key}: {getattr(self, key)!r} is not one of {list(choices)}")
        for key in ("steps", "batch_size", "eval_batches", "trials", "block_size", "heartbeat"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                found.append(f"{key}: must be an int >= 1, got {value!r}")
        if (
            isinstance(self.monitor_every, bool)
            or not isinstance(self.monitor_every, int)
            or self.monitor_every < 0
        ):
            found.append(f"monitor_every: an int >= 0 (0: off), got {self.monitor_every!r}")
        if not isinstance(self.fp8, bool):
            found.append(f"fp8: true or false, got {self.fp8!r}")
        alphas = sorted(k for k in (*self.space, *self.shape) if k in ALPHAS)
        if alphas and self.parametrization != "u-mup":
            found.append(
                f"space/shape {alphas}: u-muP's alphas act on the unit-scaled model only; set "
                'parametrization = "u-mup" (or drop them)'
            )
        for key in ("min_steps", "target_steps", "target_batch_size"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                found.append(f"{key}: must be an int >= 1, got {value!r}")
        for key, value in dict(self.lr_exponents).items():
            axis, dot, role = key.partition(".")
            if axis not in (*LR_AXES, *SHAPE_AXES):
                found.append(f"lr_exponents.{axis}: not one of {[*LR_AXES, *SHAPE_AXES]}")
            elif dot and (axis not in SHAPE_AXES or role not in ROLES):
                found.append(
                    f"lr_exponents.{key}: a per-role exponent is width.<role> or depth.<role>, "
                    f"the role one of {list(ROLES)}"
                )
            elif axis == "depth" and self.depth is None:
                found.append("lr_exponents.depth: needs depth, the keyword that counts the blocks")
            elif isinstance(value, bool) or not (
                isinstance(value, str) or (isinstance(value, int | float) and math.isfinite(value))
            ):
                found.append(f"lr_exponents.{key}: an exponent or a grid file path, got {value!r}")
        if self.depth is not None and not self.residual:
            found.append(
                'residual: depth needs the residual branches, e.g. residual = ["blocks.*.attn.proj"]'
            )
        if self.depth is None and self.residual:
            found.append(
                'depth: residual needs depth, the keyword that counts the blocks, e.g. depth = "depth"'
            )
        if (
            isinstance(self.z_loss, bool)
            or not isinstance(self.z_loss, int | float)
            or not 0 <= self.z_loss < 1
        ):
            found.append(f"z_loss: a weight in [0, 1), e.g. 1e-4; got {self.z_loss!r}")
        if not 0.5 <= self.alpha <= 1.0:
            found.append(f"alpha: must lie in [0.5, 1] (1 CompleteP, 0.5 Depth-muP), got {self.alpha!r}")
        if isinstance(self.reduction, bool) or not isinstance(self.reduction, int) or self.reduction < 2:
            found.append(f"reduction: must be an int >= 2, got {self.reduction!r}")
        if not isinstance(self.space, Mapping) or not self.space:
            found.append(
                "space: needs at least one hyperparameter, e.g. lr = {low = 1e-4, high = 0.1, log = true}"
            )
            return found
        space, space_problems = parse_space(self.space)
        found += space_problems
        if self.train is None:
            found += _unknown_hparams(space, self.factory)
            if self.data is None:
                found.append('data: the built-in trainer needs a data source, e.g. data = "digits"')
        if "lr" not in space:
            found.append("space.lr: required (a range, a list or a fixed value)")
        if self.sampler == "grid" and not space_problems:
            try:
                grid_points(space)
            except MutransferError as exc:
                found.append(str(exc))
        if self.sampler == "independent" and "lr" in space and not space_problems:
            from mutransfer.sweep.independent import plan_of  # imports Optuna: only when asked for

            try:
                plan_of(space)
            except MutransferError as exc:
                found.append(str(exc))
        if not any(isinstance(v, Range | list) for v in space.values()):
            found.append("space: nothing to search (every value is fixed); give a range or a list of choices")
        found += _storage_problems(self.storage)
        if not found:  # the shapes, once everything else holds: built on the meta device
            found += _shape_problems(self)
        return found

    @property
    def storage_url(self) -> str:
        """Where results live: the storage URL or journal path."""
        return self.storage or f"{self.study}.journal"

    def with_overrides(self, **changes: Any) -> SweepConfig:
        """A copy with some fields changed (e.g. the storage from a command-line flag)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def load_config(path: str | Path, **overrides: Any) -> SweepConfig:
    """Read a TOML (or YAML, when PyYAML is installed) file into a ``SweepConfig``.

    Unknown keys are errors with the nearest known key suggested; ``study`` defaults to the
    file's name, so ``mlp.toml`` keeps its results in ``mlp.journal``.
    """
    path = Path(path)
    if not path.is_file():
        raise MutransferError(f"config file {str(path)!r} does not exist.")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise MutransferError(
                f"{path} is YAML but PyYAML is not installed: pip install pyyaml, or write TOML."
            ) from None
        raw = yaml.safe_load(text) or {}
    else:
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise MutransferError(f"{path} is not valid TOML: {exc}") from None
    if not isinstance(raw, dict):
        raise MutransferError(f"{path}: expected a table of settings at the top level.")
    known = {f.name for f in fields(SweepConfig)}
    problems = []
    for key in raw:
        if key not in known:
            near = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; known keys: {', '.join(sorted(known))}"
            problems.append(f"{key}: unknown key{hint}")
    missing = [key for key in ("factory", "proxy", "target") if key not in raw]
    problems += [f"{key}: required" for key in missing]
    values = {k: v for k, v in raw.items() if k in known}
    values.setdefault("study", path.stem)
    values.update({k: v for k, v in overrides.items() if v is not None})
    if not missing:  # the fields' own checks, so one run reports everything
        try:
            config = SweepConfig(**values)
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        raise ConfigError(problems, str(path))
    return config


def _unknown_hparams(space: Mapping[str, Any], factory: str | Callable[..., Any]) -> list[str]:
    """Keys of the space that neither the built-in trainer nor the factory understands."""
    try:
        accepted = set(inspect.signature(load(factory)).parameters)
    except MutransferError as exc:
        return [str(exc)]
    except (TypeError, ValueError):
        accepted = set()
    return [
        f"space.{key}: not a hyperparameter of the built-in trainer ({', '.join(HPARAMS)}) nor a "
        'keyword of the factory; set train = "module:function" to search your own'
        for key in space
        if key not in HPARAMS and key not in accepted
    ]


def _shape_problems(config: SweepConfig) -> list[str]:
    """The proxy, target and base built on the meta device (a misspelled keyword or a string width
    fails here, not at the first trial), and a target no wider than the proxy refused."""
    try:
        make_model = load(config.factory)
    except MutransferError as exc:
        return [str(exc)]
    accepted = keywords(make_model)
    models = {}
    for key in ("proxy", "target", "base"):
        shape = getattr(config, key)
        if shape is None:
            continue
        shape = {**config.shape, **shape}
        if accepted is not None:
            required = _required(make_model)
            if required - set(
                shape
            ):  # keywords the data fills (vocab_size, in_features, ...): cannot build here
                return []
        try:
            models[key] = construct(make_model, shape)
        except MutransferError as exc:
            return [f"{key}: {exc}"]
    try:
        grown = width_multiplier(parameter_layout(models["proxy"]), parameter_layout(models["target"]))
    except MutransferError as exc:
        return [f"target: {exc}"]
    if grown < 1:
        return [
            f"target: {dict(config.target)} is narrower than the proxy {dict(config.proxy)} (width "
            f"x{grown:g}); muTransfer carries a small proxy's values to a larger target. Fix: swap them."
        ]
    return []


def _required(make_model: Callable[..., Any]) -> set[str]:
    params = inspect.signature(make_model).parameters.values()
    return {
        p.name for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def _storage_problems(storage: str | None) -> list[str]:
    if storage is None or "://" not in storage:
        return []  # a journal file path
    scheme = storage.split("://", 1)[0].split("+", 1)[0]
    if scheme == "postgresql":
        return []
    if scheme == "sqlite":
        return [
            "storage: SQLite fails under parallel workers (UpdateFinishedTrialError); use a journal "
            "file path (one machine) or postgresql://... (many)"
        ]
    return [
        f"storage: unknown scheme {scheme!r}; use a journal file path (one machine) or "
        "postgresql://user:password@host/db (many machines)"
    ]
