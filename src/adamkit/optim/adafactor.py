"""Adafactor: a factored second moment (row and column statistics) and relative step sizes."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._algorithms import ALGORITHMS
from ._base import AdamFamily, ParamsT, group_defaults
from ._core import Bucket, Hyper, select
from ._factored import check_storages, factored_step, factored_unsupported
from ._paths import TensorOps
from ._precision import decode

__all__ = ["Adafactor", "adafactor_clip_factors", "adafactor_rule", "normalised_update"]


def adafactor_rule(ops: TensorOps, b: Bucket, h: Hyper) -> None:
    """One Adafactor step: ``torch.optim.Adafactor``'s update, equal to it within rounding.

    A bucket of vectors (and scalars) is stepped bucket-wide, its norms read once (torch
    reads each tensor's on its own); a bucket of matrices one tensor at a time, a matrix's
    statistics being reductions of its own. Its row and column mean squares are two means of
    one ``g * g`` (torch's ``norm`` over dimension -2 is a strided reduction, about ten times
    slower on the CPUs measured), and its update is applied in factored form,
    ``G * rsqrt(C) * rsqrt(R / mean(R))``, without the ``n x m`` estimate ``R C / mean(R)``, in
    the rows where the ``eps1^2`` floor cannot bind (checked exactly on each row's smallest
    element; the other rows take torch's form). A matrix's temporaries share one buffer, the
    size of the bucket's largest: the peak memory is one matrix's (torch's multi-tensor step
    holds every tensor's at once); a bucket of vectors holds its vectors' temporaries together,
    as torch's does. On the fused path (``h.tensor_kernel``) the C kernel steps each matrix it
    can take (``_factored.py``) in three passes over memory, 1.3-5.4x faster than these
    operations (``benchmarks/bench_adafactor.py``); they step the rest.
    """
    # On the fused path, the C kernel steps each matrix it can take whole (its RMS and weight
    # decay included); the others take torch's operations. (Asked first: it may raise, and
    # then nothing has changed, the step counters included.)
    native = _native(b, h)
    steps = ops.count_step(b.steps)
    # The statistics see g^2: maximize only turns the update's sign (no negated copies).
    grads, sign = b.grads, -1.0 if h.maximize else 1.0
    params = b.params
    rhos = [min(h.lr, 1 / t**0.5) for t in steps]
    decays = [t ** h.own["beta2_decay"] for t in steps]  # 1 - beta2_t
    eps1 = h.eps1 if h.eps1 is not None else torch.finfo(params[0].dtype).eps
    d = h.own["d"]
    eager = [i for i, taken in enumerate(native) if not taken]
    # The relative step size scales with the parameter's RMS before the weight decay.
    alphas = [0.0] * len(params)
    if eager:
        by_ops = select(params, eager)
        for i, p, n in zip(eager, by_ops, ops.norms(by_ops), strict=True):
            alphas[i] = max(h.eps, n / p.numel() ** 0.5 if p.numel() else 0.0) * rhos[i]
        if h.weight_decay != 0:
            ops.mul_(by_ops, 1 - h.lr * h.weight_decay)
    if "row_var" not in b.state:  # vectors and scalars: elementwise, bucket-wide
        variances = b.state["variance"]
        ops.lerp_(variances, ops.mul(grads, grads), decays)
        estimates = ops.clamp_min(variances, eps1 * eps1)  # (a copy: the state stays)
        ops.rsqrt_(estimates)
        updates = ops.mul(estimates, grads)
        sizes = [u.numel() ** 0.5 for u in updates]
        clips = [
            max(1.0, n / (s * d)) if s else 1.0
            for n, s in zip(ops.norms(updates), sizes, strict=True)
        ]
        ops.add_scaled_(
            params, updates, [-sign * a / c for a, c in zip(alphas, clips, strict=True)]
        )
        return
    # One buffer for every matrix's two temporaries (g^2, then G * col_factor): the size of
    # the largest, allocated once a step (a fresh large temporary costs its page faults, which
    # measured several times the product itself here). Half-precision gradients, whose
    # temporaries differ in dtype, allocate their own.
    wide = torch.promote_types(grads[0].dtype, torch.float32)
    largest = max((grads[i].numel() for i in eager), default=0)
    buffer = (
        torch.empty(largest, dtype=wide, device=grads[0].device)
        if eager and grads[0].dtype == wide
        else None
    )
    for i, (p, g) in enumerate(zip(params, grads, strict=True)):
        if p.numel() == 0:  # nothing to step (torch divides by its size, 0, here)
            continue
        state = {key: tensors[i] for key, tensors in b.state.items()}
        if native[i]:
            factored_step(
                p,
                g,
                state["row_var"],
                state["col_var"],
                rho=rhos[i],
                decay=decays[i],
                eps1=eps1,
                eps2=h.eps,
                d=d,
                shrink=1 - h.lr * h.weight_decay,
                sign=sign,
            )
            continue
        temporary = None if buffer is None else buffer[: g.numel()].view(g.shape)
        square = torch.mul(g, g, out=temporary)
        state["row_var"].lerp_(square.mean(dim=-1, keepdim=True), decays[i])
        state["col_var"].lerp_(square.mean(dim=-2, keepdim=True), decays[i])
        del square
        factors = _rank_one_factors(state["row_var"], state["col_var"], eps1)
        if factors is not None:  # U = (G * col_factor) * row_factor, never formed
            row_factor, col_factor, binding = factors
            scaled = torch.mul(g, col_factor, out=temporary)
            if binding is not None:  # rows where the floor binds: torch's form, those rows
                scaled[binding] = normalised_update(state, g, eps1, binding).to(scaled.dtype)
                row_factor[binding] = 1.0
            norm = torch.linalg.vector_norm(scaled, dim=-1, keepdim=True).mul_(row_factor).norm()
            # The update's RMS is capped at d (the paper's update clipping).
            clip = max(1.0, norm.item() / (p.numel() ** 0.5 * d))
            p.addcmul_(scaled, row_factor, value=-sign * alphas[i] / clip)
            del scaled  # (before the next tensor's square: one temporary at a time)
        else:
            update = normalised_update(state, g, eps1, out=temporary)
            clip = max(1.0, update.norm(2).item() / (update.numel() ** 0.5 * d))
            p.add_(update, alpha=-sign * alphas[i] / clip)
            del update


def _native(b: Bucket, h: Hyper) -> list[bool]:
    """Which tensors of the bucket the C kernel steps: on the fused path, the matrices it can
    take now (with ``fused=True`` that is every one: the base refused the step otherwise)."""
    if not h.tensor_kernel or "row_var" not in b.state:
        return [False] * len(b.params)
    tensors = zip(b.params, b.grads, b.state["row_var"], b.state["col_var"], strict=True)
    return [p.numel() > 0 and factored_unsupported(p, g, r, c) is None for p, g, r, c in tensors]


def _rank_one_factors(
    row_var: Tensor, col_var: Tensor, eps1: float
) -> tuple[Tensor, Tensor, Tensor | None] | None:
    """``rsqrt(R / max(mean(R), eps1))`` and ``rsqrt(C)``, whose outer product is torch's
    ``rsqrt(max(R C / max(mean(R), eps1), eps1^2))``, and the rows (of a matrix) this form
    cannot take: where the ``eps1^2`` floor binds in some element of the row (at its smallest
    ``R_i C_j``, computed as torch computes it: a row of zeros, an embedding's unseen token), or
    the row's factor leaves its dtype's range. Those rows take torch's form (``None``: no such
    row). ``None`` for the whole tensor where a column's factor leaves the range, more than
    half the rows bind (their estimate would cost more memory than torch's form, which works
    in place), or a batched (3-d and more) tensor has a binding row. In fp32 at least: fp16's range
    ends at 65504, and a row's ratio to the mean leaves it for tables of 65,504 rows or one row
    1e5 times quieter than the rest."""
    wide = torch.promote_types(row_var.dtype, torch.float32)
    rows, cols = row_var.to(wide), col_var.to(wide)
    mean = rows.mean(dim=-2, keepdim=True).clamp_(min=eps1)
    ratio = rows / mean
    row_factor, col_factor = ratio.rsqrt(), cols.rsqrt()
    smallest = rows * cols.amin(dim=-1, keepdim=True) / mean  # each row's smallest R_i C_j
    binds = (smallest <= eps1 * eps1) | (ratio < torch.finfo(wide).tiny) | ~row_factor.isfinite()
    if not bool(col_factor.isfinite().all()):
        return None
    count = int(binds.sum())
    if count == 0:
        return row_factor, col_factor, None
    if 2 * count > binds.numel() or binds.dim() > 2:  # (most rows: torch's form, in place)
        return None
    return row_factor, col_factor, binds.view(-1).nonzero().view(-1)


def normalised_update(
    state: dict[str, Tensor],
    grad: Tensor,
    eps1: float,
    rows: Tensor | None = None,
    out: Tensor | None = None,
) -> Tensor:
    """``U = G / sqrt(max(V_hat, eps1^2))`` from one tensor's (updated) state, in torch's
    operations: ``V_hat = R C / max(mean(R), eps1)`` for a matrix (its ``rows`` alone, where
    given; a whole matrix's into ``out`` where given), its ``variance`` for a vector. A new
    tensor, or ``out``; the state is left as it is."""
    if "row_var" in state:
        row_var = state["row_var"]
        mean = row_var.mean(dim=-2, keepdim=True).clamp_(min=eps1)
        picked = row_var if rows is None else row_var[rows]
        if out is not None and rows is None and out.dtype == row_var.dtype:
            estimate = torch.matmul(picked, state["col_var"], out=out)
        else:
            estimate = picked @ state["col_var"]
        estimate.div_(mean)
        if rows is not None:
            grad = grad[rows]
    else:
        estimate = state["variance"].clone()  # (the state itself stays as it is)
    return estimate.clamp_(min=eps1 * eps1).rsqrt_().mul_(grad)


def adafactor_clip_factors(optimizer: torch.optim.Optimizer, group: dict[str, Any]) -> list[float]:
    """The factor ``1 / max(1, RMS(U) / d)`` each tensor of ``group`` with a gradient had its
    step scaled by at the last step: 1 unless the update was clipped. For telemetry, after a
    step (the gradients still in ``.grad``); torch's ``Adafactor`` keeps the same state."""
    factors = []
    eps1_given = group["eps"][0]
    for p in group["params"]:
        state = optimizer.state.get(p, {})
        if p.grad is None or p.numel() == 0 or "step" not in state:
            continue
        eps1 = torch.finfo(p.dtype).eps if eps1_given is None else eps1_given
        # (decoded: a vector's variance may be stored in bf16 or 8 bits)
        tensors = {
            k: decode(state, k).float() for k in ("row_var", "col_var", "variance") if k in state
        }
        update = normalised_update(tensors, p.grad, eps1)
        rms = update.norm(2).item() / update.numel() ** 0.5
        factors.append(1 / max(1.0, rms / float(group["d"])))
    return factors


class Adafactor(AdamFamily):
    r"""Adafactor: Adam's second moment in sublinear memory, with relative step sizes.

    .. math::
        \hat\beta_{2,t} &= 1 - t^{\tau}, \qquad \rho_t = \min(\gamma, 1/\sqrt t), \qquad
            \alpha_t = \max(\epsilon_2, \mathrm{RMS}(\theta_{t-1}))\, \rho_t \\
        R_t &= \hat\beta_{2,t} R_{t-1} + (1-\hat\beta_{2,t})\,\mathrm{mean}_{j}(G_t^2), \quad
            C_t = \hat\beta_{2,t} C_{t-1} + (1-\hat\beta_{2,t})\,\mathrm{mean}_{i}(G_t^2), \quad
            \hat V_t = \frac{R_t C_t}{\max(\mathrm{mean}_i(R_t), \epsilon_1)} \\
        U_t &= \frac{G_t}{\sqrt{\max(\hat V_t, \epsilon_1^2)}}, \qquad
            \theta_t = (1 - \gamma\lambda)\,\theta_{t-1}
            - \frac{\alpha_t}{\max(1, \mathrm{RMS}(U_t)/d)}\, U_t

    A tensor of two or more dimensions keeps only the mean square of its rows (``row_var``,
    shape ``[..., n, 1]``) and of its columns (``col_var``, ``[..., 1, m]``), factoring its last
    two dimensions: ``n + m`` numbers where Adam keeps ``2 n m``. A vector or a scalar keeps
    ``variance``, shaped like it. There is no first moment, and the step size is relative to
    the parameter's RMS, so ``lr`` is only its cap.

    A drop-in for ``torch.optim.Adafactor`` (torch 2.5+): the same arguments and defaults, state
    keys and update, checkpoints interchangeable both ways.

    Args:
        params: as in :class:`adamkit.Adam`.
        lr: the cap of the relative step size :math:`\rho_t`, and the weight decay's
            coefficient (default 1e-2, the paper's cap).
        beta2_decay: :math:`\tau`, with :math:`\hat\beta_{2,t} = 1 - t^{\tau}` (default -0.8,
            <= 0).
        eps: :math:`(\epsilon_1, \epsilon_2)`: the floor of the variance estimate (``None``:
            the machine epsilon of the parameter's dtype) and of the parameter's RMS in the
            step size (default ``(None, 1e-3)``).
        d: the update's RMS is clipped to ``d`` (default 1.0, >= 1).
        weight_decay: decoupled weight decay, :math:`\theta \leftarrow (1 - \gamma\lambda)\theta`
            (default 0).
        foreach, maximize, fused, nonfinite, max_grad_norm, stochastic_rounding: as in
            :class:`adamkit.Adam`. The fused path (the default on the CPU) steps each CPU
            matrix (fp32, fp64, and bf16 or fp16 read into fp32, each result rounded to
            nearest once) with a C kernel that reads and writes it in three passes where
            torch's operations take about ten, sums in double, and allocates about a
            sixteenth of the matrix at most (a batch of small matrices, a convolution's
            3 x 3 kernels, only its threads' scratch): 3.5-14x torch's step on
            ``benchmarks/bench_adafactor.py``'s sets. Vectors, scalars and what the kernel
            cannot take (other devices, non-contiguous or overlapping tensors, a matrix of a
            few rows and so many columns that its column sums would outgrow an eighth of it)
            take torch's operations, or, with ``fused=True``, are refused, naming the
            parameter, before any group steps. ``foreach=True`` is the multi-tensor path,
            which here holds one matrix's temporaries at a time (torch's defaults to its
            for-loop because its multi-tensor step holds every tensor's).
        state_precision: how a vector's ``variance`` is stored (``"fp32"``, ``"bf16"``,
            ``"8bit"``, as in :class:`adamkit.Adam`); a matrix's row and column statistics,
            already a sliver of the memory, stay in full precision.

    Example:
        >>> import torch, adamkit
        >>> opt = adamkit.Adafactor(torch.nn.Linear(3, 1).parameters())

    References:
        Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost",
        ICML 2018 (arXiv:1804.04235), Algorithms 4 and 5.

    Warning:
        This is torch's formulation, which departs from the paper (and from optax's and
        transformers' ``Adafactor``): ``lr`` caps :math:`\rho_t` (the paper's constant 0.01)
        and scales the weight decay; :math:`\epsilon_1` floors :math:`\hat V` and the row mean
        where they add it to :math:`G^2`. transformers' ``Adafactor`` also has a first moment
        (``beta1``) and ``relative_step`` / ``scale_parameter`` switches. Complex parameters
        and sparse gradients are refused, as in torch; so are sharded (FSDP2) parameters, whose
        statistics need the whole tensor. With ``eps1=None``, torch takes the machine epsilon
        of the first parameter's dtype for a whole param group; adamkit of each parameter's.
        adamkit's step equals torch's within rounding, not bit for bit (it takes a matrix's
        mean squares and its update in fewer operations; the kernel sums in double), and
        where torch's ``R C`` leaves its dtype's range, adamkit's factored form (in fp32 at
        least) does not: where it overflows (gradients above about 1e10 in fp32, 16 in
        fp16) torch's step is 0, and where it underflows (fp16 gradients of about 1e-2,
        fp32 ones below 1e-10 with a tiny ``eps1``) torch floors it at ``eps1^2`` and steps
        up to 3x too far;
        adamkit stays within rounding of the float64 step there.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-2,
        beta2_decay: float = -0.8,
        eps: tuple[float | None, float] = (None, 1e-3),
        d: float = 1.0,
        weight_decay: float = 0.0,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        fused: bool | None = None,
        nonfinite: str | None = None,
        max_grad_norm: float | None = None,
        state_precision: str = "fp32",
        stochastic_rounding: bool = False,
    ) -> None:
        super().__init__(params, group_defaults(locals()))

    algorithm = ALGORITHMS["Adafactor"]
    _rule = adafactor_rule

    def _kernel_refusal(self, p: Tensor, state: dict[str, Any], strict: bool) -> str | None:
        if p.dim() < 2 or p.numel() == 0 or p.grad is None:  # (vectors: torch's ops)
            return None
        tensors = (p, p.grad, state.get("row_var"), state.get("col_var"))
        if not strict:
            check_storages(*tensors)
            return None
        return factored_unsupported(*tensors)
