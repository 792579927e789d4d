"""``python -m adamkit.testing MODULE:CLASS ...``: run the conformance checks from a shell."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import CHECKS, check


def load(spec: str) -> Any:
    """``"pkg.mod:Class"`` or ``"torch.optim.AdamW"`` -> the object."""
    module, _, name = spec.partition(":") if ":" in spec else spec.rpartition(".")
    try:
        target: Any = importlib.import_module(module)
        for part in name.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as error:
        raise SystemExit(f"adamkit.testing: cannot load {spec!r}: {error}") from None
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m adamkit.testing",
        description="Check that torch.optim.Optimizer subclasses behave as drop-ins.",
    )
    parser.add_argument("optimizers", nargs="+", metavar="MODULE:CLASS")
    parser.add_argument(
        "--config",
        action="append",
        default=None,
        help="constructor arguments as JSON (repeat for several; default: {})",
    )
    parser.add_argument("--reference", help="MODULE:CLASS to compare with, e.g. torch.optim.AdamW")
    parser.add_argument("--checks", help=f"comma-separated subset of: {', '.join(CHECKS)}")
    parser.add_argument("--skip", default="", help="comma-separated checks to leave out")
    parser.add_argument("--steps", type=int, default=5, help="steps per run (default: 5)")
    parser.add_argument("--junit", type=Path, help="write JUnit XML here")
    parser.add_argument("--markdown", type=Path, help="write a markdown report here")
    args = parser.parse_args(argv)
    try:
        configs = [json.loads(c) for c in args.config] if args.config else [{}]
    except json.JSONDecodeError as error:
        parser.error(f"--config is not JSON: {error}")
    reference = load(args.reference) if args.reference else None
    ok, markdown = True, []
    for spec in args.optimizers:
        report = check(
            load(spec),
            configs,
            reference=reference,
            checks=args.checks.split(",") if args.checks else None,
            skip=[s for s in args.skip.split(",") if s],
            steps=args.steps,
        )
        print(report.table())
        markdown.append(report.markdown())
        if args.junit:
            path = (
                args.junit
                if len(args.optimizers) == 1
                else args.junit.with_stem(f"{args.junit.stem}-{spec.replace(':', '.')}")
            )
            report.junit(path)
        ok = ok and report.ok
    if args.markdown:
        args.markdown.write_text("\n".join(markdown))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
