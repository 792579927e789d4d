"""Bad input gets a clear error naming the argument and value; torch's machinery (schedulers,
hooks, GradScaler, closures, zero_grad, add_param_group) works unchanged with adamkit."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

import adamkit

from .problems import make_params
from .registry import ALGORITHMS, FUSED, TABLE, TWINNED

# (kwargs, exception, message regex). Every row runs for every optimizer that has the argument.
BAD_ARGUMENTS: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"lr": -1e-3}, ValueError, r"Invalid learning rate: -0\.001"),
    ({"lr": math.nan}, ValueError, r"Invalid learning rate: nan"),
    ({"lr": math.inf}, ValueError, r"Invalid learning rate: inf"),
    ({"lr": "0.1"}, TypeError, r"lr must be a float or a 1-element Tensor, got str: '0.1'"),
    ({"lr": None}, TypeError, r"lr must be a float .* got NoneType"),
    ({"lr": True}, TypeError, r"lr must be a float .* got bool"),
    (
        {"lr": torch.tensor([0.1, 0.2])},
        ValueError,
        r"Tensor lr must be 1-element, got shape \(2,\)",
    ),
    (
        {"lr": torch.tensor(-0.1)},
        ValueError,
        r"Invalid learning rate: -0\.1000000\d* \(lr=tensor\(-0\.1000\)",
    ),
    ({"eps": -1e-8}, ValueError, r"Invalid epsilon value: -1e-08"),
    ({"eps": math.nan}, ValueError, r"Invalid epsilon value: nan"),
    ({"weight_decay": -0.1}, ValueError, r"Invalid weight_decay value: -0\.1"),
    ({"weight_decay": math.nan}, ValueError, r"Invalid weight_decay value: nan"),
    ({"betas": (1.0, 0.999)}, ValueError, r"Invalid beta parameter at index 0: 1\.0"),
    ({"betas": (-0.1, 0.999)}, ValueError, r"Invalid beta parameter at index 0: -0\.1"),
    ({"betas": (0.9, 1.5)}, ValueError, r"Invalid beta parameter at index 1: 1\.5"),
    ({"betas": (0.9, math.nan)}, ValueError, r"Invalid beta parameter at index 1: nan"),
    ({"betas": 0.9}, TypeError, r"betas must be a pair \(beta1, beta2\), got 0\.9"),
    ({"betas": (0.9, 0.99, 0.999)}, TypeError, r"betas must be a pair"),
    ({"betas": ("a", 0.9)}, TypeError, r"betas\[0\] must be a float .* got str"),
    ({"maximize": "yes"}, TypeError, r"maximize must be True or False, got str: 'yes'"),
    ({"foreach": 1}, TypeError, r"foreach must be True, False or None, got int: 1"),
    ({"fused": True, "foreach": True}, ValueError, r"fused=True and foreach=True cannot be set"),
    ({"fused": "yes"}, TypeError, r"fused must be True, False or None, got str: 'yes'"),
    ({"capturable": True}, NotImplementedError, r"capturable=True is not supported yet"),
    (
        {"differentiable": True, "fused": True},
        RuntimeError,
        r"`fused` does not support `differentiable`",
    ),
    (
        {"differentiable": True, "state_precision": "8bit"},
        ValueError,
        r"state_precision='8bit' cannot be combined with differentiable=True",
    ),
    (
        {"differentiable": True, "max_grad_norm": 1.0},
        ValueError,
        r"max_grad_norm=1\.0 cannot be combined with differentiable=True",
    ),
    ({"amsgrad": 1}, TypeError, r"amsgrad must be True or False, got int: 1"),
    ({"momentum_decay": -1.0}, ValueError, r"Invalid momentum_decay value: -1\.0"),
    ({"decoupled_weight_decay": None}, TypeError, r"decoupled_weight_decay must be True or False"),
    ({"nonfinite": "ignore"}, ValueError, r"nonfinite='ignore' is invalid \(expected None"),
    ({"max_grad_norm": 0.0}, ValueError, r"Invalid max_grad_norm value: max_grad_norm=0\.0"),
    ({"max_grad_norm": math.inf}, ValueError, r"Invalid max_grad_norm value: max_grad_norm=inf"),
    ({"state_precision": "fp16"}, ValueError, r"state_precision='fp16' is invalid \(expected"),
    ({"state_precision": 8}, ValueError, r"state_precision=8 is invalid"),
    ({"stochastic_rounding": "yes"}, TypeError, r"stochastic_rounding must be True or False"),
    ({"cautious": "yes"}, TypeError, r"cautious must be True or False"),
    ({"update_clipping": 1}, TypeError, r"update_clipping must be True or False"),
]


def _accepts(name: str, kwarg: str) -> bool:
    import inspect

    return kwarg in inspect.signature(getattr(adamkit, name)).parameters


def _applies(name: str, kwargs: dict) -> bool:
    """Whether a bad-argument case is for this algorithm's signature: it takes every keyword,
    and ``eps`` as a number (Adafactor's pair has its own cases)."""
    if not all(_accepts(name, k) for k in kwargs):
        return False
    return "eps" not in kwargs or not TABLE[name].eps_pair  # (Adafactor's: test_adafactor.py)


BAD_ARGUMENT_CASES = [
    (name, *row) for name in ALGORITHMS for row in BAD_ARGUMENTS if _applies(name, row[0])
]


@pytest.mark.parametrize(
    "name,kwargs,error,message",
    BAD_ARGUMENT_CASES,
    ids=[f"{name}-{kwargs}" for name, kwargs, _, _ in BAD_ARGUMENT_CASES],
)
def test_bad_argument_is_named(name: str, kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        getattr(adamkit, name)(make_params(), **kwargs)


def _stepped_after(change: Callable[[torch.optim.Optimizer], None]) -> None:
    a, b = make_params()[:2]
    opt = adamkit.Adam([{"params": [a]}, {"params": [b]}], nonfinite="raise")
    change(opt)
    a.grad, b.grad = torch.ones_like(a), torch.ones_like(b)
    opt.step()


# (what is done, written as code; the call; exception; message regex) with a and b two
# parameters: param groups that are refused, and the settings that must be the same in every
# group (they are the optimizer's: one global norm, one decision per step).
BAD_PARAM_GROUPS: list[tuple[str, Callable[[Any, Any], object], type[Exception], str]] = [
    (
        "Adam([{'params': [a]}, {'params': [b], 'lr': -5}])",
        lambda a, b: adamkit.Adam([{"params": [a]}, {"params": [b], "lr": -5}]),
        ValueError,
        r"param group 1: Invalid learning rate: -5",
    ),
    (
        "Adam([{'params': [a, b]}, {'params': [a]}])",
        lambda a, b: adamkit.Adam([{"params": [a, b]}, {"params": [a]}]),
        ValueError,
        r"param group 1: parameter given twice: params\[0\] is already in param group 0",
    ),
    (
        "Adam([{'params': [a]}, {'params': [b], 'max_grad_norm': 1.0}])",
        lambda a, b: adamkit.Adam([{"params": [a]}, {"params": [b], "max_grad_norm": 1.0}]),
        ValueError,
        r"param group 1 has max_grad_norm=1.0 but param group 0 has max_grad_norm=None: "
        r"max_grad_norm is one setting for the whole optimizer \(the norm is taken over every "
        r"group's gradients together.*set it in the constructor",
    ),
    (
        "Adam([a], nonfinite='raise').add_param_group({'params': [b], 'nonfinite': 'skip'})",
        lambda a, b: adamkit.Adam([a], nonfinite="raise").add_param_group(
            {"params": [b], "nonfinite": "skip"}
        ),
        ValueError,
        r"param group 1 has nonfinite='skip' but param group 0 has nonfinite='raise'",
    ),
    (
        "opt.param_groups[1]['nonfinite'] = None; opt.step() (the optimizer's is 'raise')",
        lambda a, b: _stepped_after(lambda opt: opt.param_groups[1].update(nonfinite=None)),
        ValueError,
        r"adamkit.Adam.step\(\): param group 1 has nonfinite=None but param group 0 has "
        r"nonfinite='raise'",
    ),
]


@pytest.mark.parametrize(
    "call,error,message",
    [row[1:] for row in BAD_PARAM_GROUPS],
    ids=[r[0] for r in BAD_PARAM_GROUPS],
)
def test_bad_param_groups_are_named(call: Callable, error: type, message: str) -> None:
    a, b = make_params()[:2]
    with pytest.raises(error, match=message):
        call(a, b)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_bad_param_group_value_is_named_with_its_group(name: str) -> None:
    a, b = make_params()[:2]
    with pytest.raises(ValueError, match=r"param group 1: Invalid learning rate: -5"):
        getattr(adamkit, name)([{"params": [a]}, {"params": [b], "lr": -5}])
    opt = getattr(adamkit, name)([a])
    eps, message = (
        ((None, -1), "epsilon2 should be >= 0 but is: -1")  # Adafactor's pair, torch's words
        if TABLE[name].eps_pair
        else (-1, "Invalid epsilon value: -1")
    )
    with pytest.raises(ValueError, match=rf"param group 1: {message}"):
        opt.add_param_group({"params": [b], "eps": eps})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("name", ALGORITHMS)
def test_structural_errors(name: str) -> None:
    cls = getattr(adamkit, name)
    p, q = make_params()[:2]
    with pytest.raises(ValueError, match="empty parameter list"):
        cls([])
    with pytest.raises(
        ValueError, match=r"parameter given twice: params\[1\] is the same tensor as params\[0\]"
    ):
        cls([p, p])
    with pytest.raises(
        ValueError,
        match=r"param group 1: parameter given twice: params\[0\] is already in param group 0",
    ):
        cls([{"params": [p, q]}, {"params": [p]}])
    with pytest.raises(TypeError, match=r"can only optimize Tensors, but params\[1\] is str"):
        cls([p, "weight"])
    with pytest.raises(TypeError, match="not a set"):
        cls([{"params": {p}}])
    with pytest.raises(TypeError, match="Tensor"):
        cls(p)  # a bare tensor, not an iterable of them (torch's own check)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_sparse_gradients_are_rejected_with_the_parameter_named(name: str) -> None:
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = getattr(adamkit, name)(emb.named_parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(
        RuntimeError, match=r"does not support sparse gradients \(parameter 'weight'"
    ):
        opt.step()


@pytest.mark.parametrize("name", ALGORITHMS)
def test_params_without_grad_are_skipped(name: str) -> None:
    a, b = make_params()[:2]
    before = b.detach().clone()
    opt = getattr(adamkit, name)([a, b])
    a.grad = torch.ones_like(a)
    opt.step()
    assert len(opt.state[a]) > 0 and b not in opt.state
    assert torch.equal(b.detach(), before)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_closure_zero_grad_and_hooks(name: str) -> None:
    model = torch.nn.Linear(3, 1)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    opt = getattr(adamkit, name)(model.parameters(), lr=0.01)
    calls: list[str] = []
    opt.register_step_pre_hook(lambda *_: calls.append("pre"))
    opt.register_step_post_hook(lambda *_: calls.append("post"))

    def closure() -> float:
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    first = opt.step(closure)
    for _ in range(50):
        last = opt.step(closure)
    assert isinstance(first, torch.Tensor) and last < first
    assert calls[:2] == ["pre", "post"] and len(calls) == 102
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", TWINNED)
def test_add_param_group_midway(name: str) -> None:
    a, b = make_params()[:2]
    ours = getattr(adamkit, name)([a], lr=0.01)
    a2, b2 = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    theirs = getattr(torch.optim, name)([a2], lr=0.01, foreach=True)
    for step in range(20):
        if step == 10:
            ours.add_param_group({"params": [b], "lr": 0.05})
            theirs.add_param_group({"params": [b2], "lr": 0.05})
        for p, q in ((a, a2), (b, b2)):
            g = torch.full_like(p, math.sin(step + p.numel()))
            p.grad, q.grad = g, g.clone()
        ours.step()
        theirs.step()
    torch.testing.assert_close(b, b2, rtol=1e-6, atol=1e-6)
    assert ours.state[b]["step"].item() == 10


@pytest.mark.parametrize("name", TWINNED)
def test_torch_lr_schedulers_drive_adamkit(name: str) -> None:
    p = make_params()[0]
    opt = getattr(adamkit, name)([p], lr=1.0)
    ref = getattr(torch.optim, name)([p.detach().clone().requires_grad_()], lr=1.0)
    ours_s = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 0.67**epoch)
    theirs_s = torch.optim.lr_scheduler.LambdaLR(ref, lambda epoch: 0.67**epoch)
    for _ in range(10):
        opt.step()
        ref.step()
        ours_s.step()
        theirs_s.step()
        assert opt.param_groups[0]["lr"] == ref.param_groups[0]["lr"]
    assert opt.param_groups[0]["lr"] == pytest.approx(0.67**10)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_grad_scaler_skips_steps_with_inf(name: str) -> None:
    model = torch.nn.Linear(2, 1)
    opt = getattr(adamkit, name)(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    before = [p.detach().clone() for p in model.parameters()]
    loss = model(torch.tensor([[math.inf, 1.0]])).sum()
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    assert scaler.get_scale() == 2.0**7
    for _ in range(2):  # ADOPT's first step records its second moment and moves nothing
        opt.zero_grad()
        scaler.scale(model(torch.ones(1, 2)).sum()).backward()
        scaler.step(opt)
        scaler.update()
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))


@pytest.mark.parametrize("name", FUSED)
def test_execution_path_selection(name: str) -> None:
    p = make_params()[0]
    make = getattr(adamkit, name)
    assert make([p]).execution_path() == "fused"  # the kernel builds on every test machine
    assert make([p], fused=True).execution_path() == "fused"
    assert make([p], fused=True, foreach=False).execution_path() == "fused"
    assert make([p], foreach=True).execution_path() == "foreach"
    assert make([p], fused=False).execution_path() == "foreach"
    assert make([p], foreach=False).execution_path() == "forloop"


@pytest.mark.parametrize("name", FUSED)
def test_fused_true_refuses_what_the_kernel_cannot_take(name: str) -> None:
    p = torch.zeros(6, 4).t().requires_grad_()  # a transposed leaf: not contiguous
    p.grad = torch.ones_like(p)
    opt = getattr(adamkit, name)([p], fused=True)
    with pytest.raises(RuntimeError, match=r"fused=True\): the fused kernel needs contiguous"):
        opt.step()
    assert torch.equal(p, torch.zeros(4, 6))
    default = getattr(adamkit, name)([p])  # fused=None: falls back to the foreach path
    default.step()
    default.step()  # ADOPT's first step records its second moment and moves nothing
    assert not torch.equal(p, torch.zeros(4, 6))


@pytest.mark.parametrize("name", FUSED)
def test_half_precision_parameters_take_the_kernel_only_when_asked(name: str) -> None:
    """As torch: fused=True steps bf16 in fp32 and rounds once; the default stays eager."""
    p = torch.zeros(4, dtype=torch.bfloat16, requires_grad=True)
    q = p.detach().clone().requires_grad_()
    p.grad = q.grad = torch.ones_like(p)
    for opt in (getattr(adamkit, name)([p], fused=True), getattr(adamkit, name)([q])):
        opt.step()  # the second: fused=None, the foreach path, in bf16 arithmetic
        opt.step()  # ADOPT's first step records its second moment and moves nothing
    assert not torch.equal(p, torch.zeros_like(p)) and not torch.equal(q, torch.zeros_like(q))


def test_public_surface() -> None:
    assert set(adamkit.__all__) >= {"Adam", "AdamW", "RAdam", "NAdam", "Adamax"}
    for name in ALGORITHMS:
        cls = getattr(adamkit, name)
        assert issubclass(cls, torch.optim.Optimizer)
        for section in (".. math::", "Example:", "References:", "Warning:"):
            assert section in (cls.__doc__ or ""), f"{name} docstring lacks {section}"


@pytest.mark.parametrize("name", TWINNED)
def test_defaults_are_torchs(name: str) -> None:
    import inspect

    ours = inspect.signature(getattr(adamkit, name)).parameters
    theirs = inspect.signature(getattr(torch.optim, name)).parameters
    # adamkit's own options come last, keyword-only: `fused` where torch has none (RAdam,
    # NAdam, Adamax), then `nonfinite`, `max_grad_norm`, `state_precision`,
    # `stochastic_rounding`, `cautious` and (where it applies) `update_clipping`, each
    # defaulting to what torch does.
    defaults = {"nonfinite": None, "max_grad_norm": None, "state_precision": "fp32"}
    defaults["stochastic_rounding"] = False
    if TABLE[name].cautious:
        defaults["cautious"] = False
    if TABLE[name].clipped_by:
        defaults["update_clipping"] = False
    extra = ([] if "fused" in theirs else ["fused"]) + list(defaults)
    assert list(ours) == list(theirs) + extra
    for key in extra:
        assert ours[key].default == defaults.get(key)
        assert ours[key].kind == inspect.Parameter.KEYWORD_ONLY
    for key, param in theirs.items():
        assert ours[key].default == param.default, key
        assert ours[key].kind == param.kind, key
