"""Jacobians of affine expressions as expressions: d(A @ x + B @ u)/dx is ``A``.

A lowering pass: for dynamics affine in (x, u) it builds, once at compile time,
expressions in the parameters for F = [df/dx, df/du]. Evaluating them is a
few array ops, where autodiff would trace and transpose the whole expression
on every call. Constructs outside these rules return None, and the lowering
falls back to the framework's autodiff (still exact).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from diffcontrol.compilers.analysis import expression_facts
from diffcontrol.dsl import atoms
from diffcontrol.dsl.expression import Expression
from diffcontrol.dsl.leaves import Constant, Leaf


class _Unsupported(Exception):
    """A construct the rules do not cover."""


class _Identity:
    """d var / d var, kept symbolic so that ``M @ I`` simplifies to ``M``."""

    def __init__(self, k: int):
        self.k = k


class _Rows(Expression):
    """Matrices (and (k,) rows) stacked along the first axis: the Jacobian of a concat."""

    def __init__(self, parts: list[Expression]):
        self.args = tuple(parts)
        k = parts[0].shape[-1]
        self.shape = (sum(p.shape[0] if p.ndim == 2 else 1 for p in parts), k)

    def evaluate(self, xp, values):  # batched values (b, k) or (b, p, k), as every atom's
        rows = [v.reshape(v.shape[0], 1, -1) if a.ndim == 1 else v for a, v in zip(self.args, values)]
        return xp.concatenate(atoms.broadcast_batch(xp, rows), 1)

    def render(self, s):
        return f"rows([{', '.join(s)}])"


def jacobian_expression(expr: Expression, var: Leaf) -> Expression | None:
    """d expr / d var as an expression of shape expr.shape + var.shape (expr affine in the
    decision variables, at most 1-D), or None where the rules do not apply."""
    if expr.ndim > 1 or var.ndim != 1:
        return None
    try:
        return _materialise(_coef(expr, var), expr.shape, var.shape[0])
    except _Unsupported:
        return None


def _materialise(c: Any, shape: tuple[int, ...], k: int) -> Expression:
    if c is None:
        return Constant(np.zeros(shape + (k,)))
    if isinstance(c, _Identity):
        return Constant(np.eye(k))
    if c.shape != shape + (k,):  # e.g. a scalar's row added to a vector's rows
        return c + Constant(np.zeros(shape + (k,)))
    return c


def _free_of(expr: Expression, var: Leaf) -> bool:
    return id(var) not in expression_facts(expr).uses


def _coef(expr: Expression, var: Leaf) -> Any:
    """None (zero), an _Identity, or an expression of shape expr.shape + (k,)."""
    k = var.shape[0]
    if expr is var:
        return _Identity(k)
    if _free_of(expr, var):
        return None
    a = expr.args
    if isinstance(expr, atoms.Add):
        left, right = _coef(a[0], var), _coef(a[1], var)
        if left is None or right is None:
            return _materialise(left if right is None else right, expr.shape, k)
        return _materialise(left, a[0].shape, k) + _materialise(right, a[1].shape, k)
    if isinstance(expr, atoms.Neg):
        return -_materialise(_coef(a[0], var), a[0].shape, k)
    if isinstance(expr, (atoms.Multiply, atoms.Divide)):
        factor_first = isinstance(expr, atoms.Multiply) and _free_of(a[0], var)
        factor, inner = (a[0], a[1]) if factor_first else (a[1], a[0])
        if not _free_of(factor, var) or factor.ndim > 1:
            raise _Unsupported
        column = factor if factor.ndim == 0 else factor[:, None]  # scales the rows
        c = _materialise(_coef(inner, var), inner.shape, k)
        return c * column if isinstance(expr, atoms.Multiply) else c / column
    if isinstance(expr, atoms.MatMul):
        if _free_of(a[0], var) and a[0].ndim == 2:
            c = _coef(a[1], var)
            return a[0] if isinstance(c, _Identity) else a[0] @ _materialise(c, a[1].shape, k)
        if _free_of(a[1], var) and a[1].ndim == 2 and a[0].ndim == 1:
            c = _coef(a[0], var)
            return a[1].T if isinstance(c, _Identity) else a[1].T @ _materialise(c, a[0].shape, k)
        raise _Unsupported
    if isinstance(expr, atoms.Index) and a[0].ndim == 1:
        return _materialise(_coef(a[0], var), a[0].shape, k)[expr.index]
    if isinstance(expr, atoms.Stack) and all(p.ndim == 0 for p in a):
        return atoms.Stack([_materialise(_coef(p, var), (), k) for p in a])
    if isinstance(expr, atoms.Concat):
        return _Rows([_materialise(_coef(p, var), p.shape, k) for p in a])
    if isinstance(expr, atoms.Sum) and expr.axis is None and a[0].ndim == 1:
        return atoms.Sum(_materialise(_coef(a[0], var), a[0].shape, k), axis=0)
    raise _Unsupported


def hessian_expressions(expr: Expression, variables: list[Leaf]) -> dict[tuple[int, int], Expression] | None:
    """Blocks {(i, j): d^2 expr / d v_i d v_j} of a scalar ``expr`` quadratic in the decision
    leaves ``variables`` (each 1-D), as expressions in the parameters; missing blocks are zero.
    None where a term is outside the rules (sums, negations and constant scalings of
    sum_squares / square / power 2 / quad_form of affine terms, and terms of degree <= 1):
    the lowering then takes the Hessian by autodiff (still exact).

    The same expressions are the solve's data and explain()'s rendering of it, and they show
    which parameters C depends on: sum_squares(x - r_t) has the constant Hessian 2 I however
    the reference moves, so C is made once, not once per stage."""
    a = expr.args
    facts = expression_facts(expr)
    if expr.shape != () or any(v.ndim != 1 for v in variables):
        return None
    if facts.degree is not None and facts.degree <= 1:
        return {}
    if isinstance(expr, atoms.Add):
        left, right = hessian_expressions(a[0], variables), hessian_expressions(a[1], variables)
        if left is None or right is None:
            return None
        return {k: left[k] + right[k] if k in left and k in right else left.get(k, right.get(k))
                for k in set(left) | set(right)}
    if isinstance(expr, atoms.Neg):
        inner = hessian_expressions(a[0], variables)
        return None if inner is None else {k: -b for k, b in inner.items()}
    if isinstance(expr, (atoms.Multiply, atoms.Divide)):
        for factor, rest in ((a[1], a[0]),) if isinstance(expr, atoms.Divide) else ((a[0], a[1]), (a[1], a[0])):
            if expression_facts(factor).degree == 0 and factor.shape == ():
                inner = hessian_expressions(rest, variables)
                if inner is None:
                    return None
                if isinstance(expr, atoms.Divide):
                    return {k: b / factor for k, b in inner.items()}
                return {k: _times(factor, b) for k, b in inner.items()}
        return None
    if isinstance(expr, atoms.SumSquares) or (isinstance(expr, atoms.Square)) or (
            isinstance(expr, atoms.Power) and expr.p == 2.0):
        return _gram(a[0], variables, None)
    if isinstance(expr, atoms.QuadForm) and expression_facts(a[1]).degree == 0:
        return _gram(a[0], variables, a[1])
    return None


def _gram(inner: Expression, variables: list[Leaf], P: Expression | None) -> dict | None:
    """2 J_i^T J_j (sum of squares; P None) or J_i^T (P + P^T) J_j (quad_form) of an affine
    ``inner`` (at most 1-D), J_i its Jacobians; identities are left out of the products."""
    if (expression_facts(inner).degree or 0) > 1 or inner.ndim > 1:
        return None
    J = {}
    for i, v in enumerate(variables):
        if _free_of(inner, v):
            continue
        Ji = jacobian_expression(inner, v)
        if Ji is None:
            return None
        J[i] = _Rows([Ji]) if inner.ndim == 0 else Ji  # a scalar's (k,) row as a (1, k) matrix
    core = None if P is None else P + P.T
    out = {}
    for i, Ji in J.items():
        for j, Jj in J.items():
            block = _matmul(_matmul(_transpose(Ji), core), Jj)
            out[(i, j)] = _times(Constant(np.array(2.0)), block) if P is None else block
    return out


def _is_identity(e: Any) -> bool:
    return isinstance(e, Constant) and e.value.ndim == 2 and np.array_equal(e.value, np.eye(e.value.shape[0]))


def _transpose(e: Expression) -> Expression:
    return e if _is_identity(e) else e.T


def _matmul(a: Expression | None, b: Expression | None) -> Expression | None:
    """a @ b, with None and identities left out."""
    if a is None or _is_identity(a):
        return b
    if b is None or _is_identity(b):
        return a
    return a @ b


def _times(k: Expression, e: Expression) -> Expression:
    """k * e for a scalar k, folded where both are constants (2 * I renders as 2*I)."""
    if isinstance(k, Constant) and isinstance(e, Constant):
        return Constant(k.value * e.value)
    return k * e
