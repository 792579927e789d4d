"""``Scheduler``: one torch ``LRScheduler`` that drives any optimizer with schedules."""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from ..optim._validation import scalar_value
from ._pieces import Schedule
from ._spec import parse

__all__ = ["Scheduler", "attached_scheduler"]

STATE_FORMAT = 1
# Which Scheduler drives an optimizer, so that set_lr/scale_lr can rebase it.
_ATTACHED: weakref.WeakKeyDictionary[Optimizer, Scheduler] = weakref.WeakKeyDictionary()


def attached_scheduler(optimizer: Optimizer) -> Scheduler | None:
    """The :class:`Scheduler` most recently created for ``optimizer``, if any."""
    return _ATTACHED.get(optimizer)


def _as_schedule(schedule: Schedule | str, where: str) -> Schedule:
    if isinstance(schedule, str):
        return parse(schedule)
    if not isinstance(schedule, Schedule):
        raise TypeError(
            f"{where}: expected a Schedule or a spec string such as "
            f"'warmup(100) + cosine(1000)', got {schedule!r}"
        )
    return schedule


def _write(group: dict[str, Any], key: str, value: float) -> None:
    # A Tensor lr is updated in place, so a compiled step that captured it does not recompile.
    if isinstance(group.get(key), torch.Tensor):
        group[key].fill_(value)
    else:
        group[key] = value


class Scheduler(LRScheduler):
    r"""Set each param group's lr to ``base_lr * schedule(step)``, for any torch optimizer.

    ``base_lr`` is the group's lr when the scheduler is created (torch keeps it in
    ``group["initial_lr"]``). ``step`` counts :meth:`step` calls, as ``last_epoch`` does in torch.
    Every lr is computed from the closed form, never from the previous lr, so a run resumed from
    :meth:`state_dict` reproduces every later lr bit for bit.

    Args:
        optimizer: any ``torch.optim.Optimizer``.
        schedule: a :class:`~adamkit.schedules.Schedule`, a spec string
            (``"warmup(200) + cosine(2000, floor=0.1)"``), or a list with one per param group.
        skip_with_optimizer: when ``True`` (default), a :meth:`step` that follows no optimizer
            step (``torch.amp.GradScaler`` skipped it after finding inf/NaN gradients, or an
            adamkit optimizer with ``nonfinite="skip"`` did) does not advance the schedule;
            it is counted in :attr:`skipped`. Set ``False`` to advance on
            every call, as torch's schedulers do.
        last_epoch: as in torch; leave at -1 and use :meth:`load_state_dict` to resume.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = adamkit.AdamW(model.parameters(), lr=3e-4)
        >>> sched = adamkit.Scheduler(opt, "warmup(100) + cosine(900, floor=0.1)")
        >>> for batch in data:
        ...     loss = model(batch).sum(); loss.backward()
        ...     opt.step(); opt.zero_grad(); sched.step()

    .. warning::
        With ``skip_with_optimizer=True`` the schedule follows optimizer steps: calling
        :meth:`step` several times between two optimizer steps advances it once. torch's
        schedulers advance on every call and warn when the optimizer did not step.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        schedule: Schedule | str | Sequence[Schedule | str],
        *,
        skip_with_optimizer: bool = True,
        last_epoch: int = -1,
    ) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"Scheduler: optimizer must be a torch.optim.Optimizer, got {optimizer!r}"
            )
        if optimizer.param_groups and "train_mode" in optimizer.param_groups[0]:
            warnings.warn(
                f"Scheduler: {type(optimizer).__name__} is schedule-free and needs no "
                "learning-rate schedule: its average of the iterates does what a schedule's "
                "decay does, and its warmup_steps the warmup. A schedule on top changes lr, "
                "and with it the averaging weights (lr_max ** weight_lr_power)",
                UserWarning,
                stacklevel=2,
            )
        groups = len(optimizer.param_groups)
        if isinstance(schedule, Schedule | str):
            self.schedules = [_as_schedule(schedule, "Scheduler: schedule")]
            self._shared = True
        else:
            if len(schedule) != groups:
                raise ValueError(
                    f"Scheduler: got {len(schedule)} schedules for {groups} param groups "
                    "(give one schedule, or one per group)"
                )
            self.schedules = [
                _as_schedule(s, f"Scheduler: schedule[{i}]") for i, s in enumerate(schedule)
            ]
            self._shared = False
        self.skip_with_optimizer = bool(skip_with_optimizer)
        self.skipped = 0
        self._optimizer_steps = 0
        self._seen_optimizer_steps = 0
        this = weakref.ref(self)

        def count_optimizer_step(stepped: Optimizer, *_: Any) -> None:
            scheduler = this()
            # An adamkit optimizer may skip a step itself (nonfinite="skip"): not a step.
            if scheduler is not None and not getattr(stepped, "_last_step_skipped", False):
                scheduler._optimizer_steps += 1

        self._hook = optimizer.register_step_post_hook(count_optimizer_step)
        _ATTACHED[optimizer] = self
        super().__init__(optimizer, last_epoch)

    def schedule_of(self, index: int) -> Schedule:
        """The schedule driving param group ``index``."""
        if self._shared:
            return self.schedules[0]
        if index >= len(self.schedules):
            raise ValueError(
                f"param group {index} was added after the Scheduler was created with one "
                "schedule per group; create a new Scheduler"
            )
        return self.schedules[index]

    def multiplier(self, index: int = 0, step: int | None = None) -> float:
        """The multiplier of param group ``index`` at ``step`` (default: the current step)."""
        step = self.last_epoch if step is None else step
        schedule = self.schedule_of(index)
        value = schedule(step)
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(
                f"schedule {schedule} gave lr multiplier {value!r} at step {step} for "
                f"param group {index} (expected a finite number >= 0)"
            )
        return value

    def _compute(self, step: int) -> list[float]:
        lrs = []
        for i, group in enumerate(self.optimizer.param_groups):
            if "initial_lr" not in group:  # a group added after the scheduler was created
                group["initial_lr"] = scalar_value(group["lr"])
            lrs.append(scalar_value(group["initial_lr"]) * self.multiplier(i, step))
        return lrs

    def get_lr(self) -> list[float | torch.Tensor]:
        """The lr of every group at the current step, from the closed form."""
        return list(self._compute(self.last_epoch))

    _get_closed_form_lr = get_lr

    def step(self, epoch: int | None = None) -> None:
        """Advance one step (or go to ``epoch``) and write the lrs into the optimizer.

        No warning is emitted: if the optimizer did not step since the last call (and
        ``skip_with_optimizer`` is set), the schedule stays where it is.
        """
        initial = self._step_count == 0
        self._step_count += 1
        stepped = self._optimizer_steps != self._seen_optimizer_steps
        if epoch is None and not initial and self.skip_with_optimizer and not stepped:
            self.skipped += 1
            return
        step = self.last_epoch + 1 if epoch is None else int(epoch)
        self._apply(step)  # raises before changing anything if a multiplier is bad
        self._seen_optimizer_steps = self._optimizer_steps
        self.last_epoch = step

    def _apply(self, step: int) -> None:
        lrs = self._compute(step)  # computed first: a bad multiplier changes nothing
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            _write(group, "lr", lr)
        self.sync_base_lrs()
        self._last_lr = [
            g["lr"].clone() if isinstance(g["lr"], torch.Tensor) else g["lr"]
            for g in self.optimizer.param_groups
        ]

    def sync_base_lrs(self) -> None:
        """Refresh ``base_lrs`` (torch's attribute) from the groups' ``initial_lr``."""
        self.base_lrs = [
            scalar_value(g.get("initial_lr", g["lr"])) for g in self.optimizer.param_groups
        ]

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: the step, the base lrs and the schedules' specs."""
        return {
            "format": STATE_FORMAT,
            "last_epoch": self.last_epoch,
            "_step_count": self._step_count,
            "skipped": self.skipped,
            "base_lrs": [scalar_value(b) for b in self.base_lrs],
            "schedules": [s.spec() for s in self.schedules],
        }

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True) -> None:
        """Resume from :meth:`state_dict`: later lrs equal an uninterrupted run's, bit for bit.

        The base lrs are written back into the param groups and their lr is set for the saved
        step, so the order in which optimizer and scheduler are loaded does not matter. With
        ``strict`` (default), a checkpoint of a different schedule is refused. Nothing changes
        if loading fails.
        """
        if not isinstance(state_dict, dict):
            raise TypeError(
                f"Scheduler.load_state_dict: expected a dict, got {type(state_dict).__name__}"
            )
        missing = {"format", "last_epoch", "base_lrs", "schedules"} - set(state_dict)
        if missing:
            raise ValueError(
                "Scheduler.load_state_dict: not an adamkit Scheduler state "
                f"(missing {sorted(missing)})"
            )
        if state_dict["format"] != STATE_FORMAT:
            raise ValueError(
                f"Scheduler.load_state_dict: state format {state_dict['format']!r} is not "
                f"supported (this adamkit reads format {STATE_FORMAT})"
            )
        groups = self.optimizer.param_groups
        base_lrs = list(state_dict["base_lrs"])
        if len(base_lrs) != len(groups):
            raise ValueError(
                f"Scheduler.load_state_dict: the state has {len(base_lrs)} base lrs but the "
                f"optimizer has {len(groups)} param groups"
            )
        last_epoch = state_dict["last_epoch"]
        if not isinstance(last_epoch, int) or last_epoch < 0:
            raise ValueError(f"Scheduler.load_state_dict: last_epoch={last_epoch!r} is invalid")
        if strict:
            saved, ours = list(state_dict["schedules"]), [s.spec() for s in self.schedules]
            portable = all(s.portable for s in self.schedules)
            if portable and saved != ours:
                raise ValueError(
                    f"Scheduler.load_state_dict: the checkpoint was made with schedule {saved} "
                    f"but this scheduler has {ours}; pass strict=False to load it anyway"
                )
        old = [(scalar_value(g["initial_lr"]), scalar_value(g["lr"])) for g in groups]
        try:
            for group, base in zip(groups, base_lrs, strict=True):
                _write(group, "initial_lr", float(base))
            self._apply(last_epoch)
        except Exception:
            for group, (base, lr) in zip(groups, old, strict=True):
                _write(group, "initial_lr", base)
                _write(group, "lr", lr)
            self.sync_base_lrs()
            raise
        self.last_epoch = last_epoch
        self._step_count = int(state_dict.get("_step_count", last_epoch + 1))
        self.skipped = int(state_dict.get("skipped", 0))
        self._seen_optimizer_steps = self._optimizer_steps
