"""``adamkit compare``: train a built-in task with several optimizers and schedules, side by side.

Tasks (all local, nothing downloaded):

* ``regression``: the seed's example, ``t = a*x + b + noise`` fitted by ``nn.Linear(1, 1)`` with
  MSE, full batch; metric: the error of the learned ``a`` and ``b``.
* ``digits``: scikit-learn's bundled 8x8 digits (1,797 images) with a 64-64-10 MLP, mini-batches
  of 64; metric: accuracy on a held-out fifth. Needs scikit-learn.

An optimizer is written like a call, ``"AdamW(lr=3e-3, weight_decay=0.1)"`` (adamkit's
optimizers; ``torch.SGD(lr=0.1, momentum=0.9)`` for torch's), optionally followed by ``@`` and a
schedule spec: ``"RAdam(lr=0.01) @ warmup(20) + cosine(380)"``.
"""

from __future__ import annotations

import ast
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import torch
from torch import nn

from .._plot import save_curves
from ..optim.schedulefree import evaluation_mode
from ..schedules import Scheduler, parse
from .progress import Progress

__all__ = ["TASKS", "Run", "compare", "parse_optimizer"]


@dataclass
class Run:
    """One optimizer's training run: its loss per step, final metric and wall time."""

    label: str
    losses: list[float] = field(default_factory=list)
    metric: float = float("nan")
    seconds: float = 0.0


def parse_optimizer(text: str) -> tuple[Callable[[Any], torch.optim.Optimizer], str | None]:
    """``"AdamW(lr=3e-3) @ warmup(10) + cosine(90)"`` -> (factory of params, schedule spec)."""
    from .. import optim

    head, _, schedule = text.partition("@")
    try:
        call = ast.parse(head.strip(), mode="eval").body
    except SyntaxError:
        raise ValueError(f"compare: cannot read optimizer {head.strip()!r}") from None
    if not isinstance(call, ast.Call) or call.args:
        raise ValueError(
            f"compare: write an optimizer as Name(keyword=value, ...), got {head.strip()!r}"
        )
    name = ast.unparse(call.func)
    if name.startswith("torch."):
        cls = getattr(torch.optim, name.removeprefix("torch."), None)
    else:
        cls = getattr(optim, name, None)
    if not _is_optimizer(cls):
        known = [k for k in optim.__all__ if _is_optimizer(getattr(optim, k))]
        close = min(known, key=lambda k: (_edits(name.lower(), k.lower()), k))
        hint = f"did you mean {close!r}? " if _edits(name.lower(), close.lower()) <= 2 else ""
        if isinstance(getattr(torch.optim, name, None), type):
            hint = f"did you mean 'torch.{name}'? "
        raise ValueError(
            f"compare: unknown optimizer {name!r} ({hint}adamkit's: {', '.join(known)}; "
            "torch's as torch.Name)"
        )
    try:
        kwargs = {str(k.arg): ast.literal_eval(k.value) for k in call.keywords}
    except ValueError:
        raise ValueError(f"compare: optimizer arguments must be literals in {text!r}") from None
    spec = schedule.strip() or None
    if spec is not None:
        parse(spec)  # fail now, with the spec error, not after training the others
    try:  # the same: a bad keyword or value fails before any run trains
        cls([torch.zeros(1, requires_grad=True)], **kwargs)
    except (TypeError, ValueError, RuntimeError, NotImplementedError) as error:
        raise ValueError(f"compare: {text.strip()}: {error}") from None
    return (lambda params: cls(params, **kwargs)), spec


def _is_optimizer(value: Any) -> TypeGuard[type[torch.optim.Optimizer]]:
    return isinstance(value, type) and issubclass(value, torch.optim.Optimizer)


def _edits(a: str, b: str) -> int:
    """Edit distance counting a swap of two neighbours as one edit (``Adma`` -> ``Adam``: 1)."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(
                d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1])
            )
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]


def _regression(steps: int) -> tuple[nn.Module, Callable[[int], torch.Tensor], Callable[[], float]]:
    from ..tour import A_TRUE, B_TRUE, regression_data

    x, t = regression_data(0)
    torch.manual_seed(0)
    model = nn.Linear(1, 1)

    def loss_at(step: int) -> torch.Tensor:
        return nn.functional.mse_loss(model(x), t)

    def metric() -> float:  # the larger parameter error, |a - a_true| or |b - b_true|
        return max(abs(model.weight.item() - A_TRUE), abs(model.bias.item() - B_TRUE))

    return model, loss_at, metric


def _digits(steps: int) -> tuple[nn.Module, Callable[[int], torch.Tensor], Callable[[], float]]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ValueError(
            "compare: the digits task needs scikit-learn (pip install scikit-learn)"
        ) from None
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(x), generator=g)
    test, train = order[: len(x) // 5], order[len(x) // 5 :]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    batches = [train[i : i + 64] for i in range(0, len(train), 64)]

    def loss_at(step: int) -> torch.Tensor:
        batch = batches[step % len(batches)]
        return nn.functional.cross_entropy(model(x[batch]), y[batch])

    def metric() -> float:
        with torch.no_grad():
            return float((model(x[test]).argmax(1) == y[test]).float().mean())

    return model, loss_at, metric


TASKS: dict[str, tuple[Callable[[int], Any], str]] = {
    "regression": (_regression, "max |param error|"),
    "digits": (_digits, "test accuracy"),
}


def compare(
    task: str,
    optimizers: Sequence[str],
    *,
    steps: int = 300,
    out: str | Path | None = "compare.png",
    progress: bool = True,
) -> list[Run]:
    """Train ``task`` once per optimizer string; print a table, plot the losses to ``out``."""
    if task not in TASKS:
        raise ValueError(f"compare: unknown task {task!r} (tasks: {', '.join(TASKS)})")
    if not optimizers:
        raise ValueError("compare: give at least one optimizer")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"compare: steps={steps!r} is invalid (expected an integer >= 1)")
    plans = [(text, *parse_optimizer(text)) for text in optimizers]
    make_task, metric_name = TASKS[task]
    runs = []
    for number, (text, make_optimizer, spec) in enumerate(plans, 1):
        model, loss_at, metric = make_task(steps)
        optimizer = make_optimizer(model.parameters())
        scheduler = Scheduler(optimizer, spec) if spec else None
        run = Run(text)
        start = time.perf_counter()
        with Progress(steps, _progress_label(text, number, len(plans)), enabled=progress) as bar:
            for step in range(steps):
                optimizer.zero_grad()
                loss = loss_at(step)
                loss.backward()
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                run.losses.append(float(loss.detach()))
                bar.update(step + 1, f"loss {run.losses[-1]:.4g}")
        run.seconds = time.perf_counter() - start
        with evaluation_mode(optimizer):  # schedule-free: at the averaged point x
            run.metric = metric()
        runs.append(run)
    print(table(runs, metric_name))
    for run in runs:
        warning = convergence_warning(run)
        if warning:
            print(warning)
    if out is not None:
        path = save_curves(
            out,
            {r.label: (range(1, steps + 1), r.losses) for r in runs},
            title=f"adamkit compare: {task}, {steps} steps",
            xlabel="step",
            ylabel="training loss",
            logy=True,
        )
        print(f"wrote {path}")
    return runs


def _progress_label(text: str, number: int, total: int) -> str:
    """``run 2/3: AdamW(lr=3e-3) @ schedule``: the optimizer whole, its schedule named only
    when the line has room for all of it (a spec cut in the middle reads as a typo)."""
    head, at, spec = (part.strip() for part in text.partition("@"))
    label = f"{head} @ {spec}" if at else head
    if len(label) > 48:
        label = f"{head} @ schedule" if at else head
    if len(label) > 48:
        label = label[:47] + "…"
    return f"run {number}/{total}: {label}" if total > 1 else label


def convergence_warning(run: Run) -> str | None:
    """A line for a run that has clearly not converged: a loss that is not finite, or that
    fell by less than half from its first value. ``None`` otherwise."""
    first, last = run.losses[0], run.losses[-1]
    if not math.isfinite(last):
        return f"{run.label}: diverged (the loss is {last} at the end); try a smaller lr"
    if math.isfinite(first) and first > 0 and last > 0.5 * first:
        return (
            f"{run.label}: has not converged: the loss went from {first:.4g} to {last:.4g} in "
            f"{len(run.losses)} steps ({(last / first - 1) * 100:+.0f}%); try a larger lr or "
            "more --steps"
        )
    return None


def table(runs: Sequence[Run], metric_name: str) -> str:
    """The runs as a markdown table: final and best loss, the task's metric, time."""
    width = max(len("optimizer"), *(len(r.label) for r in runs))
    head = f"| {'optimizer':<{width}} | final loss | best loss  | {metric_name} | time (s) |"
    rule = (
        "|"
        + "-" * (width + 2)
        + "|------------|------------|"
        + "-" * (len(metric_name) + 2)
        + "|----------|"
    )
    rows = [
        f"| {r.label:<{width}} | {r.losses[-1]:10.4g} | {min(r.losses):10.4g} | "
        f"{r.metric:{len(metric_name)}.4g} | {r.seconds:8.2f} |"
        for r in runs
    ]
    return "\n".join([head, rule, *rows])
