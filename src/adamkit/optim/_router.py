"""The fused path's router: for each (device, dtype) bucket of a group, the plan of the kernel
that steps it, or the reason no kernel can (the bucket then steps on the multi-tensor path, or,
with ``fused=True``, the step raises the reason).

One place chooses: an algorithm without a kernel (its row's ``kernel`` is ``None``); a CUDA
bucket (``_device.gpu_plan``: torch's fused Adam, or adamkit's Triton kernel); a CPU bucket the
C kernel can take (``_fused.fused_unsupported``, then ``_fused.FusedPlan``). A group's plans
are kept between steps, and every step reads the tensors afresh through them
(``_fused.Layout.read``); a bucket whose tensors no longer fit its plan is planned again.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ._core import Hyper, by_device_and_dtype, label_of, step_dtype
from ._device import TorchFusedPlan, TritonPlan, gpu_path, gpu_plan
from ._fused import (
    OVERLAPPING,
    FusedPlan,
    Layout,
    Reading,
    Storage,
    bump_versions,
    check_scales,
    check_state_sizes,
    fused_unsupported,
    prepare_counters,
)
from ._paths import PATHS
from ._precision import needs_widening

if TYPE_CHECKING:
    from ._base import AdamFamily

__all__ = ["step_fused"]


def step_fused(
    opt: AdamFamily,
    group: dict[str, Any],
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict[str, Any]],
    hyper: Hyper,
    moment_keys: tuple[str, ...],
) -> None:
    """Step ``params`` (with ``grads`` and their ``states``) with the fused kernel, one call
    per (device, dtype) bucket; a bucket it cannot take runs on the foreach path (one
    parameter at a time where tensors overlap), or raises, when ``fused=True`` was asked.

    A bucket's plan is kept between steps, but each step reads the tensors now in the
    parameters, gradients and state through it, checked (``_fused.Layout.read``); a bucket
    whose tensors no longer fit its plan is planned again.
    """
    plans = opt.__dict__.setdefault("_fused_plans", {})
    # A plan fixes the storage and the rounding, so a change of either builds a new one.
    ids = tuple(map(id, params))
    key = (ids, group["state_precision"], group["stochastic_rounding"], hyper.amsgrad)
    cached = plans.get(id(group))
    buckets = _read_buckets(
        opt, group, params, grads, states, hyper, cached[1] if cached and cached[0] == key else None
    )
    if buckets is None:
        # A bucket's tensors no longer fit its plan (p.data = ..., a dtype moved, state
        # replaced): bucket and plan the group afresh. Nothing was stepped yet.
        buckets = _read_buckets(opt, group, params, grads, states, hyper, None)
    if buckets is None:
        # Plans just built from these very tensors cannot read them: a case the checks
        # above do not name. torch's own operations can still step it, safely.
        warnings.warn(
            f"adamkit.{type(opt).__name__}: the fused kernel cannot read this group's "
            "tensors as planned; stepping it on the foreach path (please report this)",
            RuntimeWarning,
            stacklevel=3,
        )
        plans.pop(id(group), None)
        for indices in by_device_and_dtype(params).values():
            bucket_params = [params[i] for i in indices]
            opt._apply_rule(PATHS["foreach"], bucket_params, group, hyper, moment_keys)
        return
    plans[id(group)] = (key, [b[:3] for b in buckets])
    for _, plan, reason, bucket_params, reading in buckets:
        if isinstance(reading, Reading):
            assert plan is not None
            plan.run(reading, hyper)
            # torch's in-place updates bump the version counters autograd checks (a graph
            # that saved a parameter must not be backpropagated through after a step).
            bump_versions(reading.tensors["params"])
            continue
        reason = reading if isinstance(reading, str) else reason
        if group.get("fused"):
            raise RuntimeError(
                f"adamkit.{type(opt).__name__}(fused=True): {reason}; leave "
                "fused=None to fall back to the multi-tensor path"
            )
        if reason is not None and reason.startswith(OVERLAPPING):
            for p in bucket_params:  # in order, as torch's for-loop: deterministic
                opt._apply_rule(PATHS["forloop"], [p], group, hyper, moment_keys)
        else:
            opt._apply_rule(PATHS["foreach"], bucket_params, group, hyper, moment_keys)


def _read_buckets(
    opt: AdamFamily,
    group: dict[str, Any],
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict[str, Any]],
    hyper: Hyper,
    entries: list[tuple[list[int] | None, Any, str | None]] | None,
) -> list[tuple[Any, ...]] | None:
    """Each bucket's (positions, plan, reason, parameters, reading or reason), planning
    those without a plan; ``None`` when a planned bucket no longer fits its plan."""
    if entries is None:
        by_bucket = by_device_and_dtype(params).values()
        entries = [(None if len(by_bucket) == 1 else i, None, None) for i in by_bucket]
    moment_keys = opt._moment_keys(group)
    out = []
    for indices, plan, reason in entries:
        if indices is None:
            bucket_params, bucket_grads, bucket_states = params, grads, states
        else:
            bucket_params = [params[i] for i in indices]
            bucket_grads = [grads[i] for i in indices]
            bucket_states = [states[i] for i in indices]
        if plan is None and reason is None:
            plan, reason = _plan(opt, group, bucket_params, hyper, moment_keys)
        reading = plan.read(bucket_params, bucket_grads, bucket_states) if plan else None
        if plan is not None and reading is None:
            return None
        out.append((indices, plan, reason, bucket_params, reading))
    return out


def _plan(
    opt: AdamFamily,
    group: dict[str, Any],
    params: list[Tensor],
    hyper: Hyper,
    moment_keys: tuple[str, ...],
) -> tuple[FusedPlan | TorchFusedPlan | TritonPlan | None, str | None]:
    """The kernel's plan for one bucket, or why no kernel can step it. State that no
    longer fits its parameter is an error; counters of another dtype are converted."""
    name = type(opt).__name__
    states = [opt.state[p] for p in params]
    check_state_sizes(name, params, states, moment_keys, lambda p: label_of(group, p))
    counters = ("step", *opt._scalar_keys)
    label = lambda i: label_of(group, params[i])  # noqa: E731
    prepare_counters(name, states, counters, step_dtype(), label)
    bucket = opt._bucket(params, moment_keys)
    formats = opt._formats(params, group)
    check_scales(name, params, states, moment_keys, formats, lambda p: label_of(group, p))
    stochastic = group["stochastic_rounding"]
    on_gpu = gpu_path(params[0].device)
    storage = None
    if needs_widening(params, formats, stochastic) or (
        # On the CPU, plain half parameters take the kernel's fp32 loop only when asked
        # (fused=True, as torch's fused kernels: fp32 math, rounded to nearest); by
        # default they take the foreach path, as torch's default does.
        not on_gpu and group.get("fused") and params[0].dtype in (torch.bfloat16, torch.float16)
    ):
        storage = Storage(formats, states, opt._salts(params), stochastic)
    formats_kept = storage.formats if storage is not None else None
    layout = Layout(bucket, params, moment_keys, opt._scalar_keys, formats_kept)
    kernel = opt.algorithm.kernel
    if kernel is None:
        return None, f"no fused kernel steps {opt.algorithm.name}"
    if on_gpu:
        return gpu_plan(kernel, bucket, layout, hyper.amsgrad, storage)
    reason = fused_unsupported(bucket, storage.formats if storage else None)
    if reason is not None:
        return None, reason
    plan = FusedPlan(kernel, bucket, layout, hyper.amsgrad, storage)
    return plan, None
