"""Small plotting helpers: curves to a PNG file (matplotlib, no display) and to the terminal."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["save_curves", "text_chart"]

Series = tuple[Sequence[float], Sequence[float]]


def png_path(path: str | Path) -> Path:
    """Where a plot asked for at ``path`` goes: ``.png`` added to a name without a suffix (as
    matplotlib would add it, so the path reported is the file written); an empty name or a
    folder is refused."""
    if str(path).strip() == "":
        raise ValueError("the output file name is empty")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give a file name such as {path / 'plot.png'}")
    return path if path.suffix else path.with_name(path.name + ".png")


def save_curves(
    path: str | Path,
    curves: Mapping[str, Series],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    logy: bool = False,
    markers: bool = False,
) -> Path:
    """Plot named ``(x, y)`` curves on one axes and write them to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: works on machines without a display
    import matplotlib.pyplot as plt

    path = png_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for label, (x, y) in curves.items():
        values = list(y)
        if logy:  # a zero (an lr=0 warmup step) is a gap, not a drop to the axis's bottom
            values = [v if math.isfinite(v) and v > 0 else math.nan for v in values]
        ax.plot(list(x), values, marker="o" if markers else None, markersize=4, label=label)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        log_axis(ax)
    ax.grid(True, alpha=0.3)
    ax.legend()  # one curve too: the label says which run or schedule it is
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def log_axis(ax: Any) -> None:
    """A log y axis labelled in plain numbers (``50``, ``0.001``). Call it after plotting: a
    range within about a decade has few powers of ten, so its minor ticks are labelled too
    (matplotlib writes those 5.4x10^1); a wider one labels only the major ticks."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_yscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:.3g}")
    ax.yaxis.set_major_formatter(plain)
    low, high = ax.get_ylim()
    if high < 30 * low:  # label 2 and 5 of each decade; all nine would overlap
        two_five = FuncFormatter(
            lambda value, _: f"{value:.3g}" if f"{value:.1e}"[:3] in ("2.0", "5.0") else ""
        )
        ax.yaxis.set_minor_formatter(two_five if high > 4 * low else plain)
    else:
        ax.yaxis.set_minor_formatter(NullFormatter())


_BLOCKS = " ▁▂▃▄▅▆▇█"


def text_chart(
    values: Sequence[float],
    *,
    height: int = 6,
    label: str = "",
    width: int | None = None,
    x_range: tuple[int, int] | None = None,
) -> str:
    """A compact block chart of ``values`` for the terminal, one column per value.

    With ``width``, longer series are sampled at ``width`` evenly spaced points (first and last
    included). ``x_range`` labels the two ends of the x axis.
    """
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return f"{label} (no finite values)"
    lo, hi = min(finite), max(finite)  # of every value, before any sampling
    cell = 2
    if width is not None and len(values) > width > 1:
        last = len(values) - 1
        values = [values[round(i * last / (width - 1))] for i in range(width)]
        cell = 1
    span = (hi - lo) or 1.0
    # The smallest value still gets a sliver, so every column shows.
    levels = [
        1 + round(min(1.0, (v - lo) / span) * (height * 8 - 1)) if math.isfinite(v) else 0
        for v in values
    ]
    rows = []
    for row in range(height, 0, -1):
        line = ""
        for level in levels:
            fill = level - (row - 1) * 8
            line += _BLOCKS[max(0, min(8, fill))] * cell
        prefix = (
            f"{hi:>10.4g} |"
            if row == height
            else (f"{lo:>10.4g} |" if row == 1 else " " * 11 + "|")
        )
        rows.append(prefix + line)
    if x_range is not None:
        left, right = str(x_range[0]), str(x_range[1])
        span_width = len(levels) * cell
        rows.append(" " * 11 + "+" + "-" * span_width)
        rows.append(" " * 12 + left + right.rjust(span_width - len(left)))
    head = f"{label}\n" if label else ""
    return head + "\n".join(rows)
