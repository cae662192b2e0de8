"""The ``theia-frames`` command line.

Each command lives in its own module of this package, which defines
``register(subparsers)``: it adds its parser and sets ``func`` (taking the
parsed arguments, returning an exit code). :mod:`.remote` holds what the
commands that talk to a collector share: the connection options and the
confirmation of what they sent, with its messages and exit codes.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ..exceptions import TheiaError

__all__ = ["main", "build_parser"]

# Modules of this package that define commands, in the order they are listed.
COMMAND_MODULES: tuple[str, ...] = ("serve", "client", "count", "offline", "logs", "check")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="theia-frames",
        description="The theia event log in pandas: collector, client, frames.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except TheiaError as exc:
        print(f"theia-frames: error: {exc}", file=sys.stderr)
        return 1
