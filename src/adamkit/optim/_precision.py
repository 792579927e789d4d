"""Low-precision optimizer state: the codecs, and how a parameter's state is stored.

``state_precision`` picks how the moments (``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``,
Adamax's ``exp_inf``) are *stored*; the update math always runs in fp32. Per parameter:

* ``"fp32"`` (default): the moments are kept as torch.optim keeps them, in the parameter's dtype.
* ``"bf16"``: bfloat16 moments, written with stochastic rounding (unbiased, so an EMA whose
  per-step change is below bf16's resolution still moves on average). 4 bytes per parameter.
* ``"8bit"``: one byte per element and one fp32 scale per block of :data:`BLOCK` elements
  (2.03 bytes per parameter for Adam). Tensors smaller than :data:`MIN_NUMEL` elements keep
  full-precision state (as ``"fp32"``): biases and norms, a sliver of the memory, whose
  quantization would cost quality for nothing.

float64 and complex parameters always keep full-precision state.

The 8-bit codes are small floating-point formats applied to ``|x| / scale``, where ``scale`` is
the block's largest finite magnitude: a sign bit, 4 exponent and 3 mantissa bits for ``exp_avg``
(16 binades, ``2**-15 .. 1``), and 5 exponent bits and 3 mantissa bits for the non-negative
second moments (32 binades, ``2**-31 .. 1``, which is ``2**-15.5`` in ``sqrt(v)``, the quantity
the update divides by). Every element keeps the same *relative* precision (at most 1/16)
across the block's range, which is what matters for Adam: an element's update is
``m / sqrt(v)``, so a small element of a block is as important as its largest one. bitsandbytes'
dynamic map has the same aim; a float format reaches it with a few integer operations per
element, without a table search, so the fused kernel encodes at memory speed. The measured
comparison is ``benchmarks/quant_maps.py``: on real moments (an MLP, an embedding, a small
transformer) the float pair has the lowest 99th-percentile error of the update ``m / sqrt(v)``
among the candidates that never blow it up. A second moment never decodes to exactly 0 when its
block is not all zero: code 0 stands for ``2**-31 * scale``, the smallest binade, so a tiny
``v`` under a non-zero ``m`` cannot turn the step into ``m / eps`` (the "zero-point problem"
of Li et al. 2023, which the study measured in a bitsandbytes-style dynamic map: its unsigned
table stops at 3e-7, where real second moments reach 1e-10 of their block's maximum).

Stochastic rounding uses a counter-based hash of (element index, step, parameter, state key),
so it is reproducible and resumes exactly from a checkpoint. The fused kernel computes the same
noise and the same codecs bit for bit; its fp32 update arithmetic differs from the eager
paths' by an ulp (it multiplies by ``1 / sqrt(1 - beta2^t)`` where they divide), which can flip
a rounding decision, so a run resumes bit for bit on the path that wrote the checkpoint.
NaN and infinities have codes of their own (magnitudes 125 and 126 of ``exp_avg``'s code, 253
and 254 of the unsigned one), which finite values never take, so a non-finite moment stays in
its element, as in fp32: the block's scale and its other codes are what they would be without
it. A huge *finite* moment is its block's scale, though, and the block's other elements then
round to 0 (``exp_avg``) or to ``2**-31`` of it (the second moments) until it decays: the
block-wise format has one scale per block and no place for an outlier.

Everything here is written with torch operations; ``kernels/fused_cpu.c`` implements the same
codecs bit for bit inside its update loop.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..kernels._abi import (
    F_BF16,
    F_BF16_SR,
    F_F16,
    F_F32,
    F_Q8,
    HALF_ULP,
    HASH_MUL1,
    HASH_MUL2,
    INF_BITS,
    M_INF,
    M_NAN,
    M_OFFSET,
    NAN_BITS,
    Q8_BLOCK,
    SEED_COUNT,
    SEED_SALT,
    SEED_STREAM,
    V_INF,
    V_NAN,
    V_OFFSET,
)
from ._algorithms import is_unsigned
from ._algorithms import noise as state_noise
from ._core import Bucket, Hyper, Rule, local
from ._paths import TensorOps

__all__ = [
    "BLOCK",
    "MIN_NUMEL",
    "PRECISIONS",
    "StateMemory",
    "decode",
    "decode_8bit",
    "encode_8bit",
    "full_precision_state",
    "state_format",
    "state_memory",
    "to_bf16_stochastic",
]

PRECISIONS = ("fp32", "bf16", "8bit")
BLOCK = Q8_BLOCK
MIN_NUMEL = 4096

# Stored formats of one state tensor (the kernels' codes).
NATIVE, BF16, BF16_SR, Q8 = F_F32, F_BF16, F_BF16_SR, F_Q8
# fp16, rounded to nearest: only the kernels' view of an fp16 parameter and its state.
F16 = F_F16
_MASK32 = 0xFFFFFFFF
# Codes of non-finite values, which decode as themselves whatever their block's scale: the
# exp_avg code's magnitudes 125 (NaN) and 126 (infinity, signed by bit 7), the unsigned code's
# 253 and 254. Finite values normalized by their block's scale stay <= 1 (magnitude 120,
# unsigned 248), so these were never written; 127 and 255 stay finite (1.875 * scale), the
# codes an older encoder clamped to (blocks whose scale is below 2**-128, where 1 / scale
# overflows), so checkpoints written before these codes existed decode as they did.
_NEG_INF_BITS = (INF_BITS | 1 << 31) - (1 << 32)  # -inf's, as an int32


def scale_key(key: str) -> str:
    """The state entry holding ``key``'s per-block scales in 8-bit form."""
    return f"{key}_scale"


def state_format(param: Tensor, precision: str) -> int:
    """How ``param``'s moments are stored under ``precision`` (NATIVE, BF16_SR or Q8)."""
    if precision == "fp32" or param.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return NATIVE
    if precision == "8bit":
        return Q8 if param.numel() >= MIN_NUMEL else NATIVE
    return BF16_SR


def stored_format(
    param: Tensor, entry: Mapping[str, Any], precision: str, key: str = "exp_avg"
) -> int:
    """The format ``param``'s existing state is in (``state_format`` when it has none yet),
    read from its state ``key`` (a moment: not a state kept as the weights).

    State keeps the format it was created (or loaded) in: changing a group's
    ``state_precision`` later applies to state created afterwards, and to a checkpoint loaded
    afterwards, which converts. For bf16 parameters, whose full-precision state is bf16 too,
    ``precision`` still decides how it is rounded.
    """
    value = entry.get(key)
    if not isinstance(value, Tensor):
        return state_format(param, precision)
    if value.dtype == torch.uint8:
        return Q8
    if value.dtype == torch.bfloat16 and (param.dtype != torch.bfloat16 or precision == "bf16"):
        return BF16_SR
    return NATIVE


def blocks(numel: int) -> int:
    return (numel + BLOCK - 1) // BLOCK


# ------------------------------------------------------------------ stochastic rounding
def _noise_hash(x: Tensor) -> Tensor:
    """The first half of lowbias32, on int64 tensors holding uint32 values: an element's noise
    is ``_noise_hash(index ^ seed)``. For a fixed element ``index ^ seed`` is uniform over the
    steps because the seed is (full lowbias32 of the step), and a bijection of a uniform value
    is uniform, so each rounding is unbiased; the multiply decorrelates neighbouring elements
    within a step. (It is half the kernel's cost of the full hash.)"""
    x = x ^ (x >> 16)
    x = (x * HASH_MUL1) & _MASK32
    return x ^ (x >> 15)


def _mix32_int(x: int) -> int:
    """lowbias32 (a 32-bit integer hash) of a Python int: the per-step seed."""
    x &= _MASK32
    x ^= x >> 16
    x = (x * HASH_MUL1) & _MASK32
    x ^= x >> 15
    x = (x * HASH_MUL2) & _MASK32
    return x ^ (x >> 16)


def rounding_seed(step: float, salt: int, key: str) -> int:
    """The hash seed for one tensor's stochastic rounding at ``step`` (as the kernel's)."""
    mixed = int(step) * SEED_COUNT + salt * SEED_SALT + state_noise(key)[0] * SEED_STREAM
    return _mix32_int(mixed & _MASK32)


def random_bits(numel: int, seed: int, high: bool, device: torch.device | None = None) -> Tensor:
    """Uniform 16-bit integers (int64) for elements ``0..numel-1`` under ``seed``: the high or
    the low half of a 32-bit hash of each element's index."""
    hashed = _noise_hash(torch.arange(numel, dtype=torch.int64, device=device) ^ seed)
    return hashed >> 16 if high else hashed & 0xFFFF


def to_bf16_stochastic(x: Tensor, seed: int, high: bool = True) -> Tensor:
    """Round fp32 ``x`` to bfloat16 stochastically: up with probability equal to the fraction
    of the way to the next bfloat16, so ``E[result] = x``. NaN stays NaN; infinities stay.
    ``high`` picks which half of the hash is the noise (see ``_algorithms.noise``)."""
    bits = x.contiguous().view(torch.int32).to(torch.int64) & _MASK32
    noise = random_bits(x.numel(), seed, high, x.device).view(x.shape)
    rounded = (bits + noise) >> 16
    rounded = torch.where(torch.isnan(x), 0x7FC0, rounded)
    return (rounded - ((rounded & 0x8000) << 1)).to(torch.int16).view(torch.bfloat16)


# ------------------------------------------------------------------------------ 8-bit
def encode_8bit(x: Tensor, unsigned: bool) -> tuple[Tensor, Tensor]:
    """Quantize fp32 ``x`` blockwise: uint8 codes shaped like ``x``, and one fp32 scale (the
    largest finite magnitude of the block, 0 if it has none) per :data:`BLOCK` elements of the
    flattened tensor. NaN and infinities get codes of their own, so they stay where they are:
    the block's other elements are coded as if they were not there."""
    flat = x.reshape(-1)
    n = flat.numel()
    padded = torch.nn.functional.pad(flat, (0, blocks(n) * BLOCK - n)).view(-1, BLOCK)
    magnitude_bits = padded.view(torch.int32) & 0x7FFFFFFF  # |x|, NaN included
    magnitude = magnitude_bits.view(torch.float32)
    finite = magnitude_bits < INF_BITS
    scale = torch.where(finite, magnitude, 0.0).amax(dim=1)
    divisor = torch.where(scale > 0, scale, torch.ones_like(scale))
    bits = (magnitude * (1.0 / divisor)[:, None]).view(torch.int32)  # as the kernel
    if unsigned:
        codes = ((bits - V_OFFSET + HALF_ULP) >> 20).clamp_(0, 255)
        nan_code, inf_code = V_NAN, V_INF
    else:
        codes = ((bits - M_OFFSET + HALF_ULP) >> 20).clamp_(0, 127)
        nan_code, inf_code = M_NAN, M_INF
    special = torch.where(magnitude_bits == INF_BITS, inf_code, nan_code).to(torch.int32)
    codes = torch.where(finite, codes, special)
    if not unsigned:  # NaN < 0 is false: a NaN's code has no sign
        codes = codes | torch.where(padded < 0, 128, 0).to(torch.int32)
    return codes.view(-1)[:n].to(torch.uint8).view(x.shape), scale


def decode_8bit(codes: Tensor, scale: Tensor, unsigned: bool) -> Tensor:
    """The fp32 values of blockwise codes (the inverse of :func:`encode_8bit`, up to rounding;
    NaN and infinities come back as such, every NaN as the same positive quiet NaN)."""
    flat = codes.reshape(-1).to(torch.int32)
    per_element = scale.repeat_interleave(BLOCK)[: flat.numel()]
    if unsigned:
        value = ((flat << 20) + V_OFFSET).view(torch.float32)  # code 0: 2**-31, never 0
        magnitude, nan_code, inf_code = flat, V_NAN, V_INF
        inf_bits = torch.full_like(flat, INF_BITS)
    else:
        magnitude = flat & 127
        value = ((magnitude << 20) + M_OFFSET).view(torch.float32)
        value = torch.where(magnitude == 0, 0.0, value)
        value = torch.where(flat >= 128, -value, value)
        nan_code, inf_code = M_NAN, M_INF
        inf_bits = torch.where(flat >= 128, _NEG_INF_BITS, INF_BITS).to(torch.int32)
    bits = (value * per_element).view(torch.int32)
    bits = torch.where(magnitude == inf_code, inf_bits, bits)
    bits = torch.where(magnitude == nan_code, NAN_BITS, bits)
    return bits.view(torch.float32).view(codes.shape)


# ------------------------------------------------------------------- state entries
def decode(entry: Mapping[str, Any], key: str) -> Tensor:
    """State ``key`` of one parameter's ``entry`` as a full-precision tensor (a copy unless
    it is already fp32/fp64), whatever form it was stored in."""
    value: Tensor = local(entry[key])
    if value.dtype == torch.uint8:
        return decode_8bit(value, local(entry[scale_key(key)]).float(), is_unsigned(key))
    if value.dtype in (torch.float32, torch.float64) or value.is_complex():
        return value
    return value.float()


def encode(value: Tensor, fmt: int, key: str, param: Tensor, seed: int | None) -> dict[str, Tensor]:
    """``value`` (full precision) as format ``fmt`` stores it: the entries to put in state.

    ``seed`` drives stochastic rounding; ``None`` rounds to nearest (used when converting a
    checkpoint, which must not depend on a step).
    """
    if fmt == Q8:
        codes, scale = encode_8bit(value.float(), is_unsigned(key))
        return {key: codes, scale_key(key): scale}
    if fmt == BF16_SR:
        if seed is None:
            return {key: value.bfloat16()}
        return {key: to_bf16_stochastic(value.float(), seed, high=state_noise(key)[1])}
    return {key: value.to(param.dtype)}


def zeros(param: Tensor, fmt: int, key: str) -> dict[str, Tensor]:
    """A fresh (all-zero) state entry for ``key`` in format ``fmt``."""
    if fmt == Q8:  # codes sharded as the parameter is; scales for this shard's blocks
        return {
            key: torch.zeros_like(param, dtype=torch.uint8),
            scale_key(key): torch.zeros(blocks(local(param).numel()), device=param.device),
        }
    if fmt == BF16_SR:
        return {key: torch.zeros_like(param, dtype=torch.bfloat16)}
    return {key: torch.zeros_like(param, memory_format=torch.preserve_format)}


# ---------------------------------------------------------------------- memory report
@dataclass(frozen=True)
class StateMemory:
    """Optimizer state memory: the bytes of every state tensor, against the parameters."""

    total_bytes: int
    params: int  # parameter elements (complex elements count once)
    by_key: dict[str, int]

    @property
    def bytes_per_param(self) -> float:
        return self.total_bytes / self.params if self.params else 0.0

    def __str__(self) -> str:
        keys = ", ".join(f"{k} {v / 2**20:.2f} MiB" for k, v in sorted(self.by_key.items()))
        return (
            f"{self.total_bytes / 2**20:.2f} MiB of optimizer state for {self.params:,} "
            f"parameters: {self.bytes_per_param:.3f} bytes/param ({keys})"
        )


def state_memory(optimizer: torch.optim.Optimizer) -> StateMemory:
    """How much memory ``optimizer``'s state takes (any torch optimizer, adamkit's or not).

    Counts every tensor in ``optimizer.state`` (moments, codes, scales, step counters) by its
    storage size, and every parameter element of every param group; for sharded (DTensor)
    parameters and state, this process's shards.

    Example:
        >>> import torch, adamkit
        >>> opt = adamkit.Adam(torch.nn.Linear(100, 100).parameters(), state_precision="8bit")
        >>> state = adamkit.state_memory(opt)  # after a step: 2.03 bytes/param for the weight
    """
    by_key: dict[str, int] = {}
    for entry in optimizer.state.values():
        if not isinstance(entry, Mapping):
            continue  # an entry a user put beside the parameters' (torch allows any value)
        for key, value in entry.items():
            if isinstance(value, Tensor):
                value = local(value)
                by_key[key] = by_key.get(key, 0) + value.numel() * value.element_size()
    params: Iterable[Tensor] = (p for g in optimizer.param_groups for p in g["params"])
    return StateMemory(sum(by_key.values()), sum(local(p).numel() for p in params), by_key)


# ------------------------------------------------------------------- the eager paths
def needs_widening(params: list[Tensor], formats: Sequence[int], stochastic: bool) -> bool:
    """Whether a bucket must be stepped on fp32 copies (low-precision state, or bf16
    parameters rounded stochastically) rather than on its tensors directly."""
    return any(f != NATIVE for f in formats) or (
        stochastic and any(p.dtype == torch.bfloat16 for p in params)
    )


def widened_step(
    rule: Rule,
    ops: TensorOps,
    params: list[Tensor],
    states: list[dict[str, Any]],
    formats: Sequence[Mapping[str, int]],
    salts: list[int],
    moment_keys: tuple[str, ...],
    scalar_keys: tuple[str, ...],
    hyper: Hyper,
    stochastic: bool,
) -> None:
    """Run ``rule`` on fp32 views of a bucket, then store the results back in their formats
    (``formats[j][key]``: each tensor's, per state).

    fp32 parameters and fp32 state are used in place; everything else is decoded into an fp32
    temporary and encoded back after the step (the fused kernel does the same per block of
    256 elements, in cache, instead of per tensor).
    """
    shards = [local(p) for p in params]
    wide_params = [p if p.dtype == torch.float32 else p.float() for p in shards]
    bucket = Bucket(
        params=wide_params,
        grads=[g if g.dtype == torch.float32 else g.float() for g in map(local, _grads(params))],
        steps=[s["step"] for s in states],
    )
    for key in moment_keys:
        bucket.state[key] = [decode(s, key).float() for s in states]
    for key in scalar_keys:
        bucket.state[key] = [s[key] for s in states]
    rule(ops, bucket, hyper)

    for j, (p, entry) in enumerate(zip(shards, states, strict=True)):
        step = float(entry["step"])
        wide = wide_params[j]
        if wide is not p:
            if stochastic and p.dtype == torch.bfloat16:
                wide = to_bf16_stochastic(wide, rounding_seed(step, salts[j], "param"))
            p.copy_(wide)
        for key in moment_keys:
            value = bucket.state[key][j]
            if value is local(entry[key]):
                continue  # fp32 state, updated in place
            fmt = formats[j][key]
            seed = rounding_seed(step, salts[j], key) if fmt == BF16_SR else None
            for name, stored in encode(value, fmt, key, p, seed).items():
                local(entry[name]).copy_(stored)


def _grads(params: list[Tensor]) -> list[Tensor]:
    grads = []
    for p in params:
        assert p.grad is not None  # the base only buckets parameters that have a gradient
        grads.append(p.grad)
    return grads


def convert(saved: Mapping[str, Any], key: str, fmt: int, param: Tensor) -> dict[str, Tensor]:
    """Saved state ``key`` (in whatever form it was saved) as format ``fmt`` stores it for
    ``param``: copied unchanged when the forms agree (bit-exact resume), else decoded to full
    precision and encoded again (rounding to nearest)."""
    value: Tensor = saved[key]
    if value.dtype == torch.uint8 and fmt == Q8:
        return {key: value.clone(), scale_key(key): saved[scale_key(key)].float().clone()}
    if fmt == BF16_SR and value.dtype == torch.bfloat16:
        return {key: value.clone()}
    if fmt == NATIVE and value.dtype == param.dtype:
        return {key: value.clone()}
    return encode(decode(saved, key).to(param.device), fmt, key, param, None)


def full_precision_state(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of an optimizer state dict with every moment in full precision: 8-bit codes
    decoded (their scales dropped) and bf16 moments widened to fp32. torch.optim, and any
    release that reads only state format 1, can load the result. Every state format is read
    (8-bit codes under ``<moment>_codes`` or, format 2, under the moment's key); entries that
    are no parameter's pass through.

    Example:
        >>> import torch, adamkit
        >>> model = torch.nn.Linear(64, 64)
        >>> opt = adamkit.Adam(model.parameters(), state_precision="8bit")
        >>> sd = adamkit.full_precision_state(opt.state_dict())
        >>> torch.optim.Adam(model.parameters()).load_state_dict(sd)
    """
    from ._checkpoint import live_entry  # (it imports this module)

    parameters = {i for group in state_dict["param_groups"] for i in group["params"]}
    state: dict[Any, Any] = {}
    for index, entry in state_dict["state"].items():
        if index not in parameters or not isinstance(entry, Mapping):
            state[index] = entry
            continue
        entry = live_entry(entry)
        converted = {}
        for key, value in entry.items():
            base = key.removesuffix("_scale")
            if key.endswith("_scale") and base in entry and entry[base].dtype == torch.uint8:
                continue  # a code's scales: folded into the decoded moment
            if isinstance(value, Tensor) and value.dtype in (torch.uint8, torch.bfloat16):
                converted[key] = decode(entry, key).float()
            else:
                converted[key] = value
        state[index] = converted
    result = {**state_dict, "state": state}
    if isinstance(state_dict.get("adamkit"), Mapping):
        result["adamkit"] = {**state_dict["adamkit"], "format": 1}
    return result


# ------------------------------------------------------------- sharded (DTensor) state
def is_sharded(t: Any) -> bool:
    """Whether ``t`` is a DTensor (FSDP2, tensor parallel)."""
    return isinstance(t, Tensor) and isinstance(getattr(t, "_local_tensor", None), Tensor)


def sharded_like(param: Tensor, shard: Tensor) -> Tensor:
    """This process's ``shard`` as a DTensor laid out as the DTensor ``param``."""
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(
        shard,
        param.device_mesh,  # type: ignore[attr-defined]
        param.placements,  # type: ignore[attr-defined]
        run_check=False,
        shape=param.shape,
        stride=param.stride(),
    )


def shard_like(param: Tensor, full: Tensor) -> Tensor:
    """The full tensor ``full`` split as the DTensor ``param`` is (each process keeps its part,
    without communication)."""
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(
        full,
        param.device_mesh,  # type: ignore[attr-defined]
        param.placements,  # type: ignore[attr-defined]
        src_data_rank=None,
    )


def reshardable(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A saved state entry with sharded 8-bit codes replaced by their decoded fp32 values.

    Each process cuts its own shard into 256-element blocks, so codes and scales only make
    sense for the sharding that wrote them; a distributed checkpoint (which may be loaded by
    another number of processes) therefore holds the moments in fp32, sharded as the
    parameter, and loading re-encodes them for the new shards.
    """
    out = dict(entry)
    for key, value in entry.items():
        if is_sharded(value) and value.dtype == torch.uint8:
            out[key] = sharded_like(value, decode(entry, key))
            out.pop(scale_key(key), None)
    return out
