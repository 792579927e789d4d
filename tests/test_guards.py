"""The optimizer options for bad gradients: ``nonfinite`` ("raise", "skip", or torch's
behaviour) and ``max_grad_norm`` (global-norm clipping equal to torch's clip_grad_norm_)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import adamkit

from .problems import clone, grad_stream, make_params, set_grads
from .registry import ALGORITHMS

PATHS = [{"foreach": True}, {"foreach": False}, {"fused": True}]


@pytest.mark.parametrize("name", ALGORITHMS)
def test_clipping_equals_torch_clip_grad_norm(name: str) -> None:
    ours_p = make_params()
    theirs_p = clone(ours_p)
    ours = getattr(adamkit, name)(ours_p, foreach=True, max_grad_norm=0.5)
    theirs = getattr(torch.optim, name)(theirs_p, foreach=True)
    for grads in grad_stream(ours_p, 30):
        set_grads(ours_p, grads)
        set_grads(theirs_p, grads)
        ours.step()
        torch.nn.utils.clip_grad_norm_([p for p in theirs_p if p.grad is not None], 0.5)
        theirs.step()
    for a, b in zip(ours_p, theirs_p, strict=True):
        assert torch.equal(a, b)  # the same operations: bit for bit
    assert ours.last_grad_norm > 0.5  # the problem's gradients are large: clipping was active


def _with_inf(params: list[torch.Tensor]) -> None:
    for p in params:
        p.grad = torch.ones_like(p)
    params[0].grad[..., 0] = math.inf  # type: ignore[index]


@pytest.mark.parametrize("path", PATHS, ids=["foreach", "forloop", "fused"])
@pytest.mark.parametrize("name", ALGORITHMS)
def test_raise_names_the_parameter_and_changes_nothing(name: str, path: dict[str, bool]) -> None:
    model = torch.nn.Linear(3, 2)
    opt = getattr(adamkit, name)(model.named_parameters(), nonfinite="raise", **path)
    params = list(model.parameters())
    _with_inf(params)
    before = [p.detach().clone() for p in params]
    with pytest.raises(FloatingPointError, match=r"non-finite gradient in parameter 'weight'"):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(params, before, strict=True))
    assert all(len(opt.state[p]) == 0 for p in params)


@pytest.mark.parametrize("path", PATHS, ids=["foreach", "forloop", "fused"])
@pytest.mark.parametrize("name", ALGORITHMS)
def test_skip_leaves_state_untouched_and_counts(name: str, path: dict[str, bool]) -> None:
    params = make_params()
    opt = getattr(adamkit, name)(params, nonfinite="skip", **path)
    sched = adamkit.Scheduler(opt, "linear(10)")
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    sched.step()
    before_params = [p.detach().clone() for p in params]
    before_state = copy.deepcopy(opt.state_dict()["state"])
    _with_inf(params)
    opt.step()
    sched.step()
    assert opt.skipped_steps == 1
    assert sched.last_epoch == 1 and sched.skipped == 1  # the schedule did not advance
    assert all(torch.equal(p, q) for p, q in zip(params, before_params, strict=True))
    after = opt.state_dict()["state"]
    for index, entry in before_state.items():
        for key, value in entry.items():
            assert torch.equal(after[index][key], value), (index, key)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()  # a finite step goes through again
    assert not all(torch.equal(p, q) for p, q in zip(params, before_params, strict=True))


@pytest.mark.parametrize("name", ALGORITHMS)
def test_default_proceeds_as_torch_even_with_clipping(name: str) -> None:
    ours_p, theirs_p = make_params(), make_params()
    ours = getattr(adamkit, name)(ours_p, foreach=True, max_grad_norm=1.0)
    theirs = getattr(torch.optim, name)(theirs_p, foreach=True)
    for params in (ours_p, theirs_p):
        _with_inf(params)
    ours.step()
    theirs.step()
    for a, b in zip(ours_p, theirs_p, strict=True):
        torch.testing.assert_close(a, b, equal_nan=True)
    assert math.isnan(ours_p[0][..., 0].sum().item()) or math.isinf(ours_p[0][..., 0].sum().item())
