"""The fused path on a CUDA GPU: one launch per bucket for every algorithm.

- **Adam and AdamW** call torch's own fused CUDA kernels (``torch._fused_adam_`` and
  ``torch._fused_adamw_``), which already run at the card's memory bandwidth; AMSGrad, maximize
  and both kinds of weight decay included.
- **RAdam, NAdam and Adamax**, for which torch has no fused kernel, run adamkit's Triton kernel
  (``kernels/fused_triton.py``), with the CPU kernel's math.

Step counters stay 0-d CPU tensors, as torch keeps them outside its fused and capturable modes,
so checkpoints are the same on every path and device. Each step they are incremented (by the CPU
library where it was built, else by torch) and every tensor's step scalars are computed in
double by the same function as for the CPU kernel (``_scalars.py``) into a pinned host buffer,
copied to the GPU without waiting for it (with the gradients' addresses when they have moved).
torch's fused kernels read their step counts from the GPU, so that plan copies the new counts
there each step the same way. Neither plan needs the CPU library.

Low-precision state (``state_precision="bf16" | "8bit"``) and stochastically rounded bf16
parameters take the Triton kernel's second form (``fused_step_wide``) for every algorithm,
Adam included: the CPU kernel's codecs and rounding streams, so both give the same bits.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..kernels._abi import R_B, ROW
from ._algorithms import KINDS
from ._core import Bucket, Hyper
from ._fused import (
    Layout,
    Reading,
    Storage,
    counters,
    pointers,
    state_codec,
)
from ._scalars import StepScalars, fill_scalars

__all__ = ["TorchFusedPlan", "TritonPlan", "gpu_path", "triton_unavailable"]


def gpu_path(device: torch.device) -> bool:
    """Whether buckets on ``device`` take the GPU kernels. (The tests point this at the CPU,
    where Triton's interpreter runs the same kernel.)"""
    return device.type == "cuda"


def triton_unavailable() -> str | None:
    """Why adamkit's Triton kernel cannot run here, or ``None`` when it can."""
    try:
        from ..kernels import fused_triton  # noqa: F401
    except ImportError as error:
        return f"Triton is not installed ({error}); torch's CUDA builds ship it"
    return None


class _GpuPlanBase:
    """What both GPU plans share: the bucket, the addresses that tell it has not changed, and
    host buffers the CPU fills each step and copies to the GPU without waiting for it."""

    def __init__(self, bucket: Bucket, layout: Layout) -> None:
        self.bucket = bucket  # keeps every tensor the plan points to alive
        self.layout = layout
        self.device = bucket.params[0].device
        self.dtype = bucket.params[0].dtype
        self.params = pointers(bucket.params)
        # The addresses the device tables were built from (parameters and state, not the
        # gradients or counters, which are read afresh each step): set at the first reading.
        self.fixed: array[int] | None = None
        self.cuda = self.device.type == "cuda"
        # Recorded after the last step's copies: the host buffers are rewritten after it.
        self.copied = torch.cuda.Event() if self.cuda else None  # type: ignore[no-untyped-call]

    def host_buffer(self, numel: int, dtype: torch.dtype) -> Tensor:
        """A buffer the CPU writes and the GPU copies from: pinned, so the copy is
        asynchronous."""
        return torch.zeros(numel, dtype=dtype, pin_memory=self.cuda)

    def on_device(self, host: Tensor) -> Tensor:
        """The GPU's copy of a host buffer, copied without waiting for the GPU. (On the CPU
        path of the tests, a separate copy too, so a copy left out of a step shows there.)"""
        return host.to(self.device, non_blocking=True) if self.cuda else host.clone()

    def upload(self, columns: dict[str, Tensor]) -> dict[str, Tensor]:
        """Integer tables on the GPU, from one pinned buffer in one asynchronous copy (a copy
        from ordinary memory would wait for all the work queued on the GPU). Each table starts
        on a 16-byte boundary, as a tensor of its own would: Triton compiles a kernel again for
        every different alignment of its arguments."""
        sizes = [c.numel() for c in columns.values()]
        padded = [n + n % 2 for n in sizes]
        self.table_host = self.host_buffer(sum(padded), torch.int64)  # alive while copied
        for table, host in zip(columns.values(), torch.split(self.table_host, padded), strict=True):
            host[: table.numel()] = table
        on_device = torch.split(self.on_device(self.table_host), padded)
        return {name: t[:n] for name, t, n in zip(columns, on_device, sizes, strict=True)}

    def wait_for_host_buffers(self) -> None:
        if self.copied is not None:
            self.copied.synchronize()  # the last step's copies have left the host buffers

    def launching(self) -> AbstractContextManager[Any]:
        """Kernels launch on the current device's current stream: make it the bucket's."""
        return torch.cuda.device(self.device) if self.cuda else nullcontext()

    def send(self, *copies: tuple[Tensor, Tensor]) -> None:
        """Copy (host buffer, device tensor) pairs on the current stream, without waiting."""
        for host, device in copies:
            device.copy_(host, non_blocking=self.cuda)
        if self.copied is not None:
            self.copied.record()

    def read(
        self, params: list[Tensor], grads: list[Tensor], states: Sequence[Mapping[str, Any]]
    ) -> Reading | str | None:
        """This step's tensors, checked (``Layout.read``); ``None`` also when a parameter or
        state tensor is no longer at the address the device tables hold (plan again)."""
        reading = self.layout.read(params, grads, states)
        if not isinstance(reading, Reading):
            return reading
        count = reading.count
        moments, scalars = len(self.layout.moment_keys), len(self.layout.scalar_keys)
        fixed = reading.table[:count] + reading.table[2 * count : (2 + moments) * count]
        fixed += reading.table[(3 + moments + scalars) * count :]  # 8-bit scales
        if self.fixed is None:
            self.fixed = fixed
        elif fixed != self.fixed:
            return None
        return reading


class TorchFusedPlan(_GpuPlanBase):
    """Adam and AdamW through torch's fused kernels, which read step counts on the device."""

    def __init__(self, bucket: Bucket, layout: Layout, amsgrad: bool) -> None:
        super().__init__(bucket, layout)
        self.amsgrad = amsgrad
        # torch's fused kernels take float32 step counters on the parameters' device. The CPU
        # counters stay the truth: each step their new values are copied over (so a step that
        # fell back to another path, or a counter set by hand, is followed).
        self.host_counts = self.host_buffer(len(bucket.steps), torch.float32)
        self.device_steps = self.on_device(self.host_counts)
        self.device_step_list = list(self.device_steps.unbind())

    def run(self, reading: Reading, h: Hyper) -> None:
        tensors = reading.tensors
        self.wait_for_host_buffers()
        self.host_counts.numpy()[:] = counters(reading, self.layout).advance("step")
        fused = torch._fused_adamw_ if h.decoupled_weight_decay else torch._fused_adam_
        with self.launching():
            self.send((self.host_counts, self.device_steps))
            fused(
                tensors["params"],
                tensors["grads"],
                tensors["exp_avg"],
                tensors["exp_avg_sq"],
                tensors["max_exp_avg_sq"] if self.amsgrad else [],
                self.device_step_list,
                amsgrad=self.amsgrad,
                lr=h.lr,
                beta1=h.beta1,
                beta2=h.beta2,
                weight_decay=h.weight_decay,
                eps=h.eps,
                maximize=h.maximize,
                grad_scale=None,
                found_inf=None,
            )


class TritonPlan(_GpuPlanBase):
    """RAdam, NAdam and Adamax, and every algorithm with low-precision state, through
    adamkit's Triton kernels."""

    def __init__(
        self,
        kernel: str,
        scalars_of: StepScalars,
        bucket: Bucket,
        layout: Layout,
        storage: Storage | None = None,
    ) -> None:
        from ..kernels.fused_triton import BLOCK

        super().__init__(bucket, layout)
        self.storage = storage
        self.kind = KINDS[kernel]  # the algorithm's element loop, a constant of its kernel
        self.scalars_of = scalars_of
        # The kernels' AMSGRAD: a third state row is read and written (AMSGrad's running maximum,
        # AdEMAMix's slow EMA); the row's state keys say whether there is one.
        self.amsgrad = len(layout.moment_keys) == 3
        count = len(bucket.params)
        self.count = count
        # Program j updates BLOCK elements of tensor chunk_tensor[j] from chunk_start[j].
        numels = torch.tensor([p.numel() for p in bucket.params], dtype=torch.int64)
        per_tensor = (numels + BLOCK - 1) // BLOCK
        chunk_tensor = torch.repeat_interleave(torch.arange(count), per_tensor)
        first = torch.cumsum(per_tensor, 0) - per_tensor
        chunk_start = (torch.arange(len(chunk_tensor)) - first[chunk_tensor]) * BLOCK
        self.chunks = len(chunk_tensor)
        # The state tensors as one table, a row per state in the row's order (as the CPU
        # kernel takes them); the kernel reads the third row only with AMSGrad.
        keys = layout.moment_keys
        states = array("Q")
        for key in keys:
            states += pointers(bucket.state[key])
        columns = {
            "chunk_tensor": chunk_tensor,
            "chunk_start": chunk_start,
            "numels": numels,
            "params": _table(self.params),
            "states": _table(states),
        }
        self.param_format = None
        self.codecs: tuple[int, ...] = ()
        if storage is not None:
            zeros = array("Q", [0] * count)
            scales = array("Q")
            for key in keys:
                scales += storage.scale_pointers(key) or zeros
            columns["formats"] = torch.tensor(storage.kernel_formats(bucket.params))
            columns["scales"] = _table(scales)
            columns["salts"] = torch.tensor(storage.salts, dtype=torch.int64)
            self.param_format = storage.param_format(self.dtype)
            self.codecs = tuple(map(state_codec, keys))
        self.tables = self.upload(columns)
        self.tables["count"] = count  # type: ignore[assignment]  # a number, not a table
        # Whole blocks are loaded with 16-byte vector instructions where every element array
        # starts on a 16-byte boundary: torch's allocations do, views at an offset may not.
        arrays = [self.params, states]
        self.state_aligned = all(a % 16 == 0 for addresses in arrays for a in addresses)
        # Written each step: ROW scalars per tensor, then the group's seven; and the gradients'
        # addresses when they move.
        self.host = self.host_buffer(ROW * count + 7, torch.float64)
        self.host_values = self.host.numpy()
        self.scalars = self.on_device(self.host)
        self.tables["scalars"] = self.scalars[: ROW * count]
        self.tables["hyper"] = self.scalars[ROW * count :]
        self.grad_host = self.host_buffer(count, torch.int64)
        self.tables["grads"] = self.on_device(self.grad_host)
        self.grad_addresses: array[int] | None = None
        self.grads_aligned = False

    def run(self, reading: Reading, h: Hyper) -> None:
        from ..kernels.fused_triton import launch, specialization

        self.wait_for_host_buffers()
        count = reading.count
        addresses = reading.table[count : 2 * count]
        new_grads = addresses != self.grad_addresses  # zero_grad(set_to_none=True) may move them
        if new_grads:
            self.grad_host.numpy()[:] = np.frombuffer(addresses, dtype=np.int64)
            self.grads_aligned = all(a % 16 == 0 for a in addresses)
            self.grad_addresses = addresses
        rows = self.host_values[: ROW * count].reshape(count, ROW)
        fill_scalars(rows, self.scalars_of, h, counters(reading, self.layout))
        if self.storage is not None:  # the low-precision loop multiplies by 1 / b, as the CPU's
            b = rows[:, R_B]
            with np.errstate(divide="ignore"):  # b is 0 where the algorithm has no use for it
                b[:] = 1.0 / b
        # Rounded once from double in the kernel, as the CPU kernel rounds them.
        self.host_values[ROW * self.count :] = (
            -1.0 if h.maximize else 1.0,
            1.0 - h.lr * h.weight_decay,
            1.0 - h.beta1,
            h.beta2,
            1.0 - h.beta2,
            h.eps,
            h.weight_decay,
        )
        if self.chunks == 0:  # only empty tensors: their steps count, nothing to update
            return
        decay = (
            0 if h.weight_decay == 0 or h.decay_in_rule else (2 if h.decoupled_weight_decay else 1)
        )
        with self.launching():
            copies = [(self.host, self.scalars)]
            if new_grads:
                copies.append((self.grad_host, self.tables["grads"]))
            self.send(*copies)
            kernel, constants = specialization(
                self.kind,
                decay,
                self.amsgrad,
                self.dtype,
                self.state_aligned and self.grads_aligned,
                self.param_format,
                self.codecs,
            )
            launch(self.chunks, self.tables, kernel, constants)


def _table(addresses: array[int]) -> Tensor:
    return torch.tensor(addresses.tolist(), dtype=torch.int64)
