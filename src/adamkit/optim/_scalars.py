"""The fused kernels' step scalars, computed once, here, for the C and the Triton kernels.

Each step a bucket's counters are advanced (``step += 1``, and any scalar state the algorithm
keeps, like NAdam's ``mu_product``), then each tensor gets a row of :data:`_abi.ROW` doubles:
the ``a``, ``b``, ``c`` its element loop multiplies by, the loop's ``kind`` and the new step
``t`` (which also seeds stochastic rounding). An algorithm says what they are in one function
of its own, next to its update rule (``adam.py``'s ``adam_scalars``, ...), written for one step
count as the paper writes it; it runs once per distinct step count of the bucket (nearly
always one), in double, with Python's ``**`` as torch's optimizers compute the same numbers.

The counters are 0-d CPU tensors on every path (so checkpoints are the same everywhere). The
CPU library advances them in one call (``adamkit_advance``: torch._foreach_add_ over 2000 CPU
scalars takes milliseconds); without it (a GPU machine with no C compiler) torch's own
operations do, with the same rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from numpy.typing import NDArray

from ..kernels import _abi, fused_library
from ._algorithms import KINDS
from ._core import Hyper

__all__ = ["Counters", "Scalars", "StepScalars", "fill_scalars"]

Values = NDArray[np.float64]
Addresses = NDArray[np.uint64]


class Scalars(NamedTuple):
    """The element loop ``kind`` (a name in ``_algorithms.KINDS``) and its step scalars, each
    a number or one per tensor of the step count's group (an array)."""

    kind: str
    a: float | Values
    b: float | Values = 0.0
    c: float | Values = 0.0
    d: float | Values = 0.0


class Counters:
    """A bucket's 0-d state counters during one step (all, or the tensors ``where`` selects).

    ``addresses``: the counters' data addresses per key, ``tensors``: the counters themselves,
    ``dtypes``: each key's dtype (one per bucket: the plan checked it).
    """

    def __init__(
        self,
        tensors: dict[str, list[torch.Tensor]],
        addresses: dict[str, Addresses],
        dtypes: dict[str, torch.dtype],
        where: slice | NDArray[np.intp] = slice(None),
    ) -> None:
        self.tensors, self.addresses, self.dtypes, self.where = tensors, addresses, dtypes, where

    def at(self, where: slice | NDArray[np.intp]) -> Counters:
        """The counters of the tensors ``where`` selects."""
        return Counters(self.tensors, self.addresses, self.dtypes, where)

    def advance(self, key: str, factors: float | Values | None = None) -> Values:
        """Add one to each counter ``key`` (``factors`` None) or multiply it by ``factors``,
        rounded in its own dtype, as torch's ``step += 1`` and ``mu_product *= mu``; returns
        the new values as float64."""
        tensors = self.tensors[key]
        if not isinstance(self.where, slice):
            tensors = [tensors[i] for i in self.where]
        count = len(tensors)
        out = np.empty(count, dtype=np.float64)
        multipliers = None
        if factors is not None:
            multipliers = np.ascontiguousarray(np.broadcast_to(factors, (count,)), np.float64)
        library = fused_library()
        addresses = self.addresses.get(key)  # none: counters the C library cannot reach
        if library is not None and addresses is not None:
            table = np.ascontiguousarray(addresses[self.where], dtype=np.uint64)
            library.adamkit_advance(
                count,
                table.ctypes.data,
                int(self.dtypes[key] == torch.float64),
                None if multipliers is None else multipliers.ctypes.data,
                out.ctypes.data,
            )
            return out
        if multipliers is None:
            torch._foreach_add_(tensors, 1)
        else:  # each by its own Python float, as torch's NAdam multiplies
            for tensor, factor in zip(tensors, multipliers.tolist(), strict=True):
                tensor.mul_(factor)
        out[:] = torch.stack([t.reshape(()) for t in tensors]).double().numpy() if count else []
        return out


#: An algorithm's step scalars at step ``t`` (a number): from its hyperparameters, and the
#: counters of the tensors at that step (for scalar state such as NAdam's running product).
StepScalars = Callable[[float, Hyper, Counters], Scalars]


def fill_scalars(rows: Values, scalars_of: StepScalars, h: Hyper, counters: Counters) -> None:
    """Advance the step counters and write each tensor's row (``rows``: count x ROW)."""
    t = counters.advance("step")
    if not len(t):
        return
    if not (np.isfinite(t).all() and (t >= 1).all()):  # a counter set by hand, in place
        for step in counters.tensors["step"]:
            step.sub_(1)  # as it was: nothing of this step is kept
        bad = float(t[~(np.isfinite(t) & (t >= 1))][0]) - 1
        raise ValueError(
            f"adamkit: a state['step'] is {bad}; a step count must be a finite number >= 0"
        )
    if (t == t[0]).all():  # the usual case: one step count for the whole bucket
        groups: list[tuple[float, slice | NDArray[np.intp]]] = [(float(t[0]), slice(None))]
    else:
        groups = [(float(u), np.flatnonzero(t == u)) for u in np.unique(t)]
    for value, where in groups:
        s = scalars_of(value, h, counters.at(where))
        rows[where, _abi.R_A] = s.a
        rows[where, _abi.R_B] = s.b
        rows[where, _abi.R_C] = s.c
        rows[where, _abi.R_D] = s.d
        rows[where, _abi.R_KIND] = KINDS[s.kind]
    rows[:, _abi.R_T] = t
