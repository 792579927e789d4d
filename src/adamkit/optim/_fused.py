"""The fused execution path: one compiled kernel call per bucket, one pass over memory.

The kernel (``adamkit/kernels/fused_cpu.c``) implements every rule of this package for fp32 and
fp64 CPU tensors. It takes raw pointers, so a bucket of 2000 tensors costs one call, and it
increments the step counters itself (torch's fused path spends as long on 2000 separate
``step += 1`` as on the update). It allocates no parameter-sized temporaries.
"""

from __future__ import annotations

import operator
from array import array
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..kernels import fused_library, unavailable_reason
from ._core import PLAIN_TENSORS, Bucket, Hyper, local
from ._precision import BF16, BF16_SR, NATIVE, Q8, scale_key

__all__ = [
    "ALGORITHMS",
    "FusedPlan",
    "Storage",
    "address",
    "addresses_match",
    "common_unsupported",
    "fused_unsupported",
    "kernel_available",
    "layout_unsupported",
    "pointers",
]

#: The kernel's algorithm codes (``enum`` in fused_cpu.c).
ALGORITHMS = {"adam": 0, "radam": 1, "nadam": 2, "adamax": 3}
_MAXIMIZE, _DECOUPLED, _AMSGRAD, _STEP_F64 = 1, 2, 4, 8
_DTYPES = (torch.float32, torch.float64)


def kernel_available() -> bool:
    return fused_library() is not None


def common_unsupported(bucket: Bucket) -> str | None:
    """What keeps every fused kernel, CPU or GPU, from this bucket (``None``: nothing)."""
    reason = unavailable_reason()
    if reason is not None:  # the GPU path computes its step scalars with this library too
        return f"the fused CPU kernel is unavailable: {reason}"
    subclass = next((t for t in _tensors(bucket) if type(t) not in PLAIN_TENSORS), None)
    if subclass is not None:  # a DTensor's data_ptr() is not its shard's memory
        return f"the fused kernel takes plain tensors, not {type(subclass).__name__}"
    step_dtype = bucket.steps[0].dtype
    if any(s.dtype != step_dtype or s.device.type != "cpu" for s in bucket.steps):
        return "the step counters of these parameters differ in dtype or device"
    return None


def layout_unsupported(bucket: Bucket, widened: bool) -> str | None:
    """A non-contiguous tensor, or full-precision state of another dtype than the parameter."""
    dtype = bucket.params[0].dtype
    for t in _tensors(bucket):
        if not t.is_contiguous():
            return "the fused kernel needs contiguous tensors (a parameter, grad or state is not)"
        if not widened and t.dim() > 0 and t.dtype != dtype:  # 0-d: the step dtype
            return f"the state dtype {t.dtype} differs from the parameter dtype {dtype}"
    return None


def fused_unsupported(bucket: Bucket, widened: bool) -> str | None:
    """Why the CPU kernel cannot step this bucket, or ``None`` when it can.

    ``widened``: the bucket's state is stored in low precision (or its bf16 parameters are
    rounded stochastically), so the kernel's fp32-with-codecs loop is the one to take.
    """
    reason = common_unsupported(bucket)
    if reason is not None:
        return reason
    first = bucket.params[0]
    if first.device.type != "cpu":
        return f"the fused kernels run on the CPU and CUDA GPUs, not on {first.device}"
    supported = (torch.float32, torch.bfloat16) if widened else _DTYPES
    if first.dtype not in supported:
        names = " and ".join(str(d).removeprefix("torch.") for d in supported)
        what = " with low-precision state or rounding" if widened else ""
        return f"the fused kernel supports {names} parameters{what}, not {first.dtype}"
    return layout_unsupported(bucket, widened)


def _tensors(bucket: Bucket) -> list[Tensor]:
    return [*bucket.params, *bucket.grads, *(t for ts in bucket.state.values() for t in ts)]


@dataclass
class Storage:
    """How a widened bucket's tensors are stored, as the kernel reads it."""

    formats: list[int]  # _precision's NATIVE / BF16_SR / Q8, per tensor
    states: list[dict[str, Any]]  # each tensor's optimizer state (for the block scales)
    salts: list[int]  # each tensor's stochastic-rounding salt
    stochastic: bool  # round bf16 parameters stochastically

    def kernel_formats(self, params: list[Tensor]) -> list[int]:
        # Full-precision state of a bf16 parameter is bf16 rounded to nearest (as torch keeps it).
        return [
            BF16 if f == NATIVE and p.dtype == torch.bfloat16 else f
            for f, p in zip(self.formats, params, strict=True)
        ]

    def scale_pointers(self, key: str) -> array[int] | None:
        if all(f != Q8 for f in self.formats):
            return None
        name = scale_key(key)
        return array("Q", [local(s[name]).data_ptr() if name in s else 0 for s in self.states])

    def param_format(self, dtype: torch.dtype) -> int:
        if dtype != torch.bfloat16:
            return NATIVE  # fp32: stored as computed
        return BF16_SR if self.stochastic else BF16


def pointers(tensors: list[Tensor]) -> array[int]:
    return array("Q", [t.data_ptr() for t in tensors])


def addresses_match(
    param_pointers: array[int],
    exp_avg_pointers: array[int],
    steps: list[Tensor],
    params: list[Tensor],
    entries: list[Mapping[str, Any]],
) -> bool:
    """Whether ``params`` and their state ``entries`` are still the tensors, at the addresses, a
    plan was built for (ZeroRedundancyOptimizer, for one, replaces state entries directly; a
    training loop may reset ``state["step"]`` with a new tensor: checked by identity, a quarter
    of the cost of reading addresses, as the kernels write the counters in place)."""
    if param_pointers != array("Q", [local(p).data_ptr() for p in params]):
        return False
    if not all(map(operator.is_, map(_STEP, entries), steps)):
        return False
    return exp_avg_pointers == array("Q", [local(e["exp_avg"]).data_ptr() for e in entries])


_STEP = operator.itemgetter("step")


class FusedPlan:
    """The kernel's view of one bucket, built once and reused while the bucket stays the same.

    Building a bucket (real views, checks, pointer arrays) costs about as much Python per tensor
    as the update itself costs the kernel for small tensors, so the pointers to parameters,
    state and step counters are kept (with references to their tensors, so the memory stays
    valid). Each step only reads the gradients' pointers and checks that no parameter's storage
    moved. :meth:`AdamFamily.load_state_dict` drops the plans, since it replaces the state.
    """

    def __init__(
        self,
        algorithm: str,
        bucket: Bucket,
        second_key: str,
        amsgrad: bool,
        param_dtype: torch.dtype,
        storage: Storage | None = None,
    ) -> None:
        self.algorithm = ALGORITHMS[algorithm]
        self.bucket = bucket  # keeps every tensor below alive
        self.dtype = bucket.params[0].dtype
        self.grad_dtype = param_dtype  # complex parameters are stepped as real pairs
        self.step_f64 = bucket.steps[0].dtype == torch.float64
        self.numels = array("q", [p.numel() for p in bucket.params])
        self.params = pointers(bucket.params)
        self.exp_avgs = pointers(bucket.state["exp_avg"])
        self.seconds = pointers(bucket.state[second_key])
        self.maxes = pointers(bucket.state["max_exp_avg_sq"]) if amsgrad else None
        self.steps = pointers(bucket.steps)
        state = bucket.state
        self.mu_products = pointers(state["mu_product"]) if "mu_product" in state else None
        self.storage = storage
        if storage is not None:
            keys = ["exp_avg", second_key, *(["max_exp_avg_sq"] if amsgrad else [])]
            self.state_formats = array("B", storage.kernel_formats(bucket.params))
            self.salts = array("I", storage.salts)
            self.scales = [storage.scale_pointers(key) for key in keys] + [None] * (3 - len(keys))

    def matches(self, params: list[Tensor], entries: list[Mapping[str, Any]]) -> bool:
        return addresses_match(self.params, self.exp_avgs, self.bucket.steps, params, entries)

    def gradients(self, grads: list[Tensor]) -> array[int] | str:
        """The gradients' addresses, or why the kernel cannot read them."""
        dtype = self.grad_dtype
        grads = [local(g) for g in grads]
        for g in grads:
            if g.dtype is not dtype or not g.is_contiguous() or not g.is_cpu:
                return "the fused kernel needs contiguous CPU gradients of the parameter's dtype"
        return array("Q", [g.data_ptr() for g in grads])

    def run(self, grads: array[int], h: Hyper) -> None:
        library = fused_library()
        assert library is not None  # a plan is only built where the kernel is available
        if self.storage is not None:
            kernel = library.adamkit_fused_step_wide
        elif self.dtype == torch.float32:
            kernel = library.adamkit_fused_step_f32
        else:
            kernel = library.adamkit_fused_step_f64
        flags = (
            (_MAXIMIZE if h.maximize else 0)
            | (_DECOUPLED if h.decoupled_weight_decay else 0)
            | (_AMSGRAD if h.amsgrad else 0)
            | (_STEP_F64 if self.step_f64 else 0)
        )
        wide = []
        if self.storage is not None:
            wide = [
                self.storage.param_format(self.dtype),
                address(self.state_formats),
                *map(address, self.scales),
                address(self.salts),
            ]
        status = kernel(
            self.algorithm,
            flags,
            h.lr,
            h.beta1,
            h.beta2,
            h.eps,
            h.weight_decay,
            h.momentum_decay,
            len(self.numels),
            address(self.numels),
            address(self.params),
            address(grads),
            address(self.exp_avgs),
            address(self.seconds),
            address(self.maxes),
            address(self.steps),
            address(self.mu_products),
            torch.get_num_threads(),
            *wide,
        )
        if status != 0:
            raise MemoryError("the fused kernel could not allocate its per-tensor scalars")


def address(values: array[int] | None) -> int | None:
    """The first element's address, for the C library (``None``: no array, or an empty one)."""
    return values.buffer_info()[0] if values is not None and len(values) else None
