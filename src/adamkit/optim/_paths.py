"""Execution paths: how an update rule's tensor operations are carried out.

Every update rule in this package is written once, against the small list-of-tensors vocabulary
of :class:`TensorOps` below. An execution path is an implementation of that vocabulary:

* :class:`ForEach` runs each operation over a whole bucket of tensors with one
  ``torch._foreach_*`` call (torch's multi-tensor kernels): ``foreach=True``, and the path of
  buckets the fused kernels cannot take.
* :class:`ForLoop` runs each operation tensor by tensor with ordinary tensor methods. The base
  optimizer calls the rule once per parameter on this path, so temporaries are only ever one
  parameter large (torch's ``foreach=False``): choose it when a step's peak memory matters,
  since the foreach path holds one parameter-sized temporary for the whole bucket at once.
* :class:`Differentiable` is the for-loop recorded by autograd (``differentiable=True``).

They all execute the *same* rule, which is what lets the parity tests prove them equal. The
default, fused path does not run a rule: its kernels (``_fused.py`` on the CPU, ``_device.py``
on a GPU) are checked against these eager paths and the NumPy reference. Their speeds are in
BENCHMARKS.md.

Scalars handed to an operation are either one Python float for the whole bucket, or a list with
one float per tensor (per-tensor bias corrections: parameters may have taken different numbers
of steps).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Protocol, TypeAlias

import torch
from torch import Tensor

Tensors: TypeAlias = list[Tensor]
Scalars: TypeAlias = float | Sequence[float]

__all__ = ["DIFFERENTIABLE", "PATHS", "Differentiable", "ForEach", "ForLoop", "Scalars"]
__all__ += ["TensorOps", "Tensors"]


@functools.cache
def _foreach_lerp_takes_lists() -> bool:
    """Whether ``torch._foreach_lerp_`` takes a weight per tensor (torch 2.5 and later)."""
    t = torch.zeros(1)
    try:
        torch._foreach_lerp_([t], [t], [0.5])
    except (TypeError, RuntimeError):
        return False
    return True


def _per_tensor(value: Scalars, n: int) -> Sequence[float]:
    # A tensor is one scalar for every tensor (a differentiable step's tensor hyperparameter).
    return [value] * n if isinstance(value, (int, float, Tensor)) else value


class TensorOps(Protocol):
    """The operations an update rule may use. In-place methods end in ``_``."""

    name: str

    def neg(self, xs: Tensors) -> Tensors: ...
    def abs(self, xs: Tensors) -> Tensors: ...
    def sqrt(self, xs: Tensors) -> Tensors: ...
    def add(self, xs: Tensors, ys: Tensors, alpha: float) -> Tensors: ...
    def add_(self, xs: Tensors, ys: Tensors, alpha: Scalars) -> None: ...
    def add_scalar_(self, xs: Tensors, value: Scalars) -> None: ...
    def mul_(self, xs: Tensors, value: Scalars) -> None: ...
    def div_(self, xs: Tensors, value: Scalars) -> None: ...
    def mul(self, xs: Tensors, ys: Tensors) -> Tensors: ...
    def clamp_min(self, xs: Tensors, low: float) -> Tensors: ...
    def add_scaled_(self, xs: Tensors, ys: Tensors, scales: Sequence[float]) -> None:
        """``x += s * y`` per tensor, as torch's path of the same kind does it (the
        multi-tensor path scales ``ys`` in place first)."""
        ...

    def rsqrt_(self, xs: Tensors) -> None: ...
    def lerp_(self, xs: Tensors, ys: Tensors, weight: Scalars) -> None: ...
    def addcmul_(self, xs: Tensors, ys: Tensors, zs: Tensors, value: float) -> None: ...
    def addcdiv_(self, xs: Tensors, ys: Tensors, zs: Tensors, value: Scalars) -> None: ...
    def maximum_(self, xs: Tensors, ys: Tensors) -> None: ...
    def div(self, xs: Tensors, ys: Tensors) -> Tensors: ...
    def clamp_(self, xs: Tensors, low: Scalars | None, high: Scalars | None) -> None: ...
    def count_step(self, steps: Tensors) -> list[float]:
        """Add one to each step counter and return the new values as Python floats."""
        ...

    def values(self, xs: Tensors) -> list[float]:
        """One-element state tensors (NAdam's ``mu_product``) as numbers to compute with:
        Python floats, or the tensors themselves on the differentiable path."""
        ...

    def norms(self, xs: Tensors) -> list[float]:
        """Each tensor's 2-norm, as Python floats (Adafactor's RMS of a tensor)."""
        ...


class ForEach:
    """Multi-tensor path: one ``torch._foreach_*`` kernel call per operation and bucket."""

    name = "foreach"

    def neg(self, xs: Tensors) -> Tensors:
        return list(torch._foreach_neg(xs))

    def abs(self, xs: Tensors) -> Tensors:
        return list(torch._foreach_abs(xs))

    def sqrt(self, xs: Tensors) -> Tensors:
        return list(torch._foreach_sqrt(xs))

    def add(self, xs: Tensors, ys: Tensors, alpha: float) -> Tensors:
        return list(torch._foreach_add(xs, ys, alpha=alpha))

    def add_(self, xs: Tensors, ys: Tensors, alpha: Scalars) -> None:
        if isinstance(alpha, (int, float)):
            torch._foreach_add_(xs, ys, alpha=alpha)
        else:  # per-tensor alpha: foreach has no such overload
            for x, y, a in zip(xs, ys, alpha, strict=True):
                x.add_(y, alpha=a)

    def add_scalar_(self, xs: Tensors, value: Scalars) -> None:
        torch._foreach_add_(xs, value if isinstance(value, (int, float)) else list(value))

    def mul_(self, xs: Tensors, value: Scalars) -> None:
        torch._foreach_mul_(xs, value if isinstance(value, (int, float)) else list(value))

    def div_(self, xs: Tensors, value: Scalars) -> None:
        torch._foreach_div_(xs, value if isinstance(value, (int, float)) else list(value))

    def mul(self, xs: Tensors, ys: Tensors) -> Tensors:
        return list(torch._foreach_mul(xs, ys))

    def clamp_min(self, xs: Tensors, low: float) -> Tensors:
        return list(torch._foreach_clamp_min(xs, low))

    def add_scaled_(self, xs: Tensors, ys: Tensors, scales: Sequence[float]) -> None:
        torch._foreach_mul_(ys, list(scales))
        torch._foreach_add_(xs, ys)

    def rsqrt_(self, xs: Tensors) -> None:
        torch._foreach_rsqrt_(xs)

    def lerp_(self, xs: Tensors, ys: Tensors, weight: Scalars) -> None:
        if isinstance(weight, (int, float)):
            torch._foreach_lerp_(xs, ys, weight)
        elif _foreach_lerp_takes_lists():
            torch._foreach_lerp_(xs, ys, list(weight))
        else:  # torch < 2.5: one lerp per tensor, the same arithmetic
            for x, y, w in zip(xs, ys, weight, strict=True):
                x.lerp_(y, w)

    def addcmul_(self, xs: Tensors, ys: Tensors, zs: Tensors, value: float) -> None:
        torch._foreach_addcmul_(xs, ys, zs, value)

    def addcdiv_(self, xs: Tensors, ys: Tensors, zs: Tensors, value: Scalars) -> None:
        torch._foreach_addcdiv_(
            xs, ys, zs, value if isinstance(value, (int, float)) else list(value)
        )

    def maximum_(self, xs: Tensors, ys: Tensors) -> None:
        torch._foreach_maximum_(xs, ys)

    def div(self, xs: Tensors, ys: Tensors) -> Tensors:
        return list(torch._foreach_div(xs, ys))

    def clamp_(self, xs: Tensors, low: Scalars | None, high: Scalars | None) -> None:
        if low is not None:
            torch._foreach_clamp_min_(xs, low if isinstance(low, (int, float)) else list(low))
        if high is not None:
            torch._foreach_clamp_max_(xs, high if isinstance(high, (int, float)) else list(high))

    def count_step(self, steps: Tensors) -> list[float]:
        torch._foreach_add_(steps, 1.0)
        return [s.item() for s in steps]

    def values(self, xs: Tensors) -> list[float]:
        return [x.item() for x in xs]

    def norms(self, xs: Tensors) -> list[float]:
        # One read of the device for the bucket, not one per tensor.
        return torch.stack(torch._foreach_norm(xs)).tolist() if xs else []


class ForLoop:
    """Per-tensor path: plain tensor methods, one tensor at a time."""

    name = "forloop"

    def neg(self, xs: Tensors) -> Tensors:
        return [x.neg() for x in xs]

    def abs(self, xs: Tensors) -> Tensors:
        return [x.abs() for x in xs]

    def sqrt(self, xs: Tensors) -> Tensors:
        return [x.sqrt() for x in xs]

    def add(self, xs: Tensors, ys: Tensors, alpha: float) -> Tensors:
        return [x.add(y, alpha=alpha) for x, y in zip(xs, ys, strict=True)]

    def add_(self, xs: Tensors, ys: Tensors, alpha: Scalars) -> None:
        for x, y, a in zip(xs, ys, _per_tensor(alpha, len(xs)), strict=True):
            x.add_(y, alpha=a)

    def add_scalar_(self, xs: Tensors, value: Scalars) -> None:
        for x, v in zip(xs, _per_tensor(value, len(xs)), strict=True):
            x.add_(v)

    def mul_(self, xs: Tensors, value: Scalars) -> None:
        for x, v in zip(xs, _per_tensor(value, len(xs)), strict=True):
            x.mul_(v)

    def div_(self, xs: Tensors, value: Scalars) -> None:
        for x, v in zip(xs, _per_tensor(value, len(xs)), strict=True):
            x.div_(v)

    def mul(self, xs: Tensors, ys: Tensors) -> Tensors:
        return [x * y for x, y in zip(xs, ys, strict=True)]

    def clamp_min(self, xs: Tensors, low: float) -> Tensors:
        return [x.clamp_min(low) for x in xs]

    def add_scaled_(self, xs: Tensors, ys: Tensors, scales: Sequence[float]) -> None:
        for x, y, s in zip(xs, ys, scales, strict=True):
            x.add_(y, alpha=s)

    def rsqrt_(self, xs: Tensors) -> None:
        for x in xs:
            x.rsqrt_()

    def lerp_(self, xs: Tensors, ys: Tensors, weight: Scalars) -> None:
        for x, y, w in zip(xs, ys, _per_tensor(weight, len(xs)), strict=True):
            x.lerp_(y, w)

    def addcmul_(self, xs: Tensors, ys: Tensors, zs: Tensors, value: float) -> None:
        for x, y, z in zip(xs, ys, zs, strict=True):
            x.addcmul_(y, z, value=value)

    def addcdiv_(self, xs: Tensors, ys: Tensors, zs: Tensors, value: Scalars) -> None:
        for x, y, z, v in zip(xs, ys, zs, _per_tensor(value, len(xs)), strict=True):
            x.addcdiv_(y, z, value=v)

    def maximum_(self, xs: Tensors, ys: Tensors) -> None:
        for x, y in zip(xs, ys, strict=True):
            torch.maximum(x, y, out=x)

    def div(self, xs: Tensors, ys: Tensors) -> Tensors:
        return [x / y for x, y in zip(xs, ys, strict=True)]

    def clamp_(self, xs: Tensors, low: Scalars | None, high: Scalars | None) -> None:
        lows = _per_tensor(low, len(xs)) if low is not None else [None] * len(xs)
        highs = _per_tensor(high, len(xs)) if high is not None else [None] * len(xs)
        for x, lo, hi in zip(xs, lows, highs, strict=True):
            x.clamp_(lo, hi)

    def count_step(self, steps: Tensors) -> list[float]:
        for s in steps:
            s.add_(1.0)
        return [s.item() for s in steps]

    def values(self, xs: Tensors) -> list[float]:
        return [x.item() for x in xs]

    def norms(self, xs: Tensors) -> list[float]:
        return [x.norm().item() for x in xs]


class Differentiable(ForLoop):
    """``differentiable=True``: the for-loop path, recorded by autograd (torch's meaning of
    the flag), so that a loss after the step can be differentiated with respect to the
    parameters, gradients, state and tensor hyperparameters before it.

    Two things differ from :class:`ForLoop`. A scalar may be a tensor that requires grad (a
    tensor ``lr``, ``betas`` or ``weight_decay``), so it is applied by tensor arithmetic, not
    as a Number argument. And each in-place update is computed out of place from a copy of
    its target and copied back: autograd keeps the values a backward pass needs, and a later
    in-place update of the same state (the next step's) cannot invalidate them.
    """

    name = "differentiable"

    @staticmethod
    def _set(x: Tensor, value: Tensor) -> None:
        x.copy_(value)

    # Results are copies: the rule may update them in place, and sqrt's backward keeps its
    # own output, which must stay as it was.
    def neg(self, xs: Tensors) -> Tensors:
        return [x.neg() for x in xs]

    def abs(self, xs: Tensors) -> Tensors:
        return [x.clone().abs() for x in xs]

    def sqrt(self, xs: Tensors) -> Tensors:
        return [x.sqrt().clone() for x in xs]

    def add(self, xs: Tensors, ys: Tensors, alpha: float) -> Tensors:
        return [x + y.clone() * alpha for x, y in zip(xs, ys, strict=True)]

    def add_(self, xs: Tensors, ys: Tensors, alpha: Scalars) -> None:
        for x, y, a in zip(xs, ys, _per_tensor(alpha, len(xs)), strict=True):
            self._set(x, x.clone() + y.clone() * a)

    def add_scalar_(self, xs: Tensors, value: Scalars) -> None:
        for x, v in zip(xs, _per_tensor(value, len(xs)), strict=True):
            self._set(x, x.clone() + v)

    def mul_(self, xs: Tensors, value: Scalars) -> None:
        for x, v in zip(xs, _per_tensor(value, len(xs)), strict=True):
            self._set(x, x.clone() * v)

    def div_(self, xs: Tensors, value: Scalars) -> None:
        for x, v in zip(xs, _per_tensor(value, len(xs)), strict=True):
            self._set(x, x.clone() / v)

    def mul(self, xs: Tensors, ys: Tensors) -> Tensors:
        return [x.clone() * y.clone() for x, y in zip(xs, ys, strict=True)]

    def rsqrt_(self, xs: Tensors) -> None:
        for x in xs:
            self._set(x, x.clone().rsqrt())

    def add_scaled_(self, xs: Tensors, ys: Tensors, scales: Sequence[float]) -> None:
        for x, y, s in zip(xs, ys, scales, strict=True):
            self._set(x, x.clone() + y.clone() * s)

    def lerp_(self, xs: Tensors, ys: Tensors, weight: Scalars) -> None:
        for x, y, w in zip(xs, ys, _per_tensor(weight, len(xs)), strict=True):
            old = x.clone()
            self._set(x, old + (y.clone() - old) * w)

    def addcmul_(self, xs: Tensors, ys: Tensors, zs: Tensors, value: float) -> None:
        for x, y, z in zip(xs, ys, zs, strict=True):
            self._set(x, x.clone() + y.clone() * z.clone() * value)

    def addcdiv_(self, xs: Tensors, ys: Tensors, zs: Tensors, value: Scalars) -> None:
        for x, y, z, v in zip(xs, ys, zs, _per_tensor(value, len(xs)), strict=True):
            self._set(x, x.clone() + y.clone() / z.clone() * v)

    def maximum_(self, xs: Tensors, ys: Tensors) -> None:
        for x, y in zip(xs, ys, strict=True):
            self._set(x, torch.maximum(x.clone(), y.clone()))

    def div(self, xs: Tensors, ys: Tensors) -> Tensors:
        return [x / y.clone() for x, y in zip(xs, ys, strict=True)]

    def clamp_(self, xs: Tensors, low: Scalars | None, high: Scalars | None) -> None:
        lows = _per_tensor(low, len(xs)) if low is not None else [None] * len(xs)
        highs = _per_tensor(high, len(xs)) if high is not None else [None] * len(xs)
        for x, lo, hi in zip(xs, lows, highs, strict=True):
            self._set(x, x.clone().clamp(lo, hi))

    def values(self, xs: Tensors) -> list[float]:
        # Copies that carry the graph: the next step updates the state itself in place.
        return [x.clone() for x in xs]  # type: ignore[misc]


#: Execution paths by name (the fused kernels are chosen in ``_base``; the differentiable path
#: only by ``differentiable=True``).
PATHS: dict[str, TensorOps] = {"foreach": ForEach(), "forloop": ForLoop()}
DIFFERENTIABLE = Differentiable()
