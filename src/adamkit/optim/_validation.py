"""Argument checks at the boundary. Every message names the argument and the value it got."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from ._algorithms import Algorithm

__all__ = [
    "OPTIMIZER_WIDE",
    "check_flag",
    "check_group",
    "check_optimizer_wide",
    "scalar_value",
]

#: Group keys that are settings of the whole optimizer: every param group must hold the same
#: value. Why each cannot differ between groups:
OPTIMIZER_WIDE = {
    "nonfinite": "a step is raised on or skipped as a whole",
    "max_grad_norm": "the norm is taken over every group's gradients together, as "
    "clip_grad_norm_(model.parameters()) does",
}


def scalar_value(value: float | Tensor) -> float:
    """The Python float held by a hyperparameter given as a number or a 1-element Tensor."""
    return float(value.item()) if isinstance(value, Tensor) else float(value)


def _number(name: str, value: Any, where: str) -> float:
    """Check that ``value`` is a real number (or a 1-element real Tensor) and return it."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"{where}Tensor {name} must be 1-element, got shape {tuple(value.shape)}"
            )
        if value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{where}{name} must be a real number, got a {value.dtype} Tensor")
        return float(value.item())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{where}{name} must be a float or a 1-element Tensor, "
            f"got {type(value).__name__}: {value!r}"
        )
    return float(value)


def _non_negative(name: str, value: Any, where: str, label: str) -> None:
    x = _number(name, value, where)
    if not (math.isfinite(x) and x >= 0.0):
        # torch's words first ("Invalid learning rate: -0.01"): code that matches them works.
        raise ValueError(
            f"{where}Invalid {label}: {value} ({name}={value!r}; expected a finite number >= 0)"
        )


def check_flag(name: str, value: Any, where: str, allow_none: bool = False) -> None:
    """A boolean setting (``None`` too where ``allow_none``), or a TypeError naming it."""
    if isinstance(value, bool) or (allow_none and value is None):
        return
    expected = "True, False or None" if allow_none else "True or False"
    raise TypeError(f"{where}{name} must be {expected}, got {type(value).__name__}: {value!r}")


def _betas(value: Any, where: str) -> None:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise TypeError(f"{where}betas must be a pair (beta1, beta2), got {value!r}")
    for i, beta in enumerate(value):
        b = _number(f"betas[{i}]", beta, where)
        if not 0.0 <= b < 1.0:  # also rejects NaN
            raise ValueError(
                f"{where}Invalid beta parameter at index {i}: {beta} (betas[{i}]={beta!r}; "
                "expected 0 <= beta < 1)"
            )


def _eps_pair(value: Any, where: str) -> None:
    """Adafactor's ``eps``: ``(eps1, eps2)``, eps1 a number >= 0 or ``None``."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise TypeError(f"{where}eps must be a pair (eps1 or None, eps2), got {value!r}")
    for i, eps in enumerate(value):
        if i == 0 and eps is None:
            continue
        x = _number(f"eps[{i}]", eps, where)
        if not (math.isfinite(x) and x >= 0.0):  # torch's words first
            raise ValueError(
                f"{where}epsilon{i + 1} should be >= 0 but is: {eps} (eps[{i}]={eps!r}; "
                "expected a finite number >= 0)"
            )


#: torch's words for an own hyperparameter out of its bounds (code that matches them works).
_TORCH_WORDS = {
    "beta2_decay": "beta2_decay should be <= 0 but is: {}",
    "d": "Clipping threshold d should be >= 1 but is: {}",
}


def _within(name: str, value: Any, where: str, bounds: tuple[float, float]) -> None:
    """``value`` in ``[low, high]``, an infinite bound included (Adafactor's ``d = inf``
    turns its update clipping off, as in torch)."""
    low, high = bounds
    x = _number(name, value, where)
    if not low <= x <= high:  # also rejects NaN
        expected = f"<= {high:g}" if low == -math.inf else f">= {low:g}"
        if low != -math.inf and high != math.inf:
            expected = f"in [{low:g}, {high:g}]"
        words = _TORCH_WORDS.get(name, f"Invalid {name} value: {{}}").format(value)
        raise ValueError(f"{where}{words} ({name}={value!r}; expected a number {expected})")


# Execution settings accepted as in torch, with the values this release cannot honour yet.
_UNSUPPORTED = {
    "capturable": "CUDA-graph capture is not implemented yet",
}


def check_group(
    group: Mapping[str, Any],
    optimizer: str,
    where: str = "",
    row: Algorithm | None = None,
) -> None:
    """Validate the hyperparameters and flags in a parameter group (or the defaults).

    ``where`` prefixes every message, for example ``"param group 1: "``. ``row``: the
    algorithm's row of the table: its own hyperparameters, each a number >= 0, those that are
    decay rates (``fractions``, below 1) or step counts (``integers``, whole numbers), and the
    ``state_precision`` values it takes.
    """
    own = row.own if row else ()
    fractions = row.fractions if row else ()
    precisions = row.precisions if row else ("fp32", "bf16", "8bit")
    bounds = row.bounds if row else {}
    _non_negative("lr", group["lr"], where, "learning rate")
    if row is not None and row.eps_pair:
        _eps_pair(group["eps"], where)
    else:
        _non_negative("eps", group["eps"], where, "epsilon value")
    _non_negative("weight_decay", group["weight_decay"], where, "weight_decay value")
    if row is None or row.betas:
        _betas(group["betas"], where)
    for name in own:
        if name in bounds:
            _within(name, group[name], where, bounds[name])
        else:
            _non_negative(name, group[name], where, f"{name} value")
    for name in row.integers if row else ():
        if not float(group[name]).is_integer():
            raise ValueError(
                f"Invalid {name} value: {group[name]} ({where}{name} is a number of steps: "
                "expected a whole number >= 0)"
            )
    for name in fractions:
        if not float(group[name]) < 1.0:
            raise ValueError(
                f"Invalid {name} value: {group[name]} ({where}{name} must be in [0, 1))"
            )
    for flag in ("cautious", "update_clipping"):
        if group.get(flag) and row is not None:
            unsupported = not row.cautious if flag == "cautious" else row.clipped_by is None
            if unsupported:
                raise ValueError(
                    f"{where}{flag}=True is not available for adamkit.{optimizer}: "
                    + (
                        "its step is not a gradient step to mask"
                        if flag == "cautious"
                        else "it keeps no Adam-style second moment to measure the gradient against"
                    )
                )
    for flag in (
        "amsgrad",
        "maximize",
        "decoupled_weight_decay",
        "capturable",
        "differentiable",
        "cautious",
        "update_clipping",
    ):
        if flag in group:
            check_flag(flag, group[flag], where)
    for flag in ("foreach", "fused"):
        if flag in group:
            check_flag(flag, group[flag], where, allow_none=True)
    policy = group.get("nonfinite")
    if policy not in (None, "raise", "skip"):
        raise ValueError(
            f"{where}nonfinite={policy!r} is invalid (expected None, 'raise' or 'skip')"
        )
    max_norm = group.get("max_grad_norm")
    if max_norm is not None:
        value = _number("max_grad_norm", max_norm, where)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(
                f"{where}Invalid max_grad_norm value: max_grad_norm={max_norm!r} "
                "(expected a finite number > 0, or None)"
            )
    if group.get("fused") and group.get("foreach"):
        raise ValueError(f"{where}fused=True and foreach=True cannot be set together")
    if group.get("fused") and row is not None and not row.fused:
        raise RuntimeError(
            f"{where}adamkit.{optimizer}(fused=True): no fused kernel steps {row.name}; leave "
            "fused=None to use the multi-tensor path"
        )
    for flag, why in _UNSUPPORTED.items():
        if group.get(flag):
            raise NotImplementedError(
                f"{where}{flag}=True is not supported yet by adamkit.{optimizer}: {why}"
            )
    precision = group.get("state_precision", "fp32")
    if precision not in ("fp32", "bf16", "8bit"):
        raise ValueError(
            f"{where}state_precision={precision!r} is invalid (expected 'fp32', 'bf16' or '8bit')"
        )
    if group.get("differentiable"):
        # torch's words for the first; the others have no torch equivalent to differentiate.
        if group.get("fused"):
            raise RuntimeError(f"{where}`fused` does not support `differentiable`")
        if group.get("foreach"):  # torch fails later, on an assertion
            raise RuntimeError(
                f"{where}foreach=True cannot be combined with differentiable=True: torch's "
                "_foreach ops don't support autograd (the differentiable step is a for-loop)"
            )
        if group.get("stochastic_rounding"):
            raise ValueError(
                f"{where}stochastic_rounding=True cannot be combined with differentiable=True: "
                "it steps fp32 copies of the parameters, outside autograd's graph"
            )
        if precision != "fp32":
            raise ValueError(
                f"{where}state_precision={precision!r} cannot be combined with "
                "differentiable=True: the differentiable step keeps full-precision state "
                "(state_precision='fp32'), as torch does"
            )
        if group.get("max_grad_norm") is not None:
            raise ValueError(
                f"{where}max_grad_norm={group['max_grad_norm']!r} cannot be combined with "
                "differentiable=True (clipping rescales .grad in place); clip with "
                "torch.nn.utils.clip_grad_norm_ before the step, or leave max_grad_norm=None"
            )
    if "stochastic_rounding" in group:
        check_flag("stochastic_rounding", group["stochastic_rounding"], where)
    if precision not in precisions:
        raise ValueError(
            f"{where}state_precision={precision!r} is not available for adamkit.{optimizer} "
            f"(expected {' or '.join(map(repr, precisions))})"
        )


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float | Tensor) and isinstance(b, int | float | Tensor):
        return scalar_value(a) == scalar_value(b)  # 1.0 and tensor(1.0) are one setting
    return a is b or (isinstance(a, str) and a == b)  # None, or a nonfinite policy


def check_optimizer_wide(
    groups: Sequence[Mapping[str, Any]], where: str = "", start: int = 1
) -> None:
    """Check that ``groups[start:]`` hold the :data:`OPTIMIZER_WIDE` settings of ``groups[0]``.

    The value a group was given (or took from the defaults) is validated and kept in the
    group as torch keeps every group value, but only one value can apply.
    """
    first = groups[0]
    for index in range(start, len(groups)):
        for key, why in OPTIMIZER_WIDE.items():
            theirs, ours = first.get(key), groups[index].get(key)
            if not _same(theirs, ours):
                raise ValueError(
                    f"{where}param group {index} has {key}={ours!r} but param group 0 has "
                    f"{key}={theirs!r}: {key} is one setting for the whole optimizer ({why}); "
                    f"set it in the constructor ({key}=...) and leave it out of the param groups"
                )
