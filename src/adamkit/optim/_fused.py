"""The fused execution path: one compiled kernel call per bucket, one pass over memory.

The kernel (``adamkit/kernels/fused_cpu.c``) implements every rule of this package for fp32 and
fp64 CPU tensors. It takes raw pointers, so a bucket of 2000 tensors costs one call, and it
increments the step counters itself (torch's fused path spends as long on 2000 separate
``step += 1`` as on the update). It allocates no parameter-sized temporaries.
"""

from __future__ import annotations

from array import array

import torch
from torch import Tensor

from ..kernels import fused_library, unavailable_reason
from ._core import Bucket, Hyper

__all__ = ["ALGORITHMS", "fused_step", "fused_unsupported", "kernel_available"]

#: The kernel's algorithm codes (``enum`` in fused_cpu.c).
ALGORITHMS = {"adam": 0, "radam": 1, "nadam": 2, "adamax": 3}
_MAXIMIZE, _DECOUPLED, _AMSGRAD, _STEP_F64 = 1, 2, 4, 8
_DTYPES = (torch.float32, torch.float64)


def kernel_available() -> bool:
    return fused_library() is not None


def fused_unsupported(bucket: Bucket) -> str | None:
    """Why the kernel cannot step this bucket, or ``None`` when it can."""
    reason = unavailable_reason()
    if reason is not None:
        return f"the fused CPU kernel is unavailable: {reason}"
    first = bucket.params[0]
    if first.device.type != "cpu":
        return f"the fused kernel runs on the CPU only, not on {first.device}"
    if first.dtype not in _DTYPES:
        return f"the fused kernel supports float32 and float64 parameters, not {first.dtype}"
    step_dtype = bucket.steps[0].dtype
    if any(s.dtype != step_dtype or s.device.type != "cpu" for s in bucket.steps):
        return "the step counters of these parameters differ in dtype or device"
    tensors = [*bucket.params, *bucket.grads, *(t for ts in bucket.state.values() for t in ts)]
    for t in tensors:
        if not t.is_contiguous():
            return "the fused kernel needs contiguous tensors (a parameter, grad or state is not)"
        if t.dim() > 0 and t.dtype != first.dtype:  # 0-d scalars keep the step dtype
            return f"the state dtype {t.dtype} differs from the parameter dtype {first.dtype}"
    return None


def _pointers(tensors: list[Tensor]) -> array[int]:
    return array("Q", [t.data_ptr() for t in tensors])


def fused_step(algorithm: str, bucket: Bucket, h: Hyper, second_key: str) -> None:
    """Step every tensor of ``bucket`` with the fused kernel (check :func:`fused_unsupported`)."""
    library = fused_library()
    assert library is not None  # fused_unsupported() said it was available
    kernel = (
        library.adamkit_fused_step_f32
        if bucket.params[0].dtype == torch.float32
        else library.adamkit_fused_step_f64
    )
    flags = (
        (_MAXIMIZE if h.maximize else 0)
        | (_DECOUPLED if h.decoupled_weight_decay else 0)
        | (_AMSGRAD if h.amsgrad else 0)
        | (_STEP_F64 if bucket.steps[0].dtype == torch.float64 else 0)
    )
    # Keep every array alive until the call returns: the kernel reads their addresses.
    numels = array("q", [p.numel() for p in bucket.params])
    arrays = [
        _pointers(bucket.params),
        _pointers(bucket.grads),
        _pointers(bucket.state["exp_avg"]),
        _pointers(bucket.state[second_key]),
    ]
    maxes = _pointers(bucket.state["max_exp_avg_sq"]) if h.amsgrad else None
    steps = _pointers(bucket.steps)
    mu_products = _pointers(bucket.state["mu_product"]) if "mu_product" in bucket.state else None
    status = kernel(
        ALGORITHMS[algorithm],
        flags,
        h.lr,
        h.beta1,
        h.beta2,
        h.eps,
        h.weight_decay,
        h.momentum_decay,
        len(bucket.params),
        numels.buffer_info()[0],
        *(a.buffer_info()[0] for a in arrays),
        maxes.buffer_info()[0] if maxes is not None else None,
        steps.buffer_info()[0],
        mu_products.buffer_info()[0] if mu_products is not None else None,
        torch.get_num_threads(),
    )
    if status != 0:
        raise MemoryError("the fused kernel could not allocate its per-tensor scalars")
