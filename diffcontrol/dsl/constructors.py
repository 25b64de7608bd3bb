"""The atom constructors of the public namespace: ``dc.sin(x)``, ``dc.sum_squares(x)``, ..."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from diffcontrol.dsl import atoms
from diffcontrol.dsl.expression import Expression


def sin(x: Any) -> Expression:
    """Elementwise sine."""
    return atoms.Sin(x)


def cos(x: Any) -> Expression:
    """Elementwise cosine."""
    return atoms.Cos(x)


def tan(x: Any) -> Expression:
    """Elementwise tangent."""
    return atoms.Tan(x)


def tanh(x: Any) -> Expression:
    """Elementwise hyperbolic tangent."""
    return atoms.Tanh(x)


def exp(x: Any) -> Expression:
    """Elementwise exponential."""
    return atoms.Exp(x)


def log(x: Any) -> Expression:
    """Elementwise natural logarithm."""
    return atoms.Log(x)


def sqrt(x: Any) -> Expression:
    """Elementwise square root."""
    return atoms.Sqrt(x)


def square(x: Any) -> Expression:
    """Elementwise square."""
    return atoms.Square(x)


def abs(x: Any) -> Expression:  # noqa: A001  (the DSL's name, as in API.md)
    """Elementwise absolute value (not smooth at 0)."""
    return atoms.Abs(x)


def atan2(y: Any, x: Any) -> Expression:
    """Elementwise four-quadrant arctangent of ``y / x``."""
    return atoms.Atan2(y, x)


def sum(x: Any, axis: int | None = None) -> Expression:  # noqa: A001
    """Sum of all entries (a scalar), or along ``axis``."""
    return atoms.Sum(x, axis)


def sum_squares(x: Any) -> Expression:
    """Sum of the squared entries of ``x`` (a scalar)."""
    return atoms.SumSquares(x)


def quad_form(x: Any, P: Any) -> Expression:
    """``x^T P x`` for ``x`` of shape (n,) and ``P`` of shape (n, n)."""
    return atoms.QuadForm(x, P)


def norm2(x: Any) -> Expression:
    """Euclidean norm of all entries of ``x`` (a scalar)."""
    return atoms.Norm2(x)


def stack(items: Sequence[Any]) -> Expression:
    """Stack same-shape pieces along a new leading axis: scalars make a vector."""
    return atoms.Stack(items)


def concat(items: Sequence[Any]) -> Expression:
    """Join vectors (and scalars, as length 1) end to end."""
    return atoms.Concat(items)
