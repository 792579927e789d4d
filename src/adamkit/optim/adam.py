"""Adam, AdamW and AMSGrad: one rule, three sets of flags."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from ._algorithms import ALGORITHMS
from ._base import AdamFamily, ParamsT, group_defaults
from ._core import Bucket, Hyper, bias_corrections, prepare_grads, update_moments
from ._paths import TensorOps
from ._scalars import Counters, Scalars

__all__ = ["Adam", "AdamW", "StableAdamW", "adam_rule", "adam_scalars"]


def adam_rule(ops: TensorOps, b: Bucket, h: Hyper) -> None:
    """One Adam step (Kingma & Ba 2015, Algorithm 1), with torch's eps placement.

    ``theta <- theta - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)``;
    AMSGrad (Reddi et al. 2018) uses ``max(v_max, v)`` in place of ``v``.
    """
    steps = ops.count_step(b.steps)
    grads = prepare_grads(ops, b, h)
    exp_avg, exp_avg_sq = b.state["exp_avg"], b.state["exp_avg_sq"]
    update_moments(ops, exp_avg, exp_avg_sq, grads, h)
    del grads
    if h.amsgrad:
        ops.maximum_(b.state["max_exp_avg_sq"], exp_avg_sq)
        exp_avg_sq = b.state["max_exp_avg_sq"]

    denom = ops.sqrt(exp_avg_sq)
    ops.div_(denom, [bc**0.5 for bc in bias_corrections(h.beta2, steps)])
    ops.add_scalar_(denom, h.eps)
    ops.addcdiv_(b.params, exp_avg, denom, [-h.lr / bc for bc in bias_corrections(h.beta1, steps)])


def adam_scalars(t: float, h: Hyper, counters: Counters) -> Scalars:
    """The fused kernels' step scalars: ``p -= a m / (sqrt(v) / b + eps)`` with
    ``a = lr / (1 - beta1^t)``, ``b = sqrt(1 - beta2^t)`` (AMSGrad's loop takes ``v_max``)."""
    return Scalars(
        "amsgrad" if h.amsgrad else "adam", h.lr / (1.0 - h.beta1**t), math.sqrt(1.0 - h.beta2**t)
    )


class Adam(AdamFamily):
    r"""Adam: adaptive moment estimation, a drop-in for :class:`torch.optim.Adam`.

    .. math::
        g_t &= \pm\nabla f(\theta_{t-1}) \; [+\, \lambda\theta_{t-1}] \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
        \hat v_t &= \max(\hat v_{t-1}, v_t) \text{ if amsgrad else } v_t \\
        \theta_t &= \theta_{t-1} - \frac{\gamma}{1-\beta_1^t}\,
            \frac{m_t}{\sqrt{\hat v_t}/\sqrt{1-\beta_2^t} + \epsilon}

    :math:`\gamma` is ``lr``, :math:`(\beta_1, \beta_2)` are ``betas``, :math:`\epsilon` is
    ``eps``, :math:`\lambda` is ``weight_decay``. With ``decoupled_weight_decay=True`` the
    :math:`\lambda\theta` term leaves the gradient and the parameter is instead multiplied by
    :math:`1-\gamma\lambda` before the step (that is :class:`AdamW`).

    Args:
        params: parameters, ``named_parameters()``, or a list of param-group dicts.
        lr: learning rate, a float or a 1-element Tensor (default 1e-3).
        betas: decay rates of the first and second moment (default (0.9, 0.999)).
        eps: added to the denominator for stability (default 1e-8).
        weight_decay: L2 penalty added to the gradient (default 0).
        amsgrad: use the running maximum of the second moment (default False).
        foreach: ``True``: the multi-tensor path; ``False``: one tensor at a time.
        maximize: maximize the objective instead of minimizing it (default False).
        fused: ``True``: a fused kernel (one pass over memory): on the CPU for fp32/fp64
            tensors, and bf16 parameters with low-precision state or stochastic rounding; on
            CUDA for fp32/fp64/fp16/bf16 tensors, with low-precision state for fp32/bf16
            parameters; an error otherwise. ``None`` (default, with ``foreach=None``): fused
            where it applies, the multi-tensor path elsewhere. ``False``: never fused.
        capturable: accepted as in torch; ``True`` is not supported yet and raises
            ``NotImplementedError`` naming the setting.
        differentiable: record the step with autograd, as torch does, so that a loss after
            it can be differentiated with respect to the parameters, gradients, state and
            tensor hyperparameters (``lr``, ``betas``, ``weight_decay``) before it. Steps on
            a for-loop path; takes fp32 state only, and refuses ``fused=True``,
            ``foreach=True``, ``max_grad_norm`` and ``stochastic_rounding=True``.
        nonfinite: what a NaN or infinite gradient does: ``None`` (default) steps as torch
            does; ``"raise"`` raises ``FloatingPointError`` naming the parameters; ``"skip"``
            skips the whole step (state untouched; counted in ``optimizer.skipped_steps``; an
            :class:`adamkit.Scheduler` does not advance).
        max_grad_norm: clip the global gradient norm to this value before the step, exactly as
            ``torch.nn.utils.clip_grad_norm_`` (default None: no clipping).
        state_precision: how the moments are stored; the math always runs in fp32.
            ``"fp32"`` (default): as torch.optim, in the parameter's dtype. ``"bf16"``:
            bfloat16 with stochastic rounding (4 bytes per parameter for Adam). ``"8bit"``:
            blockwise 8-bit codes with one fp32 scale per 256 elements (2.03 bytes per
            parameter; tensors under 4096 elements keep full precision). float64 and complex
            parameters always keep full precision. Checkpoints store the compact form and
            load into any precision (converted). See :func:`adamkit.state_memory`.
        stochastic_rounding: update bfloat16 parameters in fp32 and round the result to
            bfloat16 stochastically (unbiased), so that updates smaller than half a bf16 step
            are not lost on average (default False: round to nearest, as torch).
        decoupled_weight_decay: apply weight decay as AdamW does (default False).
        cautious: zero the update where it points against the gradient and scale the rest of
            the tensor's by ``n / (kept + 1)`` (Liang et al. 2024, the authors' and
            pytorch-optimizer's scale; default False). For a tensor of a few elements the
            ``+ 1`` matters: a one-element tensor steps half as far when kept.
        update_clipping: divide the tensor's lr (update and decoupled decay) by
            ``max(1, sqrt(mean(g^2 / v_hat)))``, as StableAdamW (Wortsman et al. 2023;
            default False). With either option the fused C kernel takes two passes (a
            tensor's scale needs its whole update) and keeps an update buffer the size of
            the parameters; low-precision state and GPUs take the multi-tensor path.

    Example:
        >>> import torch, adamkit
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = adamkit.Adam(model.parameters(), lr=1e-2)
        >>> loss = model(torch.ones(4, 3)).pow(2).mean()
        >>> loss.backward(); opt.step(); opt.zero_grad()

    References:
        Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.
        Reddi, Kale & Kumar, "On the Convergence of Adam and Beyond", ICLR 2018 (AMSGrad).

    Warning:
        Conventions differ between libraries. Here, as in torch, ``eps`` is added to
        :math:`\sqrt{v_t}/\sqrt{1-\beta_2^t}` (the bias-corrected root), not inside the root
        (optax's ``eps_root``) and not to the uncorrected :math:`\sqrt{v_t}` (the paper's
        "efficient" form, TensorFlow's epsilon-hat). ``weight_decay`` is the coupled L2 term;
        in Keras and optax ``adamw`` decay is also multiplied by the learning rate, as in
        :class:`AdamW` here.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        nonfinite: str | None = None,
        max_grad_norm: float | None = None,
        state_precision: str = "fp32",
        stochastic_rounding: bool = False,
        cautious: bool = False,
        update_clipping: bool = False,
    ) -> None:
        super().__init__(params, group_defaults(locals()))

    algorithm = ALGORITHMS["Adam"]
    _rule = adam_rule
    _scalars = adam_scalars


class AdamW(Adam):
    r"""AdamW: Adam with decoupled weight decay, a drop-in for :class:`torch.optim.AdamW`.

    .. math::
        \theta_{t-1}' &= (1 - \gamma\lambda)\,\theta_{t-1} \\
        \theta_t &= \theta_{t-1}' - \frac{\gamma}{1-\beta_1^t}\,
            \frac{m_t}{\sqrt{\hat v_t}/\sqrt{1-\beta_2^t} + \epsilon}

    with :math:`m_t, \hat v_t` as in :class:`Adam` computed from the raw gradient. Arguments
    are those of :class:`Adam`; ``weight_decay`` defaults to 1e-2 as in torch.

    Example:
        >>> import torch, adamkit
        >>> opt = adamkit.AdamW(torch.nn.Linear(3, 1).parameters(), lr=1e-3, weight_decay=0.1)

    References:
        Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.

    Warning:
        The decay is :math:`\gamma\lambda` per step, so it follows the learning-rate schedule
        (torch's convention). The paper's schedule multiplier :math:`\eta_t` times a fixed
        :math:`\lambda` is what you get with a scheduler; to decay by a fixed amount
        independent of ``lr``, scale ``weight_decay`` by ``1 / lr``.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
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
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            foreach=foreach,
            maximize=maximize,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=True,
            nonfinite=nonfinite,
            max_grad_norm=max_grad_norm,
            state_precision=state_precision,
            stochastic_rounding=stochastic_rounding,
            cautious=cautious,
            update_clipping=update_clipping,
        )

    # A checkpoint (torch's or ours) never turns AdamW's decay back into L2, as in torch: the
    # row pins decoupled_weight_decay.
    algorithm = ALGORITHMS["AdamW"]


class StableAdamW(AdamW):
    r"""StableAdamW (Wortsman et al. 2023): AdamW with update clipping, the named form of
    ``AdamW(..., update_clipping=True)`` with the paper's defaults.

    Per tensor, the step's learning rate (of the update and of the decoupled decay) is
    :math:`\gamma / \max(1, \mathrm{RMS}_t)` with
    :math:`\mathrm{RMS}_t = \sqrt{\mathrm{mean}(g_t^2 / \max(\hat v_t, \epsilon^2))}`: where a
    gradient is far larger than its second moment has seen (the start of a loss spike), the
    step shrinks instead of taking Adam's full normalised size. Arguments are those of
    :class:`AdamW`, with defaults betas (0.9, 0.99) and weight decay 1e-2, the paper's and
    pytorch-optimizer's; ``cautious=True`` combines with it.

    Example:
        >>> import torch, adamkit
        >>> opt = adamkit.StableAdamW(torch.nn.Linear(3, 1).parameters(), lr=1e-3)

    References:
        Wortsman, Dettmers, Zettlemoyer, Morcos, Farhadi & Schmidt, "Stable and low-precision
        training for large-scale vision-language models", NeurIPS 2023 (arXiv:2304.13013),
        Algorithm 2.

    Warning:
        The paper and pytorch-optimizer's ``StableAdamW`` keep bias-corrected moments by
        debiasing beta (:math:`\hat\beta_t = \beta\,(1-\beta^{t-1})/(1-\beta^t)`); adamkit keeps
        Adam's moments and bias-corrects them when used, which is the same arithmetic up to
        rounding (equal to pytorch-optimizer's to 1e-15 over 300 steps in float64). Its
        ``kahan_sum`` for bf16 parameters is ``stochastic_rounding=True`` here.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.99),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        nonfinite: str | None = None,
        max_grad_norm: float | None = None,
        state_precision: str = "fp32",
        stochastic_rounding: bool = False,
        cautious: bool = False,
        fused: bool | None = None,
    ) -> None:
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            foreach=foreach,
            maximize=maximize,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            nonfinite=nonfinite,
            max_grad_norm=max_grad_norm,
            state_precision=state_precision,
            stochastic_rounding=stochastic_rounding,
            cautious=cautious,
            update_clipping=True,
        )

    def _pinned(self) -> dict[str, Any]:
        # A checkpoint of plain AdamW loaded here does not turn the clipping off.
        return {**super()._pinned(), "update_clipping": True}
