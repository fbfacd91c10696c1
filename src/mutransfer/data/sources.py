"""Data sources by name, so a config file or the CLI can say ``data: shakespeare``.

data = mutransfer.data.load("stdlib", block_size=256)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from mutransfer.data.batches import Batches, TokenData
from mutransfer.data.images import digits, fashion_mnist, mnist_5k
from mutransfer.data.text import shakespeare, stdlib
from mutransfer.errors import MutransferError

__all__ = ["SOURCES", "factory_keywords", "load", "load_for_training"]

SOURCES: dict[str, Callable[..., Batches]] = {
    "stdlib": stdlib,
    "shakespeare": shakespeare,
    "fashion-mnist": fashion_mnist,
    "mnist-5k": mnist_5k,
    "digits": digits,
}


def load(name: str, **kwargs: Any) -> Batches:
    """Call the loader registered as ``name`` (``_`` and ``-`` are interchangeable) with ``kwargs``."""
    key = name.strip().lower().replace("_", "-")
    if key not in SOURCES:
        raise MutransferError(f"unknown data source {name!r}; choose one of: {', '.join(SOURCES)}.")
    loader = SOURCES[key]
    signature = inspect.signature(loader)
    try:
        signature.bind(**kwargs)
    except TypeError:
        accepted = ", ".join(signature.parameters) or "no options"
        raise MutransferError(
            f"data source {key!r} got options {sorted(kwargs)}; it accepts: {accepted}."
        ) from None
    return loader(**kwargs)


def load_for_training(name: str, block_size: int) -> Batches:
    """``load(name)``, with ``block_size`` as the context length when the source is text: what a
    command or config that may name either kind of data needs."""
    data = load(name)
    return data.with_block_size(block_size) if isinstance(data, TokenData) else data


def factory_keywords(data: Batches, make_model: Callable[..., Any]) -> dict[str, Any]:
    """The model keywords the data decides (input size, classes, vocabulary, context length),
    limited to those ``make_model`` accepts, so a config need not repeat them."""
    if isinstance(data, TokenData):
        implied = {"block_size": data.block_size, "vocab_size": data.vocab_size}
    else:  # ImageData, or a source of your own that may say none of these
        classes = getattr(data, "num_classes", None)
        implied = {
            "in_features": getattr(data, "in_features", None),
            "in_channels": getattr(data, "in_channels", None),
            "out_features": classes,
            "num_classes": classes,
        }
        implied = {k: v for k, v in implied.items() if v is not None}
    try:
        accepted = inspect.signature(make_model).parameters
    except (TypeError, ValueError):  # no signature to read: the user sets everything
        return {}
    return {k: v for k, v in implied.items() if k in accepted}
