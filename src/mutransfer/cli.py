"""Command line: one subcommand per public function; flags mirror argument names.

mutransfer plan mutransfer.models:GPT --base width=64 --target width=1024 --out plan.json
"""

from __future__ import annotations

import argparse
import ast
import importlib
import sys
from collections.abc import Callable, Sequence

from mutransfer.errors import MutransferError
from mutransfer.scaling import plan as make_plan


def load_factory(spec: str) -> Callable:
    """Import ``module:attr`` (a model class or factory function)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not attr:
        raise MutransferError(f"factory {spec!r} must look like 'package.module:factory'.")
    sys.path.insert(0, ".")  # let users name modules in the working directory
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise MutransferError(f"cannot import module {module_name!r} for factory {spec!r}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise MutransferError(f"module {module_name!r} has no attribute {attr!r}.") from None


def parse_shape(items: Sequence[str]) -> dict[str, object]:
    """``["width=64", "tie_embeddings=True"]`` -> ``{"width": 64, "tie_embeddings": True}``."""
    shape = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise MutransferError(f"shape item {item!r} must look like key=value, e.g. width=64.")
        try:
            shape[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            shape[key] = value
    return shape


def _plan(args: argparse.Namespace) -> int:
    p = make_plan(load_factory(args.factory), base=parse_shape(args.base), target=parse_shape(args.target))
    print(p.summary(optimizer_family=args.optimizer_family))
    if args.out:
        p.save(args.out)
        print(f"plan written to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mutransfer", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan", help="classify a model's parameters and print the muP plan")
    p.add_argument("factory", help="module:factory, e.g. mutransfer.models:GPT")
    p.add_argument("--base", nargs="+", required=True, metavar="KEY=VALUE", help="base shape keywords")
    p.add_argument("--target", nargs="+", required=True, metavar="KEY=VALUE", help="target shape keywords")
    p.add_argument("--optimizer-family", default="adam", choices=["adam", "sgd"])
    p.add_argument("--out", help="write the plan as JSON here")
    p.set_defaults(run=_plan)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except MutransferError as exc:
        print(f"mutransfer: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
