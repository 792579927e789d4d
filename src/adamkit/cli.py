"""The ``adamkit`` command line."""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

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
    schedule = commands.add_parser(
        "schedule",
        help="plot learning-rate schedules given as specs",
        description=(
            "Plot one or more schedules to a PNG and print a terminal chart of each. A SPEC joins "
            "pieces with '+', for example 'warmup(200) + cosine(1800, floor=0.1)'. Pieces: "
            + ", ".join(f"{name}({', '.join(_arguments(cls))})" for name, cls in _schedules())
            + ". lambda and multiplicative take an expression of the step t, such as "
            "'lambda(0.67 ** t)'."
        ),
    )
    schedule.add_argument("specs", nargs="+", metavar="SPEC", help="a schedule spec (quote it)")
    schedule.add_argument(
        "--lr", type=float, default=1.0, help="base lr the multipliers scale (default: 1)"
    )
    schedule.add_argument(
        "--steps", type=int, default=None, help="steps to draw (default: the longest schedule)"
    )
    schedule.add_argument(
        "-o",
        "--out",
        default=None,
        help="PNG file to write (default: named after the specs, e.g. schedule_cosine_100.png)",
    )
    schedule.add_argument("--log", action="store_true", help="log scale for the lr axis")
    schedule.add_argument("--title", default=None, help="plot title")
    telemetry = commands.add_parser(
        "plot-telemetry",
        help="plot a telemetry file written by adamkit.Telemetry",
        description="Plot lr, gradient norm, update/param ratio (and RAdam's rho_t) per group.",
    )
    telemetry.add_argument("file", help="a .jsonl or .csv file from adamkit.Telemetry")
    telemetry.add_argument(
        "-o", "--out", default="telemetry.png", help="PNG file to write (default: %(default)s)"
    )
    compare = commands.add_parser(
        "compare",
        help="train a built-in task with several optimizers and schedules",
        description=(
            "Train a built-in task (regression: the seed's linear fit; digits: scikit-learn's "
            "bundled digits with an MLP) once per optimizer, print a table of final metrics "
            "and time, and plot the loss curves. An optimizer is written like a call, "
            "optionally followed by '@' and a schedule spec: "
            "'AdamW(lr=3e-3, weight_decay=0.1) @ warmup(20) + cosine(280)'; torch's "
            "optimizers as 'torch.SGD(lr=0.1, momentum=0.9)'."
        ),
    )
    compare.add_argument("optimizers", nargs="+", metavar="OPTIMIZER")
    compare.add_argument(
        "--task",
        default="regression",
        choices=("regression", "digits"),
        help="the built-in task (default: %(default)s)",
    )
    compare.add_argument(
        "--steps", type=int, default=300, help="training steps per run (default: %(default)s)"
    )
    compare.add_argument(
        "-o", "--out", default="compare.png", help="PNG of the loss curves (default: %(default)s)"
    )
    return parser


def _schedules() -> list[tuple[str, type]]:
    from .schedules import SCHEDULES

    return list(SCHEDULES.items())


def _arguments(cls: type) -> list[str]:
    import inspect

    return [
        name if p.default is inspect.Parameter.empty else f"{name}={p.default!r}"
        for name, p in inspect.signature(cls).parameters.items()
    ]


def schedule_png(specs: Sequence[str]) -> str:
    """A file name for the plot of ``specs``, so that plotting another spec does not replace
    it: ``["multiplicative(0.69)"]`` -> ``schedule_multiplicative_0.69.png``. Where the
    readable part loses something (an operator, a cut at 100 characters), a short hash of the
    specs keeps different specs apart: ``lambda(0.5 ** t)`` and ``lambda(0.5 * t)``."""
    slugs = [re.sub(r"[^A-Za-z0-9.=-]+", "_", spec).strip("_.") for spec in specs]
    joined = "_vs_".join(slug for slug in slugs if slug)
    name = joined[:100].rstrip("_.")
    lossy = len(joined) > 100 or any(re.search(r"[^A-Za-z0-9.=,()\s_-]", s) for s in specs)
    if lossy or not name:
        digest = hashlib.sha1("\n".join(specs).encode()).hexdigest()[:6]
        name = f"{name}_{digest}" if name else digest
    return f"schedule_{name}.png"


def _schedule_command(args: argparse.Namespace) -> int:
    from .schedules import SpecError, parse, plot_schedule

    try:
        schedules = [parse(spec) for spec in args.specs]
        path = plot_schedule(
            schedules,
            schedule_png([str(s) for s in schedules]) if args.out is None else args.out,
            lr=args.lr,
            steps=args.steps,
            title=args.title,
            logy=args.log,
        )
    except (SpecError, ValueError, OSError) as error:
        return _fail("schedule", error)
    print(f"wrote {Path(path).resolve()}")
    return 0


def _fail(command: str, error: Exception) -> int:
    """Print ``error`` as the command's one-line complaint (without the library function's own
    ``compare:`` prefix, which would repeat the command's name) and return exit status 2."""
    message = re.sub(r"^(compare|plot_schedule|plot_telemetry): ", "", str(error))
    print(f"adamkit {command}: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # complain with the subcommand's usage, not the top level's
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        culprit = commands.choices.get(args.command, parser)
        culprit.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.version:
        from . import __version__

        print(f"adamkit {__version__}")
        return 0
    if args.command == "tour":
        from .tour import run_tour

        run_tour(args.out)
        return 0
    if args.command == "schedule":
        return _schedule_command(args)
    if args.command == "compare":
        from ._plot import png_path
        from .schedules import SpecError
        from .tools.compare import compare

        try:
            if args.out:  # before training, not after
                folder = png_path(args.out).resolve().parent
                while not folder.exists():
                    folder = folder.parent
                if not os.access(folder, os.W_OK):
                    raise OSError(f"cannot write {args.out}: {folder} is not writable")
            compare(args.task, args.optimizers, steps=args.steps, out=args.out)
        except (SpecError, ValueError, TypeError, RuntimeError, OSError) as error:
            return _fail("compare", error)
        return 0
    if args.command == "plot-telemetry":
        from .tools import plot_telemetry

        try:
            path = plot_telemetry(args.file, args.out)
        except (OSError, ValueError) as error:
            return _fail("plot-telemetry", error)
        print(f"wrote {Path(path).resolve()}")
        return 0
    parser.print_help()
    return 2
