"""torch's own test inputs for each torch twin (``torch.testing._internal.common_optimizers``,
shipped in the wheel): its optimizer configurations step as torch's class steps, and its bad
inputs get torch's error type and words, at the moment torch raises them (construction or
step). ``conformance/run.sh`` runs torch's whole ``test_optim.py``; this is the part that needs
no download, on every ``make test``."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch

import adamkit

from .registry import TABLE, TWINNED

pytest.importorskip("expecttest")  # torch's testing helpers import it
common = pytest.importorskip("torch.testing._internal.common_optimizers")

INFOS = {info.optim_cls.__name__: info for info in common.optim_db}

#: adamkit's deliberate differences (README, "How it differs from torch.optim"), by torch's
#: description of the input: a duplicate parameter raises instead of warning; tensor lr and
#: betas work on every path, and float and tensor betas mix.
DIFFERENT_ON_PURPOSE = {
    "a param group cannot have duplicate parameters": "raises ValueError instead of warning",
    "lr as Tensor doesn't work with foreach & not capturable": "tensor lr works on every path",
    "betas must be either both floats or both Tensors": "float and tensor betas mix",
    r"betas\[0\] as a Tensor is not supported for capturable=False and foreach=True": (
        "tensor betas work on every path"
    ),
}


def _error_cases() -> list[Any]:
    cases = []
    for name in TWINNED:
        info = INFOS[TABLE[name].torch_twin]
        for error in info.optim_error_inputs_func(device="cpu", dtype=torch.float32):
            desc = error.optimizer_error_input.desc
            marks = []
            if desc in DIFFERENT_ON_PURPOSE:
                marks = [pytest.mark.skip(reason=DIFFERENT_ON_PURPOSE[desc])]
            cases.append(pytest.param(name, error, id=f"{name}-{desc}", marks=marks))
    return cases


@pytest.mark.parametrize(("name", "error"), _error_cases())
def test_torch_s_bad_inputs_get_torch_s_errors(name: str, error: Any) -> None:
    given = error.optimizer_error_input
    params = given.params if given.params is not None else [torch.rand(2, 3, requires_grad=True)]
    cls = getattr(adamkit, name)
    expected = (error.error_type, error.error_regex)
    if error.error_on == common.OptimizerErrorEnum.CONSTRUCTION_ERROR:
        with pytest.raises(*expected[:1], match=expected[1]):
            cls(params, **given.kwargs)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = cls(params, **given.kwargs)  # constructed, as torch's is: the step refuses
    tensors = (
        params if isinstance(params[0], torch.Tensor) else [p for g in params for p in g["params"]]
    )
    for p in tensors:
        if p.grad is None:
            p.grad = torch.rand_like(p)
    with pytest.raises(*expected[:1], match=expected[1]):
        opt.step()


def _input_cases() -> list[Any]:
    return [
        pytest.param(name, given.kwargs, id=f"{name}-{given.desc}")
        for name in TWINNED
        for given in INFOS[TABLE[name].torch_twin].optim_inputs_func(
            device="cpu", dtype=torch.float64
        )
    ]


@pytest.mark.parametrize(("name", "kwargs"), _input_cases())
@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "forloop"])
def test_torch_s_configurations_step_as_torch(name: str, kwargs: dict, foreach: bool) -> None:
    """30 steps of a linear layer (a matrix, a vector) in float64 on each path, against
    torch's class on the same path, within the parity suite's 1e-12 (in practice bit for bit
    on the multi-tensor path: one element of RAdam with coupled weight decay differs in its
    last bit here)."""
    g = torch.Generator().manual_seed(0)
    ours_p = [
        torch.randn(s, generator=g, dtype=torch.float64).requires_grad_() for s in [(6, 5), (6,)]
    ]
    theirs_p = [p.detach().clone().requires_grad_() for p in ours_p]
    ours = getattr(adamkit, name)(ours_p, foreach=foreach, **kwargs)
    theirs = getattr(torch.optim, TABLE[name].torch_twin)(theirs_p, foreach=foreach, **kwargs)
    for _ in range(30):
        for p, q in zip(ours_p, theirs_p, strict=True):
            p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64)
            q.grad = p.grad.clone()
        ours.step()
        theirs.step()
    tol = 1e-12
    for p, q in zip(ours_p, theirs_p, strict=True):
        torch.testing.assert_close(p, q, rtol=tol, atol=tol)
        for key, value in ours.state[p].items():
            torch.testing.assert_close(value, theirs.state[q][key], rtol=tol, atol=tol)
