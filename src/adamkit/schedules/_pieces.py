"""Schedules: closed-form pure functions ``step -> lr multiplier``, joined with ``+``.

Every schedule is a frozen dataclass. Calling it at step ``t`` needs nothing but ``t``: there is
no hidden state that a resumed run could lose (``Multiplicative`` with a step-dependent factor
memoises a running product, which is recomputed identically, so it resumes exactly too).

Notation in the formulas: ``t`` is the step counted from the start of the piece, ``T`` the
piece's length (``steps``), ``m(t)`` the multiplier; the optimizer's lr is ``base_lr * m(t)``.
Past its end a finite piece holds its last value unless stated otherwise.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import operator
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ._expr import Expr

__all__ = [
    "WSD",
    "Constant",
    "Cosine",
    "CosineRestarts",
    "Exponential",
    "InverseSqrt",
    "Join",
    "Lambda",
    "Linear",
    "MultiStep",
    "Multiplicative",
    "OneCycle",
    "Polynomial",
    "Schedule",
    "StepDecay",
    "Warmup",
]

StepFunction = Callable[[int], float]


def _check_int(piece: str, name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{piece}: {name}={value!r} is invalid (expected an integer >= {minimum})")


def _check_number(
    piece: str, name: str, value: Any, low: float, high: float = math.inf, *, open_low: bool = False
) -> None:
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if not is_number or not math.isfinite(value) or not (low <= value <= high):
        bound = f"{'>' if open_low else '>='} {low}" + (
            f" and <= {high}" if high < math.inf else ""
        )
        raise ValueError(f"{piece}: {name}={value!r} is invalid (expected a finite number {bound})")
    if open_low and value == low:
        raise ValueError(f"{piece}: {name}={value!r} is invalid (expected a number > {low})")


def _check_choice(piece: str, name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{piece}: {name}={value!r} is invalid (expected one of {list(choices)})")


def _spec_value(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(_spec_value(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)  # shortest repr that round-trips, so parse(spec) is exact
    if callable(value) and not isinstance(value, Expr):
        return getattr(value, "__qualname__", type(value).__name__)
    return repr(value) if isinstance(value, str) else str(value)


class Schedule(ABC):
    """A learning-rate multiplier as a closed-form pure function of the step.

    ``schedule(t)`` is the multiplier at step ``t >= 0``. ``a + b`` joins two schedules: ``b``
    starts, from its own step 0, where ``a`` ends. ``str(schedule)`` is its spec, which
    :func:`adamkit.schedules.parse` turns back into an equal schedule.
    """

    spec_name: ClassVar[str]
    steps: int | None

    def __call__(self, step: int) -> float:
        try:
            t = operator.index(step)
        except TypeError:
            raise TypeError(f"{self}: step must be an integer, got {step!r}") from None
        if t < 0:
            raise ValueError(f"{self}: step={t} is invalid (expected an integer >= 0)")
        return float(self._at(t))

    @abstractmethod
    def _at(self, t: int) -> float:
        """The multiplier at local step ``t >= 0``."""

    @property
    def length(self) -> int | None:
        """How many steps this piece spans before the next joined piece starts (None: forever)."""
        return self.steps

    @property
    def portable(self) -> bool:
        """Whether :meth:`spec` fully describes this schedule (no Python function inside)."""
        return True

    def values(self, steps: int, start: int = 0) -> list[float]:
        """The multipliers at ``start, start + 1, ..., start + steps - 1``."""
        return [self(t) for t in range(start, start + steps)]

    def __add__(self, other: Schedule) -> Join:
        if not isinstance(other, Schedule):
            return NotImplemented
        return Join((self, other))

    def spec(self) -> str:
        """The spec string of this schedule, for example ``"cosine(2000, floor=0.1)"``."""
        args = []
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if not f.init:
                continue
            value = getattr(self, f.name)
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if required:
                args.append(_spec_value(value))
            elif value != f.default:
                args.append(f"{f.name}={_spec_value(value)}")
        return f"{self.spec_name}({', '.join(args)})"

    def __str__(self) -> str:
        return self.spec()

    def __repr__(self) -> str:
        return self.spec()


def _bounded(t: int, steps: int) -> int:
    return t if t < steps else steps


@dataclass(frozen=True, repr=False)
class Constant(Schedule):
    """``m(t) = value``. Give ``steps`` to join something after it (a stable phase)."""

    spec_name: ClassVar[str] = "constant"
    value: float = 1.0
    steps: int | None = None

    def __post_init__(self) -> None:
        _check_number("constant", "value", self.value, 0.0)
        if self.steps is not None:
            _check_int("constant", "steps", self.steps, 0)

    def _at(self, t: int) -> float:
        return float(self.value)


@dataclass(frozen=True, repr=False)
class Warmup(Schedule):
    """Linear warmup over ``steps``: ``m(t) = start + (end - start) * t / T``.

    ``end`` defaults to where the joined piece after it starts (``Warmup(100) + Cosine(1000)``
    ramps from 0 to 1, then decays); alone, it ramps to 1. At ``t = 0`` the multiplier is
    ``start`` (0 by default, as in Hugging Face's ``get_*_schedule_with_warmup``).
    """

    spec_name: ClassVar[str] = "warmup"
    steps: int
    start: float = 0.0
    end: float | None = None

    def __post_init__(self) -> None:
        _check_int("warmup", "steps", self.steps, 0)
        _check_number("warmup", "start", self.start, 0.0)
        if self.end is not None:
            _check_number("warmup", "end", self.end, 0.0)

    def _at(self, t: int) -> float:
        end = 1.0 if self.end is None else self.end
        if self.steps == 0:
            return end
        return self.start + (end - self.start) * _bounded(t, self.steps) / self.steps


@dataclass(frozen=True, repr=False)
class Linear(Schedule):
    """``m(t) = start + (end - start) * min(t, T) / T``: torch's ``LinearLR``, and linear decay."""

    spec_name: ClassVar[str] = "linear"
    steps: int
    start: float = 1.0
    end: float = 0.0

    def __post_init__(self) -> None:
        _check_int("linear", "steps", self.steps, 1)
        _check_number("linear", "start", self.start, 0.0)
        _check_number("linear", "end", self.end, 0.0)

    def _at(self, t: int) -> float:
        # Same operation order as torch's LinearLR closed form.
        return self.start + (self.end - self.start) * _bounded(t, self.steps) / self.steps


@dataclass(frozen=True, repr=False)
class Cosine(Schedule):
    """Cosine decay to ``floor``.

    ``m(t) = floor + (1 - floor) * (1 + cos(pi * min(t, T) / T)) / 2``. This is torch's
    ``CosineAnnealingLR`` with ``eta_min = floor * base_lr`` up to ``T``; past ``T`` torch's curve
    rises again (it is periodic) while this one stays at ``floor``.
    """

    spec_name: ClassVar[str] = "cosine"
    steps: int
    floor: float = 0.0

    def __post_init__(self) -> None:
        _check_int("cosine", "steps", self.steps, 1)
        _check_number("cosine", "floor", self.floor, 0.0)

    def _at(self, t: int) -> float:
        cosine = 1 + math.cos(math.pi * _bounded(t, self.steps) / self.steps)
        return self.floor + (1 - self.floor) * cosine / 2


@dataclass(frozen=True, repr=False)
class CosineRestarts(Schedule):
    """Cosine annealing with warm restarts (SGDR): torch's ``CosineAnnealingWarmRestarts``.

    Cycle ``i`` lasts ``T_i = period * mult**i`` steps; inside it, with ``t_i`` the step within
    the cycle, ``m = floor + (1 - floor) * (1 + cos(pi * t_i / T_i)) / 2``. The cycle is found
    with integer arithmetic, so restarts fall exactly on the boundaries.
    """

    spec_name: ClassVar[str] = "cosine_restarts"
    period: int
    mult: int = 1
    floor: float = 0.0
    steps: int | None = None

    def __post_init__(self) -> None:
        _check_int("cosine_restarts", "period", self.period, 1)
        _check_int("cosine_restarts", "mult", self.mult, 1)
        _check_number("cosine_restarts", "floor", self.floor, 0.0)
        if self.steps is not None:
            _check_int("cosine_restarts", "steps", self.steps, 0)

    def _at(self, t: int) -> float:
        cycle = self.period
        if self.mult == 1:
            t %= cycle
        else:
            while t >= cycle:  # log(t) iterations: cycles grow geometrically
                t -= cycle
                cycle *= self.mult
        return self.floor + (1 - self.floor) * (1 + math.cos(math.pi * t / cycle)) / 2


@dataclass(frozen=True, repr=False)
class Exponential(Schedule):
    """``m(t) = gamma ** t``: torch's ``ExponentialLR``."""

    spec_name: ClassVar[str] = "exponential"
    gamma: float
    steps: int | None = None

    def __post_init__(self) -> None:
        _check_number("exponential", "gamma", self.gamma, 0.0, open_low=True)
        if self.steps is not None:
            _check_int("exponential", "steps", self.steps, 0)

    def _at(self, t: int) -> float:
        return float(self.gamma**t)


@dataclass(frozen=True, repr=False)
class StepDecay(Schedule):
    """``m(t) = gamma ** floor(t / every)``: torch's ``StepLR(step_size=every)``."""

    spec_name: ClassVar[str] = "step_decay"
    every: int
    gamma: float = 0.1
    steps: int | None = None

    def __post_init__(self) -> None:
        _check_int("step_decay", "every", self.every, 1)
        _check_number("step_decay", "gamma", self.gamma, 0.0)
        if self.steps is not None:
            _check_int("step_decay", "steps", self.steps, 0)

    def _at(self, t: int) -> float:
        return float(self.gamma ** (t // self.every))


@dataclass(frozen=True, repr=False)
class MultiStep(Schedule):
    """``m(t) = gamma ** (number of milestones <= t)``: torch's ``MultiStepLR``.

    A milestone listed twice decays twice, as in torch.
    """

    spec_name: ClassVar[str] = "multistep"
    milestones: tuple[int, ...]
    gamma: float = 0.1
    steps: int | None = None

    def __post_init__(self) -> None:
        milestones: object = self.milestones  # checked: a spec or a caller may pass anything
        if not isinstance(milestones, list | tuple):
            raise ValueError(f"multistep: milestones={milestones!r} is invalid (expected a list)")
        for m in milestones:
            _check_int("multistep", "milestones", m, 0)
        object.__setattr__(self, "milestones", tuple(sorted(milestones)))
        _check_number("multistep", "gamma", self.gamma, 0.0)
        if self.steps is not None:
            _check_int("multistep", "steps", self.steps, 0)

    def _at(self, t: int) -> float:
        return float(self.gamma ** bisect.bisect_right(self.milestones, t))


@dataclass(frozen=True, repr=False)
class Polynomial(Schedule):
    """``m(t) = end + (1 - end) * (1 - min(t, T) / T) ** power``: torch's ``PolynomialLR``."""

    spec_name: ClassVar[str] = "polynomial"
    steps: int
    power: float = 1.0
    end: float = 0.0

    def __post_init__(self) -> None:
        _check_int("polynomial", "steps", self.steps, 1)
        _check_number("polynomial", "power", self.power, 0.0)
        _check_number("polynomial", "end", self.end, 0.0)

    def _at(self, t: int) -> float:
        remaining: float = 1.0 - _bounded(t, self.steps) / self.steps
        return self.end + (1 - self.end) * float(remaining**self.power)


@dataclass(frozen=True, repr=False)
class InverseSqrt(Schedule):
    """``m(t) = 1 / sqrt((t + timescale) / timescale)``, 1 at ``t = 0``.

    After ``Warmup(w)`` this is Hugging Face's ``get_inverse_sqrt_schedule`` (their
    ``shift = timescale - w`` is this piece starting at its own step 0).
    """

    spec_name: ClassVar[str] = "inverse_sqrt"
    timescale: int
    steps: int | None = None

    def __post_init__(self) -> None:
        _check_int("inverse_sqrt", "timescale", self.timescale, 1)
        if self.steps is not None:
            _check_int("inverse_sqrt", "steps", self.steps, 0)

    def _at(self, t: int) -> float:
        return 1.0 / math.sqrt((t + self.timescale) / self.timescale)


@dataclass(frozen=True, repr=False)
class OneCycle(Schedule):
    """The one-cycle policy (Smith & Topin, 2017): torch's ``OneCycleLR`` as a multiplier.

    The peak multiplier is 1 (the optimizer's lr is torch's ``max_lr``). It starts at
    ``1 / div_factor``, rises until step ``pct_start * T - 1``, then anneals to
    ``1 / (div_factor * final_div_factor)`` at step ``T - 1`` (``three_phase``: back down to
    the start by ``2 * pct_start * T - 2`` first). Annealing is ``"cos"``
    (``end + (start - end) * (1 + cos(pi * pct)) / 2``) or ``"linear"``. Torch raises past
    ``T``; this holds the final value from step ``T - 1``.
    """

    spec_name: ClassVar[str] = "one_cycle"
    steps: int
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    anneal: str = "cos"
    three_phase: bool = False

    def __post_init__(self) -> None:
        _check_int("one_cycle", "steps", self.steps, 2)
        _check_number("one_cycle", "pct_start", self.pct_start, 0.0, 1.0, open_low=True)
        _check_number("one_cycle", "div_factor", self.div_factor, 0.0, open_low=True)
        _check_number("one_cycle", "final_div_factor", self.final_div_factor, 0.0, open_low=True)
        _check_choice("one_cycle", "anneal", self.anneal, ("cos", "linear"))
        if not isinstance(self.three_phase, bool):
            raise ValueError(
                f"one_cycle: three_phase={self.three_phase!r} is invalid (expected a bool)"
            )

    def _phases(self) -> list[tuple[float, float, float]]:
        """(end_step, start_value, end_value) per phase, with torch's float boundaries."""
        initial = 1.0 / self.div_factor
        final = initial / self.final_div_factor
        rise_end = float(self.pct_start * self.steps) - 1
        if self.three_phase:
            return [
                (rise_end, initial, 1.0),
                (float(2 * self.pct_start * self.steps) - 2, 1.0, initial),
                (self.steps - 1, initial, final),
            ]
        return [(rise_end, initial, 1.0), (self.steps - 1, 1.0, final)]

    def _at(self, t: int) -> float:
        t = _bounded(t, self.steps - 1)
        start_step = 0.0
        phases = self._phases()
        for i, (end_step, start, end) in enumerate(phases):
            if t <= end_step or i == len(phases) - 1:
                pct = (t - start_step) / (end_step - start_step)
                if self.anneal == "cos":
                    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
                return (end - start) * pct + start
            start_step = end_step
        raise AssertionError("unreachable: the last phase always matches")


@dataclass(frozen=True, repr=False)
class WSD(Schedule):
    """Warmup-stable-decay (MiniCPM, 2024): Hugging Face's ``get_wsd_schedule`` as a multiplier.

    Warmup: linear from ``floor`` to 1 over ``warmup`` steps; stable: 1 for ``stable`` steps;
    decay over ``decay`` steps with ``p`` its progress: ``shape`` ``"cosine"``
    ``(1 + cos(pi p)) / 2``, ``"linear"`` ``1 - p`` or ``"1-sqrt"`` ``1 - sqrt(p)``, mapped to
    ``floor + (1 - floor) * value``; then ``floor``.
    """

    spec_name: ClassVar[str] = "wsd"
    warmup: int
    stable: int
    decay: int
    floor: float = 0.0
    shape: str = "cosine"
    steps: int | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        _check_int("wsd", "warmup", self.warmup, 0)
        _check_int("wsd", "stable", self.stable, 0)
        _check_int("wsd", "decay", self.decay, 0)
        _check_number("wsd", "floor", self.floor, 0.0, 1.0)
        _check_choice("wsd", "shape", self.shape, ("cosine", "linear", "1-sqrt"))
        object.__setattr__(self, "steps", self.warmup + self.stable + self.decay)

    def _at(self, t: int) -> float:
        if t < self.warmup:
            return (t / self.warmup) * (1.0 - self.floor) + self.floor
        if t < self.warmup + self.stable:
            return 1.0
        if t >= self.warmup + self.stable + self.decay:
            return float(self.floor)
        progress = (t - self.warmup - self.stable) / self.decay
        if self.shape == "cosine":
            value = 0.5 * (1.0 + math.cos(math.pi * progress))
        elif self.shape == "linear":
            value = 1.0 - progress
        else:
            value = 1.0 - math.sqrt(progress)
        return max(0.0, value * (1.0 - self.floor) + self.floor)


def _as_function(piece: str, fn: Any) -> StepFunction | Expr:
    if isinstance(fn, str):
        return Expr(fn)
    if isinstance(fn, Expr) or callable(fn):
        return fn  # type: ignore[no-any-return]
    raise TypeError(f"{piece}: expected a function of the step or an expression string, got {fn!r}")


@dataclass(frozen=True, repr=False)
class Lambda(Schedule):
    """``m(t) = fn(t)``: torch's ``LambdaLR``. ``fn`` is a Python function or an expression
    string of ``t`` such as ``"0.67 ** t"`` (only an expression can be written in a spec)."""

    spec_name: ClassVar[str] = "lambda"
    fn: StepFunction | Expr
    steps: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "fn", _as_function("lambda", self.fn))
        if self.steps is not None:
            _check_int("lambda", "steps", self.steps, 0)

    @property
    def portable(self) -> bool:
        return isinstance(self.fn, Expr)

    def _at(self, t: int) -> float:
        return float(self.fn(t))


@dataclass(frozen=True, repr=False)
class Multiplicative(Schedule):
    """``m(0) = 1``, ``m(t) = m(t - 1) * factor(t)``: torch's ``MultiplicativeLR``.

    A constant ``factor`` has the closed form ``factor ** t``. A step-dependent factor (a
    function or an expression of ``t``) is the one recursive schedule: the running product is
    memoised and recomputed in the same order on resume, so resumed values are bit-identical.
    """

    spec_name: ClassVar[str] = "multiplicative"
    factor: float | StepFunction | Expr
    steps: int | None = None
    _products: list[float] = field(
        init=False, default_factory=lambda: [1.0], compare=False, hash=False
    )

    def __post_init__(self) -> None:
        if isinstance(self.factor, int | float) and not isinstance(self.factor, bool):
            _check_number("multiplicative", "factor", self.factor, 0.0)
        else:
            object.__setattr__(self, "factor", _as_function("multiplicative", self.factor))
        if self.steps is not None:
            _check_int("multiplicative", "steps", self.steps, 0)

    @property
    def portable(self) -> bool:
        return not callable(self.factor) or isinstance(self.factor, Expr)

    def _at(self, t: int) -> float:
        factor = self.factor
        if not callable(factor):
            return float(factor**t)
        products = self._products
        while len(products) <= t:
            products.append(products[-1] * float(factor(len(products))))
        return products[t]


@dataclass(frozen=True, repr=False)
class Join(Schedule):
    """Pieces one after another: piece ``k`` runs from the sum of the earlier lengths, counting
    its own steps from 0. Every piece but the last needs a length. A :class:`Warmup` without an
    ``end`` ramps to the value where the next piece starts. Build it with ``a + b``."""

    spec_name: ClassVar[str] = "join"
    pieces: tuple[Schedule, ...]
    steps: int | None = field(init=False, default=None)
    _starts: tuple[int, ...] = field(init=False, default=(), compare=False, hash=False)
    _resolved: tuple[Schedule, ...] = field(init=False, default=(), compare=False, hash=False)

    def __post_init__(self) -> None:
        flat: list[Schedule] = []
        for piece in self.pieces:
            if not isinstance(piece, Schedule):
                raise TypeError(f"join: expected schedules, got {piece!r}")
            flat.extend(piece.pieces if isinstance(piece, Join) else (piece,))
        if not flat:
            raise ValueError("join: expected at least one schedule")
        starts, offset = [], 0
        for piece in flat[:-1]:
            if piece.length is None:
                raise ValueError(
                    f"join: {piece} has no end, so nothing can follow it; give it steps=N"
                )
            starts.append(offset)
            offset += piece.length
        starts.append(offset)
        resolved = list(flat)
        for i, piece in enumerate(flat[:-1]):
            if isinstance(piece, Warmup) and piece.end is None:
                resolved[i] = dataclasses.replace(piece, end=flat[i + 1](0))
        last = flat[-1].length
        object.__setattr__(self, "pieces", tuple(flat))
        object.__setattr__(self, "_starts", tuple(starts))
        object.__setattr__(self, "_resolved", tuple(resolved))
        object.__setattr__(self, "steps", None if last is None else offset + last)

    @property
    def portable(self) -> bool:
        return all(p.portable for p in self.pieces)

    def _at(self, t: int) -> float:
        # The last piece starting at or before t; zero-length pieces are passed over.
        i = bisect.bisect_right(self._starts, t) - 1
        return self._resolved[i](t - self._starts[i])

    def spec(self) -> str:
        return " + ".join(p.spec() for p in self.pieces)
