"""adamkit's fused GPU step, written in Triton: RAdam, NAdam and Adamax (torch has no fused
kernel for them), and every algorithm with low-precision state.

One launch steps every tensor of a bucket. Like ``fused_cpu.c`` it reads each element of p, g,
m, v (and v_max) once and writes p, m, v (and v_max) once, and allocates nothing per element.
The tensors are reached through tables of their addresses: program ``j`` updates ``BLOCK``
elements of tensor ``chunk_tensor[j]`` starting at ``chunk_start[j]``, so 2000 small tensors
cost one launch, as one large tensor does.

The step-dependent scalars (bias corrections, RAdam's rectification, NAdam's momentum schedule)
are computed on the host, by the same function as for the CPU kernel (``optim/_scalars.py``),
after the step counters are incremented: they stay 0-d CPU tensors, as torch keeps them outside
its fused and capturable modes, and each launch receives a table of ``ROW`` scalars per tensor.
The element math is the CPU kernel's, in the same operation order:

- ``fused_step``: state in the parameters' dtype; fp32 math for fp32, fp16 and bf16 tensors
  (stored back rounded to nearest, as torch's fused kernels do), fp64 for fp64.
- ``fused_step_wide``: fp32 or bf16 parameters with bf16 or 8-bit state, or stochastically
  rounded bf16 parameters (``optim/_precision.py`` defines the formats): the CPU kernel's
  codecs and rounding noise, bit for bit.

adamkit imports this module only when a bucket on a GPU is stepped, so it runs without Triton.
With ``TRITON_INTERPRET=1`` set before that import, Triton runs these kernels on CPU tensors;
the test suite checks their math that way on machines without a GPU, bit-identical to the CPU
kernel. On a GPU they are compiled without FMA contraction (``enable_fp_fusion=False``) and with
IEEE sqrt and division, so they should round the same. The suite also compiles them for sm_90
with Triton's compiler and checks the PTX for that (tests/gpu_compile_worker.py), but they have
not yet run on a card.

Where every element array's address is a multiple of 16 bytes (torch's allocations are),
whole blocks are read and written with vector accesses (16 bytes a thread for fp32 arrays, 8
for bf16, 4 for 8-bit codes); a tensor's last, partial block is masked element by element.
Unaligned addresses (views at an offset) take a variant without the vector accesses, which
would fault on them.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from ..optim._algorithms import KINDS
from . import _abi as abi

__all__ = ["BLOCK", "OPTIONS", "launch", "specialization"]

#: Elements per program, with OPTIONS' 8 warps: 4 per thread, one 16-byte access per fp32
#: array (8 bytes per bf16 one). ptxas (sm_90) needs 34-56 registers a thread for it in fp32,
#: so 40-48 warps stay resident per SM, and 64-80 with low-precision state (24-32 warps);
#: 2048 elements a program needed 110-150 and left 8 to 16 (BENCHMARKS.md has every variant).
#: A multiple of the 8-bit scale's 256 elements.
BLOCK = 1024

# The element loops' kinds (the algorithm table's KINDS; the C kernel's AK_K_*): ALGO is an
# algorithm's first, and its step-scalar row names the one each tensor takes.
K_ADAM = tl.constexpr(KINDS["adam"])
K_RADAM = tl.constexpr(KINDS["radam"])
K_NADAM = tl.constexpr(KINDS["nadam"])
K_ADAMAX = tl.constexpr(KINDS["adamax"])
K_ADEMAMIX = tl.constexpr(KINDS["ademamix"])
K_ADOPT = tl.constexpr(KINDS["adopt"])
K_ADOPT_FIRST = tl.constexpr(KINDS["adopt_first"])
K_SCHEDULEFREE = tl.constexpr(KINDS["schedulefree"])
#: Step scalars per tensor, as optim/_scalars.py writes them: a, b, c, kind, t.
ROW = tl.constexpr(abi.ROW)
R_A, R_B, R_C = tl.constexpr(abi.R_A), tl.constexpr(abi.R_B), tl.constexpr(abi.R_C)
R_D = tl.constexpr(abi.R_D)
R_KIND, R_T = tl.constexpr(abi.R_KIND), tl.constexpr(abi.R_T)


# IEEE-rounded square root and division, as the CPU kernel and torch's kernels compute
# them (Triton's fp32 defaults are approximate; fp64's are exact already).
@triton.jit
def sqrt(x, COMPUTE: tl.constexpr):
    return tl.sqrt(x) if COMPUTE == tl.float64 else tl.sqrt_rn(x)


@triton.jit
def div(x, y, COMPUTE: tl.constexpr):
    return x / y if COMPUTE == tl.float64 else tl.div_rn(x, y)


@triton.jit
def rounded(x, DTYPE: tl.constexpr):
    """``x`` (the compute type) rounded to nearest-even in ``DTYPE``. bf16 is rounded by hand,
    as the hardware rounds it, because Triton's interpreter truncates instead."""
    if DTYPE == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        bits = tl.where(x != x, 0x7FC0, bits)  # NaN stays NaN
        result = bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        result = x.to(DTYPE)
    return result


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
    a = tl.load(scalars + ROW * k + R_A).to(COMPUTE)
    b = tl.load(scalars + ROW * k + R_B).to(COMPUTE)
    c = tl.load(scalars + ROW * k + R_C).to(COMPUTE)
    d = tl.load(scalars + ROW * k + R_D).to(COMPUTE)
    kind = tl.load(scalars + ROW * k + R_KIND)

    grad = sign * grad
    if DECAY == 1:
        grad += wd * param
    if DECAY == 2:
        param *= shrink
    if ALGO != K_ADOPT and ALGO != K_SCHEDULEFREE:  # those two keep no EMA of the gradient
        m = m + one_minus_beta1 * (grad - m)
    top = old_max
    if ALGO == K_ADOPT:  # g / max(sqrt(v_prev), eps), clipped to +-c; p -= a m; then v
        root = sqrt(v, COMPUTE)
        normed = div(grad, tl.where(root < eps, eps, root), COMPUTE)
        normed = tl.where(normed < -c, -c, tl.where(normed > c, c, normed))
        first = kind == K_ADOPT_FIRST  # the first step only adds g^2 to v
        new_m = m + one_minus_beta1 * (normed - m)
        param = tl.where(first, param, param - a * new_m)
        m = tl.where(first, m, new_m)
        v = tl.where(first, v + grad * grad, beta2 * v + one_minus_beta2 * grad * grad)
    elif ALGO == K_ADAMAX:  # Adamax: u = max(beta2 u, |g| + eps); p -= a m / u
        norm = tl.abs(grad) + eps
        v = beta2 * v
        v = tl.where(v > norm, v, norm)
        param = param - div(a * m, v, COMPUTE)
    else:
        v = beta2 * v + one_minus_beta2 * grad * grad
        if ALGO == K_ADAM:  # Adam: p -= a m / (sqrt(v) / b + eps)
            top = v
            if AMSGRAD:
                top = tl.where(old_max > v, old_max, v)  # a NaN v propagates, as in torch
            if INVERSE_B:
                denom = sqrt(top, COMPUTE) * b + eps
            else:
                denom = div(sqrt(top, COMPUTE), b, COMPUTE) + eps
            param = param - div(a * m, denom, COMPUTE)
        elif ALGO == K_RADAM:  # RAdam: p -= a m / (sqrt(v) + eps), or p -= a m before rectifying
            denom = tl.where(kind == K_RADAM, sqrt(v, COMPUTE) + eps, 1.0)
            param = param - div(a * m, denom, COMPUTE)
        elif ALGO == K_SCHEDULEFREE:  # p is y, m is z: u = g / (sqrt(v) / b + eps) + wd y
            if INVERSE_B:
                denom = sqrt(v, COMPUTE) * b + eps
            else:
                denom = div(sqrt(v, COMPUTE), b, COMPUTE) + eps
            u = div(grad, denom, COMPUTE) + wd * param
            y = tl.where(d < 0.5, param + d * (m - param), m - (m - param) * (1.0 - d))
            param = y + a * u  # y <- lerp(y, z, d) + a u ; z <- z - c u
            m = m - c * u
        elif ALGO == K_ADEMAMIX:  # the third state is the slow EMA: p -= (a m + c slow) / denom
            top = old_max + d * (grad - old_max)
            if INVERSE_B:
                denom = sqrt(v, COMPUTE) * b + eps
            else:
                denom = div(sqrt(v, COMPUTE), b, COMPUTE) + eps
            param = param - div(a * m + c * top, denom, COMPUTE)
        else:  # NAdam: p -= (a g + c m) / (sqrt(v) / b + eps)
            if INVERSE_B:
                denom = sqrt(v, COMPUTE) * b + eps
            else:
                denom = div(sqrt(v, COMPUTE), b, COMPUTE) + eps
            param = param - div(a * grad + c * m, denom, COMPUTE)
    return param, m, v, top


@triton.jit
def as_pointer(address, DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
    """An address from a table as a pointer to ``DTYPE``. ``ALIGNED``: the plan checked that
    every element array (parameters, gradients, state; not the 8-bit scales, which get no
    hint) starts on a 16-byte boundary, so whole blocks are loaded and stored with vector
    instructions."""
    pointer = address.to(tl.pointer_type(DTYPE))
    if ALIGNED:
        pointer = tl.multiple_of(pointer, 16)
    return pointer


@triton.jit
def locate(chunk_tensor, chunk_start, numels, BLOCK: tl.constexpr):
    """This program's tensor ``k``, the first element of its block, and the tensor's size."""
    j = tl.program_id(0)
    k = tl.load(chunk_tensor + j)
    # A multiple of BLOCK, which makes whole blocks' accesses vectorisable. The hint must be
    # given here, on the load: on a function's argument it is lost.
    start = tl.multiple_of(tl.load(chunk_start + j), BLOCK)
    return k, start, tl.load(numels + k)


@triton.jit
def elements(start, numel, MASKED: tl.constexpr, BLOCK: tl.constexpr):
    """A block's element offsets and which of them lie in its tensor. Only a tensor's last
    block is ``MASKED``: a whole block's mask is constant, which lets its loads be vectorised."""
    offsets = start + tl.arange(0, BLOCK)
    mask = offsets < numel if MASKED else tl.full((BLOCK,), 1, tl.int1)
    return offsets, mask


@triton.jit
def fused_step(
    chunk_tensor,  # int64[chunks]: the tensor each program updates
    chunk_start,  # int64[chunks]: its first element, a multiple of BLOCK
    numels,  # int64[count]
    params,  # int64[count] tables of addresses
    grads,
    states,  # int64[states * count]: row q holds each tensor's state q (the row's order)
    count,  # tensors in the bucket
    scalars,  # float64[count, ROW]: a, b, c, kind, t per tensor (optim/_scalars.py)
    hyper,  # float64[7]: sign, shrink, 1 - beta1, beta2, 1 - beta2, eps, wd
    ALGO: tl.constexpr,  # the algorithm's first kind: K_ADAM, K_RADAM, K_NADAM, K_ADAMAX
    DECAY: tl.constexpr,  # 0 none, 1 coupled (g += wd p), 2 decoupled (p *= 1 - lr wd)
    AMSGRAD: tl.constexpr,  # a third state row (AMSGrad's maximum, AdEMAMix's slow EMA)
    DTYPE: tl.constexpr,  # the tensors' element type
    COMPUTE: tl.constexpr,  # the type the math runs in
    ALIGNED: tl.constexpr,  # every address in the tables is a multiple of 16 bytes
    BLOCK: tl.constexpr,
):
    """Full-precision state in the parameters' dtype."""
    k, start, numel = locate(chunk_tensor, chunk_start, numels, BLOCK)
    block = (params, grads, states, count, scalars, hyper, k, start, numel)
    if start + BLOCK <= numel:
        full_precision_block(block, ALGO, DECAY, AMSGRAD, DTYPE, COMPUTE, ALIGNED, False, BLOCK)
    else:
        full_precision_block(block, ALGO, DECAY, AMSGRAD, DTYPE, COMPUTE, ALIGNED, True, BLOCK)


@triton.jit
def full_precision_block(
    block,  # the kernel's tables and the block's tensor k, first element and tensor size
    ALGO: tl.constexpr,
    DECAY: tl.constexpr,
    AMSGRAD: tl.constexpr,
    DTYPE: tl.constexpr,
    COMPUTE: tl.constexpr,
    ALIGNED: tl.constexpr,
    MASKED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """``fused_step`` on one block of tensor ``k``."""
    params, grads, states, count, scalars, hyper, k, start, numel = block
    offsets, mask = elements(start, numel, MASKED, BLOCK)
    p_ptr = as_pointer(tl.load(params + k), DTYPE, ALIGNED)
    g_ptr = as_pointer(tl.load(grads + k), DTYPE, ALIGNED)
    m_ptr = as_pointer(tl.load(states + k), DTYPE, ALIGNED)
    v_ptr = as_pointer(tl.load(states + count + k), DTYPE, ALIGNED)
    param = tl.load(p_ptr + offsets, mask=mask).to(COMPUTE)
    grad = tl.load(g_ptr + offsets, mask=mask).to(COMPUTE)
    m = tl.load(m_ptr + offsets, mask=mask).to(COMPUTE)
    v = tl.load(v_ptr + offsets, mask=mask).to(COMPUTE)
    old_max = v
    if AMSGRAD:
        vmax_ptr = as_pointer(tl.load(states + 2 * count + k), DTYPE, ALIGNED)
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
F_F32 = tl.constexpr(abi.F_F32)
F_BF16 = tl.constexpr(abi.F_BF16)
F_BF16_SR = tl.constexpr(abi.F_BF16_SR)
F_Q8 = tl.constexpr(abi.F_Q8)
# The parameters' rounding stream's term of the seed, stream * SEED_STREAM mod 2**32 (a
# state's comes from its codec word: its sign, its half of the hash, its stream).
PARAM_STREAM = tl.constexpr((abi.SALT_PARAM * abi.SEED_STREAM) % (1 << 32))
HASH_MUL1 = tl.constexpr(abi.HASH_MUL1)
HASH_MUL2 = tl.constexpr(abi.HASH_MUL2)
SEED_COUNT = tl.constexpr(abi.SEED_COUNT)
SEED_SALT = tl.constexpr(abi.SEED_SALT)
Q8_BLOCK = tl.constexpr(abi.Q8_BLOCK)  # elements per 8-bit scale
M_OFFSET = tl.constexpr(abi.M_OFFSET)  # float bits of 2**-15, the exp_avg code's smallest binade
V_OFFSET = tl.constexpr(abi.V_OFFSET)  # 2**-31, the second moments'
HALF_ULP = tl.constexpr(abi.HALF_ULP)  # half a unit of the codes' 3-bit mantissa
# The codes of NaN and infinities (exp_avg's magnitudes, then the unsigned code's), decoded as
# themselves whatever the block's scale, and the float bits involved.
M_NAN = tl.constexpr(abi.M_NAN)
M_INF = tl.constexpr(abi.M_INF)
V_NAN = tl.constexpr(abi.V_NAN)
V_INF = tl.constexpr(abi.V_INF)
INF_BITS = tl.constexpr(abi.INF_BITS)  # +inf; a magnitude's bits above it are a NaN's
NEG_INF_BITS = tl.constexpr((abi.INF_BITS | 1 << 31) - (1 << 32))  # -inf, as an int32
NAN_BITS = tl.constexpr(abi.NAN_BITS)  # the NaN every path decodes to


@triton.jit
def rounding_seed(t, salt, STREAM: tl.constexpr):
    """lowbias32 of (step, tensor, stream): one tensor's rounding seed for this step."""
    x = t.to(tl.int64).to(tl.uint32) * SEED_COUNT + salt * SEED_SALT + STREAM
    x ^= x >> 16
    x *= HASH_MUL1
    x ^= x >> 15
    x *= HASH_MUL2
    return x ^ (x >> 16)


@triton.jit
def noise(offsets, seed, HIGH: tl.constexpr):
    """16 uniform bits per element: half of the first round of lowbias32 of index ^ seed."""
    x = offsets.to(tl.uint32) ^ seed
    x ^= x >> 16
    x *= HASH_MUL1
    x ^= x >> 15
    return x >> 16 if HIGH else x & 0xFFFF


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
def load_state(address, scales, offsets, mask, fmt, UNSIGNED: tl.constexpr, ALIGNED: tl.constexpr):
    """One state tensor's elements as fp32, whatever format they are stored in."""
    if fmt == F_Q8:
        code = tl.load(as_pointer(address, tl.uint8, ALIGNED) + offsets, mask=mask, other=0)
        code = code.to(tl.int32)
        scale_ptr = scales.to(tl.pointer_type(tl.float32))
        scale = tl.load(scale_ptr + offsets // Q8_BLOCK, mask=mask, other=0.0)
        if UNSIGNED:  # code 0 decodes to 2**-31 of the block's scale, never to 0
            value = ((code << 20) + V_OFFSET).to(tl.float32, bitcast=True)
            bits = (value * scale).to(tl.int32, bitcast=True)
            bits = tl.where(code == V_INF, INF_BITS, bits)
            bits = tl.where(code == V_NAN, NAN_BITS, bits)
        else:
            magnitude = code & 127
            value = ((magnitude << 20) + M_OFFSET).to(tl.float32, bitcast=True)
            value = tl.where(magnitude == 0, 0.0, value)
            # Signed by multiplying: Triton's -x is 0 - x, which makes code 128 +0.0, where
            # the other paths decode -0.0.
            value = value * tl.where(code >= 128, -1.0, 1.0)
            bits = (value * scale).to(tl.int32, bitcast=True)
            inf = tl.where(code >= 128, NEG_INF_BITS, INF_BITS)
            bits = tl.where(magnitude == M_INF, inf, bits)
            bits = tl.where(magnitude == M_NAN, NAN_BITS, bits)
        value = bits.to(tl.float32, bitcast=True)
    elif fmt == F_F32:
        value = tl.load(as_pointer(address, tl.float32, ALIGNED) + offsets, mask=mask, other=0.0)
    else:
        bits = tl.load(as_pointer(address, tl.uint16, ALIGNED) + offsets, mask=mask, other=0)
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
    ALIGNED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Store fp32 ``value`` in the tensor's format (8-bit: codes and the blocks' scales)."""
    if fmt == F_Q8:
        # Each block's scale is its largest finite magnitude, 0 if it has none: the bits of
        # non-negative floats order as the floats, infinity's and NaN's highest. The sign is
        # cleared on the bits (what abs does to a NaN is the hardware's choice).
        bits = tl.where(mask, value.to(tl.int32, bitcast=True) & 0x7FFFFFFF, 0)
        magnitude = bits.to(tl.float32, bitcast=True)
        finite = bits < INF_BITS
        # tl.max's own reduction: spelled out because tl.max is a Triton function, which the
        # interpreter cannot call when triton was imported before TRITON_INTERPRET was set;
        # the interpreter runs this combine function as numpy's max.
        blocks = tl.reshape(tl.where(finite, bits, 0), (BLOCK // Q8_BLOCK, Q8_BLOCK))
        most = tl.reduce(blocks, 1, tl.standard._elementwise_max)
        top = most.to(tl.float32, bitcast=True)
        inverse = div(tl.full(top.shape, 1.0, tl.float32), tl.where(top > 0, top, 1.0), tl.float32)
        normalized = tl.reshape(magnitude, (BLOCK // Q8_BLOCK, Q8_BLOCK)) * inverse[:, None]
        normalized = tl.reshape(normalized, (BLOCK,))
        # NaN and infinities get their own codes (a NaN's has no sign: NaN < 0 is false).
        if UNSIGNED:
            code = (normalized.to(tl.int32, bitcast=True) - V_OFFSET + HALF_ULP) >> 20
            code = tl.minimum(tl.maximum(code, 0), 255)
            code = tl.where(finite, code, tl.where(bits == INF_BITS, V_INF, V_NAN))
        else:
            code = (normalized.to(tl.int32, bitcast=True) - M_OFFSET + HALF_ULP) >> 20
            code = tl.minimum(tl.maximum(code, 0), 127)
            code = tl.where(finite, code, tl.where(bits == INF_BITS, M_INF, M_NAN))
            code = code | tl.where(value < 0, 128, 0)
        tl.store(as_pointer(address, tl.uint8, ALIGNED) + offsets, code.to(tl.uint8), mask=mask)
        block = start // Q8_BLOCK + tl.arange(0, BLOCK // Q8_BLOCK)
        scale_ptr = scales.to(tl.pointer_type(tl.float32))
        tl.store(scale_ptr + block, top, mask=block * Q8_BLOCK < numel)
    elif fmt == F_F32:
        tl.store(as_pointer(address, tl.float32, ALIGNED) + offsets, value, mask=mask)
    elif fmt == F_BF16_SR:
        bits = bf16_bits(value, seed, True, offsets, HIGH)
        tl.store(as_pointer(address, tl.uint16, ALIGNED) + offsets, bits, mask=mask)
    else:
        bits = bf16_bits(value, seed, False, offsets, HIGH)
        tl.store(as_pointer(address, tl.uint16, ALIGNED) + offsets, bits, mask=mask)


@triton.jit
def fused_step_wide(
    chunk_tensor,
    chunk_start,
    numels,
    params,
    grads,
    states,
    count,
    scalars,
    hyper,
    formats,  # int64[count]: each tensor's state format (F_*)
    scales,  # int64[states * count]: the 8-bit scales of each state (0 where not 8-bit)
    salts,  # int64[count]: each tensor's rounding salt
    ALGO: tl.constexpr,
    DECAY: tl.constexpr,
    AMSGRAD: tl.constexpr,
    PARAM_FORMAT: tl.constexpr,  # F_F32, F_BF16 (nearest) or F_BF16_SR (stochastic)
    ALIGNED: tl.constexpr,
    BLOCK: tl.constexpr,
    # Each state's codec (specialization() decodes kernels/_abi.py's codec words): whether it
    # is non-negative (the unsigned 8-bit code), which half of its rounding hash it takes, and
    # its rounding stream's term of the seed.
    UNSIGNED0: tl.constexpr,
    UNSIGNED1: tl.constexpr,
    UNSIGNED2: tl.constexpr,
    HIGH0: tl.constexpr,
    HIGH1: tl.constexpr,
    HIGH2: tl.constexpr,
    STREAM0: tl.constexpr,
    STREAM1: tl.constexpr,
    STREAM2: tl.constexpr,
):
    """fp32 or bf16 parameters with bf16 or 8-bit state, or stochastically rounded bf16
    parameters: each element is decoded to fp32, stepped, and encoded back in one pass."""
    k, start, numel = locate(chunk_tensor, chunk_start, numels, BLOCK)
    block = (params, grads, states, count, scalars, hyper, k, start, numel)
    storage = (formats, scales, salts)
    if start + BLOCK <= numel:
        wide_block(
            block, storage, ALGO, DECAY, AMSGRAD, PARAM_FORMAT, ALIGNED, False, BLOCK,
            UNSIGNED0, UNSIGNED1, UNSIGNED2, HIGH0, HIGH1, HIGH2, STREAM0, STREAM1, STREAM2,
        )  # fmt: skip
    else:
        wide_block(
            block, storage, ALGO, DECAY, AMSGRAD, PARAM_FORMAT, ALIGNED, True, BLOCK,
            UNSIGNED0, UNSIGNED1, UNSIGNED2, HIGH0, HIGH1, HIGH2, STREAM0, STREAM1, STREAM2,
        )  # fmt: skip


@triton.jit
def wide_block(
    block,  # as full_precision_block's
    storage,  # the tables of formats, 8-bit scales and rounding salts
    ALGO: tl.constexpr,
    DECAY: tl.constexpr,
    AMSGRAD: tl.constexpr,
    PARAM_FORMAT: tl.constexpr,
    ALIGNED: tl.constexpr,
    MASKED: tl.constexpr,
    BLOCK: tl.constexpr,
    UNSIGNED0: tl.constexpr,
    UNSIGNED1: tl.constexpr,
    UNSIGNED2: tl.constexpr,
    HIGH0: tl.constexpr,
    HIGH1: tl.constexpr,
    HIGH2: tl.constexpr,
    STREAM0: tl.constexpr,
    STREAM1: tl.constexpr,
    STREAM2: tl.constexpr,
):
    """``fused_step_wide`` on one block of tensor ``k``."""
    params, grads, states, count, scalars, hyper, k, start, numel = block
    formats, scales, salts = storage
    offsets, mask = elements(start, numel, MASKED, BLOCK)
    fmt = tl.load(formats + k)
    t = tl.load(scalars + ROW * k + R_T)
    salt = tl.load(salts + k).to(tl.uint32)
    ms = tl.load(scales + k)
    vs = tl.load(scales + count + k)
    if PARAM_FORMAT == F_F32:
        p_ptr = as_pointer(tl.load(params + k), tl.float32, ALIGNED)
        param = tl.load(p_ptr + offsets, mask=mask)
        grad = tl.load(as_pointer(tl.load(grads + k), tl.float32, ALIGNED) + offsets, mask=mask)
    else:
        p_ptr = as_pointer(tl.load(params + k), tl.uint16, ALIGNED)
        param = (tl.load(p_ptr + offsets, mask=mask).to(tl.uint32) << 16).to(
            tl.float32, bitcast=True
        )
        g_ptr = as_pointer(tl.load(grads + k), tl.uint16, ALIGNED)
        grad = (tl.load(g_ptr + offsets, mask=mask).to(tl.uint32) << 16).to(
            tl.float32, bitcast=True
        )
    m_address = tl.load(states + k)
    v_address = tl.load(states + count + k)
    m = load_state(m_address, ms, offsets, mask, fmt, UNSIGNED0, ALIGNED)
    v = load_state(v_address, vs, offsets, mask, fmt, UNSIGNED1, ALIGNED)
    old_max = v
    if AMSGRAD:
        max_scales = tl.load(scales + 2 * count + k)
        max_address = tl.load(states + 2 * count + k)
        old_max = load_state(max_address, max_scales, offsets, mask, fmt, UNSIGNED2, ALIGNED)
    param, m, v, top = update(
        param, grad, m, v, old_max, scalars, hyper, k, ALGO, DECAY, AMSGRAD, tl.float32, True
    )
    if PARAM_FORMAT == F_F32:
        tl.store(p_ptr + offsets, param, mask=mask)
    else:
        seed = rounding_seed(t, salt, PARAM_STREAM)
        bits = bf16_bits(param, seed, PARAM_FORMAT == F_BF16_SR, offsets, True)
        tl.store(p_ptr + offsets, bits, mask=mask)
    # Each state's stream and half of the hash (one hash can serve two states of a stream).
    seed = rounding_seed(t, salt, STREAM0)
    store_state(
        m_address, ms, start, offsets, mask, m, fmt, seed, numel, UNSIGNED0, HIGH0, ALIGNED, BLOCK
    )
    seed = rounding_seed(t, salt, STREAM1)
    store_state(
        v_address, vs, start, offsets, mask, v, fmt, seed, numel, UNSIGNED1, HIGH1, ALIGNED, BLOCK
    )
    if AMSGRAD:
        seed = rounding_seed(t, salt, STREAM2)
        store_state(
            max_address, max_scales, start, offsets, mask, top, fmt, seed, numel,
            UNSIGNED2, HIGH2, ALIGNED, BLOCK,
        )  # fmt: skip


@triton.jit
def q8_encode(x, codes, scales, numel, UNSIGNED: tl.constexpr, BLOCK: tl.constexpr):
    """The 8-bit encoder on its own: fp32 ``x`` to uint8 ``codes`` and fp32 block ``scales``
    (for the tests that hold it equal to optim/_precision.py and fused_cpu.c's codecs)."""
    start = tl.program_id(0) * BLOCK
    offsets, mask = elements(start, numel, True, BLOCK)
    value = tl.load(x + offsets, mask=mask, other=0.0)
    store_state(
        codes, scales, start, offsets, mask, value, F_Q8, 0, numel, UNSIGNED, UNSIGNED, False, BLOCK
    )


@triton.jit
def q8_decode(codes, scales, out, numel, UNSIGNED: tl.constexpr, BLOCK: tl.constexpr):
    """The 8-bit decoder on its own: ``codes`` and block ``scales`` to fp32 ``out`` (tests)."""
    offsets, mask = elements(tl.program_id(0) * BLOCK, numel, True, BLOCK)
    tl.store(
        out + offsets, load_state(codes, scales, offsets, mask, F_Q8, UNSIGNED, False), mask=mask
    )


def specialization(
    algorithm: int,
    decay: int,
    amsgrad: bool,
    dtype: torch.dtype,
    aligned: bool,
    param_format: int | None = None,
    codecs: tuple[int, ...] = (),
) -> tuple[Any, dict[str, Any]]:
    """The kernel that steps a bucket and its compile-time arguments: ``fused_step``, or with
    ``param_format`` (low-precision storage, see Storage in optim/_fused.py)
    ``fused_step_wide``, whose ``codecs`` are each state's codec word (optim/_fused.py's
    ``state_codec``). ``aligned``: every address in the tables is a multiple of 16 bytes."""
    constants: dict[str, Any] = {
        "ALGO": algorithm,
        "DECAY": decay,
        "AMSGRAD": amsgrad,
        "ALIGNED": aligned,
        "BLOCK": BLOCK,
    }
    if param_format is not None:
        if not 2 <= len(codecs) <= abi.MAX_STATES:
            raise ValueError(f"fused_step_wide takes 2 to {abi.MAX_STATES} codecs, not {codecs}")
        words = (*codecs, 0, 0)[: abi.MAX_STATES]
        named: dict[str, Any] = {}
        for q, word in enumerate(words):
            named[f"UNSIGNED{q}"] = bool(word & abi.CODEC_UNSIGNED)
            named[f"HIGH{q}"] = bool(word & abi.CODEC_HIGH)
            named[f"STREAM{q}"] = (word >> abi.CODEC_STREAM) * abi.SEED_STREAM % (1 << 32)
        return fused_step_wide, {**constants, "PARAM_FORMAT": param_format, **named}
    element = {
        torch.float32: tl.float32,
        torch.float64: tl.float64,
        torch.float16: tl.float16,
        torch.bfloat16: tl.bfloat16,
    }[dtype]
    compute = tl.float64 if dtype == torch.float64 else tl.float32
    return fused_step, {**constants, "DTYPE": element, "COMPUTE": compute}


#: How the kernels are compiled. No contraction into FMAs, so the arithmetic rounds as the CPU
#: kernel's (compiled with -ffp-contract=off) and as torch's eager operations.
OPTIONS = {"num_warps": 8, "enable_fp_fusion": False}


def launch(chunks: int, tables: dict[str, Any], kernel: Any, constants: dict[str, Any]) -> None:
    """Run ``kernel`` (see ``specialization``) over ``chunks`` programs. ``tables``: its
    tensor arguments by name (the step scalars and hyperparameters included)."""
    arguments = [tables[name] for name in kernel.arg_names if name not in constants]
    kernel[(chunks,)](*arguments, **constants, **OPTIONS)
