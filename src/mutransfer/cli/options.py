"""What every command shares: flags named and defaulted after the function they call, the old
spellings of renamed flags, ``KEY=VALUE`` shapes, the data, and a progress line."""

from __future__ import annotations

import argparse
import ast
import inspect
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from mutransfer.data import Batches, factory_keywords, load_for_training
from mutransfer.errors import MutransferError

__all__ = ["Flags", "Progress", "duration", "load_data", "parse_shape", "renamed"]

TEXT_BLOCK_SIZE = 128  # the context length text data gets when --block-size is not given
RENAMED_IN = "0.2"  # old spellings work for one release: they go in the next


def parse_shape(items: Sequence[str], what: str = "shape item") -> dict[str, Any]:
    """``["width=64", "tie_embeddings=True"]`` -> ``{"width": 64, "tie_embeddings": True}``."""
    shape: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise MutransferError(f"{what} {item!r} must look like key=value, e.g. width=64.")
        try:
            shape[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            shape[key] = value
    return shape


class Flags:
    """Adds ``--name`` for keyword parameters of ``function``, defaulting to the function's own
    default, so the command line and the API cannot drift apart."""

    def __init__(self, parser: argparse.ArgumentParser, function: Callable[..., Any]) -> None:
        self.parser = parser
        self.defaults = {
            k: p.default
            for k, p in inspect.signature(function).parameters.items()
            if p.default is not p.empty
        }

    def __call__(self, name: str, help: str, *, several: bool = False, **kwargs: Any) -> None:
        default = self.defaults[name]
        if several and not isinstance(default, list | tuple) and default is not None:
            default = [default]  # a flag that may list several values of a scalar parameter
        if isinstance(default, tuple):
            default = list(default)
        if default not in (None, [], "", ()):
            shown = " ".join(map(str, default)) if isinstance(default, list) else default
            help = f"{help} (default {shown})"
        self.parser.add_argument(f"--{name.replace('_', '-')}", default=default, help=help, **kwargs)


class _Renamed(argparse.Action):
    """An old spelling: still works, and says the new one on stderr."""

    def __init__(
        self, option_strings: list[str], dest: str, new: str, value: Any = None, **kwargs: Any
    ) -> None:
        self.new, self.value = new, value
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        print(
            f"mutransfer: {option_string} is now {self.new} (the old spelling is accepted until "
            f"the release after {RENAMED_IN})",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, self.value if self.value is not None else values)


def renamed(parser: argparse.ArgumentParser, old: str, new: str, *, value: Any = None, **kwargs: Any) -> None:
    """Accept ``old`` as ``new`` (hidden from --help); ``value``: what a bare old switch means."""
    dest = new.removeprefix("--").replace("-", "_")
    if value is not None:
        kwargs["nargs"] = 0
    parser.add_argument(
        old, action=_Renamed, dest=dest, new=new, value=value, help=argparse.SUPPRESS, **kwargs
    )


def load_data(
    name: str, block_size: int | Sequence[int] | None, make_model: Callable[..., Any], shape: dict[str, Any]
) -> tuple[Batches, dict[str, Any]]:
    """The data source, and the factory keywords it decides (the input size, the context
    length) for those the factory takes and ``shape`` leaves open."""
    if isinstance(block_size, list | tuple):
        block_size = max(block_size)
    data = load_for_training(name, block_size or TEXT_BLOCK_SIZE)
    filled = {k: v for k, v in factory_keywords(data, make_model).items() if k not in shape}
    if filled:
        print(f"from the data: {' '.join(f'{k}={v}' for k, v in filled.items())}", file=sys.stderr)
    return data, {**filled, **shape}


class Progress:
    """One status line on stderr: runs done, elapsed time and an estimate of the time left."""

    def __init__(self, label: str, unit: str = "runs") -> None:
        self.label, self.unit, self.start = label, unit, time.monotonic()
        self.tty = sys.stderr.isatty()

    def __call__(self, done: int, total: int, what: str, left: float | None = None) -> None:
        """``left``: the caller's estimate of the seconds to go; else elapsed time per item."""
        elapsed = time.monotonic() - self.start
        if left is None and 0 < done < total:
            left = elapsed / done * (total - done)
        eta = f", ~{duration(left)} left" if left and done < total else ""
        line = f"{self.label}: {done}/{total} {self.unit}, {duration(elapsed)}{eta} ({what})"
        if self.tty:  # one line, rewritten in place
            print("\r" + line.ljust(78), end="\n" if done == total else "", file=sys.stderr, flush=True)
        else:  # logs (CI): one line per run
            print(line, file=sys.stderr, flush=True)


def duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s" if seconds < 10 else f"{secs}s"
