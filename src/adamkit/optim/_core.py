"""The shared core of every Adam-family update rule.

A rule is a pure function ``rule(ops, bucket, hyper) -> None``: it reads gradients and state from
``bucket``, writes the new parameters and state into it, and does all tensor work through
``ops`` (an execution path, see :mod:`adamkit.optim._paths`). The pieces below are the steps all
the variants share; each algorithm's module composes them and adds the one term it changes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.nn import Parameter

from ._paths import TensorOps, Tensors

__all__ = [
    "Bucket",
    "Hyper",
    "Rule",
    "bias_corrections",
    "by_device_and_dtype",
    "descent_gradients",
    "label_of",
    "local",
    "param_label",
    "prepare_grads",
    "real_view",
    "select",
    "step_dtype",
    "update_moments",
]


@dataclass
class Bucket:
    """Tensors of one parameter group that share a device and dtype, in matching order.

    Complex tensors arrive already viewed as real (``torch.view_as_real``), so a rule only ever
    sees real tensors: each complex number is updated as the pair (re, im), as torch does.
    """

    params: Tensors
    grads: Tensors
    steps: Tensors
    state: dict[str, Tensors] = field(default_factory=dict)


@dataclass(frozen=True)
class Hyper:
    """A parameter group's hyperparameters for one step, as plain Python numbers."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    maximize: bool = False
    decoupled_weight_decay: bool = False
    amsgrad: bool = False
    #: The rule applies ``weight_decay`` itself (its row's ``decay_in_rule``: schedule-free
    #: AdamW's, at y after normalising), so :func:`prepare_grads` and the kernels' head do not.
    decay_in_rule: bool = False
    #: Cautious masking and update clipping (``optim/_modifiers.py``).
    cautious: bool = False
    update_clipping: bool = False
    #: The algorithm's own hyperparameters (its row's ``own``), by name: NAdam's
    #: ``momentum_decay``.
    own: Mapping[str, float] = field(default_factory=dict)
    #: The first of an ``eps`` pair (its row's ``eps_pair``: Adafactor's ``eps1``; ``eps`` is
    #: then the second); ``None``: the machine epsilon of the parameters' dtype.
    eps1: float | None = None
    #: On the fused path of a row whose kernel steps whole tensors (its row's
    #: ``tensor_kernel``: Adafactor's), the rule hands it each tensor it can take (with
    #: ``fused=True``, every one: the base refuses the others before any group steps).
    tensor_kernel: bool = False


Rule = Callable[[TensorOps, Bucket, Hyper], None]


def prepare_grads(ops: TensorOps, bucket: Bucket, h: Hyper) -> Tensors:
    """Return the gradients the moments see: sign for ``maximize``, then weight decay.

    Coupled weight decay (Adam, the seed's L2 penalty) adds ``weight_decay * param`` to the
    gradient, so it passes through the moments and is rescaled by the adaptive denominator.
    Decoupled weight decay (AdamW, Loshchilov & Hutter 2019) shrinks the parameter directly by
    ``lr * weight_decay``, before the adaptive step, exactly where torch applies it.
    The caller's ``.grad`` tensors are never modified.
    """
    if h.weight_decay != 0 and not h.decay_in_rule and h.decoupled_weight_decay:
        ops.mul_(bucket.params, 1 - h.lr * h.weight_decay)
    return descent_gradients(ops, bucket, h)


def descent_gradients(ops: TensorOps, bucket: Bucket, h: Hyper) -> Tensors:
    """The gradients of the objective the step descends: sign for ``maximize``, plus the
    coupled weight decay's ``weight_decay * param``; no side effects."""
    grads = ops.neg(bucket.grads) if h.maximize else bucket.grads
    if h.weight_decay != 0 and not h.decay_in_rule and not h.decoupled_weight_decay:
        grads = ops.add(grads, bucket.params, alpha=h.weight_decay)
    return grads


def select(tensors: Tensors, positions: list[int]) -> Tensors:
    """The tensors at ``positions`` (the list itself when that is all of them): the tensors of
    a bucket that take one branch of a rule (RAdam before rectification, ADOPT's first step)."""
    return tensors if len(positions) == len(tensors) else [tensors[i] for i in positions]


def update_moments(
    ops: TensorOps, exp_avg: Tensors, exp_avg_sq: Tensors, grads: Tensors, h: Hyper
) -> None:
    """m <- beta1 m + (1 - beta1) g ;  v <- beta2 v + (1 - beta2) g^2 (in place)."""
    ops.lerp_(exp_avg, grads, 1 - h.beta1)
    ops.mul_(exp_avg_sq, h.beta2)
    ops.addcmul_(exp_avg_sq, grads, grads, 1 - h.beta2)


def bias_corrections(beta: float, steps: list[float]) -> list[float]:
    """``1 - beta**t`` for each tensor's step count ``t`` (Python float64, as torch)."""
    return [1 - beta**t for t in steps]


def local(t: Tensor) -> Tensor:
    """This process's shard of a DTensor (FSDP2, tensor parallel): the memory to update in
    place. Every rule here is elementwise, so stepping each shard on its own is exact. A plain
    tensor is returned unchanged."""
    if type(t) in PLAIN_TENSORS:  # the common case, checked first: a step asks thousands of times
        return t
    shard = getattr(t, "_local_tensor", None)
    return shard if isinstance(shard, Tensor) else t


#: Tensors that are their own memory (not a DTensor or another subclass).
PLAIN_TENSORS = (Tensor, Parameter)


def real_view(t: Tensor) -> Tensor:
    """The local shard of ``t``, with a complex tensor viewed as real pairs."""
    t = local(t)
    return torch.view_as_real(t) if t.is_complex() else t


def step_dtype() -> torch.dtype:
    """The dtype of the 0-d counters (``step``, ``mu_product``): torch keeps them as CPU
    float32 tensors (float64 when that is the default dtype)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def label_of(group: dict[str, Any], param: Tensor) -> str:
    """How a message names ``param`` of ``group``: see :func:`param_label`."""
    index = next(i for i, p in enumerate(group["params"]) if p is param)
    return param_label(group, index)


def param_label(group: dict[str, Any], index: int) -> str:
    """How a message names the ``index``-th parameter of ``group``: by its name where the group
    was built from ``named_parameters()``, else by its position."""
    names = group.get("param_names")
    return f"parameter {names[index]!r}" if names else f"parameter #{index}"


def by_device_and_dtype(params: list[Tensor]) -> dict[tuple[torch.device, torch.dtype], list[int]]:
    """The positions in ``params`` of each (device, dtype) bucket, in order."""
    buckets: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, p in enumerate(params):
        buckets.setdefault((p.device, p.dtype), []).append(i)
    return buckets
