"""Tests of tests/test_trust.py that ran into freed memory or out of bounds before the fix:
test_trust.py runs each of them in a pytest process of its own, so that a regression fails
one test instead of aborting the suite. (Not collected by itself: its name does not start
with ``test_``.)"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

import adamkit

from .registry import ALGORITHMS, TABLE, TWINNED

#: The state each algorithm keeps (with AMSGrad's maximum where it has one): every entry a
#: hand may swap.
KEYS = {name: (*row.state_keys(amsgrad=True), *row.scalars) for name, row in TABLE.items()}


def _pair(
    name: str, n: int = 4099, **kwargs: Any
) -> tuple[Any, Any, list[torch.Tensor], list[torch.Tensor]]:
    """adamkit's default (fused) optimizer and a for-loop twin, over equal parameters."""
    torch.manual_seed(0)
    ours_p = [torch.randn(n, requires_grad=True), torch.randn(3, 5, requires_grad=True)]
    twin_p = [p.detach().clone().requires_grad_() for p in ours_p]
    cls = getattr(adamkit, name)
    return (
        cls(ours_p, lr=1e-2, **kwargs),
        cls(twin_p, lr=1e-2, foreach=False, **kwargs),
        ours_p,
        twin_p,
    )


def _steps(
    ours: Any, twin: Any, ours_p: list[torch.Tensor], twin_p: list[torch.Tensor], k: int
) -> None:
    for _ in range(k):
        for p, q in zip(ours_p, twin_p, strict=True):
            g = torch.randn_like(p)
            p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        twin.step()


def _close(ours_p: list[torch.Tensor], twin_p: list[torch.Tensor]) -> None:
    for p, q in zip(ours_p, twin_p, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


# --------------------------------------------------- 2-3. state swapped or replaced by hand
@pytest.mark.parametrize("name", ALGORITHMS)
@pytest.mark.parametrize("how", ["data", "replace"])
def test_state_swapped_or_replaced_by_hand_is_what_the_step_uses(name: str, how: str) -> None:
    """``state[k].data = clone`` (the old plan kept the freed address) and ``state[k] =
    torch.zeros_like(...)`` (the old plan kept stepping the old tensor): whatever is in
    ``optimizer.state`` at the time of ``step()`` is what is used, as in torch."""
    for key in KEYS[name]:
        extra = {"amsgrad": True} if key == TABLE[name].amsgrad_state else {}
        ours, twin, ours_p, twin_p = _pair(name, **extra)
        _steps(ours, twin, ours_p, twin_p, 3)
        for opt in (ours, twin):
            for state in opt.state.values():
                if key not in state:  # Adafactor: a vector's variance, a matrix's statistics
                    continue
                if how == "data":
                    state[key].data = state[key].data.clone() * 0.5
                else:
                    state[key] = torch.zeros_like(state[key]) + (0.9 if key == "mu_product" else 0)
        _steps(ours, twin, ours_p, twin_p, 3)
        _close(ours_p, twin_p)
        for state, twin_state in zip(ours.state.values(), twin.state.values(), strict=True):
            if key in state:
                torch.testing.assert_close(state[key], twin_state[key], rtol=1e-5, atol=1e-7)


def test_replaced_8bit_scales_are_what_the_step_uses() -> None:
    """The 8-bit block scales, replaced and swapped: the step must equal that of a fresh
    optimizer loaded with the same state (no plan to go stale), bit for bit."""
    ours, _, ours_p, _ = _pair("AdamW", state_precision="8bit")
    for _ in range(2):
        for p in ours_p:
            p.grad = torch.randn_like(p)
        ours.step()
    for state in ours.state.values():
        if "exp_avg_sq_scale" in state:
            state["exp_avg_sq_scale"] = state["exp_avg_sq_scale"] * 4
            state["exp_avg_scale"].data = state["exp_avg_scale"].data.clone() * 2
    twin_p = [p.detach().clone().requires_grad_() for p in ours_p]
    twin = adamkit.AdamW(twin_p, lr=1e-2, state_precision="8bit")
    twin.load_state_dict(copy.deepcopy(ours.state_dict()))
    for _ in range(2):
        for p, q in zip(ours_p, twin_p, strict=True):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        ours.step()
        twin.step()
    for p, q in zip(ours_p, twin_p, strict=True):
        assert torch.equal(p, q)


# ------------------------------------------------------------------------ 4. counter dtypes
@pytest.mark.parametrize("name", TWINNED)
@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.int32, torch.float16])
def test_counters_of_another_dtype_count_as_torch_does(name: str, dtype: torch.dtype) -> None:
    """``state["step"] = torch.tensor(0)`` (int64) got float bit patterns, a uint8 counter a
    4-byte store; now such a counter is replaced by a float32 one of the same value and the
    run continues exactly as torch's for-loop, which counts in the tensor's own dtype."""
    torch.manual_seed(0)
    ours_p = [torch.randn(300, requires_grad=True)]
    torch_p = [p.detach().clone().requires_grad_() for p in ours_p]
    ours = getattr(adamkit, name)(ours_p, lr=1e-2)
    theirs = getattr(torch.optim, name)(torch_p, lr=1e-2, foreach=False)
    _steps(ours, theirs, ours_p, torch_p, 3)
    for opt in (ours, theirs):
        for state in opt.state.values():
            state["step"] = torch.tensor(1, dtype=dtype)
    _steps(ours, theirs, ours_p, torch_p, 4)
    _close(ours_p, torch_p)
    for state in ours.state.values():
        assert state["step"].dtype == torch.float32 and state["step"].item() == 5.0


def test_a_counter_that_is_not_one_number_is_refused() -> None:
    p = torch.zeros(10, requires_grad=True)
    opt = adamkit.Adam([p])
    p.grad = torch.ones(10)
    opt.step()
    opt.state[p]["step"] = torch.zeros(0)
    with pytest.raises(ValueError, match=r"state\['step'\] of parameter #0 must hold one number"):
        opt.step()


# ------------------------------------------------------- the refusals, for docs/bad-input.md
def _trained(fused: bool | None = None, **kwargs: Any) -> tuple[Any, torch.Tensor]:
    p = torch.nn.Parameter(torch.zeros(4))
    opt = adamkit.Adam([p], fused=fused, **kwargs)
    p.grad = torch.ones(4)
    opt.step()
    return opt, p


def _resized() -> None:
    opt, p = _trained()
    p.data = torch.zeros(8)
    p.grad = torch.ones(8)
    opt.step()


def _empty_counter() -> None:
    opt, p = _trained()
    opt.state[p]["step"] = torch.zeros(0)
    opt.step()


def _overlapping() -> None:
    base = torch.zeros(6)
    a, b = torch.nn.Parameter(base[:4]), torch.nn.Parameter(base[2:])
    a.grad, b.grad = torch.ones(4), torch.ones(4)
    adamkit.Adam([a, b], fused=True).step()


def _small_gradient() -> None:
    opt, p = _trained(fused=True)
    p.grad.data = torch.ones(1)
    opt.step()


def _strided_gradient() -> None:
    opt, p = _trained(fused=True)
    p.grad = torch.ones(8)[::2]
    opt.step()


def _nan_counter() -> None:
    opt, p = _trained()
    opt.state[p]["step"] = torch.tensor(float("nan"))
    opt.step()


def _shrunk_storage() -> None:
    opt, p = _trained()
    opt.state[p]["exp_avg"].untyped_storage().resize_(8)
    opt.step()


def _float64_state() -> None:
    opt, p = _trained(fused=True)
    opt.state[p]["exp_avg"] = opt.state[p]["exp_avg"].double()
    opt.step()


def _mismatched_scales() -> None:
    p = torch.nn.Parameter(torch.zeros(4096))  # smaller tensors keep 32-bit state
    opt = adamkit.Adam([p], state_precision="8bit")
    p.grad = torch.ones(4096)
    opt.step()
    opt.state[p]["exp_avg_scale"] = torch.ones(3)
    opt.step()


def _overflowing_norm() -> None:
    opt, p = _trained(nonfinite="raise")
    p.grad = torch.full((4,), 1e30)
    opt.step()


#: What a training loop may do to the tensors between two steps that the step refuses:
#: (code, the action, error type, message regex).
BAD_BETWEEN_STEPS: list[tuple[str, Any, type[Exception], str]] = [
    ("p.data = torch.zeros(8)  # p had 4 elements", _resized, RuntimeError, "has 8 elements"),
    ('optimizer.state[p]["step"] = torch.zeros(0)', _empty_counter, ValueError, "one number"),
    (
        "Adam([base[:4], base[2:]], fused=True)  # overlapping parameters",
        _overlapping,
        RuntimeError,
        "overlap in memory",
    ),
    (
        "p.grad.data = torch.ones(1)  # with fused=True",
        _small_gradient,
        RuntimeError,
        "gradients of the parameters' shape",
    ),
    (
        "p.grad = torch.ones(8)[::2]  # with fused=True",
        _strided_gradient,
        RuntimeError,
        "needs contiguous gradients",
    ),
    (
        'optimizer.state[p]["step"] = torch.tensor(float("nan"))',
        _nan_counter,
        ValueError,
        "a step count must be a finite number",
    ),
    (
        'optimizer.state[p]["exp_avg"].untyped_storage().resize_(8)  # 2 of its 4 floats',
        _shrunk_storage,
        RuntimeError,
        "past the end of its storage",
    ),
    (
        'optimizer.state[p]["exp_avg"] = optimizer.state[p]["exp_avg"].double()  # fused=True',
        _float64_state,
        RuntimeError,
        "where the kernel stores torch.float32",
    ),
    (
        'optimizer.state[p]["exp_avg_scale"] = torch.ones(3)  # 8-bit state, 4096 elements',
        _mismatched_scales,
        RuntimeError,
        "16 float32 block scales, but the state holds 3",
    ),
    (
        "p.grad = torch.full((4,), 1e30)  # nonfinite='raise': 1e60 is past float32's range",
        _overflowing_norm,
        FloatingPointError,
        "the gradient norm overflowed",
    ),
]


@pytest.mark.parametrize(("code", "action", "error", "message"), BAD_BETWEEN_STEPS)
def test_what_the_step_refuses(
    code: str, action: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        action()


# ------------------------------------------- found by an adversarial review of the new path
def _one(n: int = 1 << 16, **kwargs: Any) -> tuple[Any, torch.nn.Parameter]:
    p = torch.nn.Parameter(torch.randn(n))
    opt = adamkit.Adam([p], lr=0.1, **kwargs)
    p.grad = torch.randn(n)
    opt.step()
    return opt, p


def test_a_parameter_restrided_in_place_is_checked_at_every_step() -> None:
    """Same element count, another layout: an expanded 1-element storage (the kernel would
    write 256 KiB into 4 bytes), a transposed matrix, a strided view of a buffer."""
    opt, p = _one()
    p.data = torch.zeros(1).expand(1 << 16)
    p.grad = torch.randn(1 << 16)
    with pytest.raises(RuntimeError, match="more than one element of the written-to tensor"):
        opt.step()  # torch's own refusal, from the foreach path the step falls back to
    buffer = torch.zeros(2 << 16)
    opt, p = _one()
    p.data = buffer[::2]
    p.grad = torch.ones(1 << 16)
    opt.step()
    assert (buffer[1::2] == 0).all() and (buffer[::2] != 0).all()
    torch.manual_seed(0)
    q = torch.nn.Parameter(torch.randn(64, 64))
    r = torch.nn.Parameter(q.detach().clone())
    ours, theirs = adamkit.Adam([q], lr=0.1), torch.optim.Adam([r], lr=0.1, foreach=False)
    for step in range(4):
        if step == 2:
            q.data, r.data = q.data.t(), r.data.t()
        g = torch.randn(64, 64)
        q.grad, r.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
    torch.testing.assert_close(q, r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("key", ["exp_avg", "exp_avg_sq"])
def test_state_swapped_for_a_smaller_tensor_at_the_same_address_is_caught(key: str) -> None:
    """The storage freed in place, and a smaller tensor put at the same address into the
    same state tensor: identity and address agree, the element count does not."""
    n = 1 << 16
    opt, p = _one(n)
    state = opt.state[p][key]
    address = state.data_ptr()
    state.untyped_storage().resize_(0)
    for _ in range(50):
        small = torch.zeros(n // 4)
        if small.data_ptr() == address:
            break
    state.data = small
    p.grad = torch.randn(n)
    with pytest.raises(RuntimeError):  # torch's size mismatch, on the foreach path
        opt.step()


@pytest.mark.parametrize(
    "change",
    [
        lambda t: setattr(t, "data", t.data[: t.numel() // 2]),
        lambda t: t.resize_(t.numel() // 2),
        lambda t: setattr(t, "data", t.data.view(torch.int32)),
        lambda t: setattr(t, "data", t.data.view(torch.float16)),
    ],
    ids=["half view", "resize_", "int32 view", "float16 view"],
)
def test_state_changed_in_place_is_not_stepped_by_the_kernel(change: Any) -> None:
    opt, p = _one()
    change(opt.state[p]["exp_avg"])
    p.grad = torch.randn_like(p)
    with pytest.raises(RuntimeError):  # what torch's ops say on the eager path
        opt.step()
    with pytest.raises(RuntimeError):
        _, q = _one(fused=True)
        change(_.state[q]["exp_avg"])
        q.grad = torch.randn_like(q)
        _.step()


def test_a_counter_viewed_as_int32_is_not_read_as_float() -> None:
    opt, p = _one()
    opt.state[p]["step"].data = opt.state[p]["step"].data.view(torch.int32)
    p.grad = torch.randn_like(p)
    opt.step()  # planned again: the counter is converted to float32, keeping its value
    step = opt.state[p]["step"]
    assert step.dtype == torch.float32  # the int32 value 1065353216 (the bits of 1.0), counted
    assert step.item() == pytest.approx(1065353216 + 1, rel=1e-7)


def test_a_storage_shrunk_under_a_state_tensor_is_an_error_on_every_path() -> None:
    for fused in (None, True):
        opt, p = _one(fused=fused)
        opt.state[p]["exp_avg"].untyped_storage().resize_(64)
        p.grad = torch.randn_like(p)
        with pytest.raises(RuntimeError, match="past the end of its storage"):
            opt.step()


@pytest.mark.parametrize("size", [0, 8], ids=["to nothing", "to 8 bytes"])
@pytest.mark.parametrize("key", ["row_var", "col_var", "grad", "param"])
def test_a_storage_shrunk_under_adafactor_s_tensors_is_an_error(key: str, size: int) -> None:
    """Adafactor's kernel of whole matrices (its default path): a storage resized to nothing
    (as FSDP frees one) has a null data pointer, which the kernel must not take as a tensor it
    cannot step (the fallback, torch's operations, wrote through it): an error, before the
    step changes anything (an earlier group, a vector), its counters included."""
    first = [torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(4, 3))]
    p = torch.nn.Parameter(torch.randn(40, 30))
    opt = adamkit.Adafactor([{"params": first}, {"params": [p]}])
    for _ in range(2):
        for q in (*first, p):
            q.grad = torch.randn_like(q)
        if _ == 0:
            opt.step()
    tensors = {"row_var": opt.state[p]["row_var"], "col_var": opt.state[p]["col_var"]}
    tensors.update(grad=p.grad, param=p)
    tensors[key].untyped_storage().resize_(size)
    before = [q.detach().clone() for q in first]
    with pytest.raises(RuntimeError, match="past the end of its storage"):
        opt.step()
    assert all(float(opt.state[q]["step"]) == 1 for q in (*first, p))
    assert all(torch.equal(q, b) for q, b in zip(first, before, strict=True))


def test_the_kernel_bumps_version_counters_as_torch_does() -> None:
    """torch's in-place updates make autograd refuse a graph that saved the old weights."""
    lin = torch.nn.Linear(8, 8)
    opt = adamkit.Adam(lin.parameters())
    x = torch.randn(4, 8, requires_grad=True)
    (lin(x) ** 2).sum().backward()
    opt.step()
    y = (lin(x) ** 2).sum()
    (lin(x) ** 2).sum().backward()
    opt.step()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


def test_a_reason_from_one_step_s_gradients_is_not_kept() -> None:
    """One non-contiguous gradient made the default path give up the kernel for good."""
    p = torch.nn.Parameter(torch.randn(8, 8))
    opt = adamkit.Adam([p])
    p.grad = torch.randn(8, 8).t()
    opt.step()
    p.grad = torch.randn(8, 8)
    opt.step()
    entries = opt._fused_plans[id(opt.param_groups[0])][1]
    assert entries[0][1] is not None and entries[0][2] is None, entries


def test_a_parameter_moved_to_another_dtype_is_bucketed_again() -> None:
    a, b = torch.nn.Parameter(torch.randn(10)), torch.nn.Parameter(torch.randn(10))
    opt = adamkit.Adam([a, b], fused=True)
    a.grad, b.grad = torch.randn(10), torch.randn(10)
    opt.step()
    a.data = a.data.double()
    a.grad = torch.randn(10, dtype=torch.float64)
    opt.state[a] = {}
    opt.step()
    assert opt.state[a]["exp_avg"].dtype == torch.float64


def test_a_group_changed_by_hand_is_checked_at_the_step() -> None:
    opt, _p = _one()
    opt.param_groups[0]["betas"] = (1.0, 0.999)
    with pytest.raises(ValueError, match="param group 0: Invalid beta parameter at index 0"):
        opt.step()


def test_a_negative_or_number_counter_is_handled() -> None:
    opt, p = _one()
    opt.state[p]["step"] = torch.tensor(-1.0)
    with pytest.raises(ValueError, match="must be a finite number >= 0"):
        opt.step()
    opt.state[p]["step"] = 3  # a plain number, as older torch saved it
    opt.step()
    assert opt.state[p]["step"].item() == 4.0


@pytest.mark.parametrize("name", ["Adam", "NAdam"])
def test_state_restrided_in_place_is_stepped_as_torch_does(name: str) -> None:
    """``exp_avg.t_()`` keeps the tensor and its address but changes its layout: the kernel
    read it as contiguous (parameters 2.35 off torch after 2 steps). The default path now
    steps it as torch does; ``fused=True`` refuses it."""
    torch.manual_seed(0)
    ours_p = [torch.randn(64, 64, requires_grad=True)]
    twin_p = [ours_p[0].detach().clone().requires_grad_()]
    ours = getattr(adamkit, name)(ours_p, lr=0.1)
    twin = getattr(torch.optim, name)(twin_p, lr=0.1, foreach=False)
    _steps(ours, twin, ours_p, twin_p, 1)
    for opt in (ours, twin):
        next(iter(opt.state.values()))["exp_avg"].t_()
    _steps(ours, twin, ours_p, twin_p, 2)
    _close(ours_p, twin_p)
    opt, p = _one(fused=True)
    p.grad = torch.randn_like(p)
    opt.step()
    opt.state[p]["exp_avg_sq"].as_strided_((p.numel(),), (0,))
    with pytest.raises(RuntimeError, match="needs contiguous tensors"):
        opt.step()


@pytest.mark.parametrize(
    "bad",
    [torch.ones(1), torch.ones(256, dtype=torch.float64), None],
    ids=["too few", "float64", "missing"],
)
@pytest.mark.parametrize("fused", [None, True])
def test_8bit_scales_that_do_not_fit_are_refused_naming_them(
    bad: torch.Tensor | None, fused: bool | None
) -> None:
    """A scale of the wrong size or dtype, or none: a bare AssertionError before."""
    opt, p = _one(state_precision="8bit", fused=fused)
    p.grad = torch.randn_like(p)
    opt.step()
    if bad is None:
        del opt.state[p]["exp_avg_scale"]
    else:
        opt.state[p]["exp_avg_scale"] = bad
    before = p.detach().clone()
    with pytest.raises(RuntimeError, match="'exp_avg_scale': 256 float32 block scales"):
        opt.step()
    assert torch.equal(p, before)
