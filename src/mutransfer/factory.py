"""The user's model factory: named, imported, built, and when it fails, said why in user terms.

A factory is any callable ``make_model(**shape) -> nn.Module``: a class, a function, or an
object (``mutransfer.hf.factory`` returns one). Results and configs record it by ``name_of``
(``"module:qualname"``, or an object's ``repr``, which names its config); a config or the
command line gives it as ``"module:name"`` for ``load``. It is user code, so its errors reach
users through ``construct``: a keyword it does not take is named with the keywords it does take
(and the ``width_key=`` that points a check or grid at its own width keyword); a failure that
comes from the meta device gets the meta advice; anything else is reported with the shape
that broke it.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from mutransfer.errors import MutransferError

__all__ = ["construct", "keywords", "load", "name_of"]

_UNEXPECTED = re.compile(r"unexpected keyword argument '(\w+)'")
_WIDTH_NAMES = ("width", "d_model", "hidden_size", "n_embd", "dim", "embed_dim", "hidden_dim", "channels")


def name_of(obj: Any) -> str:
    """How results record a factory, a loss or an optimizer: ``"module:qualname"`` for a function
    or class, the text itself for a string, and a factory object's ``repr`` (it names its config,
    so a grid is not resumed under another one)."""
    if isinstance(obj, str):
        return obj
    qualname = getattr(obj, "__qualname__", None)
    if qualname is None:
        return repr(obj)
    return f"{getattr(obj, '__module__', '?')}:{qualname}"


def load(spec: str | Callable[..., Any], key: str = "factory") -> Callable[..., Any]:
    """Import ``"module:name"`` (a callable passes through); errors name the config ``key``.
    Modules in the working directory are found too."""
    if callable(spec):
        return spec
    module_name, sep, attr = str(spec).partition(":")
    if not sep or not attr:
        raise MutransferError(f"{key}: {spec!r} must look like 'package.module:name'.")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, ".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise MutransferError(f"{key}: cannot import module {module_name!r} for {spec!r}: {exc}") from None
    if not hasattr(module, attr):
        raise MutransferError(f"{key}: module {module_name!r} has no attribute {attr!r}.")
    return getattr(module, attr)


def construct(
    make_model: Callable[..., nn.Module], shape: Mapping[str, Any], device: str | torch.device = "meta"
) -> nn.Module:
    """``make_model(**shape)`` built on ``device`` (default meta: shapes only, no memory)."""
    try:
        with torch.device(device):
            model = make_model(**shape)
    except Exception as exc:  # the factory is user code: report it with the shape that broke it
        raise MutransferError(_failure(make_model, dict(shape), exc, str(device))) from exc
    if not isinstance(model, nn.Module):
        raise MutransferError(f"the model factory returned {type(model).__name__}, not a torch.nn.Module.")
    return model


def keywords(make_model: Callable[..., Any]) -> list[str] | None:
    """The keywords ``make_model`` takes, or None when it takes any (``**kwargs``) or cannot say."""
    try:
        params = inspect.signature(make_model).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _failure(make_model: Callable[..., Any], shape: dict, exc: Exception, device: str) -> str:
    what = f"{type(exc).__name__}: {exc}"
    unknown = _UNEXPECTED.search(str(exc)) if isinstance(exc, TypeError) else None
    if unknown:
        accepted = keywords(make_model) or []
        width = next((k for k in _WIDTH_NAMES if k in accepted), None)
        hint = f" To vary its width, pass width_key={width!r} (--width-key {width})." if width else ""
        return (
            f"the model factory takes no keyword {unknown.group(1)!r} (shape {shape}); it takes "
            f"{', '.join(accepted) or 'other keywords'}. Fix: use the factory's own keyword names in the "
            f"shapes.{hint}"
        )
    if device == "meta" and ("meta" in str(exc).lower() or isinstance(exc, NotImplementedError)):
        return (
            f"the model factory failed on the meta device with shape {shape}: {what}. Fix: make the "
            "factory avoid reading tensor values while building (no .item(), no data loading), or "
            "build the model yourself and use mutransfer.plan_from_model(model, base_dims=...)."
        )
    return (
        f"the model factory failed with shape {shape}: {what}. Fix: check the values in this shape "
        "(numbers, not strings; a width the head count divides)."
    )
