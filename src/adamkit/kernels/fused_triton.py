"""adamkit's fused GPU step, written in Triton: RAdam, NAdam and Adamax (torch has no fused
kernel for them), and every algorithm with low-precision state.

One launch steps every tensor of a bucket. Like ``fused_cpu.c`` it reads each element of p, g,
m, v (and v_max) once and writes p, m, v (and v_max) once, and allocates nothing per element.
The tensors are reached through tables of their addresses: program ``j`` updates ``BLOCK``
elements of tensor ``chunk_tensor[j]`` starting at ``chunk_start[j]``, so 2000 small tensors
cost one launch, as one large tensor does.

The step-dependent scalars (bias corrections, RAdam's rectification, NAdam's momentum schedule)
are computed on the host by the CPU library (``adamkit_step_scalars``), which also increments
the step counters: they stay 0-d CPU tensors, as torch keeps them outside its fused and
capturable modes, and each launch receives a table of ``ROW`` scalars per tensor. The element
math is the CPU kernel's, in the same operation order:

- ``fused_step``: state in the parameters' dtype; fp32 math for fp32, fp16 and bf16 tensors
  (stored back rounded to nearest, as torch's fused kernels do), fp64 for fp64.
- ``fused_step_wide``: fp32 or bf16 parameters with bf16 or 8-bit state, or stochastically
  rounded bf16 parameters (``optim/_precision.py`` defines the formats): the CPU kernel's
  codecs and rounding noise, bit for bit.

adamkit imports this module only when a bucket on a GPU is stepped, so it runs without Triton.
With ``TRITON_INTERPRET=1`` set before that import, Triton runs these kernels on CPU tensors;
the test suite checks their math that way on machines without a GPU, bit-identical to the CPU
kernel. On a GPU they are compiled without FMA contraction (``enable_fp_fusion=False``) and with
IEEE sqrt and division, so they should round the same; that is still to be run on a card.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

__all__ = ["BLOCK", "launch"]

#: Elements per program. A power of two; the CPU kernel's loops are chunked the same way.
BLOCK = 2048
_NUM_WARPS = 8

# The CPU library's element-loop kinds (scalars_t.kind in fused_cpu.c).
K_RADAM: tl.constexpr = 2
#: Step scalars per tensor, as adamkit_step_scalars writes them: a, b, c, kind, t.
ROW: tl.constexpr = 5


# IEEE-rounded square root and division, as the CPU kernel and torch's kernels compute
# them (Triton's fp32 defaults are approximate; fp64's are exact already).
@triton.jit
def sqrt(x, COMPUTE: tl.constexpr):
    if COMPUTE == tl.float64:
        return tl.sqrt(x)
    return tl.sqrt_rn(x)


@triton.jit
def div(x, y, COMPUTE: tl.constexpr):
    if COMPUTE == tl.float64:
        return x / y
    return tl.div_rn(x, y)


@triton.jit
def rounded(x, DTYPE: tl.constexpr):
    """``x`` (the compute type) rounded to nearest-even in ``DTYPE``. bf16 is rounded by hand,
    as the hardware rounds it, because Triton's interpreter truncates instead."""
    if DTYPE == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        bits = tl.where(x != x, 0x7FC0, bits)  # NaN stays NaN
        return bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return x.to(DTYPE)


@triton.jit
def update(
    param,
    grad,
    m,
    v,
    old_max,
    scalars,
    hyper,
    k,
    ALGO: tl.constexpr,
    DECAY: tl.constexpr,
    AMSGRAD: tl.constexpr,
    COMPUTE: tl.constexpr,
    INVERSE_B: tl.constexpr,
):
    """One step of the element math, as fused_cpu.c's loops: returns (p, m, v, v_max).

    ``INVERSE_B``: ``b`` holds 1 / sqrt(1 - beta2^t) and multiplies, as the CPU kernel's loop
    for low-precision storage does; otherwise it is sqrt(1 - beta2^t) and divides."""
    sign = tl.load(hyper).to(COMPUTE)
    shrink = tl.load(hyper + 1).to(COMPUTE)
    one_minus_beta1 = tl.load(hyper + 2).to(COMPUTE)
    beta2 = tl.load(hyper + 3).to(COMPUTE)
    one_minus_beta2 = tl.load(hyper + 4).to(COMPUTE)
    eps = tl.load(hyper + 5).to(COMPUTE)
    wd = tl.load(hyper + 6).to(COMPUTE)
    a = tl.load(scalars + ROW * k).to(COMPUTE)
    b = tl.load(scalars + ROW * k + 1).to(COMPUTE)
    c = tl.load(scalars + ROW * k + 2).to(COMPUTE)
    kind = tl.load(scalars + ROW * k + 3)

    grad = sign * grad
    if DECAY == 1:
        grad += wd * param
    if DECAY == 2:
        param *= shrink
    m = m + one_minus_beta1 * (grad - m)
    top = old_max
    if ALGO == 3:  # Adamax: u = max(beta2 u, |g| + eps); p -= a m / u
        norm = tl.abs(grad) + eps
        v = beta2 * v
        v = tl.where(v > norm, v, norm)
        param = param - div(a * m, v, COMPUTE)
    else:
        v = beta2 * v + one_minus_beta2 * grad * grad
        if ALGO == 0:  # Adam: p -= a m / (sqrt(v) / b + eps)
            top = v
            if AMSGRAD:
                top = tl.where(old_max > v, old_max, v)  # a NaN v propagates, as in torch
            if INVERSE_B:
                denom = sqrt(top, COMPUTE) * b + eps
            else:
                denom = div(sqrt(top, COMPUTE), b, COMPUTE) + eps
            param = param - div(a * m, denom, COMPUTE)
        elif ALGO == 1:  # RAdam: p -= a m / (sqrt(v) + eps), or p -= a m before rectifying
            denom = tl.where(kind == K_RADAM, sqrt(v, COMPUTE) + eps, 1.0)
            param = param - div(a * m, denom, COMPUTE)
        else:  # NAdam: p -= (a g + c m) / (sqrt(v) / b + eps)
            if INVERSE_B:
                denom = sqrt(v, COMPUTE) * b + eps
            else:
                denom = div(sqrt(v, COMPUTE), b, COMPUTE) + eps
            param = param - div(a * grad + c * m, denom, COMPUTE)
    return param, m, v, top


@triton.jit
def fused_step(
    chunk_tensor,  # int32[chunks]: the tensor each program updates
    chunk_start,  # int64[chunks]: its first element
    numels,  # int64[count]
    params,  # int64[count] tables of addresses
    grads,
    exp_avgs,
    seconds,
    maxes,
    scalars,  # float64[count, ROW]: a, b, c, kind, t per tensor (adamkit_step_scalars)
    hyper,  # float64[7]: sign, shrink, 1 - beta1, beta2, 1 - beta2, eps, wd
    ALGO: tl.constexpr,  # 0 Adam, 1 RAdam, 2 NAdam, 3 Adamax (fused_cpu.c's enum)
    DECAY: tl.constexpr,  # 0 none, 1 coupled (g += wd p), 2 decoupled (p *= 1 - lr wd)
    AMSGRAD: tl.constexpr,
    DTYPE: tl.constexpr,  # the tensors' element type
    COMPUTE: tl.constexpr,  # the type the math runs in
    BLOCK: tl.constexpr,
):
    """Full-precision state in the parameters' dtype."""
    j = tl.program_id(0)
    k = tl.load(chunk_tensor + j)
    offsets = tl.load(chunk_start + j) + tl.arange(0, BLOCK)
    mask = offsets < tl.load(numels + k)
    p_ptr = tl.load(params + k).to(tl.pointer_type(DTYPE))
    g_ptr = tl.load(grads + k).to(tl.pointer_type(DTYPE))
    m_ptr = tl.load(exp_avgs + k).to(tl.pointer_type(DTYPE))
    v_ptr = tl.load(seconds + k).to(tl.pointer_type(DTYPE))
    param = tl.load(p_ptr + offsets, mask=mask).to(COMPUTE)
    grad = tl.load(g_ptr + offsets, mask=mask).to(COMPUTE)
    m = tl.load(m_ptr + offsets, mask=mask).to(COMPUTE)
    v = tl.load(v_ptr + offsets, mask=mask).to(COMPUTE)
    old_max = v
    if AMSGRAD:
        vmax_ptr = tl.load(maxes + k).to(tl.pointer_type(DTYPE))
        old_max = tl.load(vmax_ptr + offsets, mask=mask).to(COMPUTE)
    param, m, v, top = update(
        param, grad, m, v, old_max, scalars, hyper, k, ALGO, DECAY, AMSGRAD, COMPUTE, False
    )
    tl.store(m_ptr + offsets, rounded(m, DTYPE), mask=mask)
    tl.store(v_ptr + offsets, rounded(v, DTYPE), mask=mask)
    if AMSGRAD:
        tl.store(vmax_ptr + offsets, rounded(top, DTYPE), mask=mask)
    tl.store(p_ptr + offsets, rounded(param, DTYPE), mask=mask)


# ----------------------------------------------------------------- low-precision storage
# The formats of optim/_precision.py, bit for bit as fused_cpu.c implements them.
F_F32: tl.constexpr = 0
F_BF16: tl.constexpr = 1
F_BF16_SR: tl.constexpr = 2
F_Q8: tl.constexpr = 3
# Each rounding stream's term of the seed, stream * 0xC2B2AE35 mod 2**32 (fused_cpu.c's
# SALT_MOMENTS = 0, SALT_MAX = 2, SALT_PARAM = 3).
MOMENTS_STREAM: tl.constexpr = 0
MAX_STREAM: tl.constexpr = (2 * 0xC2B2AE35) % (1 << 32)
PARAM_STREAM: tl.constexpr = (3 * 0xC2B2AE35) % (1 << 32)
Q8_BLOCK: tl.constexpr = 256  # elements per 8-bit scale
M_OFFSET: tl.constexpr = 112 << 23  # float bits of 2**-15, the exp_avg code's smallest binade
V_OFFSET: tl.constexpr = 96 << 23  # 2**-31, the second moments'
HALF_ULP: tl.constexpr = 1 << 19  # half a unit of the codes' 3-bit mantissa


@triton.jit
def rounding_seed(t, salt, STREAM: tl.constexpr):
    """lowbias32 of (step, tensor, stream): one tensor's rounding seed for this step."""
    x = t.to(tl.int64).to(tl.uint32) * 0x9E3779B9 + salt * 0x85EBCA6B + STREAM
    x ^= x >> 16
    x *= 0x7FEB352D
    x ^= x >> 15
    x *= 0x846CA68B
    return x ^ (x >> 16)


@triton.jit
def noise(offsets, seed, HIGH: tl.constexpr):
    """16 uniform bits per element: half of the first round of lowbias32 of index ^ seed."""
    x = offsets.to(tl.uint32) ^ seed
    x ^= x >> 16
    x *= 0x7FEB352D
    x ^= x >> 15
    if HIGH:
        return x >> 16
    return x & 0xFFFF


@triton.jit
def bf16_bits(x, seed, STOCHASTIC: tl.constexpr, offsets, HIGH: tl.constexpr):
    """fp32 ``x`` rounded to bf16 (as uint16 bits): to nearest-even, or up with probability
    equal to the discarded fraction (unbiased). NaN stays NaN."""
    bits = x.to(tl.uint32, bitcast=True)
    if STOCHASTIC:
        bits = (bits + noise(offsets, seed, HIGH)) >> 16
    else:
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return tl.where(x != x, 0x7FC0, bits).to(tl.uint16)


@triton.jit
def load_state(address, scales, offsets, mask, fmt, UNSIGNED: tl.constexpr):
    """One state tensor's elements as fp32, whatever format they are stored in."""
    if fmt == F_Q8:
        code = tl.load(address.to(tl.pointer_type(tl.uint8)) + offsets, mask=mask, other=0)
        code = code.to(tl.int32)
        scale_ptr = scales.to(tl.pointer_type(tl.float32))
        scale = tl.load(scale_ptr + offsets // Q8_BLOCK, mask=mask, other=0.0)
        if UNSIGNED:  # code 0 decodes to 2**-31 of the block's scale, never to 0
            value = ((code << 20) + V_OFFSET).to(tl.float32, bitcast=True)
        else:
            magnitude = code & 127
            value = ((magnitude << 20) + M_OFFSET).to(tl.float32, bitcast=True)
            value = tl.where(magnitude == 0, 0.0, value)
            value = tl.where(code >= 128, -value, value)
        value = value * scale
    elif fmt == F_F32:
        value = tl.load(address.to(tl.pointer_type(tl.float32)) + offsets, mask=mask, other=0.0)
    else:
        bits = tl.load(address.to(tl.pointer_type(tl.uint16)) + offsets, mask=mask, other=0)
        value = (bits.to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    return value


@triton.jit
def store_state(
    address,
    scales,
    start,
    offsets,
    mask,
    value,
    fmt,
    seed,
    numel,
    UNSIGNED: tl.constexpr,
    HIGH: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Store fp32 ``value`` in the tensor's format (8-bit: codes and the blocks' scales)."""
    if fmt == F_Q8:
        # Each block's scale is its largest magnitude (NaN if it holds one, as torch's amax:
        # the bits of non-negative floats order as the floats, a NaN's above infinity's).
        magnitude = tl.where(mask, tl.abs(value), 0.0)
        bits = magnitude.to(tl.int32, bitcast=True)
        # tl.max's own reduction: spelled out because tl.max is a Triton function, which the
        # interpreter cannot call when triton was imported before TRITON_INTERPRET was set;
        # the interpreter runs this combine function as numpy's max.
        blocks = tl.reshape(bits, (BLOCK // Q8_BLOCK, Q8_BLOCK))
        most = tl.reduce(blocks, 1, tl.standard._elementwise_max)
        top = most.to(tl.float32, bitcast=True)
        inverse = div(tl.full(top.shape, 1.0, tl.float32), tl.where(top > 0, top, 1.0), tl.float32)
        normalized = tl.reshape(magnitude, (BLOCK // Q8_BLOCK, Q8_BLOCK)) * inverse[:, None]
        normalized = tl.reshape(normalized, (BLOCK,))
        if UNSIGNED:
            code = (normalized.to(tl.int32, bitcast=True) - V_OFFSET + HALF_ULP) >> 20
            code = tl.minimum(tl.maximum(code, 0), 255)
        else:
            code = (normalized.to(tl.int32, bitcast=True) - M_OFFSET + HALF_ULP) >> 20
            code = tl.minimum(tl.maximum(code, 0), 127)
            code = code | tl.where(value < 0, 128, 0)
        tl.store(address.to(tl.pointer_type(tl.uint8)) + offsets, code.to(tl.uint8), mask=mask)
        block = start // Q8_BLOCK + tl.arange(0, BLOCK // Q8_BLOCK)
        scale_ptr = scales.to(tl.pointer_type(tl.float32))
        tl.store(scale_ptr + block, top, mask=block * Q8_BLOCK < numel)
    elif fmt == F_F32:
        tl.store(address.to(tl.pointer_type(tl.float32)) + offsets, value, mask=mask)
    elif fmt == F_BF16_SR:
        bits = bf16_bits(value, seed, True, offsets, HIGH)
        tl.store(address.to(tl.pointer_type(tl.uint16)) + offsets, bits, mask=mask)
    else:
        bits = bf16_bits(value, seed, False, offsets, HIGH)
        tl.store(address.to(tl.pointer_type(tl.uint16)) + offsets, bits, mask=mask)


@triton.jit
def fused_step_wide(
    chunk_tensor,
    chunk_start,
    numels,
    params,
    grads,
    exp_avgs,
    seconds,
    maxes,
    scalars,
    hyper,
    formats,  # int32[count]: each tensor's state format (F_*)
    m_scales,  # int64[count] addresses of the 8-bit scales (0 where not 8-bit)
    v_scales,
    max_scales,
    salts,  # int64[count]: each tensor's rounding salt
    ALGO: tl.constexpr,
    DECAY: tl.constexpr,
    AMSGRAD: tl.constexpr,
    PARAM_FORMAT: tl.constexpr,  # F_F32, F_BF16 (nearest) or F_BF16_SR (stochastic)
    BLOCK: tl.constexpr,
):
    """fp32 or bf16 parameters with bf16 or 8-bit state, or stochastically rounded bf16
    parameters: each element is decoded to fp32, stepped, and encoded back in one pass."""
    j = tl.program_id(0)
    k = tl.load(chunk_tensor + j)
    start = tl.load(chunk_start + j)
    offsets = start + tl.arange(0, BLOCK)
    numel = tl.load(numels + k)
    mask = offsets < numel
    fmt = tl.load(formats + k)
    t = tl.load(scalars + ROW * k + 4)
    salt = tl.load(salts + k).to(tl.uint32)
    ms = tl.load(m_scales + k)
    vs = tl.load(v_scales + k)
    if PARAM_FORMAT == F_F32:
        p_ptr = tl.load(params + k).to(tl.pointer_type(tl.float32))
        param = tl.load(p_ptr + offsets, mask=mask)
        grad = tl.load(tl.load(grads + k).to(tl.pointer_type(tl.float32)) + offsets, mask=mask)
    else:
        p_ptr = tl.load(params + k).to(tl.pointer_type(tl.uint16))
        param = (tl.load(p_ptr + offsets, mask=mask).to(tl.uint32) << 16).to(
            tl.float32, bitcast=True
        )
        g_ptr = tl.load(grads + k).to(tl.pointer_type(tl.uint16))
        grad = (tl.load(g_ptr + offsets, mask=mask).to(tl.uint32) << 16).to(
            tl.float32, bitcast=True
        )
    m = load_state(tl.load(exp_avgs + k), ms, offsets, mask, fmt, False)
    v = load_state(tl.load(seconds + k), vs, offsets, mask, fmt, True)
    old_max = v
    if AMSGRAD:
        xs = tl.load(max_scales + k)
        old_max = load_state(tl.load(maxes + k), xs, offsets, mask, fmt, True)
    param, m, v, top = update(
        param, grad, m, v, old_max, scalars, hyper, k, ALGO, DECAY, AMSGRAD, tl.float32, True
    )
    if PARAM_FORMAT == F_F32:
        tl.store(p_ptr + offsets, param, mask=mask)
    else:
        seed = rounding_seed(t, salt, PARAM_STREAM)
        bits = bf16_bits(param, seed, PARAM_FORMAT == F_BF16_SR, offsets, True)
        tl.store(p_ptr + offsets, bits, mask=mask)
    seed = rounding_seed(t, salt, MOMENTS_STREAM)  # one hash: exp_avg its low, v its high bits
    store_state(
        tl.load(exp_avgs + k), ms, start, offsets, mask, m, fmt, seed, numel, False, False, BLOCK
    )
    store_state(
        tl.load(seconds + k), vs, start, offsets, mask, v, fmt, seed, numel, True, True, BLOCK
    )
    if AMSGRAD:
        seed = rounding_seed(t, salt, MAX_STREAM)
        store_state(
            tl.load(maxes + k), xs, start, offsets, mask, top, fmt, seed, numel, True, True, BLOCK
        )


def launch(
    chunks: int,
    tables: dict[str, Any],
    scalars: Any,
    hyper: Any,
    algorithm: int,
    decay: int,
    amsgrad: bool,
    dtype: Any,
    param_format: int | None = None,
) -> None:
    """Run a kernel over ``chunks`` programs (see the kernels' arguments): ``fused_step``, or
    with ``param_format`` (low-precision storage, see Storage in optim/_fused.py)
    ``fused_step_wide``."""
    common = [tables[name] for name in _TABLES] + [scalars, hyper]
    # enable_fp_fusion=False: no contraction into FMAs, so the arithmetic rounds as the CPU
    # kernel's (compiled as ISO C, which contracts nothing) and as torch's eager operations.
    flags = {
        "ALGO": algorithm,
        "DECAY": decay,
        "AMSGRAD": amsgrad,
        "BLOCK": BLOCK,
        "enable_fp_fusion": False,
    }
    if param_format is not None:
        wide = [tables[name] for name in ("formats", "m_scales", "v_scales", "max_scales")]
        fused_step_wide[(chunks,)](
            *common,
            *wide,
            tables["salts"],
            PARAM_FORMAT=param_format,
            num_warps=_NUM_WARPS,
            **flags,
        )
        return
    element = {
        torch.float32: tl.float32,
        torch.float64: tl.float64,
        torch.float16: tl.float16,
        torch.bfloat16: tl.bfloat16,
    }[dtype]
    compute = tl.float64 if dtype == torch.float64 else tl.float32
    fused_step[(chunks,)](*common, DTYPE=element, COMPUTE=compute, num_warps=_NUM_WARPS, **flags)


_TABLES = (
    "chunk_tensor",
    "chunk_start",
    "numels",
    "params",
    "grads",
    "exp_avgs",
    "seconds",
    "maxes",
)
