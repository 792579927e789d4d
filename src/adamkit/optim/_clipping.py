"""The optimizer-wide gradient guards: ``nonfinite`` (raise or skip on a NaN or infinite
gradient) and ``max_grad_norm`` (clip the global norm, as ``torch.nn.utils.clip_grad_norm_``),
from one ``torch._foreach_norm`` over every gradient."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ._core import param_label
from ._validation import check_optimizer_wide

__all__ = ["guard_gradients"]


def guard_gradients(name: str, param_groups: list[dict[str, Any]]) -> tuple[bool, float | None]:
    """Apply ``nonfinite`` and ``max_grad_norm`` to the gradients of ``param_groups`` (of the
    optimizer called ``name``); return whether this step must be skipped, and the global
    gradient norm where one was computed.

    One ``torch._foreach_norm`` over every gradient gives both the check and the global
    norm. Clipping is ``torch.nn.utils.clip_grad_norm_``'s, operation for operation, and
    scales the ``.grad`` tensors in place as that function does, a non-finite norm included
    (with ``nonfinite=None``): a NaN norm makes every gradient NaN, an infinite one scales
    them by 0. The settings are the optimizer's, held by every group (they must agree).
    """
    check_optimizer_wide(param_groups, f"{name}.step(): ")
    policy = param_groups[0].get("nonfinite")
    max_norm = param_groups[0].get("max_grad_norm")
    if policy is None and max_norm is None:
        return False, None
    owners = [
        (g, i, p)
        for g, group in enumerate(param_groups)
        for i, p in enumerate(group["params"])
        if p.grad is not None and not p.grad.is_sparse
    ]
    if not owners:
        return False, None
    grads = [p.grad for _, _, p in owners]
    norms = torch._foreach_norm(grads)
    device = norms[0].device
    total = torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms]))
    norm = float(total)
    if not math.isfinite(norm):
        if policy == "raise":
            raise FloatingPointError(_nonfinite_message(name, param_groups, owners, norms))
        if policy == "skip":
            return True, norm  # an overflowed norm of finite gradients too: no step can use it
    if max_norm is not None:
        # nonfinite=None clips a non-finite norm too, as clip_grad_norm_ does.
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        torch._foreach_mul_(grads, coef.to(grads[0].device))
    return False, norm


def _nonfinite_message(
    name: str,
    param_groups: list[dict[str, Any]],
    owners: list[tuple[int, int, Tensor]],
    norms: list[Tensor] | tuple[Tensor, ...],
) -> str:
    """Why the global gradient norm is not finite: which gradients hold a NaN or an inf,
    or, when every element is finite, which norms overflowed (the rare branch: the
    elements are only looked at here)."""
    nonfinite: list[str] = []
    overflowed: list[str] = []
    for (g, i, p), norm in zip(owners, norms, strict=True):
        if not torch.isfinite(norm):
            finite = bool(torch.isfinite(p.grad).all())  # type: ignore[arg-type]
            (overflowed if finite else nonfinite).append(param_label(param_groups[g], i))
    if nonfinite:
        also = (
            f"; the norm of {', '.join(overflowed)} overflowed to inf, its elements finite"
            if overflowed
            else ""
        )
        return (
            f"{name}: non-finite gradient in {', '.join(nonfinite)}{also} "
            "(nonfinite='raise'; 'skip' skips such steps instead)"
        )
    dtype = norms[0].dtype
    where = (
        f"the norm of {', '.join(overflowed)} is inf"
        if overflowed
        else "each parameter's norm is finite but their total is inf"
    )
    return (
        f"{name}: the gradient norm overflowed: {where} in {dtype}, though every gradient "
        f"element is finite (a sum of squares passes {dtype}'s range once an element "
        f"reaches about {math.sqrt(torch.finfo(dtype).max):.3g}). The gradients are too "
        "large to step with, not NaN or inf: scale the loss down, or nonfinite='skip' "
        "skips such steps"
    )
