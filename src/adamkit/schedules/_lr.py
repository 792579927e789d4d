"""Read, set and scale the learning rate of some or all param groups mid-run.

The rule with an :class:`adamkit.Scheduler` attached: the lr you set is the lr now, and the
schedule carries on from it. ``set_lr`` and ``scale_lr`` rescale the scheduler's base lr by the
same factor as the current lr, so every later lr is the old schedule times that factor (the
shape is kept, the level changes). Without an adamkit Scheduler only ``group["lr"]`` changes:
torch's chainable schedulers (``StepLR``, ``MultiplicativeLR``, ...) then continue from it,
while closed-form ones (``LambdaLR``) overwrite it at their next step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.optim import Optimizer

from ..optim._validation import scalar_value
from ._scheduler import _write, attached_scheduler

__all__ = ["get_lr", "scale_lr", "set_lr"]

GroupSelector = int | str | Sequence[int | str] | None


def _select(optimizer: Optimizer, groups: GroupSelector, where: str) -> list[int]:
    """Indices of the chosen param groups: by index, by ``group["name"]``, or all."""
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"{where}: expected a torch.optim.Optimizer, got {optimizer!r}")
    count = len(optimizer.param_groups)
    if groups is None:
        return list(range(count))
    if isinstance(groups, int | str):
        chosen: list[object] = [groups]
    elif isinstance(groups, list | tuple):
        chosen = list(groups)
    else:
        raise TypeError(f"{where}: a group is chosen by index or name, got {groups!r}")
    indices = []
    for key in chosen:
        if isinstance(key, bool) or not isinstance(key, int | str):
            raise TypeError(f"{where}: a group is chosen by index or name, got {key!r}")
        if isinstance(key, int):
            if not -count <= key < count:
                raise IndexError(
                    f"{where}: param group {key} does not exist (the optimizer has {count})"
                )
            indices.append(key % count)
            continue
        names = [g.get("name") for g in optimizer.param_groups]
        if key not in names:
            known = [n for n in names if n is not None]
            raise KeyError(f"{where}: no param group is named {key!r} (names: {known})")
        indices.append(names.index(key))
    return indices


def _check_value(where: str, name: str, value: Any) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{where}: {name}={value!r} is invalid (expected a finite number >= 0)")
    if value < 0:
        raise ValueError(f"{where}: {name}={value!r} is invalid (expected a finite number >= 0)")
    return float(value)


def get_lr(optimizer: Optimizer, groups: GroupSelector = None) -> list[float]:
    """The current lr of the chosen param groups (all by default), as floats."""
    return [
        scalar_value(optimizer.param_groups[i]["lr"]) for i in _select(optimizer, groups, "get_lr")
    ]


def set_lr(optimizer: Optimizer, lr: float, groups: GroupSelector = None) -> None:
    """Set the lr of the chosen param groups (all by default) to ``lr`` now.

    With an :class:`adamkit.Scheduler` attached, its base lr is rescaled so the schedule carries
    on from ``lr`` (see the module docs). That is impossible where the schedule's multiplier is
    0 (for example at the first warmup step): use :func:`scale_lr` there.

    Example:
        >>> adamkit.set_lr(optimizer, 1e-4)            # every group
        >>> adamkit.set_lr(optimizer, 0.0, "embeddings")  # the group named "embeddings"
    """
    indices = _select(optimizer, groups, "set_lr")
    lr = _check_value("set_lr", "lr", lr)
    scheduler = attached_scheduler(optimizer)
    bases = {}
    if scheduler is not None:
        for i in indices:
            multiplier = scheduler.multiplier(i)
            if multiplier == 0:
                raise ValueError(
                    f"set_lr: param group {i} is at step {scheduler.last_epoch} of a schedule "
                    f"whose multiplier is 0 there ({scheduler.schedule_of(i)}), so no base lr "
                    f"gives lr={lr}; use scale_lr to change the level of the schedule"
                )
            bases[i] = lr / multiplier
    for i in indices:
        group = optimizer.param_groups[i]
        _write(group, "lr", lr)
        if i in bases:
            _write(group, "initial_lr", bases[i])
    if scheduler is not None:
        scheduler.sync_base_lrs()


def scale_lr(optimizer: Optimizer, factor: float, groups: GroupSelector = None) -> None:
    """Multiply the lr of the chosen param groups (all by default) by ``factor``.

    With an :class:`adamkit.Scheduler` attached, its base lr is multiplied too, so every later
    lr is scaled by ``factor``.

    Example:
        >>> adamkit.scale_lr(optimizer, 0.5)  # halve the lr, now and for the rest of the schedule
    """
    indices = _select(optimizer, groups, "scale_lr")
    factor = _check_value("scale_lr", "factor", factor)
    scheduler = attached_scheduler(optimizer)
    for i in indices:
        group = optimizer.param_groups[i]
        _write(group, "lr", scalar_value(group["lr"]) * factor)
        if scheduler is not None and "initial_lr" in group:
            _write(group, "initial_lr", scalar_value(group["initial_lr"]) * factor)
    if scheduler is not None:
        scheduler.sync_base_lrs()
