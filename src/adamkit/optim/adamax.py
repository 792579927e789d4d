"""Adamax: Adam with the infinity norm in place of the second moment."""

from __future__ import annotations

from torch import Tensor

from ._algorithms import ALGORITHMS
from ._base import AdamFamily, ParamsT, group_defaults
from ._core import Bucket, Hyper, bias_corrections, prepare_grads
from ._paths import TensorOps
from ._scalars import Counters, Scalars

__all__ = ["Adamax", "adamax_rule", "adamax_scalars"]


def adamax_rule(ops: TensorOps, b: Bucket, h: Hyper) -> None:
    """One Adamax step (Kingma & Ba 2015, Algorithm 2), with torch's eps inside the max."""
    steps = ops.count_step(b.steps)
    grads = prepare_grads(ops, b, h)
    exp_avg, exp_inf = b.state["exp_avg"], b.state["exp_inf"]
    ops.lerp_(exp_avg, grads, 1 - h.beta1)
    ops.mul_(exp_inf, h.beta2)
    norm = ops.abs(grads)
    ops.add_scalar_(norm, h.eps)
    ops.maximum_(exp_inf, norm)  # u_t = max(beta2 u_{t-1}, |g_t| + eps)
    del norm
    ops.addcdiv_(
        b.params, exp_avg, exp_inf, [-h.lr / bc for bc in bias_corrections(h.beta1, steps)]
    )


def adamax_scalars(t: float, h: Hyper, counters: Counters) -> Scalars:
    """The fused kernels' step scalars: ``p -= a m / u`` with ``a = lr / (1 - beta1^t)``."""
    return Scalars("adamax", h.lr / (1.0 - h.beta1**t))


class Adamax(AdamFamily):
    r"""Adamax: Adam under the infinity norm, a drop-in for :class:`torch.optim.Adamax`.

    .. math::
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t \\
        u_t &= \max(\beta_2 u_{t-1},\; |g_t| + \epsilon) \\
        \theta_t &= \theta_{t-1} - \frac{\gamma}{1-\beta_1^t}\,\frac{m_t}{u_t}

    :math:`\gamma` is ``lr``, :math:`(\beta_1, \beta_2)` are ``betas``, :math:`\epsilon` is
    ``eps``; ``weight_decay`` adds :math:`\lambda\theta` to :math:`g_t` (torch's Adamax has no
    decoupled form). The state :math:`u_t` is saved as ``exp_inf``.

    Args:
        params, lr, betas, eps, weight_decay, foreach, fused, maximize, capturable, nonfinite,
        max_grad_norm, state_precision, stochastic_rounding, differentiable, cautious:
            as in :class:`adamkit.Adam` (defaults: lr 2e-3, betas (0.9, 0.999), eps 1e-8).

    Example:
        >>> import torch, adamkit
        >>> opt = adamkit.Adamax(torch.nn.Linear(3, 1).parameters(), lr=2e-3)

    References:
        Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015, section 7.1.

    Warning:
        The paper has no :math:`\epsilon`; torch (and so adamkit) puts it inside the max, so
        :math:`u_t \ge \epsilon` and the step is bounded by :math:`\gamma/\epsilon` times the
        momentum. optax's ``adamax`` adds it to :math:`u_t` after the max instead.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 2e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        capturable: bool = False,
        fused: bool | None = None,
        nonfinite: str | None = None,
        max_grad_norm: float | None = None,
        state_precision: str = "fp32",
        stochastic_rounding: bool = False,
        cautious: bool = False,
    ) -> None:
        super().__init__(params, group_defaults(locals()))

    algorithm = ALGORITHMS["Adamax"]
    _rule = adamax_rule
    _scalars = adamax_scalars
