"""The atom constructors of the public namespace: ``dc.sin(x)``, ``dc.sum_squares(x)``, ..."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from diffcontrol.dsl import atoms, penalties
from diffcontrol.dsl.expression import Expression, as_expression
from diffcontrol.errors import ModelError


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


# ---- penalty atoms and reductions (cvxpy's meanings) -----------------------------------


def pos(x: Any) -> Expression:
    """max(x, 0) elementwise. Convex, not smooth: smooth backends refuse it."""
    return penalties.Pos(x)


def softplus(x: Any) -> Expression:
    """log(1 + exp(x)) elementwise (cvxpy's ``logistic``): a smooth, convex ramp."""
    return penalties.Softplus(x)


def logistic(x: Any) -> Expression:
    """cvxpy's name for :func:`softplus`."""
    return penalties.Softplus(x)


def huber(x: Any, M: float = 1.0) -> Expression:
    """Elementwise Huber function: x^2 for |x| <= M, else 2 M |x| - M^2. Convex, C^1."""
    return penalties.Huber(x, M)


def maximum(a: Any, b: Any, *more: Any) -> Expression:
    """Elementwise maximum of two or more expressions (broadcast). Convex, not smooth."""
    return penalties.Maximum([a, b, *more])


def minimum(a: Any, b: Any, *more: Any) -> Expression:
    """Elementwise minimum of two or more expressions (broadcast). Concave, not smooth."""
    return penalties.Minimum([a, b, *more])


def max(x: Any, axis: int | None = None) -> Expression:  # noqa: A001
    """Largest entry (a scalar), or along ``axis``. Convex, not smooth."""
    return penalties.Max(x, axis)


def min(x: Any, axis: int | None = None) -> Expression:  # noqa: A001
    """Smallest entry (a scalar), or along ``axis``. Concave, not smooth."""
    return penalties.Min(x, axis)


def logsumexp(x: Any, axis: int | None = None) -> Expression:
    """log(sum(exp(x))) over all entries (a scalar), or along ``axis``: a smooth maximum."""
    return penalties.LogSumExp(x, axis)


def log_sum_exp(x: Any, axis: int | None = None) -> Expression:
    """cvxpy's name for :func:`logsumexp`."""
    return penalties.LogSumExp(x, axis)


def norm1(x: Any, axis: int | None = None) -> Expression:
    """Sum of absolute values (a scalar), or along ``axis``. Convex, not smooth."""
    return penalties.Norm1(x, axis)


def norm_inf(x: Any, axis: int | None = None) -> Expression:
    """Largest absolute value (a scalar), or along ``axis``. Convex, not smooth."""
    return penalties.NormInf(x, axis)


def norm(x: Any, p: Any = 2) -> Expression:
    """cvxpy's ``norm(x, p)`` of all entries: p = 1, 2 (also "fro") or "inf"."""
    if p in (2, "fro", 2.0):
        return atoms.Norm2(x)
    if p in (1, 1.0):
        return penalties.Norm1(x)
    if p in ("inf", "Inf", float("inf")):
        return penalties.NormInf(x)
    raise ModelError(f"dc.norm(x, p) takes p = 1, 2, 'fro' or 'inf', got p={p!r}")


def mean(x: Any, axis: int | None = None) -> Expression:
    """Mean of all entries (a scalar), or along ``axis``."""
    x = as_expression(x)
    total = atoms.Sum(x, axis)
    count = x.size if axis is None else x.shape[axis % x.ndim] if x.ndim else 1
    return total if count == 1 else total / float(count)


def multiply(a: Any, b: Any) -> Expression:
    """Elementwise product with broadcasting (``a * b``)."""
    return atoms.Multiply(as_expression(a), as_expression(b))


def reshape(x: Any, shape: Any, order: str = "F") -> Expression:
    """``x`` with a new shape of the same size; ``order`` "F" (column-major, cvxpy's
    default) or "C" (row-major, NumPy's)."""
    return penalties.Reshape(x, shape, order)


def hstack(items: Sequence[Any]) -> Expression:
    """Join horizontally: vectors (scalars as length 1) end to end, matrices side by side."""
    items = _items(items, "hstack")
    if all(e.ndim <= 1 for e in items):
        return atoms.Concat(items)
    if any(e.ndim != 2 for e in items):
        raise ModelError(f"dc.hstack joins all-vector or all-matrix pieces, got shapes {[e.shape for e in items]}")
    return vstack([e.T for e in items]).T


def vstack(items: Sequence[Any]) -> Expression:
    """Join vertically: vectors become rows (as in cvxpy and NumPy), matrices stack their rows."""
    items = _items(items, "vstack")
    rows: list[Expression] = []
    for e in items:
        if e.ndim > 2:
            raise ModelError(f"dc.vstack joins scalars, vectors and matrices, got shapes {[e.shape for e in items]}")
        if e.ndim <= 1:
            rows.append(atoms.Concat([e]) if e.ndim == 0 else e)
        else:
            rows.extend(e[i] for i in range(e.shape[0]))
    widths = {r.shape for r in rows}
    if len(widths) != 1:
        raise ModelError(f"dc.vstack needs pieces of one width, got shapes {[e.shape for e in items]}")
    return atoms.Stack(rows)


def diag(x: Any) -> Expression:
    """A vector's diagonal matrix, or a square matrix's diagonal as a vector (cvxpy's ``diag``)."""
    x = as_expression(x)
    if x.ndim == 1:
        n = x.shape[0]
        zero = as_expression(0.0)
        return atoms.Stack([atoms.Stack([x[i] if i == j else zero for j in range(n)]) for i in range(n)])
    if x.ndim == 2 and x.shape[0] == x.shape[1]:
        return atoms.Stack([x[i, i] for i in range(x.shape[0])])
    raise ModelError(f"dc.diag takes a vector or a square matrix, got {x} of shape {x.shape}")


def _items(items: Any, what: str) -> list[Expression]:
    if isinstance(items, Expression) or not isinstance(items, (list, tuple)) or not items:
        raise ModelError(f"dc.{what} takes a non-empty list of expressions, e.g. dc.{what}([a, b])")
    return [as_expression(e) for e in items]
