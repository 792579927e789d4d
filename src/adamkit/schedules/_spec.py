"""The schedule spec language: ``"warmup(200) + cosine(2000, floor=0.1)"``.

A spec is one or more pieces joined with ``+``. A piece is ``name(arguments)``, where ``name``
is a schedule's spec name (``warmup``, ``cosine``, ... see :data:`SCHEDULES`) and the arguments
are those of its class, positionally or by keyword: numbers, lists of integers (``[300, 600]``),
strings (``shape="linear"``) and, for ``lambda`` and ``multiplicative``, an expression of the
step ``t`` (``lambda(0.67 ** t)``). ``str(schedule)`` writes this form back, so
``parse(str(s)) == s``.

The syntax is a subset of Python expressions, read with :mod:`ast` and never evaluated. An error
names the problem and points at the bad part of the spec.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import re
import warnings
from typing import Any

from ._expr import Expr, ExprError, SpecError
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

__all__ = ["SCHEDULES", "SpecError", "parse"]

SCHEDULES: dict[str, type[Schedule]] = {
    cls.spec_name: cls
    for cls in (
        Constant,
        Warmup,
        Linear,
        Cosine,
        CosineRestarts,
        Exponential,
        StepDecay,
        MultiStep,
        Polynomial,
        InverseSqrt,
        OneCycle,
        WSD,
        Lambda,
        Multiplicative,
    )
}
# Arguments read as an expression of t rather than as a constant.
_EXPRESSION_ARGS = {("lambda", "fn"), ("multiplicative", "factor")}
# `lambda` is a Python keyword; an identifier of the same length keeps every column in place.
_LAMBDA = re.compile(r"\blambda(?=\s*\()")
_LAMBDA_STANDIN = "LAMBDA"


def parse(spec: str) -> Schedule:
    """Read a spec string into a :class:`Schedule`.

    Example:
        >>> parse("warmup(200) + cosine(2000, floor=0.1)")(200)
        1.0
    """
    if not isinstance(spec, str):
        raise TypeError(f"a schedule spec must be a string, got {spec!r}")
    spec = " ".join(spec.split())
    if not spec:
        raise SpecError("the spec is empty (try 'warmup(100) + cosine(1000)')", spec)
    try:
        return _parse(spec)
    except RecursionError:  # thousands of terms or parentheses: Python's parser gives up
        raise SpecError("the spec is nested too deeply to read", spec) from None


def _parse(spec: str) -> Schedule:
    source = _LAMBDA.sub(_LAMBDA_STANDIN, spec)
    try:
        with warnings.catch_warnings():  # e.g. "invalid decimal literal": the error says it
            warnings.simplefilter("ignore", SyntaxWarning)
            tree = ast.parse(source, mode="eval")
    except SyntaxError as error:
        start = (error.offset or 1) - 1
        end = (error.end_offset or error.offset or 1) - 1
        if not error.offset:  # Python gives no position when the spec stops too early:
            start, end = len(spec) - 1, len(spec)  # point at where it stops
        raise SpecError(
            f"{error.msg} (a spec looks like 'warmup(200) + cosine(2000, floor=0.1)')",
            spec,
            start,
            end if end > start else None,
        ) from None
    nodes = _terms(tree.body, spec)
    pieces = [_piece(node, spec) for node in nodes]
    for piece, node in zip(pieces[:-1], nodes[:-1], strict=False):
        if piece.length is None:
            raise SpecError(
                f"{piece.spec_name}() has no end, so nothing can follow it; give it steps=N",
                spec,
                *_where(node),
            )
    return pieces[0] if len(pieces) == 1 else Join(tuple(pieces))


def _where(node: ast.AST) -> tuple[int, int | None]:
    return getattr(node, "col_offset", 0), getattr(node, "end_col_offset", None)


def _terms(node: ast.expr, spec: str) -> list[ast.expr]:
    if isinstance(node, ast.BinOp):
        if not isinstance(node.op, ast.Add):
            raise SpecError("pieces are joined with '+' only", spec, *_operator_span(node, spec))
        return _terms(node.left, spec) + _terms(node.right, spec)
    return [node]


def _operator_span(node: ast.BinOp, spec: str) -> tuple[int, int]:
    """Columns of the operator between the two operands."""
    left_end = node.left.end_col_offset or 0
    gap = spec[left_end : node.right.col_offset]
    offset = len(gap) - len(gap.lstrip())
    width = len(gap.strip()) or 1
    return left_end + offset, left_end + offset + width


def _piece(node: ast.expr, spec: str) -> Schedule:
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        raise SpecError(
            "expected a schedule such as cosine(1000); known: " + ", ".join(SCHEDULES),
            spec,
            *_where(node),
        )
    name = "lambda" if node.func.id == _LAMBDA_STANDIN else node.func.id
    if name not in SCHEDULES:
        close = difflib.get_close_matches(name, SCHEDULES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f"; known: {', '.join(SCHEDULES)}"
        raise SpecError(f"unknown schedule {name!r}{hint}", spec, *_where(node.func))
    cls = SCHEDULES[name]
    signature = inspect.signature(cls)
    names = list(signature.parameters)
    if len(node.args) > len(names):
        extra = node.args[len(names)]
        raise SpecError(
            f"{name}() takes at most {len(names)} arguments ({', '.join(names)})",
            spec,
            *_where(extra),
        )
    args = [_value(name, names[i], a, spec) for i, a in enumerate(node.args)]
    kwargs: dict[str, Any] = {}
    for keyword in node.keywords:
        if keyword.arg not in names:
            start = keyword.col_offset
            raise SpecError(
                f"{name}() has no argument {keyword.arg!r} (its arguments: {', '.join(names)})",
                spec,
                start,
                start + len(keyword.arg or "**"),
            )
        kwargs[keyword.arg] = _value(name, keyword.arg, keyword.value, spec)
    try:
        signature.bind(*args, **kwargs)
    except TypeError as error:
        raise SpecError(f"{name}(): {error}", spec, *_where(node)) from None
    try:
        return cls(*args, **kwargs)
    except (TypeError, ValueError) as error:
        raise SpecError(
            str(error), spec, *_where(_argument_node(node, names, str(error)))
        ) from None


def _argument_node(call: ast.Call, names: list[str], message: str) -> ast.AST:
    """The argument a validation message names (``steps=0 is invalid``), else the whole call."""
    named = re.search(r": (\w+)=", message)
    if named:
        for keyword in call.keywords:
            if keyword.arg == named.group(1):
                return keyword
        if named.group(1) in names and names.index(named.group(1)) < len(call.args):
            return call.args[names.index(named.group(1))]
    return call


def _value(piece: str, arg: str, node: ast.expr, spec: str) -> Any:
    if (piece, arg) in _EXPRESSION_ARGS:
        constant = isinstance(node, ast.Constant) and isinstance(node.value, int | float)
        if constant and piece == "multiplicative":  # a constant factor has a closed form
            return node.value  # type: ignore[attr-defined]
        try:
            return Expr(node)
        except ExprError as error:
            raise SpecError(str(error), spec, *_where(error.node or node)) from None
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float | str | bool):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = node.operand
        if isinstance(inner, ast.Constant) and isinstance(inner.value, int | float):
            return -inner.value
    if isinstance(node, ast.List | ast.Tuple):
        return tuple(_value(piece, arg, element, spec) for element in node.elts)
    if isinstance(node, ast.Name):
        return node.id  # a bare word: shape=linear, anneal=cos
    raise SpecError(
        f"{piece}(): {arg} must be a number, a list of numbers or a word, "
        f"not {ast.unparse(node)!r}",
        spec,
        *_where(node),
    )
