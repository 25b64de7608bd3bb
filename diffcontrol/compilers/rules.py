"""What the compilers derive from each atom: one row per atom class, :data:`RULES`.

An atom's class states its shape, its facts (degree, curvature, sign, smoothness), how it
evaluates on arrays and how it renders. Its row here holds everything else the compilers
know of it, so that adding an atom is its class, its constructor and this row:

- ``jacobian``: d expr / d var as an expression in the parameters, for an affine atom. The
  LQR lowering evaluates these for the dynamics' F = [df/dx, df/du], once built at compile
  time (a few array ops per call, where autodiff would trace the whole expression), and
  explain() renders the same expressions.
- ``hessian``: the Hessian blocks of a quadratic atom, built from the Jacobians: the LQR
  lowering evaluates them for the costs' C (on only the parameters they use: a moving
  reference leaves C one matrix), and explain() renders them.
- ``cvxpy``: the import path of its translation in :mod:`~diffcontrol.compilers.to_cvxpy`,
  loaded with cvxpy only when the cone backend is chosen (as the backends' records name
  their modules).

Where an atom has no rule, the derivatives come from the framework's autodiff (still exact)
and the cone backend refuses the atom by name. One engine for the rules, the DSL's own
expressions, serves all three: sympy was judged and not used (its expressions are scalar or
fixed-size matrix symbols without a batch axis, its derivatives would still have to be
turned back into torch and JAX code that vmaps, and the frameworks' autodiff is exact where
these rules stop).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from diffcontrol.compilers.analysis import expression_facts
from diffcontrol.dsl import atoms, penalties
from diffcontrol.dsl.expression import Expression
from diffcontrol.dsl.leaves import Constant, Leaf


@dataclass(frozen=True)
class AtomRules:
    """One atom's rules (None: none; see the module docstring)."""

    jacobian: Callable[[Expression, Leaf], Any] | None = None
    hessian: Callable[[Expression, list[Leaf]], dict | None] | None = None
    cvxpy: str | None = None


def rules_of(node: Expression) -> AtomRules:
    """The row of ``node``'s class, or of its nearest base class that has one."""
    for kind in type(node).__mro__:
        if kind in RULES:
            return RULES[kind]
    return _NO_RULES


_NO_RULES = AtomRules()


# ---- Jacobians -------------------------------------------------------------------------------


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
    if expr is var:
        return _Identity(var.shape[0])
    if _free_of(expr, var):
        return None
    rule = rules_of(expr).jacobian
    if rule is None:
        raise _Unsupported
    return rule(expr, var)


def _part(expr: Expression, var: Leaf) -> Expression:
    """d expr / d var materialised (an expression of shape expr.shape + (k,))."""
    return _materialise(_coef(expr, var), expr.shape, var.shape[0])


def _add_jacobian(expr: atoms.Add, var: Leaf) -> Any:
    (a, b), k = expr.args, var.shape[0]
    left, right = _coef(a, var), _coef(b, var)
    if left is None or right is None:
        return _materialise(left if right is None else right, expr.shape, k)
    return _materialise(left, a.shape, k) + _materialise(right, b.shape, k)


def _neg_jacobian(expr: atoms.Neg, var: Leaf) -> Any:
    return -_part(expr.args[0], var)


def _scale_jacobian(expr: atoms.Multiply | atoms.Divide, var: Leaf) -> Any:
    """A constant (in the decision variables) factor times, or divisor of, an affine term."""
    a = expr.args
    factor_first = isinstance(expr, atoms.Multiply) and _free_of(a[0], var)
    factor, inner = (a[0], a[1]) if factor_first else (a[1], a[0])
    if not _free_of(factor, var) or factor.ndim > 1:
        raise _Unsupported
    column = factor if factor.ndim == 0 else factor[:, None]  # scales the rows
    c = _part(inner, var)
    return c * column if isinstance(expr, atoms.Multiply) else c / column


def _matmul_jacobian(expr: atoms.MatMul, var: Leaf) -> Any:
    a = expr.args
    if _free_of(a[0], var) and a[0].ndim == 2:
        c = _coef(a[1], var)
        return a[0] if isinstance(c, _Identity) else a[0] @ _part(a[1], var)
    if _free_of(a[1], var) and a[1].ndim == 2 and a[0].ndim == 1:
        c = _coef(a[0], var)
        return a[1].T if isinstance(c, _Identity) else a[1].T @ _part(a[0], var)
    raise _Unsupported


def _index_jacobian(expr: atoms.Index, var: Leaf) -> Any:
    if expr.args[0].ndim != 1:
        raise _Unsupported
    return _part(expr.args[0], var)[expr.index]


def _stack_jacobian(expr: atoms.Stack, var: Leaf) -> Any:
    if not all(p.ndim == 0 for p in expr.args):
        raise _Unsupported
    return atoms.Stack([_part(p, var) for p in expr.args])


def _concat_jacobian(expr: atoms.Concat, var: Leaf) -> Any:
    return _Rows([_part(p, var) for p in expr.args])


def _sum_jacobian(expr: atoms.Sum, var: Leaf) -> Any:
    if expr.axis is not None or expr.args[0].ndim != 1:
        raise _Unsupported
    return atoms.Sum(_part(expr.args[0], var), axis=0)


# ---- Hessians --------------------------------------------------------------------------------


def hessian_expressions(expr: Expression, variables: list[Leaf]) -> dict[tuple[int, int], Expression] | None:
    """Blocks {(i, j): d^2 expr / d v_i d v_j} of a scalar ``expr`` quadratic in the decision
    leaves ``variables`` (each 1-D), as expressions in the parameters; missing blocks are zero.
    None where a term is outside the rules (sums, negations and constant scalings of
    sum_squares / square / power 2 / quad_form of affine terms, and terms of degree <= 1):
    the lowering then takes the Hessian by autodiff (still exact).

    The same expressions are the solve's data and explain()'s rendering of it, and they show
    which parameters C depends on: sum_squares(x - r_t) has the constant Hessian 2 I however
    the reference moves, so C is made once, not once per stage."""
    facts = expression_facts(expr)
    if expr.shape != () or any(v.ndim != 1 for v in variables):
        return None
    if facts.degree is not None and facts.degree <= 1:
        return {}
    rule = rules_of(expr).hessian
    return None if rule is None else rule(expr, variables)


def _add_hessian(expr: atoms.Add, variables: list[Leaf]) -> dict | None:
    left, right = (hessian_expressions(a, variables) for a in expr.args)
    if left is None or right is None:
        return None
    return {k: left[k] + right[k] if k in left and k in right else left.get(k, right.get(k))
            for k in set(left) | set(right)}


def _neg_hessian(expr: atoms.Neg, variables: list[Leaf]) -> dict | None:
    inner = hessian_expressions(expr.args[0], variables)
    return None if inner is None else {k: -b for k, b in inner.items()}


def _scale_hessian(expr: atoms.Multiply | atoms.Divide, variables: list[Leaf]) -> dict | None:
    """A scalar constant (in the decision variables) times, or dividing, a quadratic term."""
    a = expr.args
    for factor, rest in ((a[1], a[0]),) if isinstance(expr, atoms.Divide) else ((a[0], a[1]), (a[1], a[0])):
        if expression_facts(factor).degree == 0 and factor.shape == ():
            inner = hessian_expressions(rest, variables)
            if inner is None:
                return None
            if isinstance(expr, atoms.Divide):
                return {k: b / factor for k, b in inner.items()}
            return {k: _times(factor, b) for k, b in inner.items()}
    return None


def _square_hessian(expr: Expression, variables: list[Leaf]) -> dict | None:
    """sum_squares(g), square(g) or power(g, 2) of an affine g: 2 J_i^T J_j."""
    if isinstance(expr, atoms.Power) and expr.p != 2.0:
        return None
    return _gram(expr.args[0], variables, None)


def _quad_form_hessian(expr: atoms.QuadForm, variables: list[Leaf]) -> dict | None:
    """quad_form(g, P) of an affine g and a P constant in the decision variables."""
    if expression_facts(expr.args[1]).degree != 0:
        return None
    return _gram(expr.args[0], variables, expr.args[1])


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


# ---- the table -------------------------------------------------------------------------------

_CVX = "diffcontrol.compilers.to_cvxpy:"

#: One row per atom class (a subclass without a row uses its base class's).
RULES: dict[type, AtomRules] = {
    atoms.Add: AtomRules(_add_jacobian, _add_hessian, _CVX + "_add"),
    atoms.Neg: AtomRules(_neg_jacobian, _neg_hessian, _CVX + "_neg"),
    atoms.Multiply: AtomRules(_scale_jacobian, _scale_hessian, _CVX + "_multiply"),
    atoms.Divide: AtomRules(_scale_jacobian, _scale_hessian, _CVX + "_divide"),
    atoms.Power: AtomRules(None, _square_hessian, _CVX + "_power"),
    atoms.MatMul: AtomRules(_matmul_jacobian, None, _CVX + "_matmul"),
    atoms.Index: AtomRules(_index_jacobian, None, _CVX + "_index"),
    atoms.Transpose: AtomRules(None, None, _CVX + "_transpose"),
    atoms.Elementwise: AtomRules(None, None, _CVX + "_elementwise"),
    atoms.Atan2: AtomRules(),  # nonconvex: derivatives by autodiff, no cvxpy counterpart
    atoms.Square: AtomRules(None, _square_hessian, _CVX + "_elementwise"),
    atoms.Sum: AtomRules(_sum_jacobian, None, _CVX + "_sum"),
    atoms.SumSquares: AtomRules(None, _square_hessian, _CVX + "_sum_squares"),
    atoms.Norm2: AtomRules(None, None, _CVX + "_norm2"),
    atoms.QuadForm: AtomRules(None, _quad_form_hessian, _CVX + "_quad_form"),
    atoms.Stack: AtomRules(_stack_jacobian, None, _CVX + "_stack"),
    atoms.Concat: AtomRules(_concat_jacobian, None, _CVX + "_concat"),
    penalties.Pos: AtomRules(cvxpy=_CVX + "_pos"),
    penalties.Softplus: AtomRules(cvxpy=_CVX + "_softplus"),
    penalties.Huber: AtomRules(cvxpy=_CVX + "_huber"),
    penalties.Maximum: AtomRules(cvxpy=_CVX + "_maximum"),
    penalties.Minimum: AtomRules(cvxpy=_CVX + "_minimum"),
    penalties.Max: AtomRules(cvxpy=_CVX + "_reduction"),
    penalties.Min: AtomRules(cvxpy=_CVX + "_reduction"),
    penalties.LogSumExp: AtomRules(cvxpy=_CVX + "_reduction"),
    penalties.Norm1: AtomRules(cvxpy=_CVX + "_reduction"),
    penalties.NormInf: AtomRules(cvxpy=_CVX + "_reduction"),
    penalties.Reshape: AtomRules(cvxpy=_CVX + "_reshape_rule"),
}
