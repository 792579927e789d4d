"""The table of algorithms: what every other part of adamkit knows about each one.

A row says what an algorithm keeps (its state tensors, which of them are never negative, its
0-d scalar state), which fused kernel steps it (or none), which torch.optim class it is a
drop-in for (or none), and which NumPy function is its reference. The optimizer base, the
low-precision codecs, the fused plans, the checkpoint loader, the command line and the test
registry read this table; none of them lists algorithms by name.

The update rule itself lives with the optimizer class (``adam.py``, ``radam.py``, ...), which
names its row with ``algorithm = ALGORITHMS["RAdam"]``.

Adding an algorithm: see ``docs/adding-an-algorithm.md``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import reference
from ..kernels import _abi

__all__ = ["ALGORITHMS", "KINDS", "SCALAR_KEYS", "UNSIGNED", "Algorithm", "is_unsigned", "noise"]


@dataclass(frozen=True)
class Algorithm:
    """One algorithm of the table.

    Attributes:
        name: the class name in ``adamkit`` (and in ``adamkit.reference.REFERENCES``).
        states: state tensors shaped like the parameter, in the order the rule and the
            kernels take them (the first moment, then the second's stand-in).
        unsigned: those of ``states`` (and ``amsgrad_state``) that are never negative: their
            8-bit code has no sign bit, and their stochastic rounding takes the hash's high half.
        amsgrad_state: the extra state tensor kept with ``amsgrad=True`` (``None``: the
            algorithm has no AMSGrad variant).
        scalars: 0-d state tensors besides ``step``, with their initial values (NAdam's
            ``mu_product``); never viewed as real, never stored in low precision.
        kinds: the fused kernels' element loops for the update (the C kernel's
            ``BODY_<KIND>``, the Triton kernel's ``K_<KIND>`` branch), the first being the
            algorithm's own; its step-scalar function (next to its rule) picks one per tensor.
            Empty: no element loop (see ``tensor_kernel``).
        torch_twin: the ``torch.optim`` class with the same semantics and signature, or
            ``None``.
        reference: the NumPy reference step (``adamkit.reference``), the oracle of the tests.
        own: the algorithm's own hyperparameters (arguments of its constructor beyond the
            shared ones), each a number >= 0: validated with the group, and given to the rule
            as ``h.own[name]``.
        fractions: those of ``own`` that are decay rates, in [0, 1) (AdEMAMix's ``beta3``).
        integers: those of ``own`` that count steps: whole numbers (schedule-free's
            ``warmup_steps``).
        pinned: group values a loaded checkpoint may not change (AdamW stays decoupled).
        copies: those of ``states`` that start as a copy of the parameter, not as zeros
            (schedule-free's ``z``). They are kept as the weights are, whatever
            ``state_precision`` (which applies to the other states); with low-precision
            moments beside them, the tensor's states have two formats, which the kernels do
            not take (the multi-tensor path steps them).
        decay_in_rule: the rule applies ``weight_decay`` itself, not as coupled or decoupled
            decay before it (schedule-free's, at y after normalising the gradient).
        group_schedule: its step count and schedule are the param group's, advancing every
            step whether or not a tensor has a gradient (schedule-free's ``k``, as in its
            package); ``step`` then only seeds stochastic rounding.
        cautious: it takes ``cautious=True`` (schedule-free's step is no gradient step: no).
        clipped_by: the second-moment state ``update_clipping=True`` measures the gradient
            against, bias-corrected as Adam's (``None``: no update clipping).
        precisions: the ``state_precision`` values it takes (all three, for every row so far:
            a state that cannot be stored in low precision is a ``copies`` or ``reduced`` one).
        layout: the state tensors a parameter of a given shape keeps, with their shapes,
            where that is not every one of ``states`` shaped like the parameter (Adafactor's
            row and column statistics of a matrix, its ``variance`` of a vector). ``None``:
            shaped like the parameter. A rule with a layout is not elementwise: it needs the
            whole tensor, so sharded (FSDP2, tensor-parallel) parameters are refused.
        betas: it takes ``betas`` (Adafactor has a ``beta2_decay`` instead).
        eps_pair: its ``eps`` is a pair ``(eps1 or None, eps2)`` (Adafactor's), not a number.
        bounds: those of ``own`` whose range is not ``[0, inf)``: ``(low, high)``, inclusive
            (Adafactor's ``beta2_decay <= 0`` and ``d >= 1``).
        complex: it takes complex parameters (as real pairs).
        reduced: those of ``states`` that are reductions over some of the parameter's
            dimensions (Adafactor's ``row_var`` and ``col_var``): kept in full precision
            whatever ``state_precision`` (which applies to the others), even where their
            shape happens to be the parameter's (a ``(1, n)`` parameter's ``col_var``).
        tensor_kernel: a C kernel steps one whole tensor at a time, called from the rule on
            the fused path (``Hyper.tensor_kernel``): Adafactor's matrices, whose statistics
            are reductions of the tensor. With neither ``kinds`` nor this, there is no fused
            kernel: the default path is the multi-tensor one and ``fused=True`` is refused.
    """

    name: str
    states: tuple[str, ...]
    unsigned: frozenset[str]
    reference: Callable[..., Any]
    amsgrad_state: str | None = None
    scalars: dict[str, float] = field(default_factory=dict)
    kinds: tuple[str, ...] = ()
    torch_twin: str | None = None
    own: tuple[str, ...] = ()
    fractions: tuple[str, ...] = ()
    integers: tuple[str, ...] = ()
    pinned: dict[str, Any] = field(default_factory=dict)
    copies: tuple[str, ...] = ()
    decay_in_rule: bool = False
    group_schedule: bool = False
    cautious: bool = True
    clipped_by: str | None = None
    precisions: tuple[str, ...] = ("fp32", "bf16", "8bit")
    layout: Callable[[tuple[int, ...]], dict[str, tuple[int, ...]]] | None = None
    betas: bool = True
    eps_pair: bool = False
    bounds: dict[str, tuple[float, float]] = field(default_factory=dict)
    complex: bool = True
    reduced: tuple[str, ...] = ()
    tensor_kernel: bool = False

    def __post_init__(self) -> None:
        if not set(self.copies) <= set(self.states):
            raise ValueError(f"{self.name}: copies {self.copies} are not all in states")
        if not set(self.fractions) | set(self.integers) | set(self.bounds) <= set(self.own):
            raise ValueError(f"{self.name}: fractions, integers and bounds are not all in own")
        if not set(self.reduced) <= set(self.states):
            raise ValueError(f"{self.name}: reduced {self.reduced} are not all in states")
        if self.reduced and self.layout is None:
            raise ValueError(f"{self.name}: reduced states need a layout (their shapes)")
        if not self.moments:
            raise ValueError(
                f"{self.name}: some state must be a moment (neither copies nor reduced)"
            )
        if self.layout is not None and (self.kinds or self.amsgrad_state):
            raise ValueError(
                f"{self.name}: a row with a layout has no element loops (kinds) and no AMSGrad"
            )
        kept = {*self.states, *([self.amsgrad_state] if self.amsgrad_state else [])}
        if not self.unsigned <= kept:
            raise ValueError(f"{self.name}: unsigned {set(self.unsigned - kept)} are not states")
        if self.kernel is not None and not 2 <= len(self.state_keys(True)) <= _abi.MAX_STATES:
            raise ValueError(
                f"{self.name}: the kernels take 2 to {_abi.MAX_STATES} states a tensor "
                "(raise kernels._abi.MAX_STATES for more)"
            )

    @property
    def kernel(self) -> str | None:
        """The algorithm's element loop (its first kind), or ``None`` without one."""
        return self.kinds[0] if self.kinds else None

    @property
    def fused(self) -> bool:
        """Whether a fused kernel steps it: element loops, or a kernel of whole tensors."""
        return bool(self.kinds) or self.tensor_kernel

    def state_keys(self, amsgrad: bool = False) -> tuple[str, ...]:
        """The state tensors shaped like the parameter, for a group with this ``amsgrad``."""
        if self.amsgrad_state is not None and amsgrad:
            return (*self.states, self.amsgrad_state)
        return self.states

    def shapes(self, shape: tuple[int, ...], amsgrad: bool = False) -> dict[str, tuple[int, ...]]:
        """The state tensors a parameter of ``shape`` keeps, by name, with their shapes."""
        if self.layout is not None:
            return self.layout(tuple(shape))
        return {key: tuple(shape) for key in self.state_keys(amsgrad)}

    def in_bounds(self, item: tuple[str, float]) -> bool:
        """Whether own hyperparameter ``(name, value)`` is within its bounds: finite for the
        default ``[0, inf)``, an infinite bound included for the row's ``bounds``."""
        name, value = item
        if name in self.bounds:
            low, high = self.bounds[name]
            return low <= value <= high
        return math.isfinite(value) and value >= 0

    @functools.cached_property
    def moments(self) -> tuple[str, ...]:
        """Those of ``states`` that ``state_precision`` applies to: neither copies of the
        weights nor reductions (the first one present tells how a tensor's state is stored)."""
        return tuple(k for k in self.states if k not in self.copies and k not in self.reduced)

    @property
    def mixed_formats(self) -> bool:
        """Whether a tensor's states may be stored in more than one format (a copy of the
        weights or a reduction beside low-precision moments)."""
        return bool(self.copies or self.reduced)

    @property
    def elementwise(self) -> bool:
        """Whether each element's update needs only that element (so a shard of a tensor can
        be stepped on its own): every row but those with a ``layout``."""
        return self.layout is None


def factored(shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Adafactor's state: a tensor of two or more dimensions keeps the mean square of its
    last dimension (``row_var``, ``[..., n, 1]``) and of its second-last (``col_var``,
    ``[..., 1, m]``); a vector or a scalar keeps ``variance``, shaped like it (torch's)."""
    if len(shape) > 1:
        return {"row_var": (*shape[:-1], 1), "col_var": (*shape[:-2], 1, shape[-1])}
    return {"variance": shape}


_ADAM = {
    "states": ("exp_avg", "exp_avg_sq"),
    "unsigned": frozenset({"exp_avg_sq", "max_exp_avg_sq"}),
    "amsgrad_state": "max_exp_avg_sq",
    "kinds": ("adam", "amsgrad"),
    "clipped_by": "exp_avg_sq",
}

#: Every algorithm, by class name, in the order the documentation lists them.
ALGORITHMS: dict[str, Algorithm] = {
    row.name: row
    for row in (
        Algorithm("Adam", reference=reference.adam, torch_twin="Adam", **_ADAM),  # type: ignore[arg-type]
        Algorithm(
            "AdamW",
            reference=reference.adamw,
            torch_twin="AdamW",
            pinned={"decoupled_weight_decay": True},
            **_ADAM,  # type: ignore[arg-type]
        ),
        Algorithm(
            "RAdam",
            states=("exp_avg", "exp_avg_sq"),
            unsigned=frozenset({"exp_avg_sq"}),
            reference=reference.radam,
            clipped_by="exp_avg_sq",
            kinds=("radam", "radam_plain"),
            torch_twin="RAdam",
        ),
        Algorithm(
            "NAdam",
            states=("exp_avg", "exp_avg_sq"),
            unsigned=frozenset({"exp_avg_sq"}),
            scalars={"mu_product": 1.0},
            reference=reference.nadam,
            clipped_by="exp_avg_sq",
            kinds=("nadam",),
            torch_twin="NAdam",
            own=("momentum_decay",),
        ),
        Algorithm(
            "Adamax",
            states=("exp_avg", "exp_inf"),
            unsigned=frozenset({"exp_inf"}),
            reference=reference.adamax,
            kinds=("adamax",),
            torch_twin="Adamax",
        ),
        Algorithm(
            "AdEMAMix",
            states=("exp_avg", "exp_avg_sq", "exp_avg_slow"),
            unsigned=frozenset({"exp_avg_sq"}),
            reference=reference.ademamix,
            clipped_by="exp_avg_sq",
            kinds=("ademamix",),
            own=("alpha", "beta3", "t_alpha", "t_beta3"),
            fractions=("beta3",),
        ),
        Algorithm(
            "ADOPT",
            states=("exp_avg", "exp_avg_sq"),
            unsigned=frozenset({"exp_avg_sq"}),
            reference=reference.adopt,
            kinds=("adopt", "adopt_first"),
            own=("clip_exponent",),
        ),
        Algorithm(
            "ScheduleFreeAdamW",
            states=("z", "exp_avg_sq"),
            unsigned=frozenset({"exp_avg_sq"}),
            reference=reference.schedulefree_adamw,
            kinds=("schedulefree",),
            own=("warmup_steps", "r", "weight_lr_power"),
            integers=("warmup_steps",),
            copies=("z",),
            decay_in_rule=True,
            group_schedule=True,
            cautious=False,
        ),
        Algorithm(
            "Adafactor",
            states=("row_var", "col_var", "variance"),
            unsigned=frozenset({"row_var", "col_var", "variance"}),
            reference=reference.adafactor,
            torch_twin="Adafactor",
            own=("beta2_decay", "d"),
            bounds={"beta2_decay": (-math.inf, 0.0), "d": (1.0, math.inf)},
            layout=factored,
            reduced=("row_var", "col_var"),
            betas=False,
            eps_pair=True,
            decay_in_rule=True,
            cautious=False,
            complex=False,
            tensor_kernel=True,
        ),
    )
}

#: The kernels' element loops, numbered in table order (C gets them as -DAK_K_<KIND>).
KINDS = {
    kind: code
    for code, kind in enumerate(
        dict.fromkeys(kind for row in ALGORITHMS.values() for kind in row.kinds)
    )
}

#: Every state tensor that is never negative, across the table (the unsigned 8-bit code).
UNSIGNED = frozenset().union(*(row.unsigned for row in ALGORITHMS.values()))


def is_unsigned(key: str) -> bool:
    """Whether the state ``key`` is never negative, by the rows of the table as it is now."""
    return any(key in row.unsigned for row in ALGORITHMS.values())


def noise(key: str) -> tuple[int, bool]:
    """The stochastic-rounding noise of state ``key`` (or ``"param"``): its hash stream, and
    whether it takes the hash's high 16 bits. One hash per element serves an algorithm's first
    two states (the first takes the low half, the second the high half); AMSGrad's running
    maximum, the parameter, and each further state have a stream of their own."""
    if key == "param":
        return _abi.SALT_PARAM, True
    for row in ALGORITHMS.values():
        if key == row.amsgrad_state:
            return _abi.SALT_MAX, True
        if key in row.states:
            index = row.states.index(key)
            if index < 2:
                return _abi.SALT_MOMENTS, index == 1
            return _abi.SALT_EXTRA + index - 2, True
    raise KeyError(f"no algorithm keeps a state named {key!r}")


#: Every 0-d state entry: ``step`` and the algorithms' scalars.
SCALAR_KEYS = ("step", *dict.fromkeys(k for row in ALGORITHMS.values() for k in row.scalars))
