"""Random problems: parameter sets and gradient streams shared by the twin optimizers."""

from __future__ import annotations

from collections.abc import Iterator

import torch

SHAPES = [(4, 3), (7,), (), (2, 3, 2), (0, 3), (5,)]
# Gradients of very different sizes, so eps and the adaptive scaling both matter.
SCALES = [1.0, 1e-3, 10.0, 0.3, 1.0, 1e-6]


def make_params(dtype: torch.dtype = torch.float32, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
        for shape in SHAPES
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
