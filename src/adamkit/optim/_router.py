"""The fused path's router: for each (device, dtype) bucket of a group, the plan of the kernel
that steps it, or the reason no kernel can (the bucket then steps on the multi-tensor path, or,
with ``fused=True``, the step raises the reason).

One place chooses (:func:`route`): no kernel for an algorithm whose row has none; on the CPU,
the C kernel (``_fused.FusedPlan``); on a CUDA GPU, torch's fused Adam/AdamW kernels
(``_device.TorchFusedPlan``) or adamkit's Triton kernels (``_device.TritonPlan``); or the
reason none of them can take the bucket (a dtype, a layout, a missing library). A group's plans
are kept between steps, and every step reads the tensors afresh through them
(``_fused.Layout.read``); a bucket whose tensors no longer fit its plan is planned again.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..kernels import _abi, fused_library, unavailable_reason
from ._algorithms import Algorithm
from ._core import Bucket, Hyper, by_device_and_dtype, label_of, step_dtype
from ._device import TorchFusedPlan, TritonPlan, gpu_path, triton_unavailable
from ._fused import (
    OVERLAPPING,
    FusedPlan,
    Layout,
    Reading,
    Storage,
    bump_versions,
    check_scales,
    check_state_sizes,
    common_unsupported,
    layout_unsupported,
    prepare_counters,
)
from ._paths import PATHS
from ._precision import needs_widening
from ._scalars import StepScalars

if TYPE_CHECKING:
    from ._base import AdamFamily

__all__ = ["route", "step_fused"]


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
    options = (hyper.cautious, hyper.update_clipping)
    key = (ids, group["state_precision"], group["stochastic_rounding"], hyper.amsgrad, options)
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
            if isinstance(plan, FusedPlan):
                plan.run(reading, hyper, opt.__dict__.get("_update_stats", {}).get(id(group)))
            else:
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
    mixed = opt.algorithm.mixed_formats
    by_key = opt._key_formats(params, formats, group, moment_keys) if mixed else []
    if any(len(set(entry.values())) > 1 for entry in by_key):
        return None, (
            f"the fused kernels store all of a tensor's states in one format, and "
            f"{opt.algorithm.name} keeps {', '.join(opt.algorithm.copies)} as the weights "
            "beside low-precision moments"
        )
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
    if (hyper.cautious or hyper.update_clipping) and (on_gpu or storage is not None):
        return None, (
            "the fused kernel steps cautious and update_clipping for full-precision tensors on "
            "the CPU only (not low-precision state or parameters, not a GPU)"
        )
    formats_kept = storage.formats if storage is not None else None
    layout = Layout(bucket, params, moment_keys, opt._scalar_keys, formats_kept)
    return route(opt.algorithm, type(opt)._scalars, bucket, layout, hyper.amsgrad, storage, on_gpu)


#: The parameter dtypes each kernel steps: full-precision state, then with low-precision state
#: or rounded parameters (the kernels' fp32 codec loops).
_CPU_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float64)
_CPU_WIDE_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16)
_GPU_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_GPU_WIDE_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16)


def route(
    algorithm: Algorithm,
    scalars_of: StepScalars | None,
    bucket: Bucket,
    layout: Layout,
    amsgrad: bool,
    storage: Storage | None,
    on_gpu: bool,
) -> tuple[FusedPlan | TorchFusedPlan | TritonPlan | None, str | None]:
    """The plan of the kernel that steps ``bucket``, or the reason none can: the one place
    that chooses. ``storage``: how its low-precision state (or rounded parameters) is stored,
    if it has any. CPU buckets take the C kernel; CUDA buckets take torch's fused Adam/AdamW
    (full-precision state) or adamkit's Triton kernel (the other algorithms, and every
    algorithm with low-precision state). ``scalars_of``: the algorithm's step scalars."""
    if algorithm.kernel is None or scalars_of is None:
        return None, f"no fused kernel steps {algorithm.name}"
    if not 2 <= len(layout.moment_keys) <= _abi.MAX_STATES:
        count = len(layout.moment_keys)
        return None, f"the fused kernels take 2 to {_abi.MAX_STATES} state tensors, not {count}"
    formats = storage.formats if storage is not None else None
    device = bucket.params[0].device
    dtype = bucket.params[0].dtype
    torch_fused = on_gpu and algorithm.kernel == "adam" and storage is None
    reason = common_unsupported(bucket)
    if reason is None and not on_gpu and device.type != "cpu":
        reason = f"the fused kernels run on the CPU and CUDA GPUs, not on {device}"
    if reason is None:
        if on_gpu:
            supported = _GPU_WIDE_DTYPES if formats is not None else _GPU_DTYPES
        else:
            supported = _CPU_WIDE_DTYPES if formats is not None else _CPU_DTYPES
        if dtype not in supported:
            names = (", " if on_gpu else " and ").join(
                str(d).removeprefix("torch.") for d in supported
            )
            what = " with low-precision state or rounding" if formats is not None else ""
            where = "GPU kernels support" if on_gpu else "kernel supports"
            reason = f"the fused {where} {names} parameters{what}, not {dtype}"
    if reason is None:
        reason = layout_unsupported(bucket, formats)
    if reason is None and on_gpu and not torch_fused:
        reason = triton_unavailable()
    if reason is None and not on_gpu and fused_library() is None:
        reason = f"the fused CPU kernel is unavailable ({unavailable_reason()})"
    if reason is not None:
        return None, reason
    if not on_gpu:
        return FusedPlan(scalars_of, bucket, layout, amsgrad, storage), None
    if torch_fused:
        return TorchFusedPlan(bucket, layout, amsgrad), None
    return TritonPlan(algorithm.kernel, scalars_of, bucket, layout, storage), None
