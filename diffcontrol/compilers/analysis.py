"""Analysis: compose the atoms' local facts into a :class:`ProblemForm`, each fact with its reason.

This is the one place where "the dynamics are affine" or "the stage cost is
quadratic" is decided; atoms only state how their own facts follow from their
arguments'.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from diffcontrol.dsl.atoms import Index, QuadForm
from diffcontrol.dsl.constraints import Constraint, Equality, Inequality
from diffcontrol.dsl.expression import AFFINE, CONCAVE, CONSTANT, CONVEX, NONNEG, Expression
from diffcontrol.dsl.function import FunctionCall
from diffcontrol.dsl.leaves import Control, Leaf, Parameter
from diffcontrol.dsl.problems import ControlProblem, Problem
from diffcontrol.dsl.traverse import nodes_of_type, walk
from diffcontrol.errors import ModelError
from diffcontrol.facts import ConstraintKind, ConstraintKinds, Form, Kind


@dataclass(frozen=True)
class NodeFacts:
    """Facts of one expression: polynomial degree in the decision leaves (None: not
    polynomial), DCP curvature and sign, smoothness, and which decision leaves it uses."""

    degree: int | None
    curvature: str
    sign: str
    smooth: bool
    opaque: bool
    uses: frozenset[int]


def expression_facts(expr: Expression, memo: dict[int, NodeFacts] | None = None) -> NodeFacts:
    """Compose the local facts bottom-up (memoised by node identity)."""
    memo = {} if memo is None else memo
    for node in walk([expr]):
        if id(node) in memo:
            continue
        args = [memo[id(a)] for a in node.args]
        if isinstance(node, Leaf):
            decision = node.is_decision
            facts = NodeFacts(1 if decision else 0, node.curvature([], []), node.sign([]), True, False,
                              frozenset([id(node)]) if decision else frozenset())
        else:
            facts = NodeFacts(
                degree=None if isinstance(node, FunctionCall) and any(a.degree != 0 for a in args)
                else node.degree([a.degree for a in args]),
                curvature=node.curvature([a.curvature for a in args], [a.sign for a in args]),
                sign=node.sign([a.sign for a in args]),
                smooth=node.smooth and all(a.smooth for a in args),
                opaque=isinstance(node, FunctionCall) or any(a.opaque for a in args),
                uses=frozenset().union(*(a.uses for a in args)),
            )
        memo[id(node)] = facts
    return memo[id(expr)]


def nonsmooth_note(expr: Expression) -> str:
    """Why ``expr`` is not smooth and what to write instead ("" when it is smooth)."""
    memo: dict[int, NodeFacts] = {}
    expression_facts(expr, memo)
    for node in walk([expr]):
        if not node.smooth and all(memo[id(a)].smooth for a in node.args):
            alternative = node.smooth_alternative or "a smooth expression"
            return f"{node} is not smooth (smooth backends need second derivatives): use {alternative}"
    return ""


def first_term_beyond_degree(expr: Expression, max_degree: int) -> Expression | None:
    """The innermost sub-expression whose degree exceeds ``max_degree`` (None if none does):
    the term to name in an error message."""
    memo: dict[int, NodeFacts] = {}
    expression_facts(expr, memo)
    for node in walk([expr]):
        d = memo[id(node)].degree
        if d is None or d > max_degree:
            return node
    return None


@dataclass(frozen=True)
class Fact:
    """One detected property: its ``value`` (a :class:`~diffcontrol.facts.Form`, or for the
    constraints their :class:`~diffcontrol.facts.ConstraintKinds`), the ``reason`` behind it,
    and the expression or constraint that decided it, where one did (``culprit``)."""

    value: Form | ConstraintKinds
    reason: str
    culprit: object = None


@dataclass(frozen=True)
class BoxBound:
    """``u[index] >= bound`` (``lower``) or ``u[index] <= bound``, from one constraint."""

    lower: bool
    index: object  # slice(None) for the whole control, else an Index's index
    bound: Expression
    source: Constraint


@dataclass(frozen=True)
class ProblemForm:
    """The structure of a problem, as the backends' capabilities are written against it."""

    kind: Kind
    facts: dict[str, Fact]
    box_bounds: tuple[BoxBound, ...] = ()
    other_constraints: tuple[tuple[str, Constraint], ...] = field(default=())

    def value(self, name: str) -> Form | ConstraintKinds | None:
        fact = self.facts.get(name)
        return None if fact is None else fact.value


# ---- control problems ---------------------------------------------------------------


def analyse(problem: ControlProblem | Problem) -> ProblemForm:
    if isinstance(problem, ControlProblem):
        return _analyse_control(problem)
    return _analyse_generic(problem)


def _analyse_control(p: ControlProblem) -> ProblemForm:
    facts = {
        "time structure": _time_fact(p),
        "dynamics": _dynamics_fact(p.transition),
        "stage cost": _cost_fact(p.cost, "stage cost"),
        "terminal cost": Fact(Form.NONE, "no terminal_cost given")
        if p.terminal_cost is None else _cost_fact(p.terminal_cost, "terminal cost"),
    }
    boxes, others = [], []
    for c in p.constraints:
        kind, box = _classify_constraint(c, p)
        if box is not None:
            boxes.append(box)
        else:
            others.append((kind, c))
    kinds = ConstraintKinds(([ConstraintKind.BOX] if boxes else []) + [k for k, _ in others])
    if not p.constraints:
        facts["constraints"] = Fact(kinds, "no constraints")
    else:
        parts = []
        if boxes:
            parts.append("box on controls: " + ", ".join(str(b.source) for b in boxes))
        parts += [f"{kind}: {c}" + (f" ({nonsmooth_note(c.lhs - c.rhs)})" if kind is ConstraintKind.NONSMOOTH else "")
                  for kind, c in others]
        facts["constraints"] = Fact(kinds, "; ".join(parts), others[0][1] if others else None)
    facts["terminal constraints"] = _terminal_constraints_fact(p)
    terms = [("cost", p.cost)] + ([("terminal cost", p.terminal_cost)] if p.terminal_cost is not None else [])
    facts["convexity"] = _convexity(terms, p.constraints + p.terminal_constraints, dynamics=p.transition)
    return ProblemForm(Kind.CONTROL, facts, tuple(boxes), tuple(others))


def _terminal_constraints_fact(p: ControlProblem) -> Fact:
    """The kinds of the terminal constraints: affine equalities (the lqr backend meets them
    exactly), inequalities, nonlinear equalities."""
    if not p.terminal_constraints:
        return Fact(ConstraintKinds(), "no terminal_constraints given")
    kinds, parts, culprit = [], [], None
    for c in p.terminal_constraints:
        degree = _max_known_degree([c.lhs, c.rhs])
        if not (expression_facts(c.lhs).smooth and expression_facts(c.rhs).smooth):
            kind = ConstraintKind.NONSMOOTH
        elif isinstance(c, Inequality):
            kind = ConstraintKind.TERMINAL_INEQUALITY
        elif degree is not None and degree <= 1:
            kind = ConstraintKind.TERMINAL_EQUALITY
        else:
            kind = ConstraintKind.TERMINAL_NONLINEAR
        if kind is not ConstraintKind.TERMINAL_EQUALITY and culprit is None:
            culprit = c
        kinds.append(kind)
        note = f"; {nonsmooth_note(c.lhs - c.rhs)}" if kind is ConstraintKind.NONSMOOTH else ""
        parts.append(f"{c} at x_T ({kind}{note})")
    return Fact(ConstraintKinds(kinds), "; ".join(parts), culprit)


def _max_known_degree(exprs: list[Expression]) -> int | None:
    degrees = [expression_facts(e).degree for e in exprs]
    return None if any(d is None for d in degrees) else max(degrees)


def _time_fact(p: ControlProblem) -> Fact:
    sizes = (f"states x_0..x_{p.horizon} in R^{p.n}, controls u_0..u_{p.horizon - 1} in R^{p.m}, "
             f"horizon T={p.horizon}")
    per_stage = [q for q in p.parameters() if q.time_varying]
    if not per_stage:
        return Fact(Form.FINITE_HORIZON, sizes)
    names = ", ".join(q.name for q in per_stage)
    return Fact(Form.TIME_VARYING, f"{sizes}; per stage: {names} (time_varying=True)", per_stage[0])


def _dynamics_fact(expr: Expression) -> Fact:
    f = expression_facts(expr)
    if f.opaque:
        return Fact(Form.OPAQUE, f"{expr} calls an opaque dc.Function (derivatives by autodiff)", expr)
    if f.degree is not None and f.degree <= 1:
        return Fact(Form.AFFINE, f"affine in (x, u): {expr}")
    term = first_term_beyond_degree(expr, 1)
    if not f.smooth:
        return Fact(Form.NONSMOOTH, f"{term} in the dynamics is not affine, and {nonsmooth_note(expr)}", term)
    return Fact(Form.SMOOTH, f"{term} in the dynamics is not affine in (x, u)", term)


def _cost_fact(expr: Expression, what: str) -> Fact:
    f = expression_facts(expr)
    if f.degree is not None and f.degree <= 2:
        if f.curvature in (CONVEX, CONSTANT) or f.degree <= 1:
            return Fact(Form.QUADRATIC_CONVEX, f"{expr} is quadratic in (x, u) and convex by DCP rules")
        return Fact(Form.QUADRATIC,
                    f"{expr} is quadratic in (x, u); its convexity depends on parameter values "
                    "and is checked at solve time", expr)
    term = first_term_beyond_degree(expr, 2)
    if f.opaque:
        return Fact(Form.OPAQUE, f"{expr} calls an opaque dc.Function", expr)
    if not f.smooth:
        return Fact(Form.NONSMOOTH, f"{term} in the {what} is not quadratic in (x, u), and {nonsmooth_note(expr)}",
                    term)
    return Fact(Form.SMOOTH, f"{term} in the {what} is not quadratic in (x, u)", term)


def _classify_constraint(c: Constraint, p: ControlProblem) -> tuple[ConstraintKind, BoxBound | None]:
    """Name the constraint's kind; a box bound on the control also gets its BoxBound."""
    uses = expression_facts(c.lhs).uses | expression_facts(c.rhs).uses
    if uses and not (expression_facts(c.lhs).smooth and expression_facts(c.rhs).smooth):
        return ConstraintKind.NONSMOOTH, None
    if id(p.state) in uses:
        return (ConstraintKind.STATE if id(p.control) not in uses else ConstraintKind.MIXED), None
    if not uses:
        return ConstraintKind.PARAMETERS_ONLY, None
    if isinstance(c, Inequality):
        for side, other, lower in ((c.lhs, c.rhs, False), (c.rhs, c.lhs, True)):
            index = _control_selection(side, p.control)
            if index is not None and not expression_facts(other).uses:
                return ConstraintKind.BOX, BoxBound(lower, index, other, c)
    if isinstance(c, Equality):
        return ConstraintKind.CONTROL_EQUALITY, None
    return ConstraintKind.CONTROL_INEQUALITY, None


def _control_selection(expr: Expression, control: Control) -> object | None:
    """``slice(None)`` if expr is the control itself, the index if it is ``u[index]``."""
    if expr is control:
        return slice(None)
    if isinstance(expr, Index) and expr.args[0] is control:
        return expr.index
    return None


# ---- generic problems ------------------------------------------------------------------


def _analyse_generic(p: Problem) -> ProblemForm:
    f = expression_facts(p.objective.expr)
    expr = p.objective.expr
    if f.curvature in (CONVEX, CONSTANT, AFFINE) or (f.degree is not None and f.degree <= 1):
        objective = Fact(Form.CONVEX_SMOOTH if f.smooth else Form.CONVEX_NONSMOOTH,
                         f"{expr} is convex by DCP rules" + ("" if f.smooth else f"; {nonsmooth_note(expr)}"), expr)
    elif f.opaque:
        objective = Fact(Form.OPAQUE, f"{expr} calls an opaque dc.Function", expr)
    else:
        objective = Fact(Form.SMOOTH if f.smooth else Form.NONSMOOTH,
                         f"{expr} is not certified convex by DCP rules"
                         + ("" if f.smooth else f"; {nonsmooth_note(expr)}"), expr)
    sizes = ", ".join(f"{v.name}{v.shape}" for v in p.variables())
    facts = {
        "time structure": Fact(Form.NONE, f"a generic argmin over {sizes}"),
        "objective": objective,
        "constraints": Fact(ConstraintKinds(), "no constraints") if not p.constraints else Fact(
            ConstraintKinds([ConstraintKind.GENERAL]), "; ".join(str(c) for c in p.constraints),
            p.constraints[0]),
        "convexity": _convexity([("objective", p.objective.expr)], p.constraints),
    }
    return ProblemForm(Kind.GENERIC, facts)


# ---- convexity (the 'cone' backend's requirement) -------------------------------------------


def _convexity(terms: list[tuple[str, Expression]], constraints: list[Constraint],
               dynamics: Expression | None = None) -> Fact:
    """"convex" when the dynamics are affine, every term convex and every constraint convex
    by DCP rules; else "not certified" with the first term that is not. A quad_form whose
    matrix is parameter data counts as convex: its matrix is factorised (and so checked
    positive definite) per call."""
    memo = _psd_quad_forms_assumed([e for _, e in terms] + [e for c in constraints for e in (c.lhs, c.rhs)])
    if dynamics is not None:
        d = expression_facts(dynamics, memo)
        if d.opaque or d.degree is None or d.degree > 1:
            term = first_term_beyond_degree(dynamics, 1)
            culprit = dynamics if term is None else term
            return Fact(Form.NOT_CERTIFIED, f"{culprit} in the dynamics is not affine, so the problem is not "
                                            "convex", culprit)
    for name, expr in terms:
        if expression_facts(expr, memo).curvature not in (CONVEX, AFFINE, CONSTANT):
            return Fact(Form.NOT_CERTIFIED, f"the {name} {expr} is not convex by DCP rules", expr)
    for c in constraints:
        lhs, rhs = expression_facts(c.lhs, memo), expression_facts(c.rhs, memo)
        if isinstance(c, Equality):
            ok = all(f.curvature in (AFFINE, CONSTANT) for f in (lhs, rhs))
            rule = "an equality constraint must be affine on both sides"
        else:
            ok = lhs.curvature in (CONVEX, AFFINE, CONSTANT) and rhs.curvature in (CONCAVE, AFFINE, CONSTANT)
            rule = "an inequality constraint must read convex <= concave"
        if not ok:
            return Fact(Form.NOT_CERTIFIED, f"the constraint {c} is not convex by DCP rules ({rule})", c)
    what = "affine dynamics, " if dynamics is not None else ""
    return Fact(Form.CONVEX, f"{what}convex objective and convex constraints by DCP rules")


def _psd_quad_forms_assumed(exprs: list[Expression]) -> dict[int, NodeFacts]:
    """Facts memo in which quad_form(x, P) with parameter data P and affine x is convex."""
    memo: dict[int, NodeFacts] = {}
    for q in nodes_of_type(exprs, QuadForm):
        x, P = (expression_facts(a, memo) for a in q.args)
        if not P.uses and nodes_of_type([q.args[1]], Parameter) and x.curvature in (AFFINE, CONSTANT):
            memo[id(q)] = NodeFacts(None if x.degree is None else 2 * x.degree, CONVEX, NONNEG,
                                    True, x.opaque, x.uses)
    return memo


def check_bounds(problem: ControlProblem, bounds: tuple[BoxBound, ...]) -> None:
    """Each bound must broadcast to the control entries it bounds."""
    for b in bounds:
        rows = np.atleast_1d(np.arange(problem.m)[b.index])
        try:
            np.broadcast_to(np.empty(b.bound.shape), (rows.size,))
        except ValueError:
            raise ModelError(
                f"the bound {b.bound} of shape {b.bound.shape} in '{b.source}' does not fit "
                f"the {rows.size} control entries it bounds"
            ) from None
