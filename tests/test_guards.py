"""The optimizer options for bad gradients: ``nonfinite`` ("raise", "skip", or torch's
behaviour) and ``max_grad_norm`` (global-norm clipping equal to torch's clip_grad_norm_)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch

import adamkit

from .problems import clone, grad_stream, make_params, set_grads
from .registry import ALGORITHMS, FUSED, NOT_BIT_EQUAL, TWINNED, Case

PATHS = [{"foreach": True}, {"foreach": False}, {"fused": True}]
#: Each algorithm on each path it has (the fused one where a kernel steps it).
NAME_PATHS = [
    pytest.param(name, path, id=f"{name}-{label}")
    for name in ALGORITHMS
    for path, label in zip(PATHS, ["foreach", "forloop", "fused"], strict=True)
    if "fused" not in path or name in FUSED
]


@pytest.mark.parametrize("name", TWINNED)
def test_clipping_equals_torch_clip_grad_norm(name: str) -> None:
    ours_p = Case(name).twin_params()
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
        if name in NOT_BIT_EQUAL:
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        else:
            assert torch.equal(a, b)  # the same operations: bit for bit
    assert ours.last_grad_norm > 0.5  # the problem's gradients are large: clipping was active


def _with_inf(params: list[torch.Tensor]) -> None:
    for p in params:
        p.grad = torch.ones_like(p)
    params[0].grad[..., 0] = math.inf  # type: ignore[index]


@pytest.mark.parametrize(("name", "path"), NAME_PATHS)
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


@pytest.mark.parametrize(("name", "path"), NAME_PATHS)
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


def _with_nan(params: list[torch.Tensor]) -> None:
    for p in params:
        p.grad = torch.ones_like(p)
    params[0].grad[..., 0] = math.nan  # type: ignore[index]


@pytest.mark.parametrize("path", PATHS, ids=["foreach", "forloop", "fused"])
@pytest.mark.parametrize("bad", [_with_inf, _with_nan], ids=["inf", "nan"])
@pytest.mark.parametrize("name", [n for n in TWINNED if n in FUSED])
def test_default_proceeds_as_torch_even_with_clipping(
    name: str, bad: Callable[[list[torch.Tensor]], None], path: dict[str, bool]
) -> None:
    # nonfinite=None: the step is clip_grad_norm_ (error_if_nonfinite=False) and then torch's
    # step. A NaN norm makes every gradient NaN; an infinite one scales them by 0 (so the inf
    # element becomes NaN and the rest 0).
    ours_p, theirs_p = make_params(), make_params()
    ours = getattr(adamkit, name)(ours_p, max_grad_norm=1.0, **path)
    theirs = getattr(torch.optim, name)(theirs_p, foreach=True)
    for params in (ours_p, theirs_p):
        bad(params)
    ours.step()
    torch.nn.utils.clip_grad_norm_(theirs_p, 1.0)
    theirs.step()
    for a, b in zip(ours_p, theirs_p, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0, equal_nan=True)
        if "foreach" in path:  # torch's operations: the parameters bit for bit too
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    assert math.isnan(ours.last_grad_norm) == (bad is _with_nan)
    assert torch.isnan(ours_p[0][..., 0]).all()


HUGE = 1.9e19  # finite in float32, but its square is not: the norm overflows to inf


@pytest.mark.parametrize("path", PATHS, ids=["foreach", "forloop", "fused"])
def test_an_overflowed_norm_of_finite_gradients_is_not_called_nonfinite(
    path: dict[str, bool],
) -> None:
    model = torch.nn.Linear(3, 2)
    opt = adamkit.Adam(model.named_parameters(), nonfinite="raise", **path)
    model.weight.grad = torch.ones_like(model.weight)
    model.bias.grad = torch.ones_like(model.bias)
    model.weight.grad[0, 0] = HUGE
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(
        FloatingPointError,
        match=r"the gradient norm overflowed: the norm of parameter 'weight' is inf in "
        r"torch.float32, though every gradient element is finite .* about 1.84e\+19",
    ):
        opt.step()
    # Each norm finite, their total not.
    model.weight.grad[0, 0], model.bias.grad[0] = 1.5e19, 1.5e19
    with pytest.raises(
        FloatingPointError, match=r"each parameter's norm is finite but their total is inf"
    ):
        opt.step()
    # A NaN and an overflow: the NaN is the non-finite gradient, the overflow said as such.
    model.weight.grad[0, 0], model.bias.grad[0] = HUGE, math.nan
    with pytest.raises(
        FloatingPointError,
        match=r"non-finite gradient in parameter 'bias'; the norm of parameter 'weight' "
        r"overflowed to inf, its elements finite",
    ):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))

    skipping = adamkit.Adam(model.named_parameters(), nonfinite="skip", **path)
    model.weight.grad[0, 0], model.bias.grad[0] = HUGE, 1.0
    skipping.step()
    assert skipping.skipped_steps == 1 and math.isinf(skipping.last_grad_norm)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))


def test_counters_exist_before_the_first_step() -> None:
    opt = adamkit.Adam(make_params())
    assert opt.skipped_steps == 0 and opt.last_grad_norm is None
    copied = copy.deepcopy(opt)  # torch pickles only defaults, state and param_groups
    assert copied.skipped_steps == 0 and copied.last_grad_norm is None


@pytest.mark.parametrize("name", ALGORITHMS)
def test_the_groups_settings_are_the_ones_used(name: str) -> None:
    # Set in the param groups (each the same), not in the constructor: still honoured.
    a, b = make_params()[:2]
    opt = getattr(adamkit, name)(
        [{"params": [a], "nonfinite": "raise"}, {"params": [b], "nonfinite": "raise"}]
    )
    _with_inf([a, b])
    with pytest.raises(FloatingPointError, match=r"non-finite gradient in parameter #0"):
        opt.step()
    assert len(opt.state[a]) == 0

    # Loaded from a checkpoint: its groups' settings replace the constructor's.
    saver = getattr(adamkit, name)([a, b], max_grad_norm=0.5, nonfinite="skip")
    loaded = getattr(adamkit, name)([a, b])
    loaded.load_state_dict(saver.state_dict())
    assert loaded.defaults["max_grad_norm"] == 0.5 and loaded.defaults["nonfinite"] == "skip"
    loaded.step()
    assert loaded.skipped_steps == 1
    for p in (a, b):
        p.grad = torch.full_like(p, 10.0)
    expected = clone([a, b])
    set_grads(expected, [a.grad, b.grad])
    torch.nn.utils.clip_grad_norm_(expected, 0.5)
    loaded.step()
    for p, q in zip((a, b), expected, strict=True):
        assert torch.equal(p.grad, q.grad)  # clipped to the checkpoint's 0.5
    c = torch.zeros(3, requires_grad=True)
    loaded.add_param_group({"params": [c]})  # takes the loaded settings: they agree
    assert loaded.param_groups[1]["max_grad_norm"] == 0.5


@pytest.mark.parametrize(
    "key,value,other", [("nonfinite", "raise", None), ("max_grad_norm", 1.0, 2.0)]
)
def test_groups_that_disagree_are_refused(key: str, value: object, other: object) -> None:
    a, b, c = make_params()[:3]
    shown = rf"param group 1 has {key}={other!r} but param group 0 has {key}={value!r}: {key} is "
    shown += r"one setting for the whole optimizer \(.*\); set it in the constructor"
    with pytest.raises(ValueError, match=shown):
        adamkit.Adam([{"params": [a], key: value}, {"params": [b], key: other}])
    with pytest.raises(ValueError, match=shown):
        adamkit.Adam([{"params": [a]}, {"params": [b], key: other}], **{key: value})

    opt = adamkit.Adam([a], **{key: value})
    with pytest.raises(ValueError, match=shown):
        opt.add_param_group({"params": [b], key: other})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": [b], key: value})
    opt.add_param_group({"params": [c]})  # from the defaults: the same
    assert opt.param_groups[2][key] == value

    # Changed by hand in one group only: refused at the step, before anything changes.
    opt.param_groups[1][key] = other
    for p in (a, b, c):
        p.grad = torch.ones_like(p)
    with pytest.raises(ValueError, match=r"adamkit.Adam.step\(\): " + shown):
        opt.step()
    assert all(len(opt.state[p]) == 0 for p in (a, b, c))
    for group in opt.param_groups:  # changed in every group: that is the setting now
        group[key] = other
    opt.step()

    saved = opt.state_dict()
    saved["param_groups"][1][key] = value
    fresh = adamkit.Adam([{"params": [a]}, {"params": [b]}, {"params": [c]}])
    with pytest.raises(ValueError, match=r"load_state_dict: in the checkpoint, param group 1"):
        fresh.load_state_dict(saved)
    assert fresh.defaults[key] is None and fresh.param_groups[0][key] is None
