"""Schedules: known values, parity with torch's schedulers and Hugging Face's formulas, the spec
language, exact resume, and the Scheduler inside real training loops."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import pytest
import torch
from torch.optim import lr_scheduler as torch_schedulers

from adamkit.schedules import (
    SCHEDULES,
    WSD,
    Constant,
    Cosine,
    CosineRestarts,
    Exponential,
    InverseSqrt,
    Lambda,
    Linear,
    Multiplicative,
    MultiStep,
    OneCycle,
    Polynomial,
    Schedule,
    Scheduler,
    SpecError,
    StepDecay,
    Warmup,
    parse,
)

# --------------------------------------------------------------------------- known values
# (schedule, {step: multiplier}) worked out by hand: boundaries, interiors and past the end.
KNOWN: list[tuple[Schedule, dict[int, float]]] = [
    (Constant(0.3), {0: 0.3, 10**6: 0.3}),
    (Warmup(4), {0: 0.0, 1: 0.25, 3: 0.75, 4: 1.0, 100: 1.0}),
    (Warmup(4, start=0.2) + Constant(0.5), {0: 0.2, 1: 0.275, 3: 0.425, 4: 0.5, 50: 0.5}),
    (Warmup(0) + Cosine(4), {0: 1.0, 2: 0.5, 4: 0.0}),
    (Linear(4, start=1.0, end=0.2), {0: 1.0, 1: 0.8, 3: 0.4, 4: 0.2, 9: 0.2}),
    (Cosine(4, floor=0.2), {0: 1.0, 1: 0.2 + 0.4 * (1 + math.sqrt(0.5)), 2: 0.6, 4: 0.2, 9: 0.2}),
    (
        CosineRestarts(2, mult=2),
        {
            0: 1.0,
            1: 0.5,
            2: 1.0,
            3: (1 + math.sqrt(0.5)) / 2,
            4: 0.5,
            6: 1.0,
            13: (1 + math.cos(7 * math.pi / 8)) / 2,
            14: 1,
        },
    ),
    (CosineRestarts(3, floor=0.4), {0: 1.0, 3: 1.0, 6: 1.0, 301: 0.4 + 0.6 * 0.75}),
    (Exponential(0.5), {0: 1.0, 1: 0.5, 3: 0.125}),
    (StepDecay(3, gamma=0.5), {0: 1.0, 2: 1.0, 3: 0.5, 5: 0.5, 6: 0.25}),
    (MultiStep((5, 2, 5), gamma=0.1), {0: 1.0, 1: 1.0, 2: 0.1, 4: 0.1, 5: 0.001, 99: 0.001}),
    (Polynomial(4, power=2.0), {0: 1.0, 2: 0.25, 3: 0.0625, 4: 0.0, 9: 0.0}),
    (Polynomial(4, power=2.0, end=0.1), {0: 1.0, 2: 0.325, 4: 0.1, 9: 0.1}),
    (InverseSqrt(4), {0: 1.0, 12: 0.5, 32: 1 / 3}),
    (Warmup(4) + InverseSqrt(4), {2: 0.5, 4: 1.0, 16: 0.5}),
    (OneCycle(10), {0: 0.04, 2: 1.0, 9: 4e-6, 20: 4e-6}),
    (OneCycle(10, anneal="linear"), {0: 0.04, 1: 0.52, 2: 1.0}),
    (OneCycle(10, three_phase=True), {0: 0.04, 2: 1.0, 4: 0.04, 9: 4e-6}),
    (WSD(2, 3, 4, floor=0.1, shape="linear"), {0: 0.1, 1: 0.55, 2: 1.0, 5: 1.0, 6: 0.775, 9: 0.1}),
    (WSD(0, 2, 4, shape="1-sqrt"), {0: 1.0, 2: 1.0, 3: 0.5, 6: 0.0}),
    (WSD(0, 0, 2), {0: 1.0, 1: 0.5, 2: 0.0}),
    (Lambda("0.67 ** t"), {0: 1.0, 2: 0.67**2}),
    (Lambda(lambda t: 1 / (t + 1)), {0: 1.0, 3: 0.25}),
    (Multiplicative(0.69), {0: 1.0, 1: 0.69, 2: 0.69**2}),
    (Multiplicative(lambda t: 0.5 if t % 2 else 1.0), {0: 1.0, 1: 0.5, 2: 0.5, 3: 0.25}),
    (Multiplicative("0.5 if t % 2 else 1"), {0: 1.0, 3: 0.25, 1000: 0.5**500}),
    (
        Warmup(2) + Constant(steps=3) + Linear(2),
        {0: 0.0, 1: 0.5, 2: 1.0, 4: 1.0, 5: 1.0, 6: 0.5, 7: 0.0, 100: 0.0},
    ),
    (Exponential(0.5, steps=2) + Constant(0.1), {1: 0.5, 2: 0.1}),
]


@pytest.mark.parametrize(("schedule", "expected"), KNOWN, ids=[str(s) for s, _ in KNOWN])
def test_known_values(schedule: Schedule, expected: dict[int, float]) -> None:
    for step, value in expected.items():
        assert schedule(step) == pytest.approx(value, rel=1e-9, abs=1e-12), f"step {step}"


def test_every_spec_name_has_known_values() -> None:
    covered = {type(s).spec_name for s, _ in KNOWN} | {
        type(p).spec_name for s, _ in KNOWN for p in getattr(s, "pieces", ())
    }
    assert set(SCHEDULES) <= covered


def test_lengths_and_values() -> None:
    assert (Warmup(100) + Cosine(900)).length == 1000
    assert (Warmup(100) + Exponential(0.9)).length is None
    assert WSD(10, 20, 30).length == 60
    assert OneCycle(50).values(3, start=10) == [OneCycle(50)(t) for t in (10, 11, 12)]


def test_step_must_be_a_non_negative_integer() -> None:
    with pytest.raises(ValueError, match=r"cosine\(10\): step=-1 is invalid"):
        Cosine(10)(-1)
    with pytest.raises(TypeError, match=r"step must be an integer, got 1\.5"):
        Cosine(10)(1.5)  # type: ignore[arg-type]
    assert Cosine(10)(torch.tensor(5).item()) == pytest.approx(0.5)


# ------------------------------------------------------------------- torch scheduler parity
TorchFactory = Callable[[torch.optim.Optimizer], torch_schedulers.LRScheduler]
TWO_GROUPS = (0.1, 0.03)
STEPS = 1200
# (torch scheduler, our schedule, base lrs). Torch's schedulers step recursively
# (lr_t = lr_{t-1} * factor) while ours evaluate the closed form, so values differ by rounding:
# at most TORCH_RTOL relative (or TORCH_ATOL absolute, for values that reach 0).
TORCH_RTOL, TORCH_ATOL = 1e-13, 1e-15  # measured: at most 1.2e-14 relative
TORCH_TWINS: list[tuple[str, TorchFactory, Schedule, tuple[float, ...]]] = [
    (
        "LambdaLR",
        lambda o: torch_schedulers.LambdaLR(o, lambda e: 0.9995**e),
        Lambda(lambda e: 0.9995**e),
        TWO_GROUPS,
    ),
    (
        "MultiplicativeLR",
        lambda o: torch_schedulers.MultiplicativeLR(o, lambda e: 0.998),
        Multiplicative(0.998),
        TWO_GROUPS,
    ),
    (
        "MultiplicativeLR-fn",
        lambda o: torch_schedulers.MultiplicativeLR(o, lambda e: 0.99 if e % 3 else 1.02),
        Multiplicative("0.99 if t % 3 else 1.02"),
        TWO_GROUPS,
    ),
    (
        "StepLR",
        lambda o: torch_schedulers.StepLR(o, step_size=100, gamma=0.7),
        StepDecay(100, gamma=0.7),
        TWO_GROUPS,
    ),
    (
        "MultiStepLR",
        lambda o: torch_schedulers.MultiStepLR(o, [100, 400, 400, 900], gamma=0.5),
        MultiStep((100, 400, 400, 900), gamma=0.5),
        TWO_GROUPS,
    ),
    (
        "ExponentialLR",
        lambda o: torch_schedulers.ExponentialLR(o, gamma=0.998),
        Exponential(0.998),
        TWO_GROUPS,
    ),
    (
        "CosineAnnealingLR",
        lambda o: torch_schedulers.CosineAnnealingLR(o, T_max=STEPS),
        Cosine(STEPS),
        TWO_GROUPS,
    ),
    (
        "CosineAnnealingLR-eta_min",
        lambda o: torch_schedulers.CosineAnnealingLR(o, T_max=STEPS, eta_min=0.01),
        Cosine(STEPS, floor=0.1),
        (0.1,),
    ),
    (
        "LinearLR",
        lambda o: torch_schedulers.LinearLR(o, start_factor=0.25, end_factor=1.0, total_iters=700),
        Linear(700, start=0.25, end=1.0),
        TWO_GROUPS,
    ),
    (
        "PolynomialLR",
        lambda o: torch_schedulers.PolynomialLR(o, total_iters=900, power=2.0),
        Polynomial(900, power=2.0),
        TWO_GROUPS,
    ),
    (
        "OneCycleLR",
        lambda o: torch_schedulers.OneCycleLR(
            o, max_lr=list(TWO_GROUPS), total_steps=STEPS, cycle_momentum=False
        ),
        OneCycle(STEPS),
        TWO_GROUPS,
    ),
    (
        "OneCycleLR-three-phase-linear",
        lambda o: torch_schedulers.OneCycleLR(
            o,
            max_lr=0.1,
            total_steps=STEPS,
            pct_start=0.25,
            div_factor=10.0,
            final_div_factor=100.0,
            anneal_strategy="linear",
            three_phase=True,
            cycle_momentum=False,
        ),
        OneCycle(
            STEPS,
            pct_start=0.25,
            div_factor=10.0,
            final_div_factor=100.0,
            anneal="linear",
            three_phase=True,
        ),
        (0.1,),
    ),
    (
        "CosineAnnealingWarmRestarts",
        lambda o: torch_schedulers.CosineAnnealingWarmRestarts(o, T_0=50, T_mult=2),
        CosineRestarts(50, mult=2),
        TWO_GROUPS,
    ),
    (
        "CosineAnnealingWarmRestarts-eta_min",
        lambda o: torch_schedulers.CosineAnnealingWarmRestarts(o, T_0=70, eta_min=0.001),
        CosineRestarts(70, floor=0.01),
        (0.1,),
    ),
]


def _optimizer(base_lrs: tuple[float, ...]) -> torch.optim.Optimizer:
    groups = [{"params": [torch.zeros(2, requires_grad=True)], "lr": lr} for lr in base_lrs]
    return torch.optim.SGD(groups, lr=base_lrs[0])


def _trace(optimizer: torch.optim.Optimizer, scheduler: object, steps: int) -> list[list[float]]:
    """The seed's loop: record every group's lr, step the optimizer, step the scheduler."""
    lrs = []
    for _ in range(steps):
        lrs.append([float(g["lr"]) for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()  # type: ignore[attr-defined]
    return lrs


@pytest.mark.parametrize(
    ("factory", "schedule", "base_lrs"),
    [t[1:] for t in TORCH_TWINS],
    ids=[t[0] for t in TORCH_TWINS],
)
def test_matches_torch_scheduler_for_1200_steps(
    factory: TorchFactory, schedule: Schedule, base_lrs: tuple[float, ...]
) -> None:
    theirs = _optimizer(base_lrs)
    expected = _trace(theirs, factory(theirs), STEPS)
    ours = _optimizer(base_lrs)
    got = _trace(ours, Scheduler(ours, schedule), STEPS)
    for step, (row, want) in enumerate(zip(got, expected, strict=True)):
        assert row == pytest.approx(want, rel=TORCH_RTOL, abs=TORCH_ATOL), f"step {step}"


def test_lambda_lr_is_bit_identical_to_torch() -> None:
    """LambdaLR is closed-form in torch too: base_lr * fn(t), the same operations."""
    theirs = _optimizer(TWO_GROUPS)
    expected = _trace(theirs, torch_schedulers.LambdaLR(theirs, lambda e: 0.67**e), 50)
    ours = _optimizer(TWO_GROUPS)
    assert _trace(ours, Scheduler(ours, "lambda(0.67 ** t)"), 50) == expected


# -------------------------------------------------------------------- Hugging Face formulas
# transformers.optimization's lr lambdas, written out (no transformers install needed).
def hf_linear(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def hf_cosine(step: int, warmup: int, total: int, min_lr_rate: float = 0.0) -> float:
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    factor = 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress))
    return max(0.0, factor * (1 - min_lr_rate) + min_lr_rate)


def hf_wsd(
    step: int, warmup: int, stable: int, decay: int, min_lr_ratio: float, decay_type: str
) -> float:
    if step < warmup:
        return max(0.0, step / max(1, warmup) * (1.0 - min_lr_ratio) + min_lr_ratio)
    if step < warmup + stable:
        return 1.0
    if step < warmup + stable + decay:
        progress = (step - warmup - stable) / max(1, decay)
        factor = {
            "linear": 1.0 - progress,
            "cosine": 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)),
            "1-sqrt": 1.0 - math.sqrt(progress),
        }[decay_type]
        return max(0.0, factor * (1.0 - min_lr_ratio) + min_lr_ratio)
    return min_lr_ratio


def hf_inverse_sqrt(step: int, warmup: int, timescale: int) -> float:
    if step < warmup:
        return step / max(1, warmup)
    return 1.0 / math.sqrt((step + timescale - warmup) / timescale)


HF_RTOL, HF_ATOL = 1e-12, 1e-15  # measured: at most 1.1e-13 relative (near 0)
HF_TWINS: list[tuple[str, Callable[[int], float], Schedule, int]] = [
    ("linear", lambda s: hf_linear(s, 100, 1000), Warmup(100) + Linear(900), 1000),
    ("cosine", lambda s: hf_cosine(s, 100, 1000), Warmup(100) + Cosine(900), 1000),
    (
        "cosine-min-lr",
        lambda s: hf_cosine(s, 50, 1200, min_lr_rate=0.1),
        Warmup(50) + Cosine(1150, floor=0.1),
        1200,
    ),
    *[
        (
            f"wsd-{shape}",
            functools.partial(
                hf_wsd, warmup=100, stable=600, decay=300, min_lr_ratio=0.05, decay_type=shape
            ),
            WSD(100, 600, 300, floor=0.05, shape=shape),
            1300,
        )
        for shape in ("cosine", "linear", "1-sqrt")
    ],
    (
        "inverse-sqrt",
        lambda s: hf_inverse_sqrt(s, 100, 100),
        Warmup(100) + InverseSqrt(100),
        1500,
    ),
]


@pytest.mark.parametrize(
    ("formula", "schedule", "steps"), [t[1:] for t in HF_TWINS], ids=[t[0] for t in HF_TWINS]
)
def test_matches_hugging_face_formulas(
    formula: Callable[[int], float], schedule: Schedule, steps: int
) -> None:
    for step in range(steps + 1):
        assert schedule(step) == pytest.approx(formula(step), rel=HF_RTOL, abs=HF_ATOL), step


# ----------------------------------------------------------------------------- spec language
SPECS = [
    "constant(0.5)",
    "warmup(200) + cosine(2000, floor=0.1)",
    "warmup(10, start=0.1) + constant(steps=100) + linear(50, end=0.01)",
    "cosine_restarts(50, mult=2, floor=0.05)",
    "exponential(0.99, steps=10) + step_decay(100, gamma=0.5)",
    "multistep([30, 80], gamma=0.2)",
    "polynomial(500, power=0.5, end=0.01)",
    "warmup(100) + inverse_sqrt(100)",
    "one_cycle(1000, pct_start=0.25, anneal='linear', three_phase=True)",
    "wsd(100, 800, 100, floor=0.01, shape='1-sqrt')",
    "lambda(0.67 ** t)",
    "lambda(0.1 if t < 10 else min(1.0, sqrt(t) / 10), steps=20) + multiplicative(0.69)",
    "multiplicative(0.95 if epoch < 5 else 1)",
]


@pytest.mark.parametrize("spec", SPECS)
def test_spec_round_trip(spec: str) -> None:
    schedule = parse(spec)
    again = parse(str(schedule))
    assert again == schedule
    assert str(again) == str(schedule)
    assert again.values(60) == schedule.values(60)


def test_spec_reads_like_python() -> None:
    assert parse("warmup(200) + cosine(2000, floor=0.1)") == Warmup(200) + Cosine(2000, floor=0.1)
    assert parse("one_cycle(100, anneal=linear)") == OneCycle(100, anneal="linear")
    assert parse("  lambda ( 0.5 ** t )  ")(2) == 0.25


# (spec, message, where the caret points)
BAD_SPECS = [
    ("", "the spec is empty", ""),
    (
        "warmup(200) + cosin(2000, floor=0.1)",
        "unknown schedule 'cosin' .did you mean 'cosine'",
        "cosin",
    ),
    (
        "cosine(2000, flor=0.1)",
        r"cosine\(\) has no argument 'flor' \(its arguments: steps, floor\)",
        "flor",
    ),
    ("cosine(0)", r"cosine: steps=0 is invalid \(expected an integer >= 1\)", "0"),
    ("cosine(10, floor=-1)", r"cosine: floor=-1 is invalid", "floor=-1"),
    ("warmup(200) * cosine(3)", "pieces are joined with '\\+' only", "*"),
    ("warmup(200) + ", "invalid syntax", None),
    ("lambda(0.67 ** x)", "unknown name 'x'", "x"),
    ("lambda(__import__('os'))", "unknown function '__import__'", "__import__"),
    ("lambda(t.real)", "is not allowed in an expression of t", "t.real"),
    (
        "lambda(0.67 ** t) + cosine(3)",
        r"lambda\(\) has no end, so nothing can follow it",
        "lambda(0.67 ** t)",
    ),
    ("wsd(1, 2)", r"wsd\(\): missing a required argument: 'decay'", "wsd(1, 2)"),
    ("cosine(10, 0.1, 3)", r"cosine\(\) takes at most 2 arguments", "3"),
    (
        "one_cycle(10, anneal='cosine')",
        r"anneal='cosine' is invalid \(expected one of \['cos', 'linear'\]\)",
        "anneal='cosine'",
    ),
    ("multistep([3, 'a'])", "milestones='a' is invalid", "[3, 'a']"),
    ("cosine(steps=x + 1)", "steps must be a number", "x + 1"),
    ("3 + cosine(4)", "expected a schedule such as cosine", "3"),
]


@pytest.mark.parametrize(
    ("spec", "message", "where"), BAD_SPECS, ids=[b[0] or "empty" for b in BAD_SPECS]
)
def test_bad_spec_error_points_at_the_bad_part(spec: str, message: str, where: str | None) -> None:
    with pytest.raises(SpecError, match=message) as info:
        parse(spec)
    error = info.value
    if where:
        assert spec[error.start : error.end] == where
    lines = str(error).splitlines()
    assert lines[1].strip() == spec.strip()
    assert set(lines[2].strip()) == {"^"}


def test_schedule_arguments_are_validated_in_python_too() -> None:
    with pytest.raises(ValueError, match=r"warmup: steps=-1 is invalid"):
        Warmup(-1)
    with pytest.raises(
        ValueError, match=r"exponential: gamma=0 is invalid \(expected a number > 0"
    ):
        Exponential(0)
    with pytest.raises(ValueError, match=r"wsd: floor=2 is invalid"):
        WSD(1, 1, 1, floor=2)
    with pytest.raises(TypeError, match="expected a function of the step"):
        Lambda(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="has no end, so nothing can follow it"):
        Exponential(0.5) + Cosine(3)
