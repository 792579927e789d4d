"""The table of algorithms says true things: each row's class uses it, the state it names is
the state the optimizer keeps (and torch's twin keeps), the states it calls non-negative never go
negative, and an algorithm without a kernel runs on the eager paths."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest
import torch

import adamkit
from adamkit.kernels import _abi
from adamkit.optim._algorithms import ALGORITHMS, KINDS, SCALAR_KEYS, UNSIGNED, is_unsigned, noise
from adamkit.optim._base import AdamFamily

from .registry import signature


@pytest.mark.parametrize("name", ALGORITHMS)
def test_each_row_is_its_class_s(name: str) -> None:
    row = ALGORITHMS[name]
    cls = getattr(adamkit, name)
    assert issubclass(cls, AdamFamily) and cls.algorithm is row
    assert name in adamkit.__all__
    if row.torch_twin is not None:
        # A drop-in: torch's positional arguments in torch's order, and every keyword torch
        # takes, all with torch's defaults.
        ours, theirs = _arguments(cls), _arguments(getattr(torch.optim, row.torch_twin))
        assert ours["positional"] == theirs["positional"]
        assert theirs["keyword"].items() <= ours["keyword"].items()
    if row.amsgrad_state:
        assert "amsgrad" in signature(name)
    # Its own hyperparameters are exactly the numeric arguments the others do not take.
    shared = set.intersection(*(set(signature(other)) for other in ALGORITHMS))
    numeric = {k for k, v in signature(name).items() if type(v) in (int, float) and k not in shared}
    assert set(row.own) == numeric


def _arguments(cls: type) -> dict[str, Any]:
    parameters = inspect.signature(cls).parameters.values()
    positional = [(p.name, p.default) for p in parameters if p.kind == p.POSITIONAL_OR_KEYWORD]
    keyword = {p.name: p.default for p in parameters if p.kind == p.KEYWORD_ONLY}
    return {"positional": positional, "keyword": keyword}


@pytest.mark.parametrize(
    ("name", "amsgrad"),
    [(name, False) for name in ALGORITHMS]
    + [(name, True) for name, row in ALGORITHMS.items() if row.amsgrad_state],
)
def test_the_state_kept_is_the_row_s_and_its_signs_hold(name: str, amsgrad: bool) -> None:
    row = ALGORITHMS[name]
    torch.manual_seed(0)
    ps = [
        torch.nn.Parameter(torch.randn(shape, dtype=torch.float64)) for shape in [(300,), (20, 15)]
    ]
    opt = getattr(adamkit, name)(ps, **({"amsgrad": True} if amsgrad else {}))
    for _ in range(5):
        for p in ps:
            p.grad = torch.randn_like(p)
        opt.step()
    kept = set()
    for p in ps:
        state, shapes = opt.state[p], row.shapes(tuple(p.shape), amsgrad)
        assert set(state) == {"step", *shapes, *row.scalars}
        kept |= set(shapes)
        for key, shape in shapes.items():
            assert tuple(state[key].shape) == shape
            # Random gradients make every signed state negative somewhere: the table's sign
            # claims are facts of the update, not choices.
            assert bool((state[key] >= 0).all()) == (key in row.unsigned), key
    assert kept == set(row.state_keys(amsgrad))  # every state the row names is kept


def test_the_tables_derived_from_the_rows_agree() -> None:
    assert set(UNSIGNED) == {k for row in ALGORITHMS.values() for k in row.unsigned}
    assert SCALAR_KEYS[0] == "step" and set(SCALAR_KEYS[1:]) == {
        k for row in ALGORITHMS.values() for k in row.scalars
    }
    # One hash serves the first two states: a state name must take the same half in every row.
    for row in ALGORITHMS.values():
        for i, key in enumerate(row.states[:2]):
            assert noise(key) == (_abi.SALT_MOMENTS, i > 0), (row.name, key)
        if row.amsgrad_state:
            assert noise(row.amsgrad_state) == (_abi.SALT_MAX, True)
        # A state's sign and stream are looked up by its name: every row must agree on them.
        for i, key in enumerate(row.states[2:], start=2):
            assert noise(key) == (_abi.SALT_EXTRA + i - 2, True), (row.name, key)
        for key in row.state_keys(True):
            assert is_unsigned(key) == (key in row.unsigned), (row.name, key)
    kinds = [kind for row in ALGORITHMS.values() for kind in row.kinds]
    assert list(KINDS) == list(dict.fromkeys(kinds))
    assert list(KINDS.values()) == [*range(len(KINDS))]


def test_a_row_that_names_a_missing_state_or_too_many_is_refused() -> None:
    adam = ALGORITHMS["Adam"]
    with pytest.raises(ValueError, match="unsigned"):
        dataclasses.replace(adam, unsigned=frozenset({"exp_avg_sqq"}))
    four = ("exp_avg", "exp_avg_sq", "exp_avg_slow", "exp_avg_sq_slow")
    assert len(four) + 1 > _abi.MAX_STATES  # (with AMSGrad's maximum)
    with pytest.raises(ValueError, match=f"take 2 to {_abi.MAX_STATES} states"):
        dataclasses.replace(adam, states=four)
    dataclasses.replace(adam, states=four, kinds=())  # the eager paths take any number


class NoKernelAdam(adamkit.Adam):
    """Adam as an algorithm that no fused kernel implements (a new row before its kernel)."""

    algorithm = dataclasses.replace(ALGORITHMS["Adam"], name="NoKernelAdam", kinds=())


@pytest.mark.parametrize("precision", ["fp32", "8bit"])
def test_an_algorithm_without_a_kernel_runs_on_the_eager_paths(precision: str) -> None:
    torch.manual_seed(1)
    ps = [torch.nn.Parameter(torch.randn(5000)) for _ in range(2)]
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    ours = NoKernelAdam(ps, lr=1e-2, state_precision=precision)
    twin = adamkit.Adam(qs, lr=1e-2, state_precision=precision, foreach=True)
    assert ours.execution_path() == "foreach"
    for _ in range(4):
        grads = [torch.randn(5000) for _ in ps]
        for p, q, g in zip(ps, qs, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        twin.step()
    for p, q in zip(ps, qs, strict=True):
        assert torch.equal(p, q)
    with pytest.raises(RuntimeError, match=r"fused=True\): no fused kernel steps NoKernelAdam"):
        NoKernelAdam(ps, fused=True)


@pytest.mark.parametrize("precision", ["fp32", "8bit"])
def test_a_stray_amsgrad_flag_on_another_algorithm_changes_nothing(precision: str) -> None:
    """``amsgrad`` in a RAdam group (a param group may carry any key, as in torch): RAdam has
    no running maximum, so the flag must not reach its kernels (the C kernel refused the call,
    the GPU kernel read a row the table does not have)."""
    torch.manual_seed(2)
    ps = [torch.nn.Parameter(torch.randn(5000)) for _ in range(2)]
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    ours = adamkit.RAdam(ps, state_precision=precision)
    ours.param_groups[0]["amsgrad"] = True
    twin = adamkit.RAdam(qs, state_precision=precision)
    for _ in range(8):
        for p, q in zip(ps, qs, strict=True):
            p.grad = torch.randn(5000)
            q.grad = p.grad.clone()
        ours.step()
        twin.step()
    assert ours.execution_path() == "fused"
    for p, q in zip(ps, qs, strict=True):
        assert torch.equal(p, q)


def test_a_class_whose_row_names_kernels_must_give_their_step_scalars() -> None:
    with pytest.raises(TypeError, match="sets no _scalars"):

        class Unfinished(AdamFamily):
            algorithm = dataclasses.replace(ALGORITHMS["Adam"], name="Unfinished")
