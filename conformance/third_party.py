"""Run adamkit's conformance kit on optimizers from other packages and write what it finds to
``docs/conformance-findings.md``: ``python conformance/third_party.py`` (needs the ``[dev]``
extra, which holds pytorch-optimizer and schedulefree)."""

from __future__ import annotations

import platform
import sys
from importlib.metadata import version
from pathlib import Path

import pytorch_optimizer
import schedulefree
import torch

from adamkit.testing import check


class AdamWScheduleFreeTrain(schedulefree.AdamWScheduleFree):
    """schedulefree's optimizers step only in train mode (``optimizer.train()``)."""

    def __init__(self, params, **kwargs):  # type: ignore[no-untyped-def]
        super().__init__(params, **kwargs)
        self.train()


TARGETS = [
    (pytorch_optimizer.AdamP, [{"lr": 1e-2}], None),
    (pytorch_optimizer.Lion, [{"lr": 1e-3, "weight_decay": 0.1}], None),
    (pytorch_optimizer.AdaBelief, [{"lr": 1e-2}], None),
    (AdamWScheduleFreeTrain, [{"lr": 1e-2}], None),
]


def main() -> None:
    out = Path(__file__).resolve().parents[1] / "docs" / "conformance-findings.md"
    lines = [
        "# What adamkit.testing finds in other optimizer packages",
        "",
        "Written by `python conformance/third_party.py` (pytorch-optimizer "
        f"{version('pytorch-optimizer')}, schedulefree {version('schedulefree')}, torch "
        f"{torch.__version__}, Python {platform.python_version()}). Every check but `compile`;",
        "`schedulefree`'s class is wrapped to call `optimizer.train()` after construction, as",
        "its documentation requires; it is then defined in this script, so `fresh_process` skips.",
        "",
    ]
    reports = [check(cls, configs, reference=reference) for cls, configs, reference in TARGETS]
    lines += ["## Summary", ""]
    for report in reports:
        print(report.table(), file=sys.stderr)
        c = report.counts()
        found = "; ".join(f"`{r.check}`: {r.message.splitlines()[0]}" for r in report.failures)
        lines.append(
            f"- **{report.optimizer}** ({c['pass']} pass, {c['fail']} fail, {c['skip']} skip): "
            + (found or "nothing")
        )
    lines.append("")
    lines += [report.markdown() for report in reports]
    out.write_text("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
