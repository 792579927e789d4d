"""RAdam: Adam with the variance of the adaptive learning rate rectified."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from ..kernels import _abi
from ._base import AdamFamily, ParamsT
from ._core import Bucket, Hyper, bias_corrections, prepare_grads, update_moments
from ._paths import TensorOps

__all__ = ["RAdam", "radam_rule", "rectification"]

#: RAdam only trusts the adaptive step once the length of the approximated SMA exceeds this
#: (the number the kernels use too).
RHO_THRESHOLD = float(_abi.RHO_THRESHOLD)


def rectification(step: float, beta2: float) -> tuple[float, float | None]:
    r"""RAdam's :math:`(\rho_t, r_t)` at ``step``; ``r_t`` is ``None`` while :math:`\rho_t \le 5`.

    .. math::
        \rho_\infty = \frac{2}{1-\beta_2} - 1, \qquad
        \rho_t = \rho_\infty - \frac{2t\beta_2^t}{1-\beta_2^t}, \qquad
        r_t = \sqrt{\frac{(\rho_t-4)(\rho_t-2)\rho_\infty}{(\rho_\infty-4)(\rho_\infty-2)\rho_t}}

    While ``r_t`` is ``None`` the variance of the adaptive learning rate is intractable and the
    step is SGD with bias-corrected momentum.
    """
    rho_inf = 2 / (1 - beta2) - 1
    beta2_t = beta2**step
    rho_t = rho_inf - 2 * step * beta2_t / (1 - beta2_t)
    if rho_t <= RHO_THRESHOLD:
        return rho_t, None
    ratio = (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
    # A tensor beta2 (differentiable=True) stays a tensor, so the graph runs through r_t.
    r_t = math.sqrt(ratio) if isinstance(ratio, float) else ratio**0.5
    return rho_t, r_t


def _pick(xs: list[Tensor], index: list[int]) -> list[Tensor]:
    return xs if len(index) == len(xs) else [xs[i] for i in index]


def radam_rule(ops: TensorOps, b: Bucket, h: Hyper) -> None:
    """One RAdam step (Liu et al. 2020, Algorithm 2), with torch's eps placement."""
    steps = ops.count_step(b.steps)
    grads = prepare_grads(ops, b, h)
    exp_avg, exp_avg_sq = b.state["exp_avg"], b.state["exp_avg_sq"]
    update_moments(ops, exp_avg, exp_avg_sq, grads, h)
    del grads

    bc1 = bias_corrections(h.beta1, steps)
    bc2 = bias_corrections(h.beta2, steps)
    rect = [rectification(t, h.beta2)[1] for t in steps]
    on = [i for i, r in enumerate(rect) if r is not None]
    off = [i for i, r in enumerate(rect) if r is None]
    if off:  # theta -= lr * m_hat
        ops.add_(_pick(b.params, off), _pick(exp_avg, off), [-h.lr / bc1[i] for i in off])
    if on:  # theta -= lr * r_t * m_hat * sqrt(1 - beta2^t) / (sqrt(v) + eps)
        denom = ops.sqrt(_pick(exp_avg_sq, on))
        ops.add_scalar_(denom, h.eps)
        step_size = [-h.lr * rect[i] * bc2[i] ** 0.5 / bc1[i] for i in on]  # type: ignore[operator]
        ops.addcdiv_(_pick(b.params, on), _pick(exp_avg, on), denom, step_size)


class RAdam(AdamFamily):
    r"""RAdam: rectified Adam, a drop-in for :class:`torch.optim.RAdam`.

    .. math::
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
        \theta_t &= \begin{cases}
            \theta_{t-1} - \gamma\, r_t\, \dfrac{m_t}{1-\beta_1^t}\,
                \dfrac{\sqrt{1-\beta_2^t}}{\sqrt{v_t} + \epsilon} & \rho_t > 5 \\[1ex]
            \theta_{t-1} - \gamma\, \dfrac{m_t}{1-\beta_1^t} & \text{otherwise}
        \end{cases}

    with :math:`\rho_t, r_t` from :func:`rectification`. :math:`\gamma` is ``lr``,
    :math:`(\beta_1, \beta_2)` are ``betas``, :math:`\epsilon` is ``eps``; ``weight_decay`` adds
    :math:`\lambda\theta` to :math:`g_t`, or with ``decoupled_weight_decay=True`` multiplies
    :math:`\theta` by :math:`1-\gamma\lambda` first (RAdamW).

    Args:
        params, lr, betas, eps, weight_decay, foreach, fused, maximize, capturable, nonfinite,
        max_grad_norm, state_precision, stochastic_rounding, differentiable:
            as in :class:`adamkit.Adam` (defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8).
        decoupled_weight_decay: decoupled (AdamW-style) weight decay (default False).

    Example:
        >>> import torch, adamkit
        >>> opt = adamkit.RAdam(torch.nn.Linear(3, 1).parameters(), lr=1e-3)

    References:
        Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond", ICLR 2020.

    Warning:
        With the default ``beta2=0.999`` the first 5 steps are plain momentum SGD with step
        ``lr`` on the raw (unnormalised) gradient scale: a large ``lr`` that suits Adam can
        blow up here. ``eps`` is added to the *uncorrected* :math:`\sqrt{v_t}` (torch's
        convention), unlike Adam where it is added to the bias-corrected root.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        decoupled_weight_decay: bool = False,
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
        defaults: dict[str, Any] = {
            "lr": lr,
            "betas": tuple(betas) if isinstance(betas, list) else betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "maximize": maximize,
            "foreach": foreach,
            "capturable": capturable,
            "decoupled_weight_decay": decoupled_weight_decay,
            "differentiable": differentiable,
            "fused": fused,
            "nonfinite": nonfinite,
            "max_grad_norm": max_grad_norm,
            "state_precision": state_precision,
            "stochastic_rounding": stochastic_rounding,
        }
        super().__init__(params, defaults)

    _rule = radam_rule
    _fused_algorithm = "radam"

    def _moment_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq")
