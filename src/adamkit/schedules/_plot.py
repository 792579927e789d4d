"""``plot_schedule``: draw schedules to a PNG file and to the terminal."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from .._plot import save_curves, text_chart
from ._pieces import Join, Schedule
from ._spec import parse

__all__ = ["plot_schedule", "schedule_report"]

ScheduleLike = Schedule | str
MAX_STEPS = 10_000_000


def _named(
    schedules: ScheduleLike | Sequence[ScheduleLike] | Mapping[str, ScheduleLike],
) -> dict[str, Schedule]:
    if isinstance(schedules, Schedule | str):
        schedules = [schedules]
    items = (
        list(schedules.items())
        if isinstance(schedules, Mapping)
        else [(None, s) for s in schedules]
    )
    named = {}
    for label, schedule in items:
        parsed = parse(schedule) if isinstance(schedule, str) else schedule
        if not isinstance(parsed, Schedule):
            raise TypeError(
                f"plot_schedule: expected a Schedule or a spec string, got {schedule!r}"
            )
        named[str(parsed) if label is None else label] = parsed
    if not named:
        raise ValueError("plot_schedule: no schedule given")
    return named


def default_steps(schedules: Sequence[Schedule]) -> int:
    """Long enough to show every finite schedule to its end (100 when none ends)."""
    ends = [s.length for s in schedules if s.length]
    return max(ends) if ends else 100


def _key_steps(schedule: Schedule, steps: int) -> list[int]:
    """Step 0, where each joined piece starts, and the last step."""
    keys = {0, steps - 1}
    if isinstance(schedule, Join):
        keys.update(s for s in schedule._starts if s < steps)
    return sorted(keys)


def schedule_report(schedule: Schedule, *, lr: float, steps: int, label: str | None = None) -> str:
    """A compact terminal view: the spec, the lr at the key steps, and a block chart."""
    lrs = [lr * v for v in schedule.values(steps)]
    keys = "   ".join(f"step {k}: {lrs[k]:.4g}" for k in _key_steps(schedule, steps))
    chart = text_chart(lrs, height=6, width=64, x_range=(0, steps - 1))
    return f"{label or schedule}\n  {keys}\n  min {min(lrs):.4g}, max {max(lrs):.4g}\n{chart}"


def plot_schedule(
    schedules: ScheduleLike | Sequence[ScheduleLike] | Mapping[str, ScheduleLike],
    path: str | Path = "schedule.png",
    *,
    lr: float = 1.0,
    steps: int | None = None,
    title: str | None = None,
    logy: bool = False,
    terminal: bool = True,
) -> Path:
    """Plot the lr (``lr * multiplier``) of one or several schedules over ``steps`` to a PNG.

    ``schedules`` are :class:`Schedule` objects or spec strings, or a ``{label: schedule}``
    mapping; ``steps`` defaults to the end of the longest one. With ``terminal`` (default) a
    compact chart of each is printed too. Returns the PNG's path.

    Example:
        >>> adamkit.plot_schedule(["warmup(200) + cosine(1800)", "wsd(200, 1400, 400)"],
        ...                       "schedules.png", lr=3e-4)
    """
    named = _named(schedules)
    if steps is None:
        steps = default_steps(list(named.values()))
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise ValueError(
            f"plot_schedule: steps={steps!r} is invalid (expected an integer from 1 to "
            f"{MAX_STEPS:,}; a plot has a few thousand pixels)"
        )
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or lr < 0:
        raise ValueError(f"plot_schedule: lr={lr!r} is invalid (expected a finite number >= 0)")
    multipliers = {label: s.values(steps) for label, s in named.items()}
    for label, values in multipliers.items():
        bad = next((t for t, v in enumerate(values) if not (math.isfinite(v) and v >= 0)), None)
        if bad is not None:
            raise ValueError(
                f"plot_schedule: {label} gives lr multiplier {values[bad]!r} at step {bad} "
                "(expected a finite number >= 0)"
            )
    if terminal:
        for label, schedule in named.items():
            print(schedule_report(schedule, lr=lr, steps=steps, label=label))
    x = range(steps)
    curves = {label: (x, [lr * v for v in multipliers[label]]) for label in named}
    if title is None:
        title = (
            f"learning rate, base lr {lr:g}"
            if len(named) > 1
            else f"{next(iter(named))}, lr {lr:g}"
        )
    return save_curves(
        path, curves, title=title, xlabel="step", ylabel="lr", logy=logy, markers=steps <= 30
    )
