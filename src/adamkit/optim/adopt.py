"""ADOPT: Adam that normalises the gradient by the previous second moment, before the momentum."""

from __future__ import annotations

from torch import Tensor

from ._algorithms import ALGORITHMS
from ._base import AdamFamily, ParamsT, group_defaults
from ._core import Bucket, Hyper, prepare_grads, select
from ._paths import TensorOps
from ._scalars import Counters, Scalars

__all__ = ["ADOPT", "adopt_rule", "adopt_scalars"]


def adopt_rule(ops: TensorOps, b: Bucket, h: Hyper) -> None:
    """One ADOPT step (Taniguchi et al. 2024): the first step only records ``v = g^2``; later
    ones clip ``g / max(sqrt(v_prev), eps)`` to ``+-t^c``, take it into the momentum, step by
    ``lr m``, and only then update ``v``."""
    steps = ops.count_step(b.steps)
    grads = prepare_grads(ops, b, h)
    exp_avg, exp_avg_sq = b.state["exp_avg"], b.state["exp_avg_sq"]
    first = [i for i, t in enumerate(steps) if t == 1]
    later = [i for i, t in enumerate(steps) if t != 1]
    if first:  # v_1 = g_1^2 (onto the zeros it starts from, as the authors' code)
        g = select(grads, first)
        ops.addcmul_(select(exp_avg_sq, first), g, g, 1.0)
    if not later:
        return
    g, v, m = select(grads, later), select(exp_avg_sq, later), select(exp_avg, later)
    denom = ops.sqrt(v)
    ops.clamp_(denom, h.eps, None)
    normed = ops.div(g, denom)
    bounds = [steps[i] ** h.own["clip_exponent"] for i in later]
    ops.clamp_(normed, [-c for c in bounds], bounds)
    ops.lerp_(m, normed, 1 - h.beta1)
    ops.add_(select(b.params, later), m, -h.lr)
    ops.mul_(v, h.beta2)
    ops.addcmul_(v, g, g, 1 - h.beta2)


def adopt_scalars(t: float, h: Hyper, counters: Counters) -> Scalars:
    """The fused kernels' step scalars: the first step only adds ``g^2`` to ``v``; later ones
    step by ``a = lr`` and clip the normalised gradient to ``c = t^clip_exponent``."""
    if t == 1:
        return Scalars("adopt_first", 0.0)
    return Scalars("adopt", h.lr, 0.0, t ** h.own["clip_exponent"])


class ADOPT(AdamFamily):
    r"""ADOPT: adaptive gradient method that converges with any :math:`\beta_2`.

    .. math::
        m_t &= \beta_1 m_{t-1} + (1-\beta_1)\,
            \mathrm{clip}\!\left(\frac{g_t}{\max(\sqrt{v_{t-1}}, \epsilon)},\ t^{c}\right) \\
        \theta_t &= \theta_{t-1} - \gamma\, m_t, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2)\, g_t^2

    The gradient is normalised by the second moment of the *previous* steps, so it is
    independent of it, and before the momentum, which removes the correlation that makes
    Adam diverge on some problems unless :math:`\beta_2` is close to 1. The first step only
    records :math:`v_1 = g_1^2`. ``clip(x, b)`` clamps to :math:`[-b, b]`: the paper's stable
    variant with :math:`b = t^{1/4}` (``clip_exponent``). No bias correction.

    Args:
        params, lr, eps, weight_decay, foreach, maximize, capturable, differentiable, nonfinite,
        max_grad_norm, state_precision, stochastic_rounding, cautious: as in
            :class:`adamkit.Adam`
            (defaults here: lr 1e-3, eps 1e-6, the paper's).
        betas: (0.9, 0.9999), the paper's.
        clip_exponent: the normalised gradient is clipped to :math:`\pm t^{c}` (default 0.25).
        decoupled_weight_decay: decoupled (AdamW-style) weight decay (default False).
        fused: as in :class:`adamkit.Adam`: by default the fused kernels step it (CPU and
            GPU), its first step a loop of its own.

    Example:
        >>> import torch, adamkit
        >>> opt = adamkit.ADOPT(torch.nn.Linear(3, 1).parameters(), lr=1e-3)

    References:
        Taniguchi et al., "ADOPT: Modified Adam Can Converge with Any beta_2 with the Optimal
        Rate", NeurIPS 2024 (arXiv:2411.02853), Algorithm 2 and section 4.

    Warning:
        The authors' code and pytorch-optimizer's ``ADOPT`` take ``clip_lambda``, a function
        of the step (``None`` for no clipping); here it is ``t ** clip_exponent``, clipping
        from the second step on as they do. timm's ``adopt`` is the same algorithm.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.9999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        clip_exponent: float = 0.25,
        *,
        decoupled_weight_decay: bool = False,
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
    ) -> None:
        super().__init__(params, group_defaults(locals()))

    algorithm = ALGORITHMS["ADOPT"]
    _rule = adopt_rule
    _scalars = adopt_scalars
