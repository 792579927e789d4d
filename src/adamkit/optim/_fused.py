"""The fused execution path: one compiled kernel call per bucket, one pass over memory.

The kernel (``adamkit/kernels/fused_cpu.c``) implements every rule of this package for fp32 and
fp64 CPU tensors, and for fp32, bf16 and fp16 ones through its codecs. It takes raw pointers,
so a bucket of 2000 tensors costs one call, and its step counters are incremented in one more
(``adamkit_advance``; torch's fused path spends as long on 2000 separate ``step += 1`` as on
the update), with the step scalars computed once in between (``_scalars.py``). It allocates no
parameter-sized temporaries.

Raw pointers are only safe if they are fresh. A plan keeps what does not change between steps
(the algorithm, the storage formats, and the size and dtype each tensor must have); at every
step :meth:`Layout.read` takes the tensors that are *now* in ``param``, ``param.grad`` and
``optimizer.state`` (whatever a training loop replaced or resized), checks each one's element
count, dtype, device and contiguity against the plan, and reads its address. The kernel never
sees an address that was not read, and checked, in the same step. Tensors that overlap in
memory (two parameters viewing one storage) are found the first time a set of addresses is
seen and stepped one at a time, in order, instead (:data:`OVERLAPPING`).
"""

from __future__ import annotations

import itertools
import math
import operator
from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..kernels import _abi, fused_library, unavailable_reason
from ..kernels._abi import DECAY_IN_BODY, DECOUPLED, MAXIMIZE
from ._algorithms import SCALAR_KEYS, is_unsigned, noise
from ._core import PLAIN_TENSORS, Bucket, Hyper, local, real_view
from ._modifiers import UpdateStats
from ._precision import BF16, BF16_SR, F16, NATIVE, Q8, blocks, scale_key
from ._scalars import Counters, StepScalars, fill_scalars

__all__ = [
    "NO_MEMORY",
    "OVERLAPPING",
    "FusedPlan",
    "Layout",
    "Reading",
    "Storage",
    "address",
    "bump_versions",
    "check_scales",
    "check_state_sizes",
    "check_storage",
    "common_unsupported",
    "counters",
    "kernel_available",
    "layout_unsupported",
    "overlapping",
    "pointers",
    "prepare_counters",
]

_COUNTER_DTYPES = (torch.float32, torch.float64)
#: The start of the reason given for tensors that overlap in memory: such a bucket is stepped
#: one parameter at a time (deterministic, as torch's for-loop), not by the threaded kernel.
OVERLAPPING = "tensors of this bucket overlap in memory"

_numel = Tensor.numel
_pointer = Tensor.data_ptr
_contiguous = Tensor.is_contiguous
_dtype = operator.attrgetter("dtype")
_is_cpu = operator.attrgetter("is_cpu")
_device = operator.attrgetter("device")
_step = operator.itemgetter("step")
_PLAIN = frozenset(PLAIN_TENSORS)


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
    for key in SCALAR_KEYS:
        counters = bucket.steps if key == "step" else bucket.state.get(key, [])
        if not counters:
            continue
        dtype = counters[0].dtype
        if any(s.dtype != dtype or not s.is_cpu or s.numel() != 1 for s in counters):
            return f"the {key} counters of these parameters differ in dtype or device"
    return None


def layout_unsupported(bucket: Bucket, formats: Sequence[int] | None) -> str | None:
    """A non-contiguous tensor, or state of another dtype than its format stores.

    ``formats``: each tensor's stored format when the bucket's state is stored in low
    precision (or its parameters are rounded), ``None`` when it is all full precision.
    """
    for t in _tensors(bucket):
        if not t.is_contiguous():
            return "the fused kernel needs contiguous tensors (a parameter, grad or state is not)"
    dtype = bucket.params[0].dtype
    if any(p.dtype != dtype for p in bucket.params):
        return "the parameters of this bucket differ in dtype"
    for key, tensors in bucket.state.items():
        if key in SCALAR_KEYS:
            continue
        for i, t in enumerate(tensors):
            want = state_dtype(formats[i] if formats is not None else NATIVE, dtype)
            if t.dtype != want:
                return f"the state {key!r} is {t.dtype}, where the kernel stores {want}"
    return None


def state_dtype(fmt: int, param_dtype: torch.dtype) -> torch.dtype:
    """The dtype of a moment tensor stored in ``fmt`` beside a parameter of ``param_dtype``."""
    if fmt == Q8:
        return torch.uint8
    if fmt in (BF16, BF16_SR):
        return torch.bfloat16
    return param_dtype


def _tensors(bucket: Bucket) -> list[Tensor]:
    """The tensors a plan is built for: not the gradients, which each step checks anew."""
    return [*bucket.params, *(t for ts in bucket.state.values() for t in ts)]


#: Why a kernel does not take a tensor whose address is null.
NO_MEMORY = "a tensor of this bucket has no memory (a null data pointer)"


def check_storage(t: Tensor, where: str) -> None:
    """Raise where ``t`` ends past the end of its storage (``untyped_storage().resize_()``
    shrank it, or freed it: its address is then null): torch's operations would read and
    write past it as well, so no path can step it. ``where``: how the message names it. Its
    last element by its strides (an expanded tensor's may be its first)."""
    if not t.numel():
        return
    last = t.storage_offset() + sum((n - 1) * s for n, s in zip(t.shape, t.stride(), strict=True))
    if t.untyped_storage().nbytes() < (last + 1) * t.element_size():
        raise RuntimeError(
            f"adamkit: {where} is a view past the end of its storage (was the storage resized "
            "in place, storage.resize_()?); no path can step it safely"
        )


def bump_versions(tensors: list[Tensor]) -> None:
    """Count an in-place update of ``tensors`` in their version counters, as torch's in-place
    operations do (autograd then refuses a graph that saved an old value)."""
    try:
        torch.autograd.graph.increment_version(tensors)
    except TypeError:  # torch before 2.5 takes one tensor at a time
        for t in tensors:
            torch.autograd.graph.increment_version(t)


def check_state_sizes(
    optimizer: str,
    params: Sequence[Tensor],
    states: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
    label: Callable[[Tensor], str],
) -> None:
    """Refuse state whose size no longer matches its parameter's (``p.data = torch.zeros(2n)``
    after the first step): torch's own step raises a size mismatch there too."""
    for p, entry in zip(params, states, strict=True):
        for key in keys:
            value = entry.get(key)
            if isinstance(value, Tensor) and value.numel() != p.numel():
                raise RuntimeError(
                    f"adamkit.{optimizer}: {label(p)} has {p.numel()} elements "
                    f"{tuple(p.shape)} but its state {key!r} has {value.numel()} "
                    f"{tuple(value.shape)}: was the parameter replaced or resized "
                    "(p.data = ...) after its state was created? Clear its state "
                    "(optimizer.state[p].clear()) to start it afresh, or load a matching "
                    "checkpoint"
                )


def check_scales(
    optimizer: str,
    params: Sequence[Tensor],
    states: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
    formats: Sequence[int],
    label: Callable[[Tensor], str],
) -> None:
    """Refuse 8-bit block scales that are missing or not one float32 per block of their
    moment (``state["exp_avg_scale"] = torch.ones(1)``): the kernel reads one per block."""
    for p, entry, fmt in zip(params, states, formats, strict=True):
        if fmt != Q8:
            continue
        want = blocks(real_view(p).numel())
        for key in keys:
            value = entry.get(scale_key(key))
            if isinstance(value, Tensor) and value.dtype == torch.float32 and value.numel() == want:
                continue
            if isinstance(value, Tensor):
                what = f"{value.numel()} {value.dtype} values"
            else:
                what = "none" if value is None else f"a {type(value).__name__}"
            raise RuntimeError(
                f"adamkit.{optimizer}: {label(p)} keeps its {key!r} in 8 bits, which needs "
                f"{scale_key(key)!r}: {want} float32 block scales, but the state holds {what}; "
                "clear its state (optimizer.state[p].clear()) to start it afresh, or load a "
                "matching checkpoint"
            )


def prepare_counters(
    optimizer: str,
    states: Sequence[dict[str, Any]],
    keys: Sequence[str],
    dtype: torch.dtype,
    label: Callable[[int], str],
) -> None:
    """Give the kernel counters it can read: a 0-d CPU float tensor per ``step`` (and
    ``mu_product``). A counter of another dtype (``state["step"] = torch.tensor(0)``, int64,
    as a training loop's reset may write it) is replaced by a ``dtype`` tensor of the same
    value, which is what torch's optimizers create; one that is not a single number is refused.
    """
    for i, entry in enumerate(states):
        for key in keys:
            value = entry.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = entry[key] = torch.tensor(
                    float(value), dtype=dtype
                )  # as older torch kept it
            if not isinstance(value, Tensor):
                continue  # the kernel cannot take it (common_unsupported says so)
            if value.numel() != 1:
                raise ValueError(
                    f"adamkit.{optimizer}: state[{key!r}] of {label(i)} must hold one number, "
                    f"got a tensor of shape {tuple(value.shape)}"
                )
            number = value.item()  # not float(): no warning for a counter that requires grad
            if not math.isfinite(number) or (key == "step" and number < 0):
                raise ValueError(
                    f"adamkit.{optimizer}: state[{key!r}] of {label(i)} is {number}; a step "
                    "count must be a finite number >= 0 (and mu_product finite)"
                )
            if value.dtype not in _COUNTER_DTYPES and value.device.type == "cpu":
                entry[key] = torch.tensor(number, dtype=dtype)


@dataclass
class Storage:
    """How a widened bucket's tensors are stored, as the kernel reads it."""

    formats: list[int]  # _precision's NATIVE / BF16_SR / Q8, per tensor
    states: list[dict[str, Any]]  # each tensor's optimizer state (for the block scales)
    salts: list[int]  # each tensor's stochastic-rounding salt
    stochastic: bool  # round bf16 parameters stochastically

    def kernel_formats(self, params: list[Tensor]) -> list[int]:
        # Full-precision state of a half parameter is of its dtype, rounded to nearest (as
        # torch keeps it).
        half = {torch.bfloat16: BF16, torch.float16: F16}
        return [
            half.get(p.dtype, f) if f == NATIVE else f
            for f, p in zip(self.formats, params, strict=True)
        ]

    def scale_pointers(self, key: str) -> array[int] | None:
        if all(f != Q8 for f in self.formats):
            return None
        name = scale_key(key)
        return array("Q", [s[name].data_ptr() if name in s else 0 for s in self.states])

    def param_format(self, dtype: torch.dtype) -> int:
        if dtype == torch.float16:
            return F16  # rounded to nearest, as torch's fused kernels do
        if dtype != torch.bfloat16:
            return NATIVE  # fp32: stored as computed
        return BF16_SR if self.stochastic else BF16


def pointers(tensors: list[Tensor]) -> array[int]:
    return array("Q", [t.data_ptr() for t in tensors])


@dataclass
class Reading:
    """One step's tensors and their addresses, read and checked just now.

    ``table`` holds ``count`` addresses per role, in :attr:`Layout.roles` order; scales of
    8-bit state follow, one row per moment key (0 where a tensor's state is not 8-bit).
    """

    table: array[int]
    count: int
    tensors: dict[str, list[Tensor]]

    def row(self, index: int) -> int:
        return self.table.buffer_info()[0] + 8 * self.count * index


class Layout:
    """The size, dtype and device each tensor of a bucket must have, from when its plan was
    built, and the per-step reading of the tensors now in the optimizer against them."""

    def __init__(
        self,
        bucket: Bucket,
        params: list[Tensor],
        moment_keys: Sequence[str],
        scalar_keys: Sequence[str],
        formats: Sequence[int] | None,
    ) -> None:
        self.complex = any(p.is_complex() for p in params)
        # DTensor parameters (FSDP2): the plan is built for, and each step reads, the shards.
        self.sharded = any(type(p) not in PLAIN_TENSORS for p in params)
        self.device = bucket.params[0].device
        self.cpu = self.device.type == "cpu"
        self.dtype = bucket.params[0].dtype  # a complex parameter's real dtype
        self.numels = [p.numel() for p in bucket.params]
        self.moment_keys = tuple(moment_keys)
        self.scalar_keys = tuple(scalar_keys)
        self.roles = ("params", "grads", *self.moment_keys, "step", *self.scalar_keys)
        # The rows of the counters in a reading's table (read by the step scalars each step).
        self.counter_rows = {key: self.roles.index(key) for key in ("step", *self.scalar_keys)}
        self.dtypes = {key: [t.dtype for t in bucket.state[key]] for key in self.moment_keys}
        self.counter_dtypes = {"step": bucket.steps[0].dtype}
        for key in self.scalar_keys:
            self.counter_dtypes[key] = bucket.state[key][0].dtype
        self.q8 = [i for i, f in enumerate(formats or ()) if f == Q8]
        self.scale_numels = [blocks(self.numels[i]) for i in self.q8]
        # The roles of 8-bit scales in a reading, and the state entries they are read from.
        self.scale_keys = {f"{k}:scales": scale_key(k) for k in self.moment_keys if self.q8}
        self.stateful = (*self.moment_keys, "step", *self.scalar_keys, *self.scale_keys)
        self.held: dict[str, list[Tensor]] | None = None  # the state last checked in full
        self.held_table = array("Q")
        self.last_addresses: list[int] = []
        self.last_table = array("Q")
        # Bytes and written flags per table row, for the overlap check (fixed by the checks).
        sizes = [n * self.dtype.itemsize for n in self.numels] * 2
        for key in self.moment_keys:
            sizes += [n * d.itemsize for n, d in zip(self.numels, self.dtypes[key], strict=True)]
        for key in ("step", *self.scalar_keys):
            sizes += [self.counter_dtypes[key].itemsize] * len(self.numels)
        coded = set(self.q8)
        for _ in self.moment_keys if self.q8 else ():
            sizes += [4 * blocks(n) if i in coded else 0 for i, n in enumerate(self.numels)]
        count = len(self.numels)
        self.sizes = array("Q", sizes)
        self.written = array("B", [1] * len(sizes))
        self.written[count : 2 * count] = array("B", [0] * count)  # gradients are only read
        self.overlap_free: array[int] | None = None  # the last table found free of overlaps

    def _fits(
        self,
        tensors: list[Tensor],
        numels: list[int],
        dtypes: list[torch.dtype],
        device: bool = True,
        contiguous: bool = True,
    ) -> bool:
        """Each tensor has its element count and dtype, is contiguous (and on the device)."""
        if list(map(_numel, tensors)) != numels or list(map(_dtype, tensors)) != dtypes:
            return False
        if contiguous and not all(map(_contiguous, tensors)):
            return False
        return not device or self._on_device(tensors)

    def _on_device(self, tensors: list[Tensor]) -> bool:
        if self.cpu:
            return all(map(_is_cpu, tensors))
        return list(map(_device, tensors)).count(self.device) == len(tensors)

    def read(
        self, params: list[Tensor], grads: list[Tensor], states: Sequence[Mapping[str, Any]]
    ) -> Reading | str | None:
        """The tensors of this step, checked, with their addresses; ``None`` when a parameter
        or its state no longer has the plan's size, dtype or layout (plan again); or why the
        kernel cannot take this step's tensors.

        Every step checks every tensor's element count and dtype, and the contiguity of every
        parameter, gradient and state tensor (cheap C getters: about 40 ns each), and reads
        its address; parameters and gradients are also checked for their device. What
        costs more is checked when a tensor is new or has moved since the last step: its
        device, and that its storage still holds it (``untyped_storage().resize_`` can shrink
        a storage under a tensor).
        """
        count = len(params)
        real = real_view if self.complex or self.sharded else None
        if real is not None:
            params, grads = [real(p) for p in params], [real(g) for g in grads]
        same = [self.dtype] * count
        # A parameter's device is checked where its address changed (_check): a tensor on
        # another device is new memory, at another address.
        if not self._fits(params, self.numels, same, device=False):
            return None
        if not self._fits(grads, self.numels, same):
            return (
                "the fused kernel needs contiguous gradients of the parameters' shape and "
                f"dtype ({self.dtype}) on {self.device}"
            )
        tensors = {"params": params, "grads": grads}
        try:
            for key in self.stateful:
                if key in self.scale_keys:
                    values = [states[i][self.scale_keys[key]] for i in self.q8]
                else:
                    values = list(map(operator.itemgetter(key), states))
                if self.sharded:  # FSDP2 keeps DTensor state: its shards are the memory
                    values = [local(v) if isinstance(v, Tensor) else v for v in values]
                if not set(map(type, values)) <= _PLAIN:
                    return None  # a number, None, a subclass...: planning says what
                if self.complex and key in self.moment_keys:
                    values = [real_view(v) for v in values]
                tensors[key] = values
        except (KeyError, TypeError):
            return None  # a state entry went missing, or a state is not a dict: plan again
        # State tensors: contiguity at every step (``exp_avg.t_()`` restrides a tensor in
        # place, at its address), device where they are new or moved (_check).
        for key in self.moment_keys:
            if not self._fits(tensors[key], self.numels, self.dtypes[key], False):
                return None
        for key in ("step", *self.scalar_keys):
            if not self._counters_fit(tensors[key], self.counter_dtypes[key]):
                return None
        for key in self.scale_keys:
            values = tensors[key]
            if not self._fits(values, self.scale_numels, [torch.float32] * len(values), False):
                return None
        table = self._table(tensors)
        if self.held is None or not self._same(tensors, table):
            checked = self._check(tensors, table)
            if checked is not None:
                return checked
            self._hold(tensors, table)
        if table != self.overlap_free:
            if 0 in table and any(a == 0 and self.sizes[i] for i, a in enumerate(table)):
                return NO_MEMORY
            if self._overlap(table):
                return f"{OVERLAPPING} (two parameters share storage, or a state is a view of one)"
            self.overlap_free = table
        return Reading(table, count, tensors)

    def _table(self, tensors: dict[str, list[Tensor]]) -> array[int]:
        """Every tensor's address, a row per role (8-bit scales: 0 where a tensor has none)."""
        addresses = list(map(_pointer, tensors["params"]))
        for role in self.roles[1:]:
            addresses += map(_pointer, tensors[role])
        if addresses == self.last_addresses and not self.scale_keys:
            return self.last_table  # as last step: the same table, no conversion
        table = array("Q", addresses)
        self.last_addresses = addresses
        for key in self.scale_keys:
            row = array("Q", bytes(8 * len(self.numels)))
            for i, t in zip(self.q8, tensors[key], strict=True):
                row[i] = t.data_ptr()
            table += row
        self.last_table = table
        return table

    def _same(self, tensors: dict[str, list[Tensor]], table: array[int]) -> bool:
        """Whether the parameters, state tensors and counters are the ones checked before, at
        the same addresses (the gradients are new at every step, and checked above)."""
        assert self.held is not None
        for key in self.stateful:
            if not all(map(operator.is_, tensors[key], self.held[key])):
                return False
        count = len(self.numels)
        held = self.held_table
        return table[:count] == held[:count] and table[2 * count :] == held[2 * count :]

    def _check(self, tensors: dict[str, list[Tensor]], table: array[int]) -> str | None:
        """What is checked when a tensor is new or has moved: the device of state tensors,
        that no parameter is an inference tensor (torch refuses to update those in place),
        and that every tensor lies inside its storage. ``None`` when all is well, or why
        the kernel cannot take them."""
        for key in ("step", *self.scalar_keys):
            if not all(map(_is_cpu, tensors[key])):
                return f"the {key!r} counters are not all on the CPU"
            values = torch.stack([t.reshape(()) for t in tensors[key]]).double()
            bad = ~values.isfinite() | (values < 0 if key == "step" else False)
            if bool(bad.any()):
                number = values[bad][0].item()
                raise ValueError(
                    f"adamkit: a state[{key!r}] is {number}; a step count must be a finite "
                    "number >= 0 (and mu_product finite)"
                )
        for key in ("params", *self.moment_keys, *self.scale_keys):
            if not self._on_device(tensors[key]):
                return f"the {key!r} tensors are not all on {self.device}"
            if not all(map(_contiguous, tensors[key])):
                return f"the fused kernel needs contiguous tensors (the {key!r} are not)"
        if any(map(Tensor.is_inference, tensors["params"])):
            return "a parameter is an inference tensor (made under torch.inference_mode())"
        for key in ("params", *self.stateful):
            where = "a parameter" if key == "params" else f"the state {key!r}"
            for t in tensors[key]:
                check_storage(t, where)
        return None

    def _hold(self, tensors: dict[str, list[Tensor]], table: array[int]) -> None:
        self.held = {key: tensors[key] for key in self.stateful}
        self.held_table = table

    def _counters_fit(self, values: list[Any], dtype: torch.dtype) -> bool:
        """One number of ``dtype`` each (their device: where they are new or moved)."""
        if list(map(type, values)).count(Tensor) != len(values):
            return False  # a plain number (or a subclass): plan again, which says why
        if list(map(_dtype, values)).count(dtype) != len(values):
            return False
        return list(map(_numel, values)).count(1) == len(values)

    def _overlap(self, table: array[int]) -> bool:
        library = fused_library()
        if library is None:  # a GPU plan where the CPU library could not be built
            return overlapping(table, self.sizes, self.written)
        found = library.adamkit_overlap(
            len(table), address(table), address(self.sizes), address(self.written)
        )
        if found == -2:
            raise MemoryError("adamkit: no memory for the fused kernel's overlap check")
        return bool(found >= 0)


def overlapping(starts: Sequence[int], sizes: Sequence[int], written: Sequence[int]) -> bool:
    """Whether two of the byte ranges ``[start, start + size)`` overlap where at least one of
    them is written (adamkit_overlap's sweep, in Python, for when the CPU library is missing)."""
    written_end = read_end = 0
    for start, end, writes in sorted(
        (a, a + n, w) for a, n, w in zip(starts, sizes, written, strict=True) if n
    ):
        if start < written_end or (writes and start < read_end):
            return True
        if writes:
            written_end = max(written_end, end)
        else:
            read_end = max(read_end, end)
    return False


class FusedPlan:
    """What the CPU kernel needs to know about one bucket that does not change between steps.

    Building a bucket's plan (real views, checks, formats) costs about as much Python per
    tensor as the update itself costs the kernel for small tensors, so it is kept; each step
    reads the tensors afresh through :attr:`layout` and passes only those addresses, with the
    step scalars ``scalars_of`` gives (``optim/_scalars.py``).
    :meth:`AdamFamily.load_state_dict` drops the plans, since it replaces the state.
    """

    def __init__(
        self,
        scalars_of: StepScalars,
        bucket: Bucket,
        layout: Layout,
        amsgrad: bool,
        storage: Storage | None = None,
    ) -> None:
        self.scalars_of = scalars_of
        self.layout = layout
        self.dtype = bucket.params[0].dtype
        self.amsgrad = amsgrad
        self.storage = storage
        # What adamkit_step is told beside the addresses: the parts that do not change between
        # steps are filled in here (kernels/_abi.py names the slots). sizes: each tensor's
        # element count, then the first of its CHUNK-sized chunks, and the total.
        chunks = [0, *itertools.accumulate(-(-n // _abi.CHUNK) for n in layout.numels)]
        self.sizes = array("q", [*layout.numels, *chunks])
        self.rows = np.zeros((len(layout.numels), _abi.ROW))
        keys = layout.moment_keys  # 2 to MAX_STATES of them: the router checked
        self.hyper = array("d", [0.0] * _abi.HYPER_SLOTS)
        self.shape = array("q", [0] * _abi.SHAPE_SLOTS)
        self.shape[_abi.S_STATES] = len(keys)
        self.shape[_abi.S_SKIP] = 1 + len(layout.scalar_keys)
        self.shape[_abi.S_SCALES] = 1 if layout.q8 else 0
        self.state_formats: array[int] | None = None
        self.salts: array[int] | None = None
        self.codecs: array[int] | None = None
        if storage is None:
            self.shape[_abi.S_ELEMENT] = _abi.E_F32 if self.dtype == torch.float32 else _abi.E_F64
        else:
            self.shape[_abi.S_ELEMENT] = _abi.E_WIDE
            self.shape[_abi.S_PARAM_FMT] = storage.param_format(self.dtype)
            self.state_formats = array("B", storage.kernel_formats(bucket.params))
            self.salts = array("I", storage.salts)
            self.codecs = array("i", map(state_codec, keys))

    def read(
        self, params: list[Tensor], grads: list[Tensor], states: Sequence[Mapping[str, Any]]
    ) -> Reading | str | None:
        return self.layout.read(params, grads, states)

    def run(self, reading: Reading, h: Hyper, stats: UpdateStats | None = None) -> None:
        library = fused_library()
        assert library is not None  # a plan is only built where the kernel is available
        fill_scalars(self.rows, self.scalars_of, h, counters(reading, self.layout))
        hyper = array("d", self.hyper)
        hyper[_abi.H_LR], hyper[_abi.H_BETA1], hyper[_abi.H_BETA2] = h.lr, h.beta1, h.beta2
        hyper[_abi.H_EPS], hyper[_abi.H_WD] = h.eps, h.weight_decay
        shape = array("q", self.shape)
        shape[_abi.S_FLAGS] = (
            (MAXIMIZE if h.maximize else 0)
            | (DECOUPLED if h.decoupled_weight_decay else 0)
            | (DECAY_IN_BODY if h.decay_in_rule else 0)
        )
        shape[_abi.S_COUNT] = reading.count
        shape[_abi.S_THREADS] = torch.get_num_threads()
        if h.cautious or h.update_clipping:
            self._run_options(library, reading, h, hyper, shape, stats or UpdateStats())
            return
        # The calling thread's tiles for low-precision storage (each worker keeps its own).
        scratch = _scratch() if self.storage is not None else None
        status = library.adamkit_step(
            address(hyper),
            address(shape),
            address(self.sizes),
            self.rows.ctypes.data,
            reading.row(0),
            address(self.state_formats),
            address(self.salts),
            address(self.codecs),
            None if scratch is None else scratch.ctypes.data,
        )
        if status != 0:  # the plan describes its rows wrongly: a bug, and nothing was updated
            raise RuntimeError(f"the fused kernel refused the call (status {status})")

    def _run_options(
        self,
        library: Any,
        reading: Reading,
        h: Hyper,
        hyper: array[float],
        shape: array[int],
        stats: UpdateStats,
    ) -> None:
        """cautious / update_clipping in two passes (the kernel's pass 1 writes the moments,
        each element's update and per-chunk sums; the scales are computed here; pass 2
        applies them): as ``optim/_modifiers.py`` on the eager paths."""
        count = reading.count
        numels = np.asarray(self.layout.numels, dtype=np.float64)
        total = int(numels.sum())
        updates = self.__dict__.get("_updates")
        if updates is None or updates.numel() != total:  # the plan's buffer, kept
            updates = self._updates = torch.empty(total, dtype=self.dtype)
            offsets = itertools.accumulate(self.layout.numels[:-1], initial=0)
            size, base = updates.element_size(), updates.data_ptr()
            self._update_rows = array("Q", (base + size * offset for offset in offsets))
        table = array("Q", reading.table[: len(self.layout.roles) * count])
        table.extend(self._update_rows)
        # As the eager path: mean(g^2 / max(v_hat, eps^2)) = c mean(g^2 / max(v, c eps^2)).
        corrections = 1.0 - h.beta2 ** self.rows[:count, _abi.R_T]
        floors = np.ascontiguousarray(corrections * h.eps * h.eps)
        first = np.frombuffer(self.sizes, dtype=np.int64)[count:]
        sums = np.zeros((int(first[-1]), 2))
        status = library.adamkit_step_options(
            address(hyper),
            address(shape),
            address(self.sizes),
            self.rows.ctypes.data,
            address(table),
            floors.ctypes.data,
            sums.ctypes.data,
        )
        if status != 0:
            raise RuntimeError(f"the fused kernel refused the call (status {status})")
        # Each tensor's own chunks, summed (not differences of a running total: one tensor's
        # inf would make every later one's NaN). Empty tensors have no chunks.
        totals = np.zeros((count, 2))
        has_chunks = first[1:] > first[:-1]
        if has_chunks.any():
            totals[has_chunks] = np.add.reduceat(sums, first[:-1][has_chunks], axis=0)
        kept, ratio = totals.T
        factors = np.ones(count)
        if h.update_clipping:
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                rms = np.sqrt(corrections * np.where(numels > 0, ratio / numels, 0.0))
                # max(1, rms) as Python's max: a NaN RMS leaves the step as it is
                factors = np.where(rms > 1.0, 1.0 / rms, 1.0)
            stats.factors += factors.tolist()
        scales = factors * (numels / (kept + 1)) if h.cautious else factors
        if h.cautious:
            stats.kept += float(kept.sum())
            stats.elements += total
        decoupled = h.decoupled_weight_decay and h.weight_decay != 0
        shrinks = 1.0 - h.lr * factors * h.weight_decay if decoupled else np.ones(count)
        shrink_scale = np.ascontiguousarray(np.column_stack([shrinks, scales]).ravel())
        shape[_abi.S_FLAGS] |= _abi.CAUTIOUS if h.cautious else 0
        status = library.adamkit_apply_options(
            address(hyper),
            address(shape),
            address(self.sizes),
            address(table),
            shrink_scale.ctypes.data,
        )
        if status != 0:
            raise RuntimeError(f"the fused kernel refused the call (status {status})")


def _scratch() -> np.ndarray[Any, np.dtype[np.float32]]:
    """The calling thread's tiles for the low-precision loops."""
    return np.empty(_abi.SCRATCH_FLOATS, dtype=np.float32)


def counters(reading: Reading, layout: Layout) -> Counters:
    """This step's 0-d counters of a bucket (``step`` and its scalar state), with their
    addresses in the reading's table."""
    count = reading.count
    table = np.frombuffer(reading.table, dtype=np.uint64)
    addresses = {
        key: table[row * count : (row + 1) * count] for key, row in layout.counter_rows.items()
    }
    return Counters(reading.tensors, addresses, layout.counter_dtypes)


def state_codec(key: str) -> int:
    """A state tensor's codec word for the kernel: its sign and its rounding noise."""
    stream, high = noise(key)
    unsigned = _abi.CODEC_UNSIGNED if is_unsigned(key) else 0
    return unsigned | (_abi.CODEC_HIGH if high else 0) | stream << _abi.CODEC_STREAM


def address(values: array[Any] | None) -> int | None:
    """The first element's address, for the C library (``None``: no array, or an empty one)."""
    return values.buffer_info()[0] if values is not None and len(values) else None
