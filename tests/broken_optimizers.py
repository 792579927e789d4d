"""Optimizers with one defect each, which the conformance kit (``adamkit.testing``) must
catch: the check named in each docstring fails, naming what differs."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.optim import Adam, Optimizer


class ForgetsStep(Adam):
    """state_dict_roundtrip: its state dict resets the step counters."""

    def state_dict(self) -> dict[str, Any]:
        packed = copy.deepcopy(super().state_dict())
        for entry in packed["state"].values():
            entry["step"] = torch.zeros_like(entry["step"])
        return packed


class IgnoresClosure(Adam):
    """closure: step(closure) never calls the closure."""

    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        return super().step()


class _PlainLr(Optimizer):
    """An optimizer with only ``lr`` (not checked), whose step visits every parameter."""

    def __init__(self, params: Any, lr: float = 0.1) -> None:
        super().__init__(params, {"lr": lr})

    def each(self) -> Iterator[tuple[dict[str, Any], Tensor]]:
        for group in self.param_groups:
            for p in group["params"]:
                yield group, p


class MovesWithoutGrad(_PlainLr):
    """no_grad_is_a_no_op: shrinks every parameter, gradient or not; bad_hyperparameters:
    takes lr < 0."""

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        for group, p in self.each():
            p.mul_(0.99)
            if p.grad is not None:
                p.add_(p.grad, alpha=-group["lr"])


class Noisy(Adam):
    """determinism: adds unseeded noise."""

    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = super().step(closure)
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    p.add_(torch.rand(()) * 1e-3)
        return loss


class Float32Momentum(_PlainLr):
    """dtype: keeps float32 state for float64 parameters; complex: drops imaginary parts."""

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        for group, p in self.each():
            if p.grad is None:
                continue
            state = self.state[p]
            if "momentum" not in state:
                state["momentum"] = torch.zeros(p.shape, dtype=torch.float32)
            state["momentum"].mul_(0.9).add_(p.grad.real.float())
            p.add_(state["momentum"].to(p.dtype), alpha=-group["lr"])


class SlightlyOff(Adam):
    """reference: eps added twice, so it drifts from torch.optim.Adam."""

    def __init__(self, params: Any, lr: float = 1e-3, eps: float = 1e-8, **kwargs: Any) -> None:
        super().__init__(params, lr=lr, eps=eps + 1e-3, **kwargs)
