"""adamkit's fused GPU step for RAdam, NAdam and Adamax (and Adam), written in Triton.

One launch steps every tensor of a bucket. Like ``fused_cpu.c`` it reads each element of p, g,
m, v (and v_max) once and writes p, m, v (and v_max) once, and allocates nothing per element.
The tensors are reached through tables of their addresses: program ``j`` updates ``BLOCK``
elements of tensor ``chunk_tensor[j]`` starting at ``chunk_start[j]``, so 2000 small tensors
cost one launch, as one large tensor does.

The step-dependent scalars (bias corrections, RAdam's rectification, NAdam's momentum schedule)
are computed on the host by the CPU library (``adamkit_step_scalars``), which also increments
the step counters: they stay 0-d CPU tensors, as torch keeps them outside its fused and
capturable modes, and each launch receives a table of four scalars per tensor. The element math
is the CPU kernel's, in the same operation order: fp32 for fp32, fp16 and bf16 tensors (stored
back rounded to nearest, as torch's fused kernels do), fp64 for fp64.

adamkit imports this module only when a bucket on a GPU is stepped, so it runs without Triton. With
``TRITON_INTERPRET=1`` set before that import, Triton runs this kernel on CPU tensors; the test
suite checks the kernel's math that way on machines without a GPU.
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
K_ADAM, K_AMSGRAD, K_RADAM, K_RADAM_PLAIN, K_NADAM, K_ADAMAX = range(6)


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
def fused_step(
    chunk_tensor,  # int32[chunks]: the tensor each program updates
    chunk_start,  # int64[chunks]: its first element
    numels,  # int64[count]
    params,  # int64[count] tables of addresses
    grads,
    exp_avgs,
    seconds,
    maxes,
    scalars,  # float64[count, 4]: a, b, c, kind per tensor (adamkit_step_scalars)
    hyper,  # float64[7]: sign, shrink, 1 - beta1, beta2, 1 - beta2, eps, wd
    ALGO: tl.constexpr,  # 0 Adam, 1 RAdam, 2 NAdam, 3 Adamax (fused_cpu.c's enum)
    DECAY: tl.constexpr,  # 0 none, 1 coupled (g += wd p), 2 decoupled (p *= 1 - lr wd)
    AMSGRAD: tl.constexpr,
    DTYPE: tl.constexpr,  # the tensors' element type
    COMPUTE: tl.constexpr,  # the type the math runs in
    BLOCK: tl.constexpr,
):
    j = tl.program_id(0)
    k = tl.load(chunk_tensor + j)
    offsets = tl.load(chunk_start + j) + tl.arange(0, BLOCK)
    mask = offsets < tl.load(numels + k)
    p_ptr = tl.load(params + k).to(tl.pointer_type(DTYPE))
    g_ptr = tl.load(grads + k).to(tl.pointer_type(DTYPE))
    m_ptr = tl.load(exp_avgs + k).to(tl.pointer_type(DTYPE))
    v_ptr = tl.load(seconds + k).to(tl.pointer_type(DTYPE))

    sign = tl.load(hyper).to(COMPUTE)
    shrink = tl.load(hyper + 1).to(COMPUTE)
    one_minus_beta1 = tl.load(hyper + 2).to(COMPUTE)
    beta2 = tl.load(hyper + 3).to(COMPUTE)
    one_minus_beta2 = tl.load(hyper + 4).to(COMPUTE)
    eps = tl.load(hyper + 5).to(COMPUTE)
    wd = tl.load(hyper + 6).to(COMPUTE)
    a = tl.load(scalars + 4 * k).to(COMPUTE)
    b = tl.load(scalars + 4 * k + 1).to(COMPUTE)
    c = tl.load(scalars + 4 * k + 2).to(COMPUTE)
    kind = tl.load(scalars + 4 * k + 3)

    grad = sign * tl.load(g_ptr + offsets, mask=mask).to(COMPUTE)
    param = tl.load(p_ptr + offsets, mask=mask).to(COMPUTE)
    if DECAY == 1:
        grad += wd * param
    if DECAY == 2:
        param *= shrink
    m = tl.load(m_ptr + offsets, mask=mask).to(COMPUTE)
    m = m + one_minus_beta1 * (grad - m)
    tl.store(m_ptr + offsets, rounded(m, DTYPE), mask=mask)
    v = tl.load(v_ptr + offsets, mask=mask).to(COMPUTE)
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
                vmax_ptr = tl.load(maxes + k).to(tl.pointer_type(DTYPE))
                old = tl.load(vmax_ptr + offsets, mask=mask).to(COMPUTE)
                top = tl.where(old > v, old, v)  # a NaN v propagates, as in torch
                tl.store(vmax_ptr + offsets, rounded(top, DTYPE), mask=mask)
            param = param - div(a * m, div(sqrt(top, COMPUTE), b, COMPUTE) + eps, COMPUTE)
        elif ALGO == 1:  # RAdam: p -= a m / (sqrt(v) + eps), or p -= a m before rectifying
            rectified = tl.full([BLOCK], kind, tl.float64) == K_RADAM
            denom = tl.where(rectified, sqrt(v, COMPUTE) + eps, 1.0)
            param = param - div(a * m, denom, COMPUTE)
        else:  # NAdam: p -= (a g + c m) / (sqrt(v) / b + eps)
            denom = div(sqrt(v, COMPUTE), b, COMPUTE) + eps
            param = param - div(a * grad + c * m, denom, COMPUTE)
    tl.store(v_ptr + offsets, rounded(v, DTYPE), mask=mask)
    tl.store(p_ptr + offsets, rounded(param, DTYPE), mask=mask)


def launch(
    chunks: int,
    tables: dict[str, Any],
    scalars: Any,
    hyper: Any,
    algorithm: int,
    decay: int,
    amsgrad: bool,
    dtype: Any,
) -> None:
    """Run the kernel over ``chunks`` programs (see ``fused_step``'s arguments)."""
    element = {
        torch.float32: tl.float32,
        torch.float64: tl.float64,
        torch.float16: tl.float16,
        torch.bfloat16: tl.bfloat16,
    }[dtype]
    compute = tl.float64 if dtype == torch.float64 else tl.float32
    fused_step[(chunks,)](
        tables["chunk_tensor"],
        tables["chunk_start"],
        tables["numels"],
        tables["params"],
        tables["grads"],
        tables["exp_avgs"],
        tables["seconds"],
        tables["maxes"],
        scalars,
        hyper,
        ALGO=algorithm,
        DECAY=decay,
        AMSGRAD=amsgrad,
        DTYPE=element,
        COMPUTE=compute,
        BLOCK=BLOCK,
        num_warps=_NUM_WARPS,
    )
