"""Arithmetic expressions of the step, ``t``, for ``lambda(...)`` and ``multiplicative(...)`` specs.

The seed's schedules are ``LambdaLR(lr_lambda=lambda epoch: 0.67 ** epoch)`` and
``MultiplicativeLR(lr_lambda=lambda epoch: 0.69)``. A spec string cannot hold a Python function,
so it holds a small expression instead (``0.67 ** t``). It is parsed with :mod:`ast` and evaluated
by a whitelist walker, never by ``eval``: only numbers, ``t`` (also spelled ``step`` or
``epoch``), arithmetic, comparisons, ``x if cond else y`` and a few :mod:`math` functions.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

__all__ = ["Expr", "ExprError", "SpecError"]

STEP_NAMES = ("t", "step", "epoch")
CONSTANTS = {"pi": math.pi, "e": math.e}
FUNCTIONS: dict[str, Callable[..., float]] = {
    "abs": abs,
    "ceil": lambda x: float(math.ceil(x)),  # floats: products of ints grow without bound
    "cos": math.cos,
    "exp": math.exp,
    "floor": lambda x: float(math.floor(x)),
    "log": math.log,
    "max": max,
    "min": min,
    "sin": math.sin,
    "sqrt": math.sqrt,
}
_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    # In floats: an int power such as t ** 10**9 would be computed exactly, for minutes.
    ast.Pow: math.pow,
}
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}

Evaluator = Callable[[int], Any]


class SpecError(ValueError):
    """A spec that cannot be read or evaluated, with the position of the bad part."""

    def __init__(self, message: str, spec: str, start: int = 0, end: int | None = None) -> None:
        end = max(start + 1, len(spec) if end is None else end)
        self.reason, self.spec, self.start, self.end = message, spec, start, end
        # A long spec is shown as a window of it around the bad part.
        shown, left, right = spec, start, min(end, start + 60)
        if len(spec) > 100:
            first = max(0, start - 30)
            shown = ("..." if first else "") + spec[first : first + 100]
            shown += "..." if first + 100 < len(spec) else ""
            left = start - first + (3 if first else 0)
            right = min(right - first + (3 if first else 0), len(shown))
        caret = " " * left + "^" * max(1, right - left)
        super().__init__(f"bad schedule spec: {message[:300]}\n  {shown}\n  {caret}")


class ExprError(ValueError):
    """An expression uses something outside the whitelist; ``node`` locates the bad part."""

    def __init__(self, message: str, node: ast.AST | None = None) -> None:
        super().__init__(message)
        self.node = node


def _compile(node: ast.AST) -> Evaluator:
    """Turn a whitelisted AST into a closure ``t -> value``."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        # Every value is a float: exact int arithmetic on a long product would not end.
        try:
            value = float(node.value)  # type: ignore[arg-type]  # an int or a float
        except OverflowError:
            raise ExprError(f"the number {ast.unparse(node)[:20]}... is too large", node) from None
        return lambda t: value
    if isinstance(node, ast.Name):
        if node.id in STEP_NAMES:
            return lambda t: float(t)
        if node.id in CONSTANTS:
            constant = CONSTANTS[node.id]
            return lambda t: constant
        raise ExprError(f"unknown name {node.id!r}: use t (the step), pi, e or a number", node)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        op, left, right = _BINARY[type(node.op)], _compile(node.left), _compile(node.right)
        return lambda t: op(left(t), right(t))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        inner = _compile(node.operand)
        sign = -1 if isinstance(node.op, ast.USub) else 1
        return lambda t: sign * inner(t)
    if isinstance(node, ast.Compare) and all(type(op) in _COMPARE for op in node.ops):
        first = _compile(node.left)
        pairs = zip(node.ops, node.comparators, strict=True)
        rest = [(_COMPARE[type(op)], _compile(c)) for op, c in pairs]

        def compare(t: int) -> bool:
            left = first(t)
            for op, right_of in rest:
                right = right_of(t)
                if not op(left, right):
                    return False
                left = right
            return True

        return compare
    if isinstance(node, ast.BoolOp):  # Python's: the first false (and) or true (or) operand
        parts = [_compile(v) for v in node.values]
        stop_when = not isinstance(node.op, ast.And)

        def either(t: int) -> Any:
            value: Any = None
            for part in parts:
                value = part(t)
                if bool(value) == stop_when:
                    return value
            return value

        return either
    if isinstance(node, ast.IfExp):
        test, body, orelse = _compile(node.test), _compile(node.body), _compile(node.orelse)
        return lambda t: body(t) if test(t) else orelse(t)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        if node.func.id not in FUNCTIONS:
            known = ", ".join(sorted(FUNCTIONS))
            raise ExprError(f"unknown function {node.func.id!r} (known: {known})", node.func)
        fn, args = FUNCTIONS[node.func.id], [_compile(a) for a in node.args]
        return lambda t: fn(*(a(t) for a in args))
    raise ExprError(
        f"{ast.unparse(node)!r} is not allowed in an expression of t "
        "(numbers, t, + - * / // % **, comparisons, 'a if cond else b', math functions)",
        node,
    )


class Expr:
    """A whitelisted arithmetic expression of the step ``t``, callable as ``expr(t) -> float``.

    Example:
        >>> Expr("0.67 ** t")(2)
        0.4489000000000001
    """

    def __init__(self, source: str | ast.expr) -> None:
        try:
            node = (
                ast.parse(source.strip(), mode="eval").body if isinstance(source, str) else source
            )
            self._evaluate = _compile(node)
            self.source = ast.unparse(node)
        except RecursionError:
            raise ExprError("the expression is nested too deeply", None) from None

    def __call__(self, t: int) -> float:
        """The value at step ``t``; one that cannot be computed (``1 / t`` at 0, ``log(t)`` at
        0, ``exp(t)`` past 709) or is not a finite number is a :class:`SpecError`."""
        try:
            value = float(self._evaluate(t))
        except (ArithmeticError, ValueError, TypeError, RecursionError) as error:
            reason = {
                "math range error": "it overflows a float",
                "math domain error": "outside a function's domain",
            }.get(str(error), str(error) or type(error).__name__)
            if isinstance(error, RecursionError):
                reason = "it is nested too deeply"
            message = f"the expression cannot be evaluated at t={t}: {reason}"
            raise SpecError(message, self.source) from None
        if not math.isfinite(value):
            raise SpecError(f"the expression is {value} at t={t}", self.source)
        return value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Expr) and other.source == self.source

    def __hash__(self) -> int:
        return hash(self.source)

    def __repr__(self) -> str:
        return self.source
