"""AdEMAMix: Adam with a second, slow EMA of the gradient mixed into the update."""

from __future__ import annotations

import math

from torch import Tensor

from ._algorithms import ALGORITHMS
from ._base import AdamFamily, ParamsT, group_defaults
from ._core import Bucket, Hyper, bias_corrections, prepare_grads, update_moments
from ._paths import TensorOps
from ._scalars import Counters, Scalars

__all__ = ["AdEMAMix", "ademamix_rule", "ademamix_scalars", "ademamix_schedules"]


def ademamix_schedules(
    step: float, beta1: float, alpha: float, beta3: float, t_alpha: float, t_beta3: float
) -> tuple[float, float]:
    r"""AdEMAMix's warmups at ``step`` (Pagliardini et al. 2024, section 3): :math:`\alpha_t`
    grows linearly to :math:`\alpha` over ``t_alpha`` steps, and :math:`\beta_{3,t}` grows so
    that the slow EMA's half-life grows linearly from :math:`\beta_1`'s to :math:`\beta_3`'s over
    ``t_beta3`` steps. A length of 0 means no warmup."""
    alpha_t = alpha if t_alpha == 0 else min(step * alpha / t_alpha, alpha)
    if t_beta3 == 0:
        return alpha_t, beta3
    if beta1 == 0 or beta3 == 0:  # a decay of 0 has a half-life of 0: nothing to interpolate
        return alpha_t, (min(beta1, beta3) if step < t_beta3 else beta3)
    frac = step / t_beta3
    log1, log3 = math.log(beta1), math.log(beta3)
    return alpha_t, min(math.exp(log1 * log3 / ((1 - frac) * log3 + frac * log1)), beta3)


def ademamix_rule(ops: TensorOps, b: Bucket, h: Hyper) -> None:
    """One AdEMAMix step (Pagliardini, Ablin & Grangier 2024, Algorithm 1), with Adam's eps
    placement (``sqrt(v_hat) + eps``) and torch's decay conventions."""
    steps = ops.count_step(b.steps)
    grads = prepare_grads(ops, b, h)
    exp_avg, exp_avg_sq, slow = b.state["exp_avg"], b.state["exp_avg_sq"], b.state["exp_avg_slow"]
    update_moments(ops, exp_avg, exp_avg_sq, grads, h)
    own = h.own
    schedules = [
        ademamix_schedules(t, h.beta1, own["alpha"], own["beta3"], own["t_alpha"], own["t_beta3"])
        for t in steps
    ]
    # The slow EMA by lerp, with each tensor's beta3_t (one call when they share a step count).
    weights = [1.0 - beta3_t for _, beta3_t in schedules]
    if len(set(weights)) <= 1:
        ops.lerp_(slow, grads, weights[0] if weights else 0.0)
    else:
        for i, weight in enumerate(weights):
            ops.lerp_([slow[i]], [grads[i]], weight)
    del grads

    denom = ops.sqrt(exp_avg_sq)
    ops.div_(denom, [bc**0.5 for bc in bias_corrections(h.beta2, steps)])
    ops.add_scalar_(denom, h.eps)
    ops.addcdiv_(b.params, exp_avg, denom, [-h.lr / bc for bc in bias_corrections(h.beta1, steps)])
    ops.addcdiv_(b.params, slow, denom, [-h.lr * alpha_t for alpha_t, _ in schedules])


def ademamix_scalars(t: float, h: Hyper, counters: Counters) -> Scalars:
    """The fused kernels' step scalars: ``slow += d (g - slow)`` with ``d = 1 - beta3_t``, and
    ``p -= (a m + c slow) / (sqrt(v) / b + eps)`` with ``a = lr / (1 - beta1^t)``,
    ``b = sqrt(1 - beta2^t)``, ``c = lr alpha_t`` (one division where the rule's two addcdiv_
    take two)."""
    own = h.own
    alpha_t, beta3_t = ademamix_schedules(
        t, h.beta1, own["alpha"], own["beta3"], own["t_alpha"], own["t_beta3"]
    )
    bc1, bc2 = 1.0 - h.beta1**t, 1.0 - h.beta2**t
    return Scalars("ademamix", h.lr / bc1, math.sqrt(bc2), h.lr * alpha_t, 1.0 - beta3_t)


class AdEMAMix(AdamFamily):
    r"""AdEMAMix: Adam with a mixture of a fast and a slow EMA of the gradient.

    .. math::
        m_1 &\leftarrow \beta_1 m_1 + (1-\beta_1) g_t, \qquad
        m_2 \leftarrow \beta_{3,t}\, m_2 + (1-\beta_{3,t})\, g_t, \qquad
        v \leftarrow \beta_2 v + (1-\beta_2) g_t^2 \\
        \theta_t &= \theta_{t-1} - \gamma \left(
            \frac{m_1/(1-\beta_1^t) + \alpha_t\, m_2}{\sqrt{v/(1-\beta_2^t)} + \epsilon}
            + \lambda\,\theta_{t-1} \right)

    The slow EMA (:math:`\beta_3 = 0.9999` remembers about 10,000 steps) keeps old gradients
    useful; :math:`\alpha_t` and :math:`\beta_{3,t}` warm up over ``t_alpha`` and ``t_beta3``
    steps (:func:`ademamix_schedules`; the paper sets both to the run's length). :math:`\gamma`
    is ``lr``, :math:`(\beta_1, \beta_2)` are ``betas``, :math:`\epsilon` is ``eps``,
    :math:`\lambda` is ``weight_decay``, decoupled (the paper's AdamW-style decay) unless
    ``decoupled_weight_decay=False``. State: ``exp_avg``, ``exp_avg_sq``, ``exp_avg_slow``
    (three parameter-sized tensors: in ``state_precision="bf16"``, 6 bytes a parameter).

    Args:
        params, lr, betas, eps, weight_decay, foreach, maximize, capturable, differentiable,
        nonfinite, max_grad_norm, state_precision, stochastic_rounding, cautious,
        update_clipping: as in
        :class:`adamkit.Adam` (defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, no decay).
        alpha: weight of the slow EMA in the update (default 5).
        beta3: decay of the slow EMA, in [0, 1) (default 0.9999).
        t_alpha, t_beta3: warmup lengths in steps of :math:`\alpha` and :math:`\beta_3`
            (default 0: no warmup; the paper warms both up over the whole run for stability).
        decoupled_weight_decay: multiply :math:`\theta` by :math:`1-\gamma\lambda` (default
            True, as the paper) instead of adding :math:`\lambda\theta` to the gradient.
        fused: as in :class:`adamkit.Adam`: by default the fused kernels step it (CPU and
            GPU), with the slow EMA as their third state tensor.

    Example:
        >>> import torch, adamkit
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = adamkit.AdEMAMix(model.parameters(), lr=1e-3, t_alpha=10_000, t_beta3=10_000)

    References:
        Pagliardini, Ablin & Grangier, "The AdEMAMix Optimizer: Better, Faster, Older", 2024
        (arXiv:2409.03137), Algorithm 1.

    Warning:
        pytorch-optimizer's ``AdEMAMix`` takes ``betas=(beta1, beta2, beta3)``, one warmup
        length for both schedulers (``t_alpha_beta3``), and couples its weight decay by
        default; optax's ``contrib.ademamix`` takes ``b1, b2, b3`` and two warmup lengths. The
        slow EMA is not bias-corrected in any of them, nor here.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        alpha: float = 5.0,
        beta3: float = 0.9999,
        t_alpha: float = 0.0,
        t_beta3: float = 0.0,
        *,
        decoupled_weight_decay: bool = True,
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

    algorithm = ALGORITHMS["AdEMAMix"]
    _rule = ademamix_rule
    _scalars = ademamix_scalars
