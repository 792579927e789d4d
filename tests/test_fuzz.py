"""Property-based tests (hypothesis): random problems through every execution path against the
NumPy reference, and malformed inputs (state dicts, schedule specs) that must get a clear error
and change nothing. The example counts are in each ``@settings``."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import adamkit
from adamkit.schedules import Schedule, SpecError, parse

from .registry import ALGORITHMS, TABLE, Case, own_hyperparameters, signature

# Derandomized: CI sees the same examples every run (explore more locally with
# `pytest tests/test_fuzz.py --hypothesis-seed=N` after removing derandomize).
SETTINGS = settings(
    deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow], database=None
)
SHAPES = st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple)
PATHS = [{"foreach": True}, {"foreach": False}, {"fused": True}]


@st.composite
def problems(draw: st.DrawFn) -> tuple[Case, torch.dtype, list[tuple[int, ...]], int]:
    name = draw(st.sampled_from(ALGORITHMS))
    row = TABLE[name]
    kwargs: dict[str, Any] = {
        "lr": draw(st.floats(1e-5, 0.5)),
        "weight_decay": draw(st.sampled_from([0.0, 0.0, 0.01, 0.3])),
        "maximize": draw(st.booleans()),
        **draw(st.sampled_from(PATHS if row.fused else PATHS[:2])),
    }
    if row.betas:  # schedule-free needs beta1 > 0 (its x is recovered by dividing by it)
        beta1 = draw(st.floats(0.0 if name != "ScheduleFreeAdamW" else 0.05, 0.99))
        kwargs["betas"] = (beta1, draw(st.floats(0.5, 0.9999)))
    eps = draw(st.floats(1e-10, 1e-2))
    # Adafactor's pair: eps1 (None: the dtype's machine epsilon) and eps2
    kwargs["eps"] = (draw(st.sampled_from([None, eps])), eps * 10) if row.eps_pair else eps
    if TABLE[name].amsgrad_state:
        kwargs["amsgrad"] = draw(st.booleans())
    if "decoupled_weight_decay" in signature(name) and kwargs["weight_decay"]:
        kwargs["decoupled_weight_decay"] = draw(st.booleans())
    for key, probe in own_hyperparameters(name).items():  # up to twice the registry's probe
        low, top = sorted((0.0, 0.9999 if key in row.fractions else 2 * probe))  # a rate < 1
        bounds = row.bounds.get(key, (low, top))  # within its own (beta2_decay <= 0, d >= 1)
        kwargs[key] = draw(st.floats(max(low, bounds[0]), min(top, bounds[1])))
        if key in TABLE[name].integers:  # a number of steps
            kwargs[key] = round(kwargs[key])
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    shapes = draw(st.lists(SHAPES, min_size=1, max_size=4))
    steps = draw(st.integers(1, 8))
    return Case(name, kwargs), dtype, shapes, steps


@settings(SETTINGS, max_examples=300)
@given(problem=problems(), seed=st.integers(0, 2**16))
def test_every_path_matches_the_reference(
    problem: tuple[Case, torch.dtype, list[tuple[int, ...]], int], seed: int
) -> None:
    case, dtype, shapes, steps = problem
    g = torch.Generator().manual_seed(seed)
    params = [
        torch.randn(s, generator=g, dtype=torch.float64).to(dtype).requires_grad_() for s in shapes
    ]
    opt = case.ours(params, **case.kwargs)
    thetas = [p.detach().double().numpy().copy() for p in params]
    states: list[Any] = [None] * len(params)
    for _ in range(steps):
        grads = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
        for p, grad in zip(params, grads, strict=True):
            p.grad = grad.to(dtype)
        opt.step()
        for i, grad in enumerate(grads):
            thetas[i], states[i] = case.reference(
                thetas[i], grad.to(dtype).double().numpy(), states[i], **case.math_kwargs()
            )
    # fp32: a few steps of float32 rounding, amplified where v is tiny (eps small) -> loose.
    rtol, atol = (1e-9, 1e-9) if dtype == torch.float64 else (2e-4, 2e-5)
    if case.name == "NAdam":  # torch (and adamkit) keep mu_product in float32, any dtype
        rtol, atol = max(rtol, 1e-6), max(atol, 1e-7)
    for i, (p, theta) in enumerate(zip(params, thetas, strict=True)):
        np.testing.assert_allclose(
            p.detach().double().numpy(), theta, rtol=rtol, atol=atol, err_msg=f"param {i}"
        )


def _trained(name: str) -> tuple[torch.optim.Optimizer, dict[str, Any]]:
    params = [torch.zeros(3, 2, requires_grad=True), torch.zeros(4, requires_grad=True)]
    opt = getattr(adamkit, name)(params, lr=0.01)
    for _ in range(2):
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()
    return opt, copy.deepcopy(opt.state_dict())


JUNK = st.one_of(
    st.none(),
    st.integers(-3, 3),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=3),
    st.lists(st.integers(0, 2), max_size=3),
    st.builds(lambda n: torch.zeros(n), st.integers(0, 5)),
    st.builds(lambda: torch.zeros(3, 2, dtype=torch.int32)),
    st.builds(lambda: {"exp_avg": torch.zeros(2)}),
)


@st.composite
def corruptions(draw: st.DrawFn) -> list[tuple[tuple[Any, ...], Any]]:
    """A few (path, value) edits into a state dict; the value None at a dict key deletes it."""
    paths = [
        ("state",),
        ("param_groups",),
        ("adamkit",),
        ("state", 0),
        ("state", 1),
        ("state", 0, "exp_avg"),
        ("state", 0, "step"),
        ("state", 1, "exp_avg_sq"),
        ("state", 1, "exp_inf"),
        ("state", 0, "mu_product"),
        ("param_groups", 0, "params"),
        ("param_groups", 0, "lr"),
        ("param_groups", 0, "betas"),
        ("param_groups", 0, "eps"),
        ("param_groups", 0, "amsgrad"),
        ("adamkit", "format"),
    ]
    return draw(st.lists(st.tuples(st.sampled_from(paths), JUNK), min_size=1, max_size=3))


def _apply(state_dict: dict[str, Any], edits: list[tuple[tuple[Any, ...], Any]]) -> dict[str, Any]:
    corrupted = copy.deepcopy(state_dict)
    for path, value in edits:
        target: Any = corrupted
        for key in path[:-1]:
            try:
                target = target[key]
            except (KeyError, IndexError, TypeError):
                target = None
                break
        if isinstance(target, dict):
            if value is None:
                target.pop(path[-1], None)
            else:
                target[path[-1]] = value
        elif isinstance(target, list) and isinstance(path[-1], int) and path[-1] < len(target):
            target[path[-1]] = value
    return corrupted


@settings(SETTINGS, max_examples=400)
@given(name=st.sampled_from(ALGORITHMS), edits=corruptions())
def test_malformed_state_dicts_get_a_clear_error_and_change_nothing(
    name: str, edits: list[tuple[tuple[Any, ...], Any]]
) -> None:
    opt, good = _trained(name)
    before = copy.deepcopy(opt.state_dict())
    corrupted = _apply(good, edits)
    try:
        opt.load_state_dict(corrupted)
    except (TypeError, ValueError, KeyError) as error:
        assert str(error), "an error without a message"
        after = opt.state_dict()
        assert after["param_groups"] == before["param_groups"]
        for index, entry in before["state"].items():
            for key, value in entry.items():
                assert torch.equal(after["state"][index][key], value), (index, key)
        return
    # Loaded: then it must be usable, with state shaped like the parameters.
    for group in opt.param_groups:
        for p in group["params"]:
            shapes = TABLE[name].shapes(tuple(p.shape))
            for key, value in opt.state[p].items():
                if isinstance(value, torch.Tensor) and key not in ("step", "mu_product"):
                    assert tuple(value.shape) == shapes.get(key, tuple(p.shape)), key
            p.grad = torch.ones_like(p)
    opt.step()


TOKENS = [
    "warmup",
    "cosine",
    "linear",
    "wsd",
    "lambda",
    "multiplicative",
    "one_cycle",
    "exponential",
    "multistep",
    "constant",
    "polynomial",
    "inverse_sqrt",
    "cosine_restarts",
    "step_decay",
    "(",
    ")",
    "(",
    ")",
    ",",
    "+",
    "*",
    "-",
    "=",
    "[",
    "]",
    "t",
    "steps",
    "floor",
    "gamma",
    "0",
    "1",
    "3",
    "10",
    "0.5",
    "1e9",
    "-2",
    "nan",
    "inf",
    "'cos'",
    "shape",
    "**",
    " ",
    "x",
    "__import__",
    ".",
    "if",
    "else",
    "lambda:",
]


@settings(SETTINGS, max_examples=1500)
@given(tokens=st.lists(st.sampled_from(TOKENS), max_size=12))
def test_any_spec_string_parses_or_gets_a_spec_error(tokens: list[str]) -> None:
    spec = "".join(tokens)
    try:
        schedule = parse(spec)
    except SpecError as error:
        lines = str(error).splitlines()
        assert lines[0].startswith("bad schedule spec: ")
        assert set(lines[2].strip()) == {"^"}
        return
    assert isinstance(schedule, Schedule)
    assert parse(str(schedule)) == schedule or not schedule.portable


@settings(SETTINGS, max_examples=500)
@given(
    spec=st.sampled_from(
        [
            "warmup({a}) + cosine({b}, floor=0.{c})",
            "wsd({a}, {b}, {c})",
            "one_cycle({b} + 2)",
            "cosine_restarts({a} + 1, mult={c} % 3 + 1)",
            "polynomial({b} + 1, power={c}) + constant()",
            "multistep([{a}, {b}], gamma=0.{c})",
            "warmup({a}) + inverse_sqrt({b} + 1)",
            "step_decay({a} + 1, gamma=0.{c})",
        ]
    ),
    a=st.integers(0, 50),
    b=st.integers(1, 500),
    c=st.integers(0, 9),
    steps=st.lists(st.integers(0, 10**6), min_size=1, max_size=20),
)
def test_built_in_schedules_are_finite_non_negative_and_pure(
    spec: str, a: int, b: int, c: int, steps: list[int]
) -> None:
    text = spec.format(a=a, b=b, c=c)
    try:
        schedule = parse(text)
    except SpecError:
        assume_arithmetic = "+" in text.split("(", 1)[1] or "%" in text
        if assume_arithmetic:
            return  # arguments must be literals: "3 + 2" is refused, which is the point
        raise
    values = [schedule(t) for t in steps]
    assert all(math.isfinite(v) and v >= 0 for v in values)
    assert values == [schedule(t) for t in steps]  # evaluating again gives the same
