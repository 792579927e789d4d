"""Random problems: parameter sets and gradient streams shared by the twin optimizers."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch

SHAPES = [(4, 3), (7,), (), (2, 3, 2), (0, 3), (5,)]
# Gradients of very different sizes, so eps and the adaptive scaling both matter.
SCALES = [1.0, 1e-3, 10.0, 0.3, 1.0, 1e-6]


def make_params(
    dtype: torch.dtype = torch.float32, seed: int = 0, empty: bool = True
) -> list[torch.Tensor]:
    """One parameter of each of :data:`SHAPES` (``empty=False``: but the zero-element one)."""
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
        for shape in SHAPES
        if empty or math.prod(shape)
    ]


def clone(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [p.detach().clone().requires_grad_() for p in params]


# fp16 cannot hold eps=1e-8 (it rounds to 0) nor the square of a 1e-3 gradient, so a
# low-precision problem keeps its gradients within a range fp16 represents.
LOW_PRECISION_SCALES = [1.0, 0.1, 4.0, 0.3, 1.0, 0.05]


def grad_stream(
    params: list[torch.Tensor], steps: int, seed: int = 1, skip: bool = True
) -> Iterator[list[torch.Tensor | None]]:
    """Per step, one gradient per parameter. With ``skip``, parameter 1 has no gradient every
    third step, so parameters in one bucket reach different step counts."""
    g = torch.Generator().manual_seed(seed)
    low = params[0].dtype in (torch.float16, torch.bfloat16)
    scales = LOW_PRECISION_SCALES if low else SCALES
    for t in range(steps):
        grads: list[torch.Tensor | None] = []
        for i, p in enumerate(params):
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64)
            if p.is_complex():
                noise = torch.complex(noise, torch.randn(p.shape, generator=g, dtype=torch.float64))
            grad = (noise * scales[i % len(scales)]).to(p.dtype)
            grads.append(None if skip and i == 1 and t % 3 == 2 else grad)
        yield grads


def set_grads(params: list[torch.Tensor], grads: list[torch.Tensor | None]) -> None:
    for p, g in zip(params, grads, strict=True):
        p.grad = None if g is None else g.to(p.device, copy=True)


def assert_fused_equals_eager(
    cls: type[torch.optim.Optimizer], kwargs: dict[str, Any], precision: str
) -> None:
    """60 steps of ``cls`` on its default path (which must be the fused kernel) and on the
    multi-tensor path, on the same gradients: parameters within ``tol * lr * 60`` (tol 1e-5 in
    fp32, 2e-2 bf16 state, 5e-2 8-bit), and in fp32 every state tensor close too."""
    g = torch.Generator().manual_seed(1)
    shapes = [(64, 80), (300,), (7,)]
    fused_p = [torch.randn(s, generator=g).requires_grad_() for s in shapes]
    eager_p = [p.detach().clone().requires_grad_() for p in fused_p]
    fused = cls(fused_p, state_precision=precision, **kwargs)
    eager = cls(eager_p, foreach=True, state_precision=precision, **kwargs)
    assert fused.execution_path() == "fused"  # type: ignore[attr-defined]
    for _ in range(60):
        grads = [torch.randn(s, generator=g) for s in shapes]
        for p, q, grad in zip(fused_p, eager_p, grads, strict=True):
            p.grad, q.grad = grad.clone(), grad.clone()
        fused.step()
        eager.step()
    tol = {"fp32": 1e-5, "bf16": 2e-2, "8bit": 5e-2}[precision]
    for p, q in zip(fused_p, eager_p, strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=tol * kwargs["lr"] * 60)
        if precision == "fp32":
            keys = [k for k, v in eager.state[q].items() if k != "step" and v.shape == q.shape]
            assert keys  # the moments are compared, not nothing
            for key in keys:
                torch.testing.assert_close(fused.state[p][key], eager.state[q][key])
