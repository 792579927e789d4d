"""NAdam: Adam with Nesterov momentum and Dozat's momentum-decay schedule."""

from __future__ import annotations

import math

from torch import Tensor

from ._algorithms import ALGORITHMS
from ._base import AdamFamily, ParamsT, group_defaults
from ._core import Bucket, Hyper, bias_corrections, prepare_grads, update_moments
from ._paths import TensorOps
from ._scalars import Counters, Scalars

__all__ = ["NAdam", "momentum_schedule", "nadam_rule", "nadam_scalars"]


def momentum_schedule(step: float, beta1: float, momentum_decay: float) -> float:
    r""":math:`\mu_t = \beta_1 (1 - \tfrac12 \cdot 0.96^{t\psi})` (Dozat 2016, with :math:`\psi`
    = ``momentum_decay``)."""
    return beta1 * (1.0 - 0.5 * float(0.96 ** (step * momentum_decay)))


def nadam_rule(ops: TensorOps, b: Bucket, h: Hyper) -> None:
    """One NAdam step (Dozat 2016, Algorithm 2) as torch computes it."""
    steps = ops.count_step(b.steps)
    grads = prepare_grads(ops, b, h)
    exp_avg, exp_avg_sq = b.state["exp_avg"], b.state["exp_avg_sq"]
    update_moments(ops, exp_avg, exp_avg_sq, grads, h)

    psi = h.own["momentum_decay"]
    mu = [momentum_schedule(t, h.beta1, psi) for t in steps]
    mu_next = [momentum_schedule(t + 1, h.beta1, psi) for t in steps]
    # The running product of mu is state (torch's `mu_product`, a scalar tensor per parameter).
    ops.mul_(b.state["mu_product"], mu)
    mu_product = ops.values(b.state["mu_product"])

    denom = ops.sqrt(exp_avg_sq)
    ops.div_(denom, [bc**0.5 for bc in bias_corrections(h.beta2, steps)])
    ops.add_scalar_(denom, h.eps)
    # Nesterov: the current gradient's share plus the look-ahead share of the momentum.
    ops.addcdiv_(
        b.params,
        grads,
        denom,
        [-h.lr * (1.0 - m) / (1.0 - p) for m, p in zip(mu, mu_product, strict=True)],
    )
    ops.addcdiv_(
        b.params,
        exp_avg,
        denom,
        [-h.lr * n / (1.0 - p * n) for n, p in zip(mu_next, mu_product, strict=True)],
    )


def nadam_scalars(t: float, h: Hyper, counters: Counters) -> Scalars:
    """The fused kernels' step scalars, after multiplying each tensor's running product of mu
    by this step's: ``p -= (a g + c m) / (sqrt(v) / b + eps)`` with
    ``a = lr (1 - mu_t) / (1 - Pi_t)``, ``c = lr mu_{t+1} / (1 - Pi_t mu_{t+1})``,
    ``b = sqrt(1 - beta2^t)`` (one division where torch's two addcdiv_ take two)."""
    psi = h.own["momentum_decay"]
    mu, mu_next = momentum_schedule(t, h.beta1, psi), momentum_schedule(t + 1.0, h.beta1, psi)
    product = counters.advance("mu_product", mu)
    return Scalars(
        "nadam",
        h.lr * (1.0 - mu) / (1.0 - product),
        math.sqrt(1.0 - h.beta2**t),
        h.lr * mu_next / (1.0 - product * mu_next),
    )


class NAdam(AdamFamily):
    r"""NAdam: Nesterov-accelerated Adam, a drop-in for :class:`torch.optim.NAdam`.

    .. math::
        \mu_t &= \beta_1\big(1 - \tfrac12\, 0.96^{t\psi}\big), \qquad
        \Pi_t = \textstyle\prod_{i\le t} \mu_i \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \qquad
        \hat v_t = v_t / (1-\beta_2^t) \\
        \theta_t &= \theta_{t-1}
            - \gamma\,\frac{1-\mu_t}{1-\Pi_t}\,\frac{g_t}{\sqrt{\hat v_t}+\epsilon}
            - \gamma\,\frac{\mu_{t+1}}{1-\Pi_t\mu_{t+1}}\,\frac{m_t}{\sqrt{\hat v_t}+\epsilon}

    :math:`\gamma` is ``lr``, :math:`(\beta_1, \beta_2)` are ``betas``, :math:`\psi` is
    ``momentum_decay``, :math:`\epsilon` is ``eps``; weight decay as in :class:`adamkit.RAdam`.

    Args:
        params, lr, betas, eps, weight_decay, foreach, fused, maximize, capturable, nonfinite,
        max_grad_norm, state_precision, stochastic_rounding, differentiable, cautious,
        update_clipping: as in :class:`adamkit.Adam`
            (defaults: lr 2e-3, betas (0.9, 0.999), eps 1e-8).
        momentum_decay: :math:`\psi` in the momentum schedule (default 4e-3).
        decoupled_weight_decay: decoupled (AdamW-style) weight decay, i.e. NAdamW
            (default False).

    Example:
        >>> import torch, adamkit
        >>> opt = adamkit.NAdam(torch.nn.Linear(3, 1).parameters(), lr=2e-3)

    References:
        Dozat, "Incorporating Nesterov Momentum into Adam", ICLR 2016 workshop.

    Warning:
        Keras and optax's ``nadam`` use a constant :math:`\mu = \beta_1` (no momentum-decay
        schedule); here, as in torch, :math:`\mu_t` follows Dozat's schedule, and the product
        :math:`\Pi_t` is kept as float32 state ``mu_product``.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 2e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum_decay: float = 4e-3,
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

    algorithm = ALGORITHMS["NAdam"]
    _rule = nadam_rule
    _scalars = nadam_scalars
