"""Symbolic forms of the LQR data for explain(): F = [A  B], C = blockdiag(2*I, 0.2*I), ...

Hessian blocks of the common quadratic atoms, from the Jacobians of
:mod:`~diffcontrol.compilers.linearize` (the rules the lowering evaluates), and
expressions rendered with their parameter-free parts folded to the values the
solve computes. Anything these rules do not cover renders as the derivative it
stands for (still exact at call time).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffcontrol.compilers.analysis import expression_facts
from diffcontrol.compilers.linearize import jacobian_expression
from diffcontrol.dsl import atoms
from diffcontrol.dsl.expression import Expression
from diffcontrol.dsl.leaves import Constant, Leaf, Parameter
from diffcontrol.dsl.traverse import walk
from diffcontrol.programs.evaluate import evaluate


@dataclass(frozen=True)
class Sym:
    """``scale * text``, where text is a matrix expression ("I", "A", "A @ B")."""

    text: str
    scale: float = 1.0

    def __str__(self) -> str:
        if self.scale == 1.0:
            return self.text
        if self.scale == -1.0:
            return f"-{self.text}"
        return f"{self.scale:g}*{self.text}"

    def times(self, factor: float) -> Sym:
        return Sym(self.text, self.scale * factor)


def _add(a: Sym | None, b: Sym | None) -> Sym | None:
    if a is None or b is None:
        return a if b is None else b
    if a.text == b.text:
        return Sym(a.text, a.scale + b.scale)
    return Sym(f"{a} + {b}".replace("+ -", "- "))


def _const_scale(expr: Expression) -> float | None:
    return float(expr.value) if isinstance(expr, Constant) and expr.value.ndim == 0 else None


def _scale(factor: Expression, s: Sym | None) -> Sym | None:
    if s is None:
        return None
    k = _const_scale(factor)
    if k is not None:
        return s.times(k)
    return Sym(f"{factor}*{s}" if s.scale == 1.0 else f"{s.scale:g}*{factor}*{s.text}")


def hessian_blocks(expr: Expression, variables: list[Leaf]) -> dict[tuple[int, int], Sym] | None:
    """Hessian blocks {(i, j): d^2 expr / d v_i d v_j} of a quadratic expression, or None
    when a term is outside the rules."""
    a = expr.args
    facts = expression_facts(expr)
    if facts.degree is not None and facts.degree <= 1:
        return {}
    if isinstance(expr, atoms.Add):
        left, right = hessian_blocks(a[0], variables), hessian_blocks(a[1], variables)
        if left is None or right is None:
            return None
        return {k: s for k in set(left) | set(right) if (s := _add(left.get(k), right.get(k))) is not None}
    if isinstance(expr, atoms.Neg):
        inner = hessian_blocks(a[0], variables)
        return None if inner is None else {k: s.times(-1.0) for k, s in inner.items()}
    if isinstance(expr, atoms.Multiply) and expr.shape == ():
        for factor, rest in ((a[0], a[1]), (a[1], a[0])):
            if expression_facts(factor).degree == 0 and factor.shape == ():
                inner = hessian_blocks(rest, variables)
                return None if inner is None else {k: _scale(factor, s) for k, s in inner.items()}
    if isinstance(expr, (atoms.SumSquares, atoms.Square)) or (
            isinstance(expr, atoms.Power) and expr.p == 2.0):
        if isinstance(expr, atoms.SumSquares) or expr.shape == ():
            return _gram(a[0], variables, None)
    if isinstance(expr, atoms.QuadForm) and expression_facts(a[1]).degree == 0:
        return _gram(a[0], variables, a[1])
    return None


def _gram(inner: Expression, variables: list[Leaf], P: Expression | None) -> dict | None:
    """Blocks 2 J_i^T J_j (sum of squares) or J_i^T (P + P^T) J_j (quad_form) of an affine
    ``inner``, J_i its Jacobians by the rules the lowering itself uses
    (:func:`~diffcontrol.compilers.linearize.jacobian_expression`)."""
    if (expression_facts(inner).degree or 0) > 1:
        return None
    if P is None:
        core, factor = None, 2.0
    elif isinstance(P, Constant) and np.allclose(P.value, P.value.T):
        core, factor = str(P), 2.0
    else:
        core, factor = f"({P} + {P}.T)", 1.0
    J = []
    for v in variables:
        if id(v) not in expression_facts(inner).uses:
            J.append(None)
            continue
        expr = jacobian_expression(inner, v)
        if expr is None:
            return None
        J.append(_as_sym(expr))
    out = {}
    for i, Ji in enumerate(J):
        for j, Jj in enumerate(J):
            if Ji is None or Jj is None:
                continue
            parts = ([] if Ji.text == "I" else [f"({Ji.text}).T"]) + ([core] if core else []) \
                + ([] if Jj.text == "I" else [Jj.text])
            out[(i, j)] = Sym(" @ ".join(parts) or "I", factor * Ji.scale * Jj.scale)
    return out


def _as_sym(J: Expression) -> Sym | None:
    """A Jacobian expression as ``scale * text``: k*I as Sym("I", k), else its folded rendering."""
    if isinstance(J, Constant) and J.value.ndim == 2 and J.value.shape[0] == J.value.shape[1]:
        k = float(J.value[0, 0])
        if np.array_equal(J.value, k * np.eye(J.value.shape[0])):
            return Sym("I", k)
    return Sym(render_folded(J))


def render_block_matrix(blocks: dict[tuple[int, int], Sym], k: int) -> str:
    """blockdiag(...) when off-diagonal blocks vanish, else [[..., ...], [..., ...]]."""
    if all(i == j for i, j in blocks):
        return f"blockdiag({', '.join(str(blocks.get((i, i), '0')) for i in range(k))})"
    rows = ["[" + ", ".join(str(blocks.get((i, j), "0")) for j in range(k)) + "]" for i in range(k)]
    return "[" + ", ".join(rows) + "]"


class _NumPy:
    """The evaluator's framework on NumPy, for the parameter-free parts of an expression."""

    name = "numpy"
    xp = np
    caches_arrays = False

    @staticmethod
    def constant(value, like):
        return np.asarray(value, dtype=float)


def render_constant(value: np.ndarray) -> str:
    """A matrix as explain() shows it: 0, I or k*I where it is one, else its entries."""
    value = np.asarray(value, dtype=float)
    if not value.any():
        return "0"
    if value.ndim == 2 and value.shape[0] == value.shape[1]:
        k = value[0, 0]
        if np.array_equal(value, k * np.eye(value.shape[0])):
            return str(Sym("I", float(k)))
    text = np.array2string(value, separator=", ", formatter={"float_kind": lambda v: f"{v:g}"})
    return " ".join(text.split())


def render_folded(expr: Expression) -> str:
    """``expr`` as text, each parameter-free sub-expression shown by its value (as the solve
    evaluates it): the rendering of an expression the solve itself evaluates, such as the
    dynamics' Jacobians of :func:`~diffcontrol.compilers.linearize.jacobian_expression`."""
    text: dict[int, str] = {}
    free: dict[int, bool] = {}
    for node in walk([expr]):
        free[id(node)] = not isinstance(node, Parameter) and all(free[id(a)] for a in node.args)
        if free[id(node)] and not (isinstance(node, Leaf) and not isinstance(node, Constant)):
            text[id(node)] = render_constant(evaluate([node], {}, _NumPy, None)[0])
        elif isinstance(node, Leaf):
            text[id(node)] = str(node)
        else:
            text[id(node)] = node.render([text[id(a)] for a in node.args])
    return text[id(expr)]
