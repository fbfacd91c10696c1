"""Command line: one subcommand per public function; its flags are that function's parameters.

mutransfer demo                          # the whole story on the reference GPT, ~8 min on 2 CPU cores
mutransfer plan mutransfer.models:GPT --base width=64 --target width=1024 --out plan.json
mutransfer coord-check mutransfer.models:GPT --widths 32 64 128 256 --shape base_d_head=8 --out coord.png
mutransfer coord-check mutransfer.models:GPT --depths 2 4 8 --residual '*proj' --parametrizations sp mup
mutransfer grid mutransfer.models:MLP --data fashion-mnist --widths 128 256 512 1024 --path grid.json
mutransfer grid mutransfer.models:GPT --shape width=64 --steps 100 200 400 800 --path steps.json
mutransfer fit steps.json --to steps=20000
mutransfer sweep examples/sweep-mlp.toml --workers 2
mutransfer transfer examples/sweep-mlp.toml --out target.json

Exit status: 0 done (a check passed), 1 a check failed, 2 bad input, 3 an internal error, 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

from mutransfer._interrupt import ctrl_c_raises_interrupted
from mutransfer.errors import MutransferError

from . import demo, measure, tune
from .options import parse_shape

__all__ = ["build_parser", "main", "parse_shape"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mutransfer", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo.add_commands(sub)
    measure.add_commands(sub)
    tune.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command as typed, for run records
    with ctrl_c_raises_interrupted():
        try:
            return args.run(args)
        except MutransferError as exc:
            print(f"mutransfer: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:  # commands with work to keep say where it is; this is the rest
            print("\ninterrupted", file=sys.stderr)
            return 130
        except Exception:  # not the input's fault: a bug, shown whole; 1 stays "the check failed"
            traceback.print_exc()
            print("mutransfer: internal error (the traceback above); please report it", file=sys.stderr)
            return 3
