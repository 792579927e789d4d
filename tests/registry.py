"""The one table every property test runs over: (optimizer, keyword arguments) cases.

The rows are generated from adamkit's table of algorithms (``adamkit.optim._algorithms``): each
algorithm on each execution path, with ``maximize``, each weight-decay form its signature
takes, AMSGrad where its row keeps a running maximum, non-default shared hyperparameters, and
each of its own hyperparameters away from its default. Adding an algorithm to that table
adds it here; parity with torch, parity with the NumPy reference, checkpoint exchange,
convergence and dtype handling then all cover it.
"""

from __future__ import annotations

import inspect
import itertools
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

import adamkit
from adamkit.optim._algorithms import ALGORITHMS as TABLE
from adamkit.optim._algorithms import Algorithm


@dataclass(frozen=True)
class Case:
    name: str  # class name in adamkit, and the key of its row in the table of algorithms
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def row(self) -> Algorithm:
        return TABLE[self.name]

    @property
    def ours(self) -> type[torch.optim.Optimizer]:
        return getattr(adamkit, self.name)  # type: ignore[no-any-return]

    @property
    def torch(self) -> type[torch.optim.Optimizer]:
        """The torch.optim twin (tests that compare with torch run only where there is one)."""
        twin = self.row.torch_twin
        if twin is None:
            pytest.skip(f"{self.name} has no torch.optim twin")
        if self.kwargs.get("cautious") or self.kwargs.get("update_clipping"):
            pytest.skip("torch.optim has no cautious masking or update clipping")
        return getattr(torch.optim, twin)  # type: ignore[no-any-return]

    def twin_params(self, dtype: torch.dtype | None = None) -> list[torch.Tensor]:
        """The problem's parameters, for a comparison with the torch twin (which may not
        take a zero-element one: :data:`TWIN_FAILS_ON_EMPTY`)."""
        import torch as pt  # (the class's `torch` is the twin)

        from .problems import make_params

        return make_params(dtype or pt.float32, empty=self.name not in TWIN_FAILS_ON_EMPTY)

    @property
    def reference(self) -> Any:
        return self.row.reference

    def math_kwargs(self, dtype: Any = None) -> dict[str, Any]:
        """The kwargs without execution settings (what the NumPy reference takes). With the
        parameters' ``dtype``, an eps pair's ``None`` (Adafactor's eps1) is that dtype's
        machine epsilon, as the optimizer takes it (the reference's is float64's)."""
        kwargs = {
            k: float(v) if isinstance(v, torch.Tensor) else v
            for k, v in self.kwargs.items()
            if k not in ("foreach", "fused", "state_precision", "stochastic_rounding")
        }
        if self.row.eps_pair and dtype is not None:
            import torch as pt  # (the class's `torch` is the twin)

            eps1, eps2 = kwargs.get("eps", signature(self.name)["eps"])
            real = pt.empty(0, dtype=dtype).real.dtype  # the machine epsilon of the real dtype
            kwargs["eps"] = (pt.finfo(real).eps if eps1 is None else eps1, eps2)
        return kwargs

    @property
    def id(self) -> str:
        parts = [self.name] + [f"{k}={v}" for k, v in self.kwargs.items()]
        return ",".join(parts)


#: Every algorithm, by class name; those a fused kernel steps; those with a torch.optim twin
#: (the tests that compare with torch, or run the kernel, take these).
ALGORITHMS = list(TABLE)
FUSED = [name for name, row in TABLE.items() if row.kinds]
TWINNED = [name for name, row in TABLE.items() if row.torch_twin]
# Non-default hyperparameters, so a rule that ignores one is caught (an eps pair where the
# row takes one: Adafactor's eps1 then floors the smallest gradients' variance).
ODD = {"lr": 3e-3, "betas": (0.8, 0.95), "eps": 1e-6}
ODD_PAIR = {"lr": 3e-3, "eps": (1e-4, 1e-2)}


def odd(name: str) -> dict[str, Any]:
    """:data:`ODD`, as the algorithm's signature takes it."""
    return ODD_PAIR if TABLE[name].eps_pair else ODD


#: torch twins whose multi-tensor step adamkit's does not repeat operation for operation, so
#: the two agree within rounding, not bit for bit: Adafactor's matrices take two means of g^2
#: where torch squares a norm over a strided dimension, and a factored update (3x faster).
NOT_BIT_EQUAL = frozenset({"Adafactor"})

#: Algorithms whose multi-tensor and for-loop paths round differently, as their torch twin's
#: two paths do (Adafactor's multi-tensor path scales a vector's update, then adds it; its
#: for-loop adds it with alpha): each path equals torch's own bit for bit, not the other.
PATHS_DIFFER = frozenset({"Adafactor"})

#: torch twins that fail on a zero-element parameter (torch.optim.Adafactor divides its norm by
#: sqrt(numel): ZeroDivisionError); the problems they are compared on leave it out.
TWIN_FAILS_ON_EMPTY = frozenset({"Adafactor"})


def signature(name: str) -> dict[str, Any]:
    """The constructor's arguments and their defaults."""
    parameters = inspect.signature(getattr(adamkit, name)).parameters
    return {k: p.default for k, p in parameters.items()}


def own_hyperparameters(name: str) -> dict[str, float]:
    """An algorithm's own hyperparameters (its row's ``own``: NAdam's ``momentum_decay``),
    each far enough from its default to change every step: five times it; for a decay rate
    (the row's ``fractions``) five times as far from 1; 10 where the default is 0 (AdEMAMix's
    warmup lengths, within the tests' steps)."""
    defaults, row = signature(name), TABLE[name]
    return {
        k: 1 - (1 - defaults[k]) * 5 if k in row.fractions else (defaults[k] * 5 or 10)
        for k in row.own
    }


def weight_decays(name: str) -> list[dict[str, Any]]:
    """No decay, coupled (L2) decay, and decoupled decay where the signature takes it (AdamW's
    is decoupled by default, so it gets a stronger one instead)."""
    decays: list[dict[str, Any]] = [{}, {"weight_decay": 0.1}]
    arguments = signature(name)
    if "decoupled_weight_decay" in arguments:
        decays.append({"weight_decay": 0.1, "decoupled_weight_decay": True})
    elif TABLE[name].pinned.get("decoupled_weight_decay"):
        decays[1] = {"weight_decay": 0.3}
    return decays


def _cases() -> list[Case]:
    cases: list[Case] = []
    # The three execution paths: multi-tensor, one tensor at a time, and the fused kernel
    # (where the row names one).
    maximize = [{}, {"maximize": True}]
    for name, row in TABLE.items():
        foreach = [{"foreach": True}, {"foreach": False}, *([{"fused": True}] * row.fused)]
        amsgrad = [{}, {"amsgrad": True}] if row.amsgrad_state else [{}]
        for fe, mx, wd, ams in itertools.product(foreach, maximize, weight_decays(name), amsgrad):
            cases.append(Case(name, {**fe, **mx, **wd, **ams}))
        for fe in foreach:
            cases.append(Case(name, {**fe, **odd(name)}))
            own = own_hyperparameters(name)
            if own:
                cases.append(Case(name, {**fe, **own}))
            if row.amsgrad_state and "decoupled_weight_decay" in signature(name):
                everything = {"amsgrad": True, "decoupled_weight_decay": True, "weight_decay": 0.1}
                cases.append(Case(name, {**fe, **everything, **odd(name)}))
        # The options every algorithm may take (optim/_modifiers.py), on the eager paths.
        # One case each on the eager paths (their code is the same on both: the paths differ
        # only in the operations, which the cases above cover), and on the fused kernel.
        decay = weight_decays(name)[-1]
        fused = [{"fused": True}] if row.kinds else []
        if row.cautious:
            cases.append(Case(name, {"foreach": True, "cautious": True, "maximize": True, **decay}))
            cases += [Case(name, {**f, "cautious": True, **decay}) for f in fused]
        if row.clipped_by:
            both = {"cautious": True, "update_clipping": True, "weight_decay": 0.1}
            cases.append(Case(name, {"foreach": False, **both, **odd(name)}))
            cases += [Case(name, {**f, **both, "maximize": True}) for f in fused]
    return cases


CASES = _cases()


def _precision_cases() -> list[Case]:
    """Every algorithm (one with AMSGrad; maximize and both weight decays in turn) x low
    precision x path."""
    variants: list[dict[str, Any]] = [
        {},
        {"maximize": True},
        {"weight_decay": 0.1, "decoupled_weight_decay": True},
        {"weight_decay": 0.1},
    ]
    algorithms = []
    for i, (name, row) in enumerate(TABLE.items()):
        flags = variants[i % len(variants)]
        if "decoupled_weight_decay" in flags and "decoupled_weight_decay" not in signature(name):
            flags = {"weight_decay": 0.1}
        algorithms.append(Case(name, flags))
        if row.amsgrad_state and not any(c.kwargs.get("amsgrad") for c in algorithms):
            algorithms.append(Case(name, {"amsgrad": True, "weight_decay": 0.1}))
    paths = [{"foreach": True}, {"foreach": False}, {"fused": True}]
    return [
        Case(case.name, {**path, **case.kwargs, "state_precision": precision})
        for case, path, precision in itertools.product(algorithms, paths, ["bf16", "8bit"])
        # (a row whose states include a copy of the weights keeps it as the weights beside
        # low-precision moments: two formats a tensor, which the kernels do not take)
        if ((TABLE[case.name].fused and not TABLE[case.name].copies) or "fused" not in path)
        and precision in TABLE[case.name].precisions
    ]


#: Low-precision state: each case against the same case with full-precision state.
PRECISION_CASES = _precision_cases()


def params(cases: list[Case] = CASES) -> Any:
    return pytest.mark.parametrize("case", cases, ids=[c.id for c in cases])
