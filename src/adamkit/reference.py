r"""The Adam family in plain NumPy, float64, one small function per algorithm: the oracle.

Each function takes the parameter, its gradient and the previous state, and returns the new
parameter and the new state; nothing is modified in place. The state dictionaries use torch's
names (``step``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``, ``mu_product``, ``exp_inf``),
and the hyperparameters use the optimizers' argument names, so a test can drive an
:mod:`adamkit` optimizer and its reference twin from one table of keyword arguments.

The functions read like the papers, but follow torch's conventions where a paper leaves room
(where ``eps`` sits, the RAdam threshold, NAdam's momentum schedule), because torch is what
users compare against; each docstring says which.

Complex parameters are treated as torch treats them: each complex number is a pair of reals
(``torch.view_as_real``), so the second moment is kept per component.

Example (the seed's from-scratch exercise, corrected: minimise :math:`m^2 - 2m + 1`)::

    >>> import numpy as np
    >>> from adamkit import reference
    >>> w, state = np.array(0.0), None
    >>> for _ in range(2000):
    ...     w, state = reference.adam(w, 2 * w - 2, state, lr=0.01)
    >>> round(float(w), 6)
    1.0
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any, TypeAlias

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "KEPT_ELSEWHERE",
    "REFERENCES",
    "State",
    "adafactor",
    "adam",
    "adamax",
    "adamw",
    "ademamix",
    "adopt",
    "nadam",
    "radam",
    "rectification",
    "schedulefree_adamw",
]

Array: TypeAlias = NDArray[np.float64]
State: TypeAlias = dict[str, Any]
Step: TypeAlias = Callable[..., tuple[Array, State]]


def _real_pairs(fn: Step) -> Step:
    """Run ``fn`` on float64 arrays; complex inputs become (re, im) pairs and come back complex."""

    @functools.wraps(fn)
    def wrapper(
        theta: ArrayLike, grad: ArrayLike, state: State | None = None, **hyper: Any
    ) -> tuple[Array, State]:
        theta_arr, grad_arr = np.asarray(theta), np.asarray(grad)
        is_complex = np.iscomplexobj(theta_arr)

        def real(x: Any) -> Array:
            arr: NDArray[Any] = np.asarray(x)
            if np.iscomplexobj(arr):
                arr = np.stack([arr.real, arr.imag], axis=-1)
            return arr.astype(np.float64)

        def back(x: Array) -> Any:
            return np.asarray(x[..., 0] + 1j * x[..., 1]) if is_complex else x

        if state is not None:
            # Arrays (a 0-d one too) are viewed as real pairs; numbers (step, mu_product) stay.
            state = {k: real(v) if isinstance(v, np.ndarray) else v for k, v in state.items()}
        gradient = None if grad is None else real(grad_arr)  # None: no gradient this step
        cautious = hyper.pop("cautious", False)
        clipping = hyper.pop("update_clipping", False)
        new_theta, new_state = fn(real(theta_arr), gradient, state, **hyper)
        if (cautious or clipping) and gradient is not None:
            settings = {**_defaults(fn), **hyper}
            new_theta = _modified(
                real(theta_arr), gradient, new_theta, new_state, settings, cautious, clipping
            )
        if is_complex:
            new_state = {
                k: back(v) if isinstance(v, np.ndarray) else v for k, v in new_state.items()
            }
        return back(new_theta), new_state

    return wrapper


def _defaults(fn: Step) -> dict[str, Any]:
    return {
        name: p.default
        for name, p in inspect.signature(fn).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def _modified(
    theta: Array,
    grad: Array,
    stepped: Array,
    state: State,
    h: dict[str, Any],
    cautious: bool,
    clipping: bool,
) -> Array:
    r"""The options any algorithm takes, applied to the update it made (``stepped - theta``,
    after the decoupled decay):

    * ``cautious`` (Liang et al. 2024, the authors' code): with :math:`\phi = [u \cdot g > 0]`
      for the update :math:`u` (``theta -= u``), :math:`u \leftarrow u\, \phi\, n /
      (\sum\phi + 1)`;
    * ``update_clipping`` (Wortsman et al. 2023, StableAdamW): the step's lr, of the update and
      of the decoupled decay, divided by :math:`\max(1, \sqrt{\mathrm{mean}(g^2 /
      \max(\hat v, \epsilon^2))})`, :math:`\hat v` = ``exp_avg_sq`` / :math:`(1-\beta_2^t)`.

    ``g`` is the gradient the step descends (``maximize``'s sign, coupled decay included).
    """
    lr, wd = h["lr"], h["weight_decay"]
    decoupled = bool(h.get("decoupled_weight_decay")) and wd != 0
    shrunk = theta * (1 - lr * wd) if decoupled else theta
    update = stepped - shrunk  # -u
    g = -grad if h.get("maximize") else grad
    if wd != 0 and not decoupled:
        g = g + wd * theta
    factor = 1.0
    if clipping and g.size:
        v_hat = state["exp_avg_sq"] / (1 - h["betas"][1] ** state["step"])
        rms = math.sqrt(float(np.mean(g * g / np.maximum(v_hat, h["eps"] ** 2))))
        factor = 1 / max(1.0, rms)
    if cautious:
        kept = (update * g < 0).astype(np.float64)
        update = update * kept * (update.size / (kept.sum() + 1))
    base = theta * (1 - lr * factor * wd) if decoupled else theta
    return base + factor * update


def _zeros(theta: Array, *keys: str) -> State:
    return {"step": 0, **{k: np.zeros_like(theta) for k in keys}}


def _gradient(
    theta: Array, grad: Array, lr: float, weight_decay: float, maximize: bool, decoupled: bool
) -> tuple[Array, Array]:
    """Sign for ``maximize``, then weight decay: L2 into the gradient, or decoupled shrinkage."""
    g = -grad if maximize else grad
    if weight_decay != 0:
        if decoupled:
            theta = theta * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * theta
    return theta, g


@_real_pairs
def adam(
    theta: Array,
    grad: Array,
    state: State | None = None,
    *,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    amsgrad: bool = False,
    maximize: bool = False,
    decoupled_weight_decay: bool = False,
) -> tuple[Array, State]:
    r"""Adam (Kingma & Ba 2015, Algorithm 1); AMSGrad (Reddi et al. 2018) with ``amsgrad``.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \quad
        \theta_t = \theta_{t-1} - \gamma \frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon}

    with :math:`\hat m_t = m_t / (1-\beta_1^t)`, :math:`\hat v_t = v_t / (1-\beta_2^t)`
    (AMSGrad: the running maximum of :math:`v_t`, then corrected). ``eps`` is added to the
    bias-corrected root, as in torch.
    """
    beta1, beta2 = betas
    s = state or _zeros(theta, "exp_avg", "exp_avg_sq", *(["max_exp_avg_sq"] if amsgrad else []))
    t = s["step"] + 1
    theta, g = _gradient(theta, grad, lr, weight_decay, maximize, decoupled_weight_decay)
    m = beta1 * s["exp_avg"] + (1 - beta1) * g
    v = beta2 * s["exp_avg_sq"] + (1 - beta2) * g * g
    new: State = {"step": t, "exp_avg": m, "exp_avg_sq": v}
    if amsgrad:
        v = new["max_exp_avg_sq"] = np.maximum(s["max_exp_avg_sq"], v)
    m_hat = m / (1 - beta1**t)
    v_hat = v / (1 - beta2**t)
    return theta - lr * m_hat / (np.sqrt(v_hat) + eps), new


def adamw(
    theta: ArrayLike,
    grad: ArrayLike,
    state: State | None = None,
    *,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    amsgrad: bool = False,
    maximize: bool = False,
    cautious: bool = False,
    update_clipping: bool = False,
) -> tuple[Array, State]:
    r"""AdamW (Loshchilov & Hutter 2019): :func:`adam` after
    :math:`\theta \leftarrow (1-\gamma\lambda)\theta`."""
    return adam(
        theta,
        grad,
        state,
        lr=lr,
        betas=betas,
        eps=eps,
        weight_decay=weight_decay,
        amsgrad=amsgrad,
        maximize=maximize,
        decoupled_weight_decay=True,
        cautious=cautious,
        update_clipping=update_clipping,
    )


def rectification(t: int, beta2: float) -> float | None:
    r"""RAdam's :math:`r_t`, or ``None`` while :math:`\rho_t \le 5` (Liu et al. 2020, eq. 5-6)."""
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * t * beta2**t / (1 - beta2**t)
    if rho_t <= 5:
        return None
    return math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))


@_real_pairs
def radam(
    theta: Array,
    grad: Array,
    state: State | None = None,
    *,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decoupled_weight_decay: bool = False,
    maximize: bool = False,
) -> tuple[Array, State]:
    r"""RAdam (Liu et al. 2020, Algorithm 2).

    .. math::
        \theta_t = \theta_{t-1} - \gamma\, r_t\, \hat m_t\, \frac{\sqrt{1-\beta_2^t}}{\sqrt{v_t}
        + \epsilon} \text{ if } \rho_t > 5, \text{ else } \theta_{t-1} - \gamma \hat m_t

    ``eps`` is added to the uncorrected :math:`\sqrt{v_t}`, as in torch.
    """
    beta1, beta2 = betas
    s = state or _zeros(theta, "exp_avg", "exp_avg_sq")
    t = s["step"] + 1
    theta, g = _gradient(theta, grad, lr, weight_decay, maximize, decoupled_weight_decay)
    m = beta1 * s["exp_avg"] + (1 - beta1) * g
    v = beta2 * s["exp_avg_sq"] + (1 - beta2) * g * g
    m_hat = m / (1 - beta1**t)
    r = rectification(t, beta2)
    if r is None:
        theta = theta - lr * m_hat
    else:
        theta = theta - lr * r * m_hat * np.sqrt(1 - beta2**t) / (np.sqrt(v) + eps)
    return theta, {"step": t, "exp_avg": m, "exp_avg_sq": v}


@_real_pairs
def nadam(
    theta: Array,
    grad: Array,
    state: State | None = None,
    *,
    lr: float = 2e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum_decay: float = 4e-3,
    decoupled_weight_decay: bool = False,
    maximize: bool = False,
) -> tuple[Array, State]:
    r"""NAdam (Dozat 2016, Algorithm 2) with torch's momentum schedule.

    .. math::
        \mu_t = \beta_1 (1 - \tfrac12 0.96^{t\psi}), \quad \Pi_t = \textstyle\prod_{i \le t}\mu_i,
        \quad \theta_t = \theta_{t-1} - \gamma \Big[\frac{1-\mu_t}{1-\Pi_t} g_t
        + \frac{\mu_{t+1}}{1-\Pi_t\mu_{t+1}} m_t\Big] \Big/ (\sqrt{\hat v_t} + \epsilon)
    """
    beta1, beta2 = betas
    s = state or {**_zeros(theta, "exp_avg", "exp_avg_sq"), "mu_product": 1.0}
    t = s["step"] + 1
    theta, g = _gradient(theta, grad, lr, weight_decay, maximize, decoupled_weight_decay)
    m = beta1 * s["exp_avg"] + (1 - beta1) * g
    v = beta2 * s["exp_avg_sq"] + (1 - beta2) * g * g
    mu = beta1 * (1 - 0.5 * 0.96 ** (t * momentum_decay))
    mu_next = beta1 * (1 - 0.5 * 0.96 ** ((t + 1) * momentum_decay))
    mu_product = float(s["mu_product"]) * mu
    denom = np.sqrt(v / (1 - beta2**t)) + eps
    theta = (
        theta
        - lr * (1 - mu) / (1 - mu_product) * g / denom
        - lr * mu_next / (1 - mu_product * mu_next) * m / denom
    )
    return theta, {"step": t, "exp_avg": m, "exp_avg_sq": v, "mu_product": mu_product}


@_real_pairs
def adamax(
    theta: Array,
    grad: Array,
    state: State | None = None,
    *,
    lr: float = 2e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    maximize: bool = False,
) -> tuple[Array, State]:
    r"""Adamax (Kingma & Ba 2015, Algorithm 2): the infinity norm in place of :math:`v_t`.

    .. math::
        u_t = \max(\beta_2 u_{t-1}, |g_t| + \epsilon), \quad
        \theta_t = \theta_{t-1} - \frac{\gamma}{1-\beta_1^t} \frac{m_t}{u_t}

    The paper has no ``eps``; torch puts it inside the max, and so does this reference.
    """
    beta1, beta2 = betas
    s = state or _zeros(theta, "exp_avg", "exp_inf")
    t = s["step"] + 1
    theta, g = _gradient(theta, grad, lr, weight_decay, maximize, False)
    m = beta1 * s["exp_avg"] + (1 - beta1) * g
    u = np.maximum(beta2 * s["exp_inf"], np.abs(g) + eps)
    return theta - lr / (1 - beta1**t) * m / u, {"step": t, "exp_avg": m, "exp_inf": u}


def ademamix_alpha(t: float, alpha: float, t_alpha: float) -> float:
    r"""AdEMAMix's :math:`\alpha` warmup: :math:`\min(t\alpha/T_\alpha, \alpha)`; :math:`\alpha`
    from the first step where ``t_alpha`` is 0 (no warmup)."""
    return alpha if t_alpha == 0 else min(t * alpha / t_alpha, alpha)


def ademamix_beta3(t: float, beta1: float, beta3: float, t_beta3: float) -> float:
    r"""AdEMAMix's :math:`\beta_3` warmup (Pagliardini et al. 2024, eq. 3): the decay whose
    half-life grows linearly from :math:`\beta_1`'s to :math:`\beta_3`'s over :math:`T_{\beta_3}`
    steps, :math:`\min\big(\exp\frac{\ln\beta_1 \ln\beta_3}{(1-t/T)\ln\beta_3 + (t/T)\ln\beta_1},
    \beta_3\big)`; :math:`\beta_3` throughout where ``t_beta3`` is 0."""
    if t_beta3 == 0:
        return beta3
    if beta1 == 0 or beta3 == 0:  # log 0: the half-life of a decay of 0 is 0 at both ends
        return min(beta1, beta3) if t < t_beta3 else beta3
    frac = t / t_beta3
    log1, log3 = math.log(beta1), math.log(beta3)
    return min(math.exp(log1 * log3 / ((1 - frac) * log3 + frac * log1)), beta3)


@_real_pairs
def ademamix(
    theta: Array,
    grad: Array,
    state: State | None = None,
    *,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    alpha: float = 5.0,
    beta3: float = 0.9999,
    t_alpha: float = 0.0,
    t_beta3: float = 0.0,
    decoupled_weight_decay: bool = True,
    maximize: bool = False,
) -> tuple[Array, State]:
    r"""AdEMAMix (Pagliardini, Ablin & Grangier 2024, Algorithm 1): Adam plus a slow EMA of the
    gradient, mixed into the update with weight :math:`\alpha`.

    .. math::
        m_1 &= \beta_1 m_1 + (1-\beta_1) g_t, \quad
        m_2 = \beta_{3,t} m_2 + (1-\beta_{3,t}) g_t, \quad
        v = \beta_2 v + (1-\beta_2) g_t^2 \\
        \theta_t &= \theta_{t-1} - \gamma \Big( \frac{m_1/(1-\beta_1^t) + \alpha_t m_2}
            {\sqrt{v/(1-\beta_2^t)} + \epsilon} + \lambda \theta_{t-1} \Big)

    with the warmups :func:`ademamix_alpha` and :func:`ademamix_beta3`. The slow EMA is not
    bias-corrected (the paper's choice: it starts at 0 and :math:`\alpha_t` warms up instead).
    Weight decay is decoupled by default, as in the paper; ``decoupled_weight_decay=False``
    adds :math:`\lambda\theta` to the gradient instead. State: ``exp_avg`` (:math:`m_1`),
    ``exp_avg_sq`` (:math:`v`), ``exp_avg_slow`` (:math:`m_2`).

    Warning: pytorch-optimizer's ``AdEMAMix`` takes ``betas=(beta1, beta2, beta3)`` and one
    warmup length for both schedulers (``t_alpha_beta3``), and its weight decay is coupled by
    default; optax's ``contrib.ademamix`` takes ``b1, b2, b3`` and separate warmups, and its
    ``eps`` is added to :math:`\sqrt{\hat v}` as here.
    """
    beta1, beta2 = betas
    s = state or _zeros(theta, "exp_avg", "exp_avg_sq", "exp_avg_slow")
    t = s["step"] + 1
    theta, g = _gradient(theta, grad, lr, weight_decay, maximize, decoupled_weight_decay)
    b3 = ademamix_beta3(t, beta1, beta3, t_beta3)
    m = beta1 * s["exp_avg"] + (1 - beta1) * g
    v = beta2 * s["exp_avg_sq"] + (1 - beta2) * g * g
    slow = b3 * s["exp_avg_slow"] + (1 - b3) * g
    denom = np.sqrt(v / (1 - beta2**t)) + eps
    theta = theta - lr * (m / (1 - beta1**t) + ademamix_alpha(t, alpha, t_alpha) * slow) / denom
    return theta, {"step": t, "exp_avg": m, "exp_avg_sq": v, "exp_avg_slow": slow}


@_real_pairs
def adopt(
    theta: Array,
    grad: Array,
    state: State | None = None,
    *,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.9999),
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    clip_exponent: float = 0.25,
    decoupled_weight_decay: bool = False,
    maximize: bool = False,
) -> tuple[Array, State]:
    r"""ADOPT (Taniguchi et al. 2024, Algorithm 2 with the clipped normalisation of section 4):
    the gradient is normalised by the *previous* second moment, before the momentum.

    .. math::
        t = 1:&\quad v_1 = g_1^2 \quad (\text{no update}) \\
        t > 1:&\quad m_t = \beta_1 m_{t-1} + (1-\beta_1)\,
            \mathrm{clip}\Big(\frac{g_t}{\max(\sqrt{v_{t-1}}, \epsilon)}, t^{\,c}\Big), \quad
            \theta_t = \theta_{t-1} - \gamma m_t, \quad
            v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2

    with ``clip(x, c)`` the clamp to :math:`[-c, c]` and :math:`c` = ``clip_exponent`` (the
    paper's :math:`t^{1/4}`). No bias correction. Weight decay is applied at every step,
    the first included.

    Warning: the authors' code and pytorch-optimizer's ``ADOPT`` take ``clip_lambda``, a
    function of the step (``step ** 0.25``, or ``None`` for no clipping); here the exponent.
    Both count the step from 1 and clip from the second step on, as here.
    """
    beta1, beta2 = betas
    s = state or _zeros(theta, "exp_avg", "exp_avg_sq")
    t = s["step"] + 1
    theta, g = _gradient(theta, grad, lr, weight_decay, maximize, decoupled_weight_decay)
    if t == 1:
        return theta, {"step": t, "exp_avg": s["exp_avg"], "exp_avg_sq": s["exp_avg_sq"] + g * g}
    bound = t**clip_exponent
    normed = np.clip(g / np.maximum(np.sqrt(s["exp_avg_sq"]), eps), -bound, bound)
    m = beta1 * s["exp_avg"] + (1 - beta1) * normed
    v = beta2 * s["exp_avg_sq"] + (1 - beta2) * g * g
    return theta - lr * m, {"step": t, "exp_avg": m, "exp_avg_sq": v}


@_real_pairs
def schedulefree_adamw(
    theta: Array,
    grad: Array | None,
    state: State | None = None,
    *,
    lr: float = 0.0025,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    warmup_steps: float = 0,
    r: float = 0.0,
    weight_lr_power: float = 2.0,
    maximize: bool = False,
) -> tuple[Array, State]:
    r"""Schedule-free AdamW (Defazio et al. 2024, "The Road Less Scheduled", Algorithm 1), with
    the three sequences kept apart. ``theta`` is :math:`y_t`, where the gradient is taken.

    .. math::
        v_t &= \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \qquad
        \gamma_t = \gamma \min(1, t / T_{warmup}) \\
        z_{t+1} &= z_t - \gamma_t \Big(\frac{g_t}{\sqrt{v_t/(1-\beta_2^t)} + \epsilon}
            + \lambda y_t\Big) \\
        c_{t+1} &= \frac{w_t}{\sum_{i \le t} w_i}, \quad
            w_t = t^r \big(\max_{i \le t} \gamma_i\big)^{p}, \qquad
        x_{t+1} = (1 - c_{t+1})\, x_t + c_{t+1} z_{t+1} \\
        y_{t+1} &= (1-\beta_1)\, z_{t+1} + \beta_1 x_{t+1}

    with :math:`z_1 = x_1 = y_1` the initial parameters, :math:`r` = ``r`` and :math:`p` =
    ``weight_lr_power``. :math:`x` is the point to evaluate; state keeps ``z``, ``x``,
    ``exp_avg_sq`` (:math:`v`), the tensor's ``step``, and the group's running ``k``,
    ``weight_sum`` and ``lr_max``. ``grad=None``: the tensor had no gradient at this step of
    its group, whose schedule still advances (as the package's).

    Warning: this is the ``schedulefree`` package's ``AdamWScheduleFree`` (1.x): the bias
    correction divides :math:`v` under the root, where the paper multiplies the step size by
    :math:`\sqrt{1-\beta_2^t}` (they differ in where :math:`\epsilon` sits), and the weight
    decay is taken at :math:`y`. The package (and adamkit) keep only :math:`y` and :math:`z`
    and move :math:`y` in place; ``optimizer.eval()`` recovers :math:`x`.
    """
    beta1, beta2 = betas
    if state:
        s = state
    else:
        s = {**_zeros(theta, "exp_avg_sq"), "z": theta.copy(), "x": theta.copy()}
        s.update(k=0, weight_sum=0.0, lr_max=-1.0)
    t = s["k"] + 1  # the group's step: it advances with or without this tensor's gradient
    lr_t = lr * (min(1.0, t / warmup_steps) if warmup_steps else 1.0)
    lr_max = max(lr_t, s["lr_max"])
    weight = t**r * lr_max**weight_lr_power
    weight_sum = s["weight_sum"] + weight
    schedule = {"k": t, "weight_sum": weight_sum, "lr_max": lr_max}
    if grad is None:
        return theta, {**s, **schedule}
    c = weight / weight_sum if weight_sum else 0.0
    g = -grad if maximize else grad
    v = beta2 * s["exp_avg_sq"] + (1 - beta2) * g * g
    z = s["z"] - lr_t * (g / (np.sqrt(v / (1 - beta2**t)) + eps) + weight_decay * theta)
    x = (1 - c) * s["x"] + c * z
    new = {**schedule, "step": s["step"] + 1, "z": z, "x": x, "exp_avg_sq": v}
    return (1 - beta1) * z + beta1 * x, new


def adafactor(
    theta: ArrayLike,
    grad: ArrayLike,
    state: State | None = None,
    *,
    lr: float = 1e-2,
    beta2_decay: float = -0.8,
    eps: tuple[float | None, float] = (None, 1e-3),
    d: float = 1.0,
    weight_decay: float = 0.0,
    maximize: bool = False,
) -> tuple[Array, State]:
    r"""Adafactor (Shazeer & Stern 2018, Algorithms 4 and 5), as ``torch.optim.Adafactor``
    states it: a second moment factored into row and column statistics for matrices, relative
    step sizes, and update clipping; no first moment.

    .. math::
        \hat\beta_{2,t} &= 1 - t^{\tau}, \qquad \rho_t = \min(\gamma, 1/\sqrt t), \qquad
            \alpha_t = \max(\epsilon_2, \mathrm{RMS}(\theta_{t-1}))\, \rho_t \\
        R_t &= \hat\beta_{2,t} R_{t-1} + (1-\hat\beta_{2,t})\,\mathrm{mean}_{j}(G_t^2), \quad
            C_t = \hat\beta_{2,t} C_{t-1} + (1-\hat\beta_{2,t})\,\mathrm{mean}_{i}(G_t^2) \\
        \hat V_t &= \frac{R_t C_t}{\max(\mathrm{mean}_i(R_t), \epsilon_1)} \quad
            (\text{a vector: } \hat V_t = \hat\beta_{2,t} \hat V_{t-1}
            + (1-\hat\beta_{2,t}) G_t^2) \\
        U_t &= \frac{G_t}{\sqrt{\max(\hat V_t, \epsilon_1^2)}}, \qquad
            \theta_t = (1 - \gamma\lambda)\,\theta_{t-1}
            - \frac{\alpha_t}{\max(1, \mathrm{RMS}(U_t)/d)}\, U_t

    with :math:`\tau` = ``beta2_decay``, :math:`(\epsilon_1, \epsilon_2)` = ``eps``
    (:math:`\epsilon_1` = ``None``: the machine epsilon of float64 here; of the parameter's
    dtype in the optimizers) and :math:`d` = ``d``. A tensor of two or more dimensions keeps
    ``row_var`` (shape ``[..., n, 1]``) and ``col_var`` (``[..., 1, m]``), factoring its last two
    dimensions; a vector or a scalar keeps ``variance``, shaped like it.

    Warning: this is torch's formulation, which differs from the paper's in two places: ``lr``
    caps the relative step size :math:`\rho_t` (the paper's constant 0.01) and scales the
    decoupled weight decay, and :math:`\epsilon_1` floors :math:`\hat V` and the row mean instead
    of being added to :math:`G^2` (as the paper, optax and transformers' ``Adafactor`` do).
    The RMS of the parameter is taken before the weight decay. transformers' ``Adafactor``
    also keeps a first moment (``beta1``) and a ``scale_parameter`` switch that torch does not.
    """
    theta_arr, grad_arr = np.asarray(theta), np.asarray(grad)
    if np.iscomplexobj(theta_arr):
        raise TypeError("Adafactor does not support complex parameters")
    x, g = theta_arr.astype(np.float64), grad_arr.astype(np.float64)
    eps1 = np.finfo(np.float64).eps if eps[0] is None else eps[0]
    eps2 = eps[1]
    factored = x.ndim > 1
    if state:
        s = state
    elif factored:
        s = {
            "step": 0,
            "row_var": np.zeros((*x.shape[:-1], 1)),
            "col_var": np.zeros((*x.shape[:-2], 1, x.shape[-1])),
        }
    else:
        s = {"step": 0, "variance": np.zeros_like(x)}
    t = s["step"] + 1
    g = -g if maximize else g
    decay = t**beta2_decay  # 1 - beta2_t
    rho = min(lr, 1 / t**0.5)
    alpha = max(eps2, _rms(x)) * rho
    x = x * (1 - lr * weight_decay)
    new: State = {"step": t}
    if not x.size:  # nothing to step: the statistics stay as they were
        return x, {**s, **new}
    if factored:
        row = s["row_var"] + decay * (np.mean(g * g, axis=-1, keepdims=True) - s["row_var"])
        col = s["col_var"] + decay * (np.mean(g * g, axis=-2, keepdims=True) - s["col_var"])
        v_hat = row * col / np.maximum(np.mean(row, axis=-2, keepdims=True), eps1)
        new.update(row_var=row, col_var=col)
    else:
        v_hat = s["variance"] + decay * (g * g - s["variance"])
        new["variance"] = v_hat
    u = g / np.sqrt(np.maximum(v_hat, eps1 * eps1))
    return x - alpha / max(1.0, _rms(u) / d) * u, new


def _rms(x: Array) -> float:
    """Root mean square of every element (0 for an empty array, as torch's norm / sqrt(0))."""
    return math.sqrt(float(np.mean(x * x))) if x.size else 0.0


#: What a reference keeps that adamkit keeps in the param group (schedule-free's running ``k``,
#: ``weight_sum`` and ``lr_max``) or does not store (``x``, recovered from ``y`` and ``z``).
KEPT_ELSEWHERE = frozenset({"k", "x", "weight_sum", "lr_max"})


#: The reference step for each adamkit optimizer, by class name.
REFERENCES: dict[str, Step] = {
    "Adam": adam,
    "AdamW": adamw,
    "RAdam": radam,
    "NAdam": nadam,
    "Adamax": adamax,
    "AdEMAMix": ademamix,
    "ADOPT": adopt,
    "ScheduleFreeAdamW": schedulefree_adamw,
    "Adafactor": adafactor,
}
