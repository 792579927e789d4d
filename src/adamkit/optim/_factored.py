"""Adafactor's C kernel for one whole matrix (``adamkit_adafactor`` in
``kernels/fused_cpu.c``): three passes over the tensor where torch's operations take about ten.

Its rule calls it on the fused path (``Hyper.tensor_kernel``), one tensor at a time. Nothing is
planned or cached: every call checks the four tensors it hands over (the parameter, its
gradient, its row and column statistics) for type, device, dtype, shape, contiguity, the
storage that holds them and overlap, then reads their addresses, so the kernel only ever
touches memory that is, at that moment, the tensor it was told of, with its size and dtype.
"""

from __future__ import annotations

from array import array

import torch
from torch import Tensor

from ..kernels import _abi, fused_library, unavailable_reason
from ._core import PLAIN_TENSORS
from ._fused import address, bump_versions

__all__ = ["factored_step", "factored_unsupported"]

_ELEMENT = {
    torch.float32: _abi.E_F32,
    torch.float64: _abi.E_F64,
    torch.bfloat16: _abi.E_BF16,
    torch.float16: _abi.E_F16,
}


def factored_unsupported(
    p: Tensor, g: Tensor, row: Tensor | None = None, col: Tensor | None = None
) -> str | None:
    """Why the kernel cannot step this matrix now (``None``: it can); without ``row`` and
    ``col``, whether it could take the parameter and its gradient (their statistics not made
    yet, or checked at the call). A view past the end of its storage is an error: no path can
    step it safely."""
    if fused_library() is None:
        return f"the fused CPU kernel is unavailable ({unavailable_reason()})"
    tensors = (p, g) if row is None or col is None else (p, g, row, col)
    other = next((t for t in tensors if type(t) not in PLAIN_TENSORS), None)
    if other is not None:
        return f"the fused kernel takes plain tensors, not {type(other).__name__}"
    away = next((t for t in tensors if not t.is_cpu), None)
    if away is not None:
        return f"the fused Adafactor kernel runs on the CPU, not on {away.device}"
    if p.dtype not in _ELEMENT:
        return f"the fused Adafactor kernel takes floating-point parameters, not {p.dtype}"
    if any(t.dtype != p.dtype for t in tensors):
        dtypes = ", ".join(str(t.dtype) for t in tensors[1:])
        return (
            f"the fused Adafactor kernel needs the gradient and the statistics in the "
            f"parameter's dtype ({p.dtype}), not {dtypes}"
        )
    shape = p.shape
    wanted = [shape, shape, (*shape[:-1], 1), (*shape[:-2], 1, shape[-1])][: len(tensors)]
    if p.dim() < 2 or [t.shape for t in tensors] != wanted:
        shapes = ", ".join(str(tuple(t.shape)) for t in tensors)
        return (
            "the fused Adafactor kernel takes a matrix (or a batch of them) with its gradient "
            f"and statistics of matching shapes, not {shapes}"
        )
    if not all(t.is_contiguous() for t in tensors):
        return "the fused kernel needs contiguous tensors (a parameter, grad or state is not)"
    if any(t.is_neg() or t.is_conj() or t._is_zerotensor() for t in tensors):
        return "the fused kernel takes tensors without a lazy negation, conjugation or zeros"
    if any(t.is_inference() for t in tensors if t is not g):
        return "a parameter or its state is an inference tensor (torch.inference_mode())"
    ranges = []
    for t, written in zip(tensors, (True, False, True, True), strict=False):
        size = t.numel() * t.element_size()
        # (first: a storage resized to nothing also has a null pointer, and the operations of
        # the other paths would write through it)
        if t.untyped_storage().nbytes() < t.storage_offset() * t.element_size() + size:
            raise RuntimeError(
                "adamkit: a parameter or its state is a view past the end of its storage (was "
                "the storage resized in place, storage.resize_()?); no path can step it safely"
            )
        start = t.data_ptr()
        if start == 0:
            return "a tensor has no memory (a null data pointer)"
        ranges.append((start, start + size, written))
    for i, (start, end, written) in enumerate(ranges):
        for other_start, other_end, other_written in ranges[i + 1 :]:
            if (written or other_written) and start < other_end and other_start < end:
                return "the parameter, its gradient and its statistics overlap in memory"
    return None


def factored_step(
    p: Tensor,
    g: Tensor,
    row: Tensor,
    col: Tensor,
    *,
    rho: float,
    decay: float,
    eps1: float,
    eps2: float,
    d: float,
    shrink: float,
    sign: float,
) -> None:
    """One Adafactor step of the matrix ``p`` (see ``adamkit_adafactor``), its statistics
    updated in place: ``decay`` is ``1 - beta2_t``, ``shrink`` ``1 - lr * weight_decay``,
    ``sign`` -1 to maximize. The caller has asked :func:`factored_unsupported`; this asks
    again, at the call, and raises where the answer changed."""
    reason = factored_unsupported(p, g, row, col)
    if reason is not None:
        raise RuntimeError(f"adamkit.Adafactor: the fused kernel cannot step this tensor: {reason}")
    library = fused_library()
    assert library is not None  # (checked above)
    *batch, n, m = p.shape
    count = 1
    for size in batch:
        count *= size
    shape = array("q", [count, n, m, _ELEMENT[p.dtype], torch.get_num_threads()])
    hyper = array("d", [rho, decay, eps1, eps2, d, shrink, sign])
    table = array("Q", [p.data_ptr(), g.data_ptr(), row.data_ptr(), col.data_ptr()])
    out = array("d", [0.0, 0.0])
    status = library.adamkit_adafactor(address(hyper), address(shape), address(table), address(out))
    if status == 3:  # nothing was changed
        raise MemoryError(
            f"adamkit.Adafactor: the fused kernel could not allocate its temporaries for a "
            f"tensor of shape {tuple(p.shape)}"
        )
    if status != 0:  # the call describes its tensors wrongly: a bug, and nothing was updated
        raise RuntimeError(f"the fused Adafactor kernel refused the call (status {status})")
    bump_versions([p, row, col])
