"""RAdam: Adam with the variance of the adaptive learning rate rectified."""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

from torch import Tensor

from ._algorithms import ALGORITHMS
from ._base import AdamFamily, ParamsT, group_defaults
from ._core import Bucket, Hyper, bias_corrections, prepare_grads, select, update_moments
from ._paths import TensorOps
from ._scalars import Counters, Scalars

__all__ = [
    "RAdam",
    "Rectification",
    "radam_rectification",
    "radam_rule",
    "radam_scalars",
    "rectification",
]

#: RAdam trusts the adaptive step once the length of the approximated SMA exceeds this (Liu et
#: al. 2020 use 4 in the paper, 5 in their code; torch uses 5).
RHO_THRESHOLD = 5.0


class Rectification(NamedTuple):
    """RAdam's rectification at one step (unpacks as ``rho, r = ...``)."""

    #: :math:`\rho_t`, the length of the approximated simple moving average.
    rho: float
    #: :math:`r_t`, the rectifier of the adaptive step; ``None`` while :math:`\rho_t \le 5`.
    r: float | None


def radam_rectification(step: float, beta2: float) -> Rectification:
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
        return Rectification(rho_t, None)
    ratio = (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
    # A tensor beta2 (differentiable=True) stays a tensor, so the graph runs through r_t.
    r_t = math.sqrt(ratio) if isinstance(ratio, float) else ratio**0.5
    return Rectification(rho_t, r_t)


def rectification(step: float, beta2: float) -> Rectification:
    """Deprecated name of :func:`radam_rectification` (``adamkit.reference.rectification``,
    the NumPy oracle's, returns :math:`r_t` alone; one name for two results misled)."""
    warnings.warn(
        "adamkit.rectification is now adamkit.radam_rectification (same result); the old "
        "name will be removed in adamkit 0.3",
        DeprecationWarning,
        stacklevel=2,
    )
    return radam_rectification(step, beta2)


def radam_rule(ops: TensorOps, b: Bucket, h: Hyper) -> None:
    """One RAdam step (Liu et al. 2020, Algorithm 2), with torch's eps placement."""
    steps = ops.count_step(b.steps)
    grads = prepare_grads(ops, b, h)
    exp_avg, exp_avg_sq = b.state["exp_avg"], b.state["exp_avg_sq"]
    update_moments(ops, exp_avg, exp_avg_sq, grads, h)
    del grads

    bc1 = bias_corrections(h.beta1, steps)
    bc2 = bias_corrections(h.beta2, steps)
    rectifiers = [radam_rectification(t, h.beta2).r for t in steps]
    rectified = [i for i, r in enumerate(rectifiers) if r is not None]
    momentum_only = [i for i, r in enumerate(rectifiers) if r is None]
    if momentum_only:  # theta -= lr * m_hat
        ops.add_(
            select(b.params, momentum_only),
            select(exp_avg, momentum_only),
            [-h.lr / bc1[i] for i in momentum_only],
        )
    if rectified:  # theta -= lr * r_t * m_hat * sqrt(1 - beta2^t) / (sqrt(v) + eps)
        denom = ops.sqrt(select(exp_avg_sq, rectified))
        ops.add_scalar_(denom, h.eps)
        step_size = [-h.lr * rectifiers[i] * bc2[i] ** 0.5 / bc1[i] for i in rectified]  # type: ignore[operator]
        ops.addcdiv_(select(b.params, rectified), select(exp_avg, rectified), denom, step_size)


def radam_scalars(t: float, h: Hyper, counters: Counters) -> Scalars:
    """The fused kernels' step scalars: ``p -= a m / (sqrt(v) + eps)`` with
    ``a = lr r_t sqrt(1 - beta2^t) / (1 - beta1^t)`` once rectified, else ``p -= a m`` with
    ``a = lr / (1 - beta1^t)``."""
    bc1 = 1.0 - h.beta1**t
    r = radam_rectification(t, h.beta2).r
    if r is None:
        return Scalars("radam_plain", h.lr / bc1)
    return Scalars("radam", h.lr * r * math.sqrt(1.0 - h.beta2**t) / bc1)


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

    with :math:`\rho_t, r_t` from :func:`radam_rectification`. :math:`\gamma` is ``lr``,
    :math:`(\beta_1, \beta_2)` are ``betas``, :math:`\epsilon` is ``eps``; ``weight_decay`` adds
    :math:`\lambda\theta` to :math:`g_t`, or with ``decoupled_weight_decay=True`` multiplies
    :math:`\theta` by :math:`1-\gamma\lambda` first (RAdamW).

    Args:
        params, lr, betas, eps, weight_decay, foreach, fused, maximize, capturable, nonfinite,
        max_grad_norm, state_precision, stochastic_rounding, differentiable, cautious,
        update_clipping: as in :class:`adamkit.Adam`
            (defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8).
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
        cautious: bool = False,
        update_clipping: bool = False,
    ) -> None:
        super().__init__(params, group_defaults(locals()))

    algorithm = ALGORITHMS["RAdam"]
    _rule = radam_rule
    _scalars = radam_scalars
