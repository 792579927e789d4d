"""``adamkit.testing``: conformance checks for any ``torch.optim.Optimizer`` subclass.

A drop-in optimizer must do more than compute the right update: resume bit for bit from its
state dict (in this process, through ``torch.save``, in another process), run hooks and
closures as torch does, leave parameters alone when they have no gradient, take parameter
groups added later, complex parameters and float64, agree across its own implementations,
refuse bad hyperparameters by name, and match a reference. :func:`check` runs those checks
on a class and some configurations and returns a :class:`Report`::

    from adamkit.testing import check
    report = check(MyAdamW, configs=[{"lr": 1e-2}, {"lr": 1e-2, "weight_decay": 0.1}],
                   reference=torch.optim.AdamW)
    print(report.table())
    report.assert_ok()          # in a test: fails listing every failed check

or from the command line (exit status 1 if any check fails)::

    python -m adamkit.testing mypkg.optim:MyAdamW --config '{"lr": 0.01}' \\
        --reference torch.optim.AdamW --junit report.xml

Each failure names the check, the configuration and the first tensor that differs. The
``compile`` check (a step under ``torch.compile``) takes tens of seconds: ask for it by name.
"""

from __future__ import annotations

import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.optim import Optimizer

from ._checks import CHECKS, SLOW, Case, CheckFailed, Skip, describe

__all__ = ["CHECKS", "CheckFailed", "Report", "Result", "check"]


@dataclass
class Result:
    """One check on one configuration: ``status`` is ``"pass"``, ``"fail"`` or ``"skip"``."""

    check: str
    config: dict[str, Any]
    status: str
    message: str = ""
    seconds: float = 0.0


@dataclass
class Report:
    """The results of :func:`check`, with views for a terminal, markdown and JUnit."""

    optimizer: str
    results: list[Result]

    @property
    def ok(self) -> bool:
        return all(r.status != "fail" for r in self.results)

    @property
    def failures(self) -> list[Result]:
        return [r for r in self.results if r.status == "fail"]

    def counts(self) -> dict[str, int]:
        return {s: sum(r.status == s for r in self.results) for s in ("pass", "fail", "skip")}

    def table(self) -> str:
        """One line per check and configuration, then the failures in full."""
        width = max(len("check"), *(len(r.check) for r in self.results))
        lines = [f"{self.optimizer}: " + ", ".join(f"{n} {s}" for s, n in self.counts().items())]
        for r in self.results:
            note = f"  {r.message.splitlines()[0][:90]}" if r.status == "skip" else ""
            lines.append(f"  {r.status.upper():4}  {r.check:<{width}}  {describe(r.config)}{note}")
        for r in self.failures:
            lines.append(f"\nFAIL {r.check} {describe(r.config)}:\n  {r.message}")
        return "\n".join(lines)

    def markdown(self) -> str:
        lines = [f"## {self.optimizer}", "", "| check | config | result | detail |"]
        lines.append("|---|---|---|---|")
        for r in self.results:
            detail = r.message.splitlines()[0].replace("|", "\\|") if r.message else ""
            lines.append(f"| {r.check} | `{describe(r.config)}` | {r.status} | {detail} |")
        return "\n".join(lines) + "\n"

    def junit(self, path: str | Path) -> Path:
        """Write the results as JUnit XML (one testcase per check and configuration)."""
        c = self.counts()
        suite = ET.Element(
            "testsuite",
            name=f"adamkit.testing {self.optimizer}",
            tests=str(len(self.results)),
            failures=str(c["fail"]),
            skipped=str(c["skip"]),
        )
        for r in self.results:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=self.optimizer,
                name=f"{r.check}[{describe(r.config)}]",
                time=f"{r.seconds:.3f}",
            )
            if r.status == "fail":
                ET.SubElement(case, "failure", message=r.message.splitlines()[0]).text = r.message
            elif r.status == "skip":
                ET.SubElement(case, "skipped", message=r.message)
        path = Path(path)
        ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)
        return path

    def assert_ok(self) -> None:
        """Raise ``AssertionError`` listing every failed check (for use in a test)."""
        if not self.ok:
            raise AssertionError(
                "\n".join(f"{r.check} {describe(r.config)}: {r.message}" for r in self.failures)
            )


def check(
    cls: type[Optimizer],
    configs: Sequence[dict[str, Any]] = ({},),
    *,
    reference: type[Optimizer] | None = None,
    checks: Sequence[str] | None = None,
    skip: Sequence[str] = (),
    steps: int = 5,
    reference_steps: int = 50,
    rtol: float = 1e-5,
    atol: float = 1e-6,
) -> Report:
    """Run the conformance checks on ``cls`` for each configuration (constructor keyword
    arguments besides the parameters).

    Args:
        checks: the checks to run, by name (default: every one but the slow ``compile``).
        skip: checks to leave out.
        reference: a class to compare with over ``reference_steps`` steps (for example
            ``torch.optim.AdamW``); configuration keys it does not take are not passed to it.
        steps: steps per run in the other checks.
        rtol, atol: tolerances where exact equality is not expected (a reference, another
            implementation, complex against real); resuming and determinism are bitwise.
    """
    if not (isinstance(cls, type) and issubclass(cls, Optimizer)):
        raise TypeError(f"check: expected a torch.optim.Optimizer subclass, got {cls!r}")
    names = list(checks) if checks is not None else [n for n in CHECKS if n not in SLOW]
    unknown = [n for n in (*names, *skip) if n not in CHECKS]
    if unknown:
        raise ValueError(f"check: unknown checks {unknown} (known: {', '.join(CHECKS)})")
    results = []
    for config in configs:
        case = Case(cls, dict(config), steps, reference, reference_steps, rtol, atol)
        for name in names:
            if name in skip:
                continue
            start = time.perf_counter()
            try:
                CHECKS[name](case)
                status, message = "pass", ""
            except Skip as why:
                status, message = "skip", str(why)
            except CheckFailed as failure:
                status, message = "fail", str(failure)
            except Exception as error:  # the optimizer itself raised: a failure, with where
                where = traceback.extract_tb(error.__traceback__)[-1]
                status = "fail"
                message = (
                    f"raised {type(error).__name__}: {error} "
                    f"(at {Path(where.filename).name}:{where.lineno})"
                )
            results.append(Result(name, dict(config), status, message, time.perf_counter() - start))
    return Report(f"{cls.__module__}.{cls.__qualname__}", results)
