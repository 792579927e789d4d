"""Schedule-free AdamW: no learning-rate schedule; an average of the iterates replaces its decay."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any, overload

import torch
from torch import Tensor

from ._algorithms import ALGORITHMS
from ._base import AdamFamily, ParamsT, group_defaults
from ._checkpoint import LoadReport
from ._core import Bucket, Hyper, local, prepare_grads
from ._paths import TensorOps
from ._precision import decode
from ._scalars import Counters, Scalars
from ._validation import scalar_value

__all__ = [
    "ScheduleFreeAdamW",
    "averaging_weight",
    "evaluation_mode",
    "schedulefree_rule",
    "schedulefree_scalars",
]


@contextlib.contextmanager
def evaluation_mode(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Within the block, a schedule-free optimizer's parameters hold the averaged point ``x``
    (``optimizer.eval()``), and after it the point training was at (``optimizer.train()``, if
    it was in train mode). Any other optimizer is left alone, so evaluation code can take
    either::

        with adamkit.evaluation_mode(opt):
            accuracy = evaluate(model)
    """
    groups = optimizer.param_groups
    schedule_free = bool(groups) and "train_mode" in groups[0] and hasattr(optimizer, "eval")
    was_training = schedule_free and bool(groups[0]["train_mode"])
    if schedule_free:
        optimizer.eval()  # type: ignore[attr-defined]
    try:
        yield
    finally:
        if was_training:
            optimizer.train()  # type: ignore[attr-defined]


def averaging_weight(group: dict[str, Any]) -> float:
    r"""The weight :math:`c_{t+1} = w_t / \sum_{i \le t} w_i` of this step's ``z`` in the
    average ``x``, from the group's running ``k``, ``lr_max`` and ``weight_sum`` (after the
    step advanced them): :math:`w_t = t^r\, \mathrm{lr\_max}^{p}`."""
    weight = group["k"] ** group["r"] * group["lr_max"] ** group["weight_lr_power"]
    return weight / group["weight_sum"] if group["weight_sum"] else 0.0


def schedulefree_rule(ops: TensorOps, b: Bucket, h: Hyper) -> None:
    """One schedule-free AdamW step (Defazio et al. 2024) on ``y`` (the parameters) and ``z``,
    as the ``schedulefree`` package moves them: ``u = g / (sqrt(v_hat) + eps) + wd y``, then
    ``y <- lerp(y, z, c) + lr (beta1 (1 - c) - 1) u`` and ``z <- z - lr u``."""
    ops.count_step(b.steps)
    grads = prepare_grads(ops, b, h)  # the sign only: the weight decay is taken at y, below
    z, v = b.state["z"], b.state["exp_avg_sq"]
    own = h.own
    lr, c = h.lr * own["sched"], own["ckp1"]
    ops.mul_(v, h.beta2)
    ops.addcmul_(v, grads, grads, 1 - h.beta2)
    denom = ops.sqrt(v)
    ops.div_(denom, math.sqrt(1 - h.beta2 ** own["t"]))
    ops.add_scalar_(denom, h.eps)
    u = ops.div(grads, denom)
    del denom
    if h.weight_decay != 0:
        ops.add_(u, b.params, h.weight_decay)
    ops.lerp_(b.params, z, c)
    ops.add_(b.params, u, lr * (h.beta1 * (1 - c) - 1))
    ops.add_(z, u, -lr)


def schedulefree_scalars(t: float, h: Hyper, counters: Counters) -> Scalars:
    """The fused kernels' step scalars: ``a = lr (beta1 (1 - c) - 1)`` (y's step),
    ``b = sqrt(1 - beta2^k)``, ``c = lr`` (z's step), ``d = c_{k+1}`` (the averaging weight),
    with the group's step count ``k`` and warmed-up ``lr``."""
    own = h.own
    lr, c = h.lr * own["sched"], own["ckp1"]
    b = math.sqrt(1 - h.beta2 ** own["t"])
    return Scalars("schedulefree", lr * (h.beta1 * (1 - c) - 1), b, lr, c)


#: The group's running schedule, under the schedulefree package's names.
_SCHEDULE = ("k", "weight_sum", "lr_max", "scheduled_lr")


class ScheduleFreeAdamW(AdamFamily):
    r"""Schedule-free AdamW (Defazio et al. 2024): train without a learning-rate schedule.

    .. math::
        y_t &= (1-\beta_1) z_t + \beta_1 x_t, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \qquad g_t = \nabla f(y_t) \\
        z_{t+1} &= z_t - \gamma_t \Big(\frac{g_t}{\sqrt{v_t/(1-\beta_2^t)} + \epsilon}
            + \lambda y_t\Big), \qquad
        x_{t+1} = (1 - c_{t+1})\, x_t + c_{t+1} z_{t+1}

    The gradient is taken at :math:`y`, an interpolation between the plain AdamW-like sequence
    :math:`z` and its weighted average :math:`x`, the point to evaluate. The average replaces a
    schedule's decay: :math:`c_{t+1} = w_t / \sum_{i\le t} w_i` with
    :math:`w_t = t^r \max_{i\le t}(\gamma_i)^{p}`. :math:`\gamma_t` is ``lr`` warmed up
    linearly over ``warmup_steps``. State: ``z`` (starts as the parameter) and
    ``exp_avg_sq``: as much memory as AdamW. The group keeps the running ``k``,
    ``weight_sum``, ``lr_max``, ``scheduled_lr`` and ``train_mode``, as the ``schedulefree``
    package does.

    **Train and eval modes.** During training the parameters hold :math:`y`;
    :meth:`eval` moves them to :math:`x` (to evaluate, or to save the model), :meth:`train`
    back to :math:`y`. Call ``optimizer.eval()`` wherever you call ``model.eval()`` and
    ``optimizer.train()`` wherever you call ``model.train()``. A new optimizer starts in train
    mode (so it steps like any torch optimizer); ``step()`` in eval mode raises, since a
    gradient taken at :math:`x` would corrupt both sequences. Batch-norm running statistics
    computed at :math:`y` are not those of :math:`x`: recompute them in eval mode if they
    matter.

    Args:
        params, eps, foreach, maximize, capturable, differentiable, nonfinite, max_grad_norm,
        stochastic_rounding: as in :class:`adamkit.Adam`.
        lr: :math:`\gamma` (default 0.0025, the package's).
        betas: :math:`(\beta_1, \beta_2)`, default (0.9, 0.999); :math:`\beta_1` is the
            interpolation weight and must be > 0 (:math:`x` is recovered as
            :math:`(y - (1-\beta_1) z) / \beta_1`).
        weight_decay: :math:`\lambda`, taken at :math:`y` after normalising the gradient
            (default 0).
        warmup_steps: linear warmup of the learning rate, in steps (default 0: none).
        r: power of :math:`t` in the averaging weights (default 0).
        weight_lr_power: power of the largest learning rate so far in the averaging weights
            (default 2).
        state_precision: how ``exp_avg_sq`` is stored (``"fp32"``, ``"bf16"``, ``"8bit"``:
            8, 6 or about 5 bytes a parameter). ``z`` is a copy of the weights and is kept as
            the weights are, whatever this says (stored in bf16 it would make them bf16
            weights: measured 0.55 of the largest displacement off the fp32 run in 60 steps,
            where bf16 moments stay within 0.02); with bf16 or 8-bit moments beside it, the
            multi-tensor path steps it (the kernels take one format a tensor). For bf16
            weights, give bf16 parameters and ``stochastic_rounding=True``.
        fused: as in :class:`adamkit.Adam`: by default the fused kernels step it (CPU and GPU).

    Example:
        >>> import torch, adamkit
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = adamkit.ScheduleFreeAdamW(model.parameters(), lr=2.5e-3, warmup_steps=100)
        >>> loss = model(torch.ones(2, 3)).sum(); loss.backward(); opt.step()
        >>> opt.eval()  # the parameters now hold x: evaluate or save here
        >>> opt.train()  # and back to y before the next step

    References:
        Defazio, Yang, Mehta, Mishchenko, Khaled & Cutkosky, "The Road Less Scheduled",
        NeurIPS 2024 (arXiv:2405.15682); the authors' ``schedulefree`` package
        (``AdamWScheduleFree``), which this matches step for step.

    Warning:
        The package starts in eval mode and its ``step()`` raises until ``train()`` is called;
        adamkit starts in train mode. It keeps ``k`` per group, as here (the per-tensor
        ``step`` counts only seed stochastic rounding). The bias correction divides
        :math:`v` under the root (the paper scales the step instead); an
        :class:`adamkit.Scheduler` on top is not needed and warns.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 0.0025,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        nonfinite: str | None = None,
        max_grad_norm: float | None = None,
        state_precision: str = "fp32",
        stochastic_rounding: bool = False,
    ) -> None:
        defaults = group_defaults(locals())
        # The group's running schedule, under the schedulefree package's names.
        defaults.update(k=0, train_mode=True, weight_sum=0.0, lr_max=-1.0, scheduled_lr=0.0)
        super().__init__(params, defaults)

    algorithm = ALGORITHMS["ScheduleFreeAdamW"]
    _rule = schedulefree_rule
    _scalars = schedulefree_scalars

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        betas = {**self.defaults, **param_group}.get("betas")
        if isinstance(betas, tuple | list) and len(betas) == 2:
            try:
                zero = scalar_value(betas[0]) == 0
            except (TypeError, ValueError):
                zero = False  # malformed: the shared validation says how
            if zero:
                where = f"param group {len(self.param_groups)}: " if self.param_groups else ""
                raise ValueError(
                    f"Invalid beta parameter at index 0: 0.0 ({where}ScheduleFreeAdamW needs "
                    "beta1 > 0: the averaged point x is recovered from y and z as "
                    "(y - (1 - beta1) z) / beta1)"
                )
        if self.param_groups and isinstance(param_group, dict):
            # A group added later starts in the optimizer's current mode.
            param_group.setdefault("train_mode", self.param_groups[0]["train_mode"])
        super().add_param_group(param_group)

    def load_state_dict(  # type: ignore[override]
        self, state_dict: dict[str, Any], strict: bool = True
    ) -> LoadReport:
        """As :meth:`adamkit.Adam.load_state_dict`; a checkpoint of the ``schedulefree``
        package (no per-tensor ``step``) loads too: each tensor's ``step`` is its group's
        ``k``."""
        groups = state_dict.get("param_groups") if isinstance(state_dict, dict) else None
        saved = state_dict.get("state") if isinstance(state_dict, dict) else None
        if isinstance(groups, list) and isinstance(saved, dict):
            filled = dict(saved)
            for group in groups:
                k = group.get("k") if isinstance(group, dict) else None
                if not isinstance(k, int):
                    continue
                for index in group.get("params", []):
                    entry = saved.get(index)
                    if isinstance(entry, dict) and "z" in entry and "step" not in entry:
                        filled[index] = {**entry, "step": torch.tensor(float(k))}
            state_dict = {**state_dict, "state": filled}
        return super().load_state_dict(state_dict, strict)

    def eval(self) -> None:
        """Move the parameters to the averaged point ``x``, to evaluate or save the model.
        Does nothing in eval mode already, or before the first step. With
        ``differentiable=True`` the move is part of the graph."""
        self._switch(to_train=False)

    def train(self) -> None:
        """Move the parameters back to ``y``, where training takes its gradients. Does
        nothing in train mode already."""
        self._switch(to_train=True)

    def _switch(self, to_train: bool) -> None:
        with torch.set_grad_enabled(bool(self.defaults.get("differentiable"))):
            self._move(to_train)

    def _move(self, to_train: bool) -> None:
        for group in self.param_groups:
            if bool(group["train_mode"]) == to_train:
                continue
            beta1 = scalar_value(group["betas"][0])
            # y = (1 - beta1) z + beta1 x: x = lerp(y, z, 1 - 1/beta1), y = lerp(x, z, 1 - beta1)
            weight = 1 - beta1 if to_train else 1 - 1 / beta1
            for p in group["params"]:
                state = self.state.get(p)
                if state and "z" in state:
                    shard = local(p)
                    shard.lerp_(decode(state, "z").to(shard.dtype), weight)
            group["train_mode"] = to_train

    @overload
    def step(self, closure: None = None) -> None: ...
    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Perform one optimization step (in train mode; see :meth:`train`)."""
        for index, group in enumerate(self.param_groups):
            if not group["train_mode"]:
                raise RuntimeError(
                    "adamkit.ScheduleFreeAdamW.step() was called in eval mode (param group "
                    f"{index}): the parameters hold the averaged point x, and a step there "
                    "would corrupt training. Call optimizer.train() before training steps "
                    "(where you call model.train()), and optimizer.eval() before evaluating "
                    "or saving"
                )
        return super().step(closure)

    def _step_group(self, group: dict[str, Any]) -> None:
        # The group's schedule advances once a step, whether or not its tensors have
        # gradients, as in the schedulefree package.
        before = {key: group[key] for key in _SCHEDULE}
        k = group["k"]
        warmup = group["warmup_steps"]
        sched = (k + 1) / warmup if k < warmup else 1.0
        lr = scalar_value(group["lr"]) * sched
        group["scheduled_lr"] = lr
        group["lr_max"] = max(lr, group["lr_max"])
        weight = (k + 1) ** group["r"] * group["lr_max"] ** group["weight_lr_power"]
        group["weight_sum"] = group["weight_sum"] + weight
        group["k"] = k + 1
        try:
            super()._step_group(group)
        except BaseException:
            group.update(before)  # a refused step (a group changed by hand) advances nothing
            raise

    def _hyper(self, group: dict[str, Any]) -> Hyper:
        h = super()._hyper(group)
        k, warmup = group["k"], group["warmup_steps"]
        sched = k / warmup if k - 1 < warmup else 1.0  # the warmup factor of step k
        derived = {"t": float(k), "sched": sched, "ckp1": averaging_weight(group)}
        return replace(h, own={**h.own, **derived})
