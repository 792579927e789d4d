"""``lr_find``: the learning-rate range test (Smith 2017), leaving everything as it found it.

The lr grows from ``start_lr`` to ``end_lr`` (exponentially by default) over ``steps`` training
steps while the loss is recorded; the sweep stops early once the smoothed loss exceeds
``diverge`` times its best value. Afterwards the model (parameters and buffers), the optimizer
(state and param groups) and the random number generators (torch, Python, NumPy) are restored
exactly, so the range test can run before the real training in the same process.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..schedules import set_lr
from .progress import Progress

__all__ = ["LRFindResult", "lr_find"]

LossFn = Callable[[Tensor, Any], Tensor]


@dataclass
class LRFindResult:
    """The sweep: ``lrs[i]`` and the loss of that step, raw and smoothed; suggested lrs."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestions: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False

    @property
    def suggestion(self) -> float:
        """The ``"valley"`` suggestion, the most robust of the three in practice."""
        return self.suggestions["valley"]

    def plot(self, path: str | Path = "lr_find.png") -> Path:
        """Plot the smoothed loss against the lr (log scale) with the suggestions marked."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
        ax.plot(self.lrs, self.losses, alpha=0.3, label="loss")
        ax.plot(self.lrs, self.smoothed, label="smoothed loss")
        colors = {"steepest": "tab:green", "valley": "tab:red", "minimum/10": "tab:purple"}
        for name, lr in self.suggestions.items():
            ax.axvline(
                lr, color=colors.get(name, "gray"), linestyle="--", label=f"{name}: {lr:.2e}"
            )
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss")
        if self.smoothed:  # show the descent whole; let the divergence run off the top
            bottom = int(np.argmin(self.smoothed))
            low, high = self.smoothed[bottom], max(self.smoothed[: bottom + 1])
            margin = 0.1 * (high - low) + 1e-12
            ax.set_ylim(low - margin, high + margin)
        ax.set_title("lr range test" + (" (stopped at divergence)" if self.stopped_early else ""))
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return path


def _suggest(lrs: list[float], smoothed: list[float]) -> dict[str, float]:
    n = len(lrs)
    if n < 5:
        raise ValueError(f"lr_find: only {n} steps ran before the loss diverged; lower start_lr")
    log_lrs, loss = np.log10(lrs), np.asarray(smoothed)
    minimum = int(np.argmin(loss))
    # Steepest descent on the way down to the minimum, as the slope over a window of an eighth
    # of the sweep (a pointwise derivative of a noisy loss picks noise); at the window's middle.
    window = max(2, n // 8)
    ends = range(window, max(minimum, window) + 1)
    slopes = [(loss[e] - loss[e - window]) / (log_lrs[e] - log_lrs[e - window]) for e in ends]
    steepest = ends[int(np.argmin(slopes))] - window // 2
    # Valley: the longest run where the smoothed loss keeps falling; 2/3 of the way down it.
    best_start, best_len, start = 0, 0, 0
    for i in range(1, n):
        if loss[i] > loss[i - 1]:
            start = i
        elif i - start > best_len:
            best_start, best_len = start, i - start
    valley = best_start + (2 * best_len) // 3
    return {
        "steepest": float(lrs[steepest]),
        "valley": float(lrs[valley]),
        "minimum/10": float(lrs[minimum]) / 10,
    }


def _batches(data: Iterable[Any]) -> Iterable[Any]:
    while True:  # cycle: the sweep may be longer than one pass over the data
        empty = True
        for batch in data:
            empty = False
            yield batch
        if empty:
            raise ValueError("lr_find: data yielded no batches")


def lr_find(
    model: nn.Module,
    loss_fn: LossFn,
    data: Iterable[Any],
    optimizer: torch.optim.Optimizer | None = None,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 100,
    mode: str = "exp",
    smoothing: float = 0.98,
    diverge: float = 4.0,
    progress: bool = True,
) -> LRFindResult:
    """Run the lr range test and restore ``model``, ``optimizer`` and the RNGs afterwards.

    Each batch of ``data`` is ``(inputs, targets)``; the loss is ``loss_fn(model(inputs),
    targets)``. ``optimizer`` defaults to ``adamkit.Adam(model.parameters())``; with several
    param groups the first follows the sweep and the others keep their ratio to it. The loss is
    smoothed with an exponential moving average (``smoothing``, bias-corrected). Returns the
    curve and three suggestions: ``"steepest"`` (steepest descent of the smoothed loss),
    ``"valley"`` (2/3 down the longest descent) and ``"minimum/10"``.

    Example:
        >>> result = adamkit.lr_find(model, nn.functional.cross_entropy, loader)
        >>> result.plot("lr_find.png"); lr = result.suggestion
    """
    if not (0 < start_lr < end_lr and math.isfinite(end_lr)):
        raise ValueError(
            f"lr_find: need 0 < start_lr < end_lr, got start_lr={start_lr}, end_lr={end_lr}"
        )
    if not isinstance(steps, int) or steps < 5:
        raise ValueError(f"lr_find: steps={steps!r} is invalid (expected an integer >= 5)")
    if mode not in ("exp", "linear"):
        raise ValueError(f"lr_find: mode={mode!r} is invalid (expected 'exp' or 'linear')")
    if not 0 <= smoothing < 1:
        raise ValueError(f"lr_find: smoothing={smoothing!r} is invalid (expected 0 <= value < 1)")
    if optimizer is None:
        from ..optim import Adam

        optimizer = Adam(model.parameters())

    saved_model = copy.deepcopy(model.state_dict())
    saved_optimizer = copy.deepcopy(optimizer.state_dict())
    saved_training = model.training
    saved_rng = (
        torch.get_rng_state(),
        torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        random.getstate(),
        np.random.get_state(),
    )
    base = [float(g["lr"]) for g in optimizer.param_groups]
    ratios = [b / base[0] if base[0] else 1.0 for b in base]

    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    average, best, stopped = 0.0, math.inf, False
    model.train()
    try:
        with Progress(steps, "lr_find", enabled=progress) as bar:
            for i, batch in zip(range(steps), _batches(data), strict=False):
                fraction = i / (steps - 1)
                lr = (
                    start_lr * (end_lr / start_lr) ** fraction
                    if mode == "exp"
                    else start_lr + (end_lr - start_lr) * fraction
                )
                for index, ratio in enumerate(ratios):
                    set_lr(optimizer, lr * ratio, groups=index)
                inputs, targets = batch
                optimizer.zero_grad()
                loss = loss_fn(model(inputs), targets)
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                value = float(loss.detach())
                average = smoothing * average + (1 - smoothing) * value
                smooth = average / (1 - smoothing ** (i + 1))
                lrs.append(lr)
                losses.append(value)
                smoothed.append(smooth)
                best = min(best, smooth)
                bar.update(i + 1, f"lr {lr:.2e} loss {smooth:.4g}")
                if not math.isfinite(smooth) or smooth > diverge * best:
                    stopped = True
                    bar.update(i + 1, f"lr {lr:.2e}: diverged, stopping", force=True)
                    break
    finally:
        model.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_optimizer)
        model.train(saved_training)
        torch.set_rng_state(saved_rng[0])
        if saved_rng[1] is not None:
            torch.cuda.set_rng_state_all(saved_rng[1])
        random.setstate(saved_rng[2])
        np.random.set_state(saved_rng[3])
        optimizer.zero_grad()
    finite = [i for i, v in enumerate(smoothed) if math.isfinite(v)]
    keep = finite[-1] + 1 if finite else 0
    result = LRFindResult(lrs[:keep], losses[:keep], smoothed[:keep], stopped_early=stopped)
    result.suggestions = _suggest(result.lrs, result.smoothed)
    return result
