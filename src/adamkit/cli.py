"""The ``adamkit`` command line."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adamkit",
        description="The Adam family of optimizers for PyTorch: tools and a guided tour.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    tour = commands.add_parser(
        "tour",
        help="walk through every section of the seed tutorial on built-in data",
        description="Run the seed tutorial's examples with adamkit and write their plots.",
    )
    tour.add_argument(
        "-o",
        "--out",
        default="adamkit-tour",
        help="folder for the PNG plots (default: %(default)s)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__

        print(f"adamkit {__version__}")
        return 0
    if args.command == "tour":
        from .tour import run_tour

        run_tour(args.out)
        return 0
    parser.print_help()
    return 2
