"""``differentiable=True``: the step is recorded by autograd, as torch's is.

Each algorithm is checked with ``torch.autograd.gradcheck`` in float64 (analytical against
numerical derivatives of the parameters and state after a step, with respect to the parameters,
the gradient and the state before it), and against torch's class on the same inputs: the same
outputs and the same vector-Jacobian products. Hypergradients (a loss after two steps,
differentiated with respect to a tensor ``lr``, ``weight_decay`` or ``betas``) are checked the
same way, against torch where torch can compute them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch.autograd import gradcheck

import adamkit

F64 = torch.float64

# (class name, constructor arguments, differentiable state keys)
ONE_STEP = [
    ("Adam", {"amsgrad": True}, ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")),
    ("Adam", {"weight_decay": 0.1, "maximize": True}, ("exp_avg", "exp_avg_sq")),
    ("AdamW", {"amsgrad": True, "weight_decay": 0.1}, ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")),
    ("RAdam", {}, ("exp_avg", "exp_avg_sq")),  # step 11: rectified
    ("RAdam", {"weight_decay": 0.1, "decoupled_weight_decay": True}, ("exp_avg", "exp_avg_sq")),
    ("NAdam", {}, ("exp_avg", "exp_avg_sq", "mu_product")),
    ("NAdam", {"weight_decay": 0.1, "decoupled_weight_decay": True},
     ("exp_avg", "exp_avg_sq", "mu_product")),
    ("Adamax", {"weight_decay": 0.1}, ("exp_avg", "exp_inf")),
]  # fmt: skip


@pytest.fixture
def float64_default() -> Iterator[None]:
    """torch's differentiable step computes its bias corrections in its step counter's dtype,
    the default dtype (float32: ~1e-7 relative); adamkit in float64, as both libraries' other
    paths do. Comparing the two exactly needs float64 step counters."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    yield
    torch.set_default_dtype(before)


def one_step(cls: type, kwargs: dict[str, Any], keys: tuple[str, ...]) -> Callable[..., Any]:
    """(param, grad, *state) -> (param, *state) after one step from step count 10."""

    def run(param: torch.Tensor, grad: torch.Tensor, *state: torch.Tensor) -> tuple:
        p = param.clone()  # a non-leaf: autograd records the in-place step on it
        p.grad = grad
        opt = cls([p], lr=0.9, differentiable=True, **kwargs)
        opt.state[p].update({k: v.clone() for k, v in zip(keys, state, strict=True)})
        opt.state[p]["step"] = torch.tensor(10.0, dtype=F64)
        opt.step()
        return (p, *(opt.state[p][k] for k in keys))

    return run


def inputs(keys: tuple[str, ...], seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(10,), (10,)] + [() if k == "mu_product" else (10,) for k in keys]
    return [torch.rand(s, generator=g, dtype=F64).requires_grad_() for s in shapes]


@pytest.mark.parametrize(
    ("name", "kwargs", "keys"), ONE_STEP, ids=[f"{n}-{k}" for n, k, _ in ONE_STEP]
)
def test_one_step_passes_gradcheck_and_matches_torch(name: str, kwargs: dict, keys: tuple) -> None:
    args = inputs(keys)
    ours = one_step(getattr(adamkit, name), kwargs, keys)
    assert gradcheck(ours, args)
    theirs = one_step(getattr(torch.optim, name), kwargs, keys)
    out, expected = ours(*args), theirs(*args)
    for a, b in zip(out, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)
    cotangents = [torch.randn_like(t) for t in out]
    mine = torch.autograd.grad(out, args, cotangents)
    reference = torch.autograd.grad(expected, args, cotangents)
    for a, b in zip(mine, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


def two_steps(cls: type, kwargs: dict[str, Any], names: tuple[str, ...]) -> Callable[..., Any]:
    """(param, grad, *hyperparameters) -> the loss after two steps of a tiny regression; the
    hyperparameters named in ``names`` are tensors the loss is differentiated against."""

    def run(param: torch.Tensor, grad: torch.Tensor, *hyper: torch.Tensor) -> torch.Tensor:
        given = dict(zip(names, (h.clone() for h in hyper), strict=True))
        if "beta1" in given:
            given["betas"] = (given.pop("beta1"), given.pop("beta2"))
        p = param.clone()
        p.grad = grad
        opt = cls([p], differentiable=True, **kwargs, **given)
        x, y = torch.tensor([1.0], dtype=F64), torch.tensor([2.0], dtype=F64)
        for _ in range(2):
            loss = torch.nn.functional.mse_loss(x * p.sum(), y)
            (g,) = torch.autograd.grad(loss, p, create_graph=True)
            p.grad = p.grad + g  # as loss.backward(create_graph=True) accumulates
            opt.step()
            p.grad = None
            p.grad = torch.zeros_like(p)
        return loss

    return run


HYPER = {
    "lr": torch.tensor(0.01, dtype=F64),
    "weight_decay": torch.tensor(0.5, dtype=F64),
    "beta1": torch.tensor(0.9, dtype=F64),
    "beta2": torch.tensor(0.999, dtype=F64),
}
# (class, fixed arguments, tensor hyperparameters, whether torch 2.13 can differentiate them)
HYPERGRADIENTS = [
    ("Adam", {}, ("lr",), True),
    ("AdamW", {}, ("lr", "weight_decay", "beta1", "beta2"), True),
    ("Adam", {"amsgrad": True}, ("lr", "weight_decay", "beta1", "beta2"), False),
    ("RAdam", {}, ("lr", "weight_decay", "beta1", "beta2"), False),
    ("NAdam", {}, ("lr", "weight_decay", "beta1", "beta2"), False),
    ("Adamax", {}, ("lr", "weight_decay", "beta1", "beta2"), False),
]


@pytest.mark.usefixtures("float64_default")
@pytest.mark.parametrize(
    ("name", "kwargs", "names", "torch_can"),
    HYPERGRADIENTS,
    ids=[f"{n}-{k}-{'+'.join(h)}" for n, k, h, _ in HYPERGRADIENTS],
)
def test_hypergradients_pass_gradcheck_and_match_torch_where_it_has_them(
    name: str, kwargs: dict, names: tuple, torch_can: bool
) -> None:
    g = torch.Generator().manual_seed(1)
    param, grad = (torch.rand(10, generator=g, dtype=F64).requires_grad_() for _ in range(2))
    hyper = [HYPER[n].clone().requires_grad_() for n in names]
    ours = two_steps(getattr(adamkit, name), kwargs, names)
    assert gradcheck(ours, (param, grad, *hyper))
    if not torch_can:  # torch 2.13 raises (an in-place error, or a Tensor alpha) here
        return
    theirs = two_steps(getattr(torch.optim, name), kwargs, names)
    loss, expected = ours(param, grad, *hyper), theirs(param, grad, *hyper)
    torch.testing.assert_close(loss, expected, rtol=1e-13, atol=0)
    mine = torch.autograd.grad(loss, hyper)
    reference = torch.autograd.grad(expected, hyper)
    for a, b in zip(mine, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-14)


def test_a_differentiable_step_equals_the_ordinary_step_and_keeps_a_graph() -> None:
    torch.manual_seed(0)
    leaf = torch.randn(50, requires_grad=True)
    plain = leaf.detach().clone()
    p = leaf.clone()
    recorded = adamkit.AdamW([p], lr=0.1, weight_decay=0.1, differentiable=True)
    ordinary = adamkit.AdamW([plain], lr=0.1, weight_decay=0.1, foreach=False)
    assert recorded.execution_path() == "differentiable"
    for _ in range(5):
        grad = torch.randn(50)
        p.grad, plain.grad = grad.clone(), grad.clone()
        recorded.step()
        ordinary.step()
    assert p.grad_fn is not None and plain.grad_fn is None
    torch.testing.assert_close(p.detach(), plain, rtol=1e-6, atol=1e-7)
    (d,) = torch.autograd.grad(p.sum(), leaf)
    assert torch.isfinite(d).all() and d.shape == leaf.shape


def test_non_leaf_parameters_need_differentiable_true() -> None:
    p = torch.randn(3, requires_grad=True).clone()
    with pytest.raises(ValueError, match="can't optimize a non-leaf Tensor"):
        adamkit.Adam([p])
    adamkit.Adam([p], differentiable=True)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"foreach": True}, RuntimeError, "foreach=True cannot be combined with differentiable"),
        ({"stochastic_rounding": True}, ValueError, "stochastic_rounding=True cannot be combined"),
        ({"fused": True}, RuntimeError, "`fused` does not support `differentiable`"),
    ],
)
def test_settings_that_would_cut_the_graph_are_refused(
    kwargs: dict, error: type, match: str
) -> None:
    p = torch.randn(4, requires_grad=True).clone().bfloat16()
    with pytest.raises(error, match=match):
        adamkit.Adam([p], differentiable=True, **kwargs)


def test_a_one_element_tensor_lr_steps_a_zero_dimensional_parameter() -> None:
    lr = torch.tensor([0.01], requires_grad=True)
    w = torch.tensor(1.0, requires_grad=True).clone()
    opt = adamkit.Adam([w], lr=lr, differentiable=True)
    w.grad = torch.tensor(0.5)
    opt.step()
    (d,) = torch.autograd.grad(w, lr)
    assert w.shape == () and d.shape == (1,) and d.item() == pytest.approx(-1.0, rel=1e-3)
