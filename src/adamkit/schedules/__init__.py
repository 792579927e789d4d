"""Learning-rate schedules: closed-form pure functions of the step, joined with ``+``.

    >>> from adamkit.schedules import Warmup, Cosine, parse
    >>> schedule = Warmup(100) + Cosine(900, floor=0.1)
    >>> schedule(0), schedule(100), schedule(1000)
    (0.0, 1.0, 0.1)
    >>> parse("warmup(100) + cosine(900, floor=0.1)") == schedule
    True

:class:`adamkit.Scheduler` drives an optimizer with one; :func:`adamkit.plot_schedule` and
``adamkit schedule SPEC`` draw them.
"""

from ._expr import Expr
from ._lr import get_lr, scale_lr, set_lr
from ._pieces import (
    WSD,
    Constant,
    Cosine,
    CosineRestarts,
    Exponential,
    InverseSqrt,
    Join,
    Lambda,
    Linear,
    Multiplicative,
    MultiStep,
    OneCycle,
    Polynomial,
    Schedule,
    StepDecay,
    Warmup,
)
from ._plot import plot_schedule
from ._scheduler import Scheduler
from ._spec import SCHEDULES, SpecError, parse

__all__ = [
    "SCHEDULES",
    "WSD",
    "Constant",
    "Cosine",
    "CosineRestarts",
    "Exponential",
    "Expr",
    "InverseSqrt",
    "Join",
    "Lambda",
    "Linear",
    "MultiStep",
    "Multiplicative",
    "OneCycle",
    "Polynomial",
    "Schedule",
    "Scheduler",
    "SpecError",
    "StepDecay",
    "Warmup",
    "get_lr",
    "parse",
    "plot_schedule",
    "scale_lr",
    "set_lr",
]
