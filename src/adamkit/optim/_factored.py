"""Adafactor's C kernel for one whole matrix (``adamkit_adafactor`` in
``kernels/fused_cpu.c``): three passes over the tensor where torch's operations take about ten.

Its rule calls it on the fused path (``Hyper.tensor_kernel``), one tensor at a time. Nothing is
planned or cached: the rule asks :func:`factored_unsupported` of each matrix in the step that
hands it over, which checks the four tensors (the parameter, its gradient, its row and column
statistics) for type, device, dtype, shape, contiguity, the storage that holds them and
overlap; :func:`factored_step` reads their addresses then, so the kernel only ever touches
memory that is, at that moment, the tensor it was told of, with its size and dtype.
"""

from __future__ import annotations

from array import array

import torch
from torch import Tensor

from ..kernels import _abi, fused_library, unavailable_reason
from ._core import PLAIN_TENSORS
from ._fused import NO_MEMORY, address, bump_versions, check_storage, overlapping

__all__ = ["check_storages", "factored_step", "factored_unsupported"]

_ELEMENT = {
    torch.float32: _abi.E_F32,
    torch.float64: _abi.E_F64,
    torch.bfloat16: _abi.E_BF16,
    torch.float16: _abi.E_F16,
}
#: How a message names each of the four tensors.
_ROLES = ("a parameter", "a gradient", "the state 'row_var'", "the state 'col_var'")


def factored_unsupported(
    p: Tensor, g: Tensor, row: Tensor | None = None, col: Tensor | None = None
) -> str | None:
    """Why the kernel cannot step this matrix now (``None``: it can); without ``row`` and
    ``col`` (not made yet), whether it could take the parameter and its gradient. A view
    past the end of its storage is an error: no path can step it safely."""
    library = fused_library()
    if library is None:
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
    if any(t.is_inference() for t in tensors if t is not g):  # (those it writes)
        return "a parameter or its state is an inference tensor (torch.inference_mode())"
    # (before the null address: a storage resized to nothing has one, and torch's operations,
    # the other paths, would write through it)
    check_storages(*tensors)
    starts = [t.data_ptr() for t in tensors]
    if 0 in starts:
        return NO_MEMORY
    sizes = [t.numel() * t.element_size() for t in tensors]
    if overlapping(starts, sizes, [True, False, True, True][: len(tensors)]):
        return "the parameter, its gradient and its statistics overlap in memory"
    shape_of = _shape(p)  # (held: the library reads it through its address)
    if not library.adamkit_adafactor_takes(address(shape_of)):
        *_, n, m = shape
        return (
            f"a matrix of {n} rows of {m} columns: the kernel's column sums would need more "
            "memory than an eighth of it"
        )
    return None


def check_storages(
    p: Tensor, g: Tensor, row: Tensor | None = None, col: Tensor | None = None
) -> None:
    """Raise where one of a matrix's tensors (plain, strided, on the CPU: a sparse gradient
    has no storage to ask, and is refused later, naming it) ends past its storage."""
    for t, role in zip((p, g, row, col), _ROLES, strict=True):
        if t is not None and type(t) in PLAIN_TENSORS and t.is_cpu and t.layout == torch.strided:
            check_storage(t, role)


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
    ``sign`` -1 to maximize. The caller has asked :func:`factored_unsupported` of these very
    tensors in this step."""
    library = fused_library()
    assert library is not None  # (the caller asked)
    hyper = array("d", [0.0] * _abi.AF_HYPER_SLOTS)
    hyper[_abi.AF_RHO], hyper[_abi.AF_DECAY], hyper[_abi.AF_EPS1] = rho, decay, eps1
    hyper[_abi.AF_EPS2], hyper[_abi.AF_D], hyper[_abi.AF_SHRINK] = eps2, d, shrink
    hyper[_abi.AF_SIGN] = sign
    table = array("Q", [p.data_ptr(), g.data_ptr(), row.data_ptr(), col.data_ptr()])
    shape = _shape(p)  # (held, as hyper and table: the library reads them by address)
    status = library.adamkit_adafactor(address(hyper), address(shape), address(table))
    if status == 3:  # nothing was changed
        raise MemoryError(
            f"adamkit.Adafactor: the fused kernel could not allocate its temporaries for a "
            f"tensor of shape {tuple(p.shape)}"
        )
    if status != 0:  # the call describes its tensors wrongly: a bug, and nothing was updated
        raise RuntimeError(f"the fused Adafactor kernel refused the call (status {status})")
    bump_versions([p, row, col])


def _shape(p: Tensor) -> array[int]:
    """adamkit_adafactor's shape[]: ``p`` as a batch of matrices, its dtype, the threads."""
    *batch, n, m = p.shape
    shape = array("q", [0] * _abi.AF_SHAPE_SLOTS)
    shape[_abi.AF_BATCH] = torch.Size(batch).numel()
    shape[_abi.AF_ROWS], shape[_abi.AF_COLS] = n, m
    shape[_abi.AF_ELEMENT] = _ELEMENT[p.dtype]
    shape[_abi.AF_THREADS] = torch.get_num_threads()
    return shape
