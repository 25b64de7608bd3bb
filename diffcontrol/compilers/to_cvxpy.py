"""DSL expressions as cvxpy expressions that follow the DPP rules: the cone lowering's core.

Decision leaves map to cvxpy Variables. Every maximal sub-expression that uses
parameters (or a dc.Function) but no decision leaf becomes one cvxpy Parameter
whose value the layer's framework computes at call time (a
:class:`DerivedParameter`). cvxpy then only ever sees a parameter times a
parameter-free expression (DPP), and the framework's own autodiff carries
gradients from those values back to the dc.Parameters and dc.Function weights.
Sub-expressions free of parameters and decisions become NumPy constants.

Time-varying values (a control problem's stage expressions) are translated once
for the whole horizon: a value of DSL shape ``s`` is a cvxpy expression of shape
``s + (T,)``, time last, so that a time-invariant value of shape ``s`` broadcasts
against it once it gets a trailing unit axis.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import Any

import cvxpy as cp
import numpy as np

from diffcontrol.compilers.analysis import NodeFacts, expression_facts
from diffcontrol.compilers.rules import rules_of
from diffcontrol.dsl import atoms, penalties
from diffcontrol.dsl.expression import NONNEG, NONPOS, Expression
from diffcontrol.dsl.function import FunctionCall
from diffcontrol.dsl.leaves import Leaf, Parameter
from diffcontrol.dsl.traverse import nodes_of_type
from diffcontrol.errors import ModelError
from diffcontrol.programs.cone import TRANSFORMS, DerivedParameter
from diffcontrol.programs.evaluate import evaluate


@dataclass(frozen=True)
class Value:
    """A translated expression: a cvxpy expression (or NumPy array) and whether it carries
    the trailing time axis."""

    expr: Any
    timed: bool


class _NumpyFramework:
    """Just enough of :class:`~diffcontrol.programs.evaluate.Framework` to fold constants."""

    xp = np

    @staticmethod
    def constant(value: Any, like: Any) -> np.ndarray:
        return np.asarray(value, dtype=float)


class Translator:
    """Translates expressions whose decision leaves are given in ``leaves`` (id -> Value).

    ``derived`` is shared between translators of one problem (a stage and a terminal
    translator), so one DSL sub-expression becomes one cvxpy Parameter.
    """

    def __init__(self, leaves: dict[int, Value], derived: dict[tuple, DerivedParameter], horizon: int = 1,
                 stage: int | None = None):
        self.leaves = leaves
        self.derived = derived
        self.T = horizon
        self.stage = stage  # the stage t of a per-stage translator: time-varying parameters read row t
        self._facts: dict[int, NodeFacts] = {}
        self._memo: dict[int, Value] = {}

    # ---- entry point ----------------------------------------------------------------------
    def __call__(self, expr: Expression) -> Value:
        key = id(expr)
        if key not in self._memo:
            self._memo[key] = self._translate(expr)
        return self._memo[key]

    def _translate(self, node: Expression) -> Value:
        if not expression_facts(node, self._facts).uses:
            return self._data(node)
        if isinstance(node, Leaf):
            return self.leaves[id(node)]
        if isinstance(node, FunctionCall):
            raise ModelError(f"{node} applies the opaque dc.Function {node.function.name} to decision "
                             "variables; cvxpy cannot certify its convexity (the 'cone' backend needs DCP atoms)")
        rule = _translation(node)
        if rule is None:
            raise ModelError(f"{node} has no convex (DCP) counterpart in cvxpy; the 'cone' backend takes "
                             "affine, quadratic, norm and other DCP atoms of the decision variables")
        return rule(self, node)

    # ---- data: constants and derived parameters ---------------------------------------------
    def _data(self, node: Expression, transform: str = "value") -> Value:
        """A parameter-free, decision-free node as a NumPy constant; otherwise a derived
        cvxpy Parameter (``transform`` of the node's value)."""
        if not _uses_parameters(node):
            value = np.asarray(evaluate([node], {}, _NumpyFramework, None)[0], dtype=float)
            return Value(TRANSFORMS[transform](np, value) if transform != "value" else value, False)
        per_stage = any(q.time_varying for q in nodes_of_type([node], Parameter))
        if per_stage and self.stage is None:
            raise ModelError(f"{node} uses a time-varying parameter where no stage is known (an internal "
                             "lowering error: please report it)")
        stage = self.stage if per_stage else None
        key = (id(node), transform) if stage is None else (id(node), transform, stage)
        if key not in self.derived:
            # 1/v keeps v's sign; cvxpy needs signs to certify e.g. p * square(x) convex
            sign = expression_facts(node, self._facts).sign if transform != "psd_factor" else None
            name = node.name if isinstance(node, Parameter) and transform == "value" else f"p{len(self.derived)}"
            name = name if stage is None else f"{name}_{stage}"
            param = cp.Parameter(node.shape, name=name, nonneg=sign == NONNEG, nonpos=sign == NONPOS)
            self.derived[key] = DerivedParameter(param, node, transform, stage)
        return Value(self.derived[key].parameter, False)

    # ---- shape helpers ------------------------------------------------------------------------
    def combine(self, op: Any, a: Value, b: Value) -> Value:
        """``op`` of two values broadcast against each other: when one is timed, a
        time-invariant value of rank >= 1 gets a trailing unit axis to meet the time axis."""
        timed = a.timed or b.timed

        def aligned(v: Value) -> Any:
            if not timed or v.timed or _rank(v) == 0:
                return v.expr
            return _reshape(v.expr, _shape(v) + (1,))

        return Value(op(aligned(a), aligned(b)), timed)

    def rows(self, v: Value, node: Expression) -> Any:
        """A timed value as (size, T): its DSL entries by rows, time by columns."""
        size = int(np.prod(node.shape, dtype=int))
        return v.expr if len(node.shape) == 1 else _reshape(v.expr, (size, self.T))

    def over_time(self, v: Value, shape: tuple[int, ...]) -> Any:
        """A time-invariant value repeated over the horizon: DSL shape ``shape`` + (T,)."""
        if v.timed:
            return v.expr
        if not shape:
            return v.expr * np.ones(self.T)
        return _reshape(v.expr, shape + (1,)) @ np.ones((1, self.T))


def _uses_parameters(node: Expression) -> bool:
    """Whether a decision-free node's value depends on the call (a parameter or a
    dc.Function's weights), so it must be a derived parameter rather than a constant."""
    return bool(nodes_of_type([node], Parameter) or nodes_of_type([node], FunctionCall))


def _rank(v: Value) -> int:
    return len(_shape(v)) - (1 if v.timed else 0)


def _shape(v: Value) -> tuple[int, ...]:
    return tuple(np.shape(v.expr)) if isinstance(v.expr, np.ndarray) else tuple(v.expr.shape)


def _reshape(e: Any, shape: tuple[int, ...]) -> Any:
    if isinstance(e, np.ndarray):
        return e.reshape(shape)
    return cp.reshape(e, shape, order="C")


def _not_vectorizable(node: Expression) -> ModelError:
    return ModelError(f"{node} combines matrix-valued stage expressions in a way the 'cone' lowering "
                      "cannot write for all stages at once; write it with vectors")


# ---- rules, one per atom: (translator, node) -> Value -----------------------------------------


def _binary(op):
    def rule(tr: Translator, node: Expression) -> Value:
        return tr.combine(op, *(tr(arg) for arg in node.args))

    return rule


def _divide(tr: Translator, node: atoms.Divide) -> Value:
    num, den = node.args
    if expression_facts(den, tr._facts).uses:
        raise ModelError(f"{node} divides by an expression of the decision variables; that is not DCP")
    return tr.combine(cp.multiply, tr(num), tr._data(den, "reciprocal"))


def _matmul(tr: Translator, node: atoms.MatMul) -> Value:
    (a, b), (ea, eb) = (tr(arg) for arg in node.args), node.args
    if not a.timed and not b.timed:
        return Value(a.expr @ b.expr, False)
    if b.timed and not a.timed and eb.ndim == 1:      # A @ x_t for all t: A @ X
        return Value(a.expr @ b.expr, True)
    if a.timed and not b.timed and ea.ndim == 1:      # x_t @ M = M^T x_t
        return Value((b.expr.T if eb.ndim == 2 else b.expr) @ a.expr, True)
    if a.timed and b.timed and ea.ndim == eb.ndim == 1:
        return Value(cp.sum(cp.multiply(a.expr, b.expr), axis=0), True)
    raise _not_vectorizable(node)


def _index(tr: Translator, node: atoms.Index) -> Value:
    a = tr(node.args[0])
    if not a.timed:
        return Value(a.expr[node.index], False)
    index = node.index if isinstance(node.index, tuple) else (node.index,)
    return Value(a.expr[index + (slice(None),)], True)


def _transpose(tr: Translator, node: atoms.Transpose) -> Value:
    a = tr(node.args[0])
    if node.ndim < 2:
        return a
    if a.timed:
        raise _not_vectorizable(node)
    return Value(a.expr.T, False)


_ELEMENTWISE = {"square": cp.square, "abs": cp.abs, "sqrt": cp.sqrt, "exp": cp.exp, "log": cp.log}


def _elementwise(tr: Translator, node: atoms.Elementwise) -> Value:
    fn = _ELEMENTWISE.get(node.fn)
    if fn is None:
        raise ModelError(f"{node}: {node.fn} of the decision variables is neither convex nor concave; "
                         "the 'cone' backend needs DCP atoms (use 'ilqr' or 'ift_cg' for smooth nonconvex "
                         "problems)")
    a = tr(node.args[0])
    return Value(fn(a.expr), a.timed)


def _power(tr: Translator, node: atoms.Power) -> Value:
    a = tr(node.args[0])
    return Value(cp.power(a.expr, node.p), a.timed)


def _sum(tr: Translator, node: atoms.Sum) -> Value:
    (arg,) = node.args
    a = tr(arg)
    if node.axis is not None:
        return Value(cp.sum(a.expr, axis=node.axis % arg.ndim), a.timed)
    if not a.timed:
        return Value(cp.sum(a.expr), False)
    return Value(a.expr if arg.ndim == 0 else cp.sum(tr.rows(a, arg), axis=0), True)


def _sum_squares(tr: Translator, node: atoms.SumSquares) -> Value:
    (arg,) = node.args
    a = tr(arg)
    if not a.timed:
        return Value(cp.sum_squares(a.expr), False)
    return Value(cp.square(a.expr) if arg.ndim == 0 else cp.sum(cp.square(tr.rows(a, arg)), axis=0), True)


def _norm2(tr: Translator, node: atoms.Norm2) -> Value:
    (arg,) = node.args
    a = tr(arg)
    if not a.timed:
        return Value(cp.norm(cp.vec(a.expr, order="C") if arg.ndim > 1 else a.expr, 2), False)
    return Value(cp.abs(a.expr) if arg.ndim == 0 else cp.norm(tr.rows(a, arg), 2, axis=0), True)


def _quad_form(tr: Translator, node: atoms.QuadForm) -> Value:
    """x^T P x as ||L x||^2 with L^T L = P: L from the eigen-decomposition of a constant P
    (which must be PSD), or a Cholesky factor computed per call for a parameter P."""
    x_expr, P_expr = node.args
    if expression_facts(P_expr, tr._facts).uses:
        raise ModelError(f"{node}: the matrix of quad_form must not depend on the decision variables")
    x = tr(x_expr)
    if not _uses_parameters(P_expr):
        P = tr._data(P_expr).expr
        w, V = np.linalg.eigh(0.5 * (P + P.T))
        if w.min() < -1e-10 * max(1.0, np.abs(w).max()):
            raise ModelError(f"{node} is not convex: the matrix has a negative eigenvalue {w.min():.3g}")
        L = np.sqrt(np.clip(w, 0, None))[:, None] * V.T
    else:
        L = tr._data(P_expr, "psd_factor").expr
    Lx = L @ x.expr
    if not x.timed:
        return Value(cp.sum_squares(Lx), False)
    return Value(cp.sum(cp.square(Lx), axis=0), True)


def _stack(tr: Translator, node: atoms.Stack) -> Value:
    parts = [tr(a) for a in node.args]
    if not any(p.timed for p in parts):
        return Value(cp.hstack([_reshape(p.expr, (1,)) for p in parts]), False)
    return Value(cp.vstack([tr.over_time(p, ()) for p in parts]), True)


def _concat(tr: Translator, node: atoms.Concat) -> Value:
    parts = [tr(a) for a in node.args]
    if not any(p.timed for p in parts):
        return Value(cp.hstack([_reshape(p.expr, (1,)) if a.ndim == 0 else p.expr
                                for p, a in zip(parts, node.args)]), False)
    rows = []
    for p, a in zip(parts, node.args):
        block = tr.over_time(p, a.shape)
        rows.append(_reshape(block, (1, tr.T)) if a.ndim == 0 else block)
    return Value(cp.vstack(rows), True)


def _elementwise_atom(fn):
    def rule(tr: Translator, node: Expression) -> Value:
        a = tr(node.args[0])
        return Value(fn(a.expr, node), a.timed)

    return rule


def _extremum(fn):
    def rule(tr: Translator, node: Expression) -> Value:
        out = tr(node.args[0])
        for arg in node.args[1:]:
            out = tr.combine(fn, out, tr(arg))
        return out

    return rule


#: cvxpy's reduction for each of ours: (expression, axis or None) -> expression
_REDUCE = {
    penalties.Max: lambda e, axis: cp.max(e, axis=axis),
    penalties.Min: lambda e, axis: cp.min(e, axis=axis),
    penalties.LogSumExp: lambda e, axis: cp.log_sum_exp(e, axis=axis),
    penalties.Norm1: lambda e, axis: cp.norm1(e) if axis is None else cp.sum(cp.abs(e), axis=axis),
    penalties.NormInf: lambda e, axis: cp.norm_inf(e) if axis is None else cp.max(cp.abs(e), axis=axis),
}


def _reduction(tr: Translator, node: penalties.Reduction) -> Value:
    """A reduction over the DSL axes only: with time last, all entries of a stage are the
    rows of its (size, T) block, and an axis keeps its index."""
    (arg,) = node.args
    a, reduce = tr(arg), _REDUCE[type(node)]
    if arg.ndim == 0:
        return Value(cp.abs(a.expr) if isinstance(node, penalties.Norm1) else a.expr, a.timed)
    if node.axis is not None:
        return Value(reduce(a.expr, node.axis % arg.ndim), a.timed)
    if not a.timed:
        return Value(reduce(cp.vec(a.expr, order="C") if arg.ndim > 1 else a.expr, None), False)
    return Value(reduce(tr.rows(a, arg), 0), True)


def _reshape_rule(tr: Translator, node: penalties.Reshape) -> Value:
    (arg,) = node.args
    a = tr(arg)
    if not a.timed:
        return Value(_reshape_order(a.expr, node.shape, node.order), False)
    if node.order == "C" or (arg.ndim <= 1 and node.ndim <= 1):
        return Value(_reshape_order(a.expr, node.shape + (tr.T,), "C"), True)  # time stays last
    raise _not_vectorizable(node)


def _reshape_order(e: Any, shape: tuple[int, ...], order: str) -> Any:
    if isinstance(e, np.ndarray):
        return e.reshape(shape, order=order)
    return cp.reshape(e, shape, order=order)


# the rules that the table of :mod:`~diffcontrol.compilers.rules` names and the factories above make
_add = _binary(lambda a, b: a + b)
_multiply = _binary(cp.multiply)
_pos = _elementwise_atom(lambda e, node: cp.pos(e))
_softplus = _elementwise_atom(lambda e, node: cp.logistic(e))
_huber = _elementwise_atom(lambda e, node: cp.huber(e, node.M))
_maximum = _extremum(cp.maximum)
_minimum = _extremum(cp.minimum)


def _neg(tr: Translator, node: atoms.Neg) -> Value:
    inner = tr(node.args[0])
    return Value(-inner.expr, inner.timed)


_LOADED: dict[str, Callable] = {}


def _translation(node: Expression) -> Callable | None:
    """The cvxpy translation the atom's row in :data:`~diffcontrol.compilers.rules.RULES` names."""
    path = rules_of(node).cvxpy
    if path is None:
        return None
    if path not in _LOADED:
        module, name = path.split(":")
        _LOADED[path] = getattr(import_module(module), name)
    return _LOADED[path]
