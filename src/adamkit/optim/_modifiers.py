"""Options that change any algorithm's update the same way, on top of its rule.

* ``cautious=True`` (Liang, Chen, Liu & Liu 2024, "Cautious Optimizers: Improving Training
  with One Line of Code"): where the update points against the descent direction (its sign
  disagrees with the gradient's), it is zeroed, and the rest of the tensor's update is scaled
  by ``n / (kept + 1)`` (``n`` its elements), as the authors' code does.
* ``update_clipping=True`` (Wortsman et al. 2023, "Stable and low-precision training for
  large-scale vision-language models": StableAdamW): per tensor, the learning rate of the
  update and of the decoupled weight decay is divided by
  ``max(1, RMS)``, ``RMS = sqrt(mean(g^2 / max(v_hat, eps^2)))``, with ``v_hat`` the
  bias-corrected second moment after this step: a gradient far outside what the second
  moment has seen (a loss spike) cannot take a full step.

Both need a tensor's whole update before any of it is applied, so the algorithm's rule runs
with its additions to the parameters captured (:class:`Capture`), then the update is masked
or scaled and applied. The gradient they compare with is the one the step descends: sign
flipped for ``maximize``, with the coupled weight decay's term. This is the eager paths'
implementation (for-loop, multi-tensor, differentiable, low-precision state, GPUs); the C
kernel does the same in two passes for full-precision CPU tensors (``fused_cpu.c``: pass 1
writes each element's step to a buffer with per-chunk sums, ``_fused.FusedPlan`` turns them
into each tensor's scale, pass 2 applies it).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ._algorithms import Algorithm
from ._core import Bucket, Hyper, Rule, descent_gradients
from ._paths import Scalars, TensorOps, Tensors

__all__ = ["Capture", "UpdateStats", "modified", "options_of"]


class Capture:
    """An execution path that collects what a rule adds to the bucket's parameters into
    ``updates`` (one zero tensor per parameter) instead of adding it, and defers the decoupled
    weight decay's shrink (``shrunk``); everything else goes to ``ops`` unchanged."""

    def __init__(self, ops: TensorOps, params: Tensors) -> None:
        self._ops = ops
        self._index = {id(p): i for i, p in enumerate(params)}
        self.updates: Tensors = [torch.zeros_like(p) for p in params]
        self.shrunk = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ops, name)

    def _updates_of(self, xs: Tensors) -> Tensors | None:
        """The update buffers of ``xs`` if they are parameters of the bucket, else None."""
        found = [self._index.get(id(x)) for x in xs]
        if all(i is None for i in found):
            return None
        if any(i is None for i in found):
            raise AssertionError("a rule wrote parameters and other tensors in one operation")
        return [self.updates[i] for i in found]  # type: ignore[index]

    def add_(self, xs: Tensors, ys: Tensors, alpha: Scalars) -> None:
        self._ops.add_(self._updates_of(xs) or xs, ys, alpha)

    def addcdiv_(self, xs: Tensors, ys: Tensors, zs: Tensors, value: Scalars) -> None:
        self._ops.addcdiv_(self._updates_of(xs) or xs, ys, zs, value)

    def mul_(self, xs: Tensors, value: Scalars) -> None:
        if self._updates_of(xs) is None:
            self._ops.mul_(xs, value)
        else:  # the decoupled weight decay (prepare_grads): applied after, with the lr's factor
            self.shrunk = True

    def lerp_(self, xs: Tensors, ys: Tensors, weight: Scalars) -> None:
        if self._updates_of(xs) is not None:
            raise NotImplementedError("an update by interpolation cannot be masked or clipped")
        self._ops.lerp_(xs, ys, weight)


class UpdateStats:
    """What the options did over a step of one param group: the fraction of update elements
    ``cautious`` kept, and the mean factor ``update_clipping`` scaled the lr by."""

    def __init__(self) -> None:
        self.kept, self.elements = 0.0, 0
        self.factors: list[float] = []

    def as_dict(self) -> dict[str, float | None]:
        return {
            "kept_fraction": self.kept / self.elements if self.elements else None,
            "clip_factor": sum(self.factors) / len(self.factors) if self.factors else None,
        }


# Both work one tensor at a time: on the CPU a multi-tensor operation allocates every
# temporary of the bucket at once (fresh pages to fault in, each step), where a loop reuses
# one tensor's (measured on case (b): 28 ms a step against 70-100 ms). Their sums stay on the
# tensors' device until one read per bucket (a GPU synchronises once, not per tensor).
_HALF = (torch.bfloat16, torch.float16)


def _read(sums: list[Tensor]) -> list[float]:
    return torch.stack([x.double() for x in sums]).tolist() if sums else []


def _clip_factors(b: Bucket, h: Hyper, grads: Tensors, second_moment: str) -> list[float]:
    """``1 / max(1, sqrt(mean(g^2 / max(v_hat, eps^2))))`` per tensor, with ``v_hat = v / c``:
    ``mean(g^2 / max(v_hat, eps^2)) = c mean(g^2 / max(v, c eps^2))``."""
    corrections = [1.0 - h.beta2 ** float(step) for step in b.steps]
    means = []
    for g, v, c in zip(grads, b.state[second_moment], corrections, strict=True):
        g, v = (g.detach().float(), v.detach().float()) if g.dtype in _HALF else (g, v)
        ratio = g.detach().square().div_(v.detach().clamp_min(c * h.eps * h.eps))
        means.append(ratio.mean() if g.numel() else ratio.new_zeros(()))
    return [
        1.0 / max(1.0, math.sqrt(c * mean))
        for c, mean in zip(corrections, _read(means), strict=True)
    ]


def _cautious(
    updates: Tensors, grads: Tensors, stats: UpdateStats, in_place: bool
) -> tuple[Tensors, list[float]]:
    """Each update zeroed where it does not descend (``update * g >= 0``: a step of
    ``+update`` descends where it is opposite to ``g``; a NaN product is not kept), and the
    factors ``n / (kept + 1)`` to scale them by. ``in_place``: the updates are the step's own
    temporaries (not the differentiable path, whose graph must keep them)."""
    masked, counts = [], []
    for u, g in zip(updates, grads, strict=True):
        mask = u.detach().mul(g.detach()).lt_(0)  # 1.0 where negative, else 0.0 (NaN too)
        # In the tensor's dtype (a float64 sum of float32 costs 30 times as much): the count
        # is exact below 2**24 kept elements, and off by a few parts in 10**7 beyond.
        # A count needs 24 bits: half masks are summed in float32.
        counts.append(mask.sum(dtype=torch.float32) if mask.dtype in _HALF else mask.sum())
        masked.append(u.mul_(mask) if in_place else u * mask)
    kept = _read(counts)
    stats.kept += sum(kept)
    stats.elements += sum(u.numel() for u in updates)
    return masked, [u.numel() / (k + 1) for u, k in zip(updates, kept, strict=True)]


def modified(rule: Rule, row: Algorithm, stats: UpdateStats) -> Rule:
    """``rule`` with the bucket's ``cautious`` and ``update_clipping`` applied."""

    def step(ops: TensorOps, b: Bucket, h: Hyper) -> None:
        capture = Capture(ops, b.params)
        rule(capture, b, h)
        grads = descent_gradients(ops, b, h)
        factors = [1.0] * len(b.params)
        if h.update_clipping:
            assert row.clipped_by is not None  # the group was validated against the row
            factors = _clip_factors(b, h, grads, row.clipped_by)
            stats.factors += factors
        updates, scales = capture.updates, factors
        if h.cautious:
            in_place = ops.name != "differentiable"
            updates, kept = _cautious(updates, grads, stats, in_place)
            scales = [f * k for f, k in zip(factors, kept, strict=True)]
        if capture.shrunk:
            ops.mul_(b.params, [1 - h.lr * f * h.weight_decay for f in factors])
        ops.add_(b.params, updates, scales)

    return step


def options_of(group: dict[str, Any]) -> tuple[bool, bool]:
    """A group's ``(cautious, update_clipping)``."""
    return bool(group.get("cautious", False)), bool(group.get("update_clipping", False))
