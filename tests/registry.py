"""The one table every property test runs over: (optimizer, keyword arguments) cases.

Adding an optimizer or a flag means adding rows here; parity with torch, parity with the NumPy
reference, checkpoint exchange, convergence and dtype handling then all cover it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

import adamkit
from adamkit import reference


@dataclass(frozen=True)
class Case:
    name: str  # class name, the same in adamkit, torch.optim and adamkit.reference.REFERENCES
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def ours(self) -> type[torch.optim.Optimizer]:
        return getattr(adamkit, self.name)  # type: ignore[no-any-return]

    @property
    def torch(self) -> type[torch.optim.Optimizer]:
        return getattr(torch.optim, self.name)  # type: ignore[no-any-return]

    @property
    def reference(self) -> Any:
        return reference.REFERENCES[self.name]

    def math_kwargs(self) -> dict[str, Any]:
        """The kwargs without execution settings (what the NumPy reference takes)."""
        return {
            k: float(v) if isinstance(v, torch.Tensor) else v
            for k, v in self.kwargs.items()
            if k not in ("foreach", "fused", "state_precision", "stochastic_rounding")
        }

    @property
    def id(self) -> str:
        parts = [self.name] + [f"{k}={v}" for k, v in self.kwargs.items()]
        return ",".join(parts)


WEIGHT_DECAY = [
    {},
    {"weight_decay": 0.1},
    {"weight_decay": 0.1, "decoupled_weight_decay": True},
]
# Non-default hyperparameters, so a rule that ignores one is caught.
ODD = {"lr": 3e-3, "betas": (0.8, 0.95), "eps": 1e-6}


def _cases() -> list[Case]:
    cases: list[Case] = []
    # The three execution paths: multi-tensor, one tensor at a time, and the fused kernel.
    foreach = [{"foreach": True}, {"foreach": False}, {"fused": True}]
    maximize = [{}, {"maximize": True}]
    for fe, mx, wd, ams in itertools.product(
        foreach, maximize, WEIGHT_DECAY, [{}, {"amsgrad": True}]
    ):
        cases.append(Case("Adam", {**fe, **mx, **wd, **ams}))
    for fe, mx, ams, wd in itertools.product(
        foreach, maximize, [{}, {"amsgrad": True}], [{}, {"weight_decay": 0.3}]
    ):
        cases.append(Case("AdamW", {**fe, **mx, **ams, **wd}))
    for fe, mx, wd in itertools.product(foreach, maximize, WEIGHT_DECAY):
        cases.append(Case("RAdam", {**fe, **mx, **wd}))
        cases.append(Case("NAdam", {**fe, **mx, **wd}))
    for fe, mx, wd in itertools.product(foreach, maximize, [{}, {"weight_decay": 0.1}]):
        cases.append(Case("Adamax", {**fe, **mx, **wd}))
    for name, fe in itertools.product(["Adam", "AdamW", "RAdam", "NAdam", "Adamax"], foreach):
        cases.append(Case(name, {**fe, **ODD}))
    for fe in foreach:
        cases.append(Case("NAdam", {**fe, "momentum_decay": 0.02}))
        cases.append(
            Case(
                "Adam",
                {**fe, "amsgrad": True, "decoupled_weight_decay": True, "weight_decay": 0.1, **ODD},
            )
        )
    return cases


CASES = _cases()
ALGORITHMS = ["Adam", "AdamW", "RAdam", "NAdam", "Adamax"]


def _precision_cases() -> list[Case]:
    """Every algorithm (and AMSGrad, maximize, both weight decays) x low precision x path."""
    algorithms = [
        Case("Adam"),
        Case("Adam", {"amsgrad": True, "weight_decay": 0.1}),
        Case("AdamW", {"maximize": True}),
        Case("RAdam", {"weight_decay": 0.1, "decoupled_weight_decay": True}),
        Case("NAdam"),
        Case("Adamax", {"weight_decay": 0.1}),
    ]
    paths = [{"foreach": True}, {"foreach": False}, {"fused": True}]
    return [
        Case(case.name, {**path, **case.kwargs, "state_precision": precision})
        for case, path, precision in itertools.product(algorithms, paths, ["bf16", "8bit"])
    ]


#: Low-precision state: each case against the same case with full-precision state.
PRECISION_CASES = _precision_cases()


def params(cases: list[Case] = CASES) -> Any:
    return pytest.mark.parametrize("case", cases, ids=[c.id for c in cases])
