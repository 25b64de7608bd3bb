"""Lowering a convex problem to a DPP cvxpy problem: the program of
:mod:`diffcontrol.programs.cone`, which cvxpylayers canonicalises once.

A ControlProblem is unrolled over its horizon with one cvxpy expression per
declared expression: states ``X`` (n, T+1) and controls ``U`` (m, T), time by
columns, dynamics ``X[:, 1:] == f(X[:, :T], U)``, stage constraints on the
columns t = 0..T-1, cost ``sum(stage cost over t) + terminal(X[:, T])``.
A generic Problem maps its variables one to one. DCP and DPP are checked here,
naming the offending DSL expression.
"""

from __future__ import annotations

import warnings
from typing import Any

import cvxpy as cp

from diffcontrol.compilers.analysis import ProblemForm
from diffcontrol.compilers.to_cvxpy import DerivedParameter, Translator, Value
from diffcontrol.dsl.constraints import Constraint, Equality
from diffcontrol.dsl.expression import as_expression
from diffcontrol.dsl.leaves import Control
from diffcontrol.dsl.problems import ControlProblem, Problem
from diffcontrol.dsl.traverse import nodes_of_type
from diffcontrol.errors import ModelError
from diffcontrol.programs.cone import ConeProgram


def lower_cone(problem: ControlProblem | Problem, form: ProblemForm) -> ConeProgram:
    """Translate to cvxpy, check DCP and DPP (naming the offending DSL expression), and
    canonicalise for the torch layer."""
    derived: dict = {}
    if isinstance(problem, ControlProblem):
        cvx, returned = _control(problem, derived)
    else:
        cvx, returned = _generic(problem, derived)
    if not derived:  # cvxpylayers needs a parameter: a zero one, times a variable, changes nothing
        zero = DerivedParameter(cp.Parameter(name="zero"), as_expression(0.0))
        derived[(id(zero.expr), "value")] = zero
        cvx = cp.Problem(cp.Minimize(cvx.objective.expr + zero.parameter * cp.sum(returned[0])), cvx.constraints)
    program = ConeProgram(problem, tuple(problem.parameters()), cvx, tuple(derived.values()), returned)
    with warnings.catch_warnings():  # canonicalise now, not at the first call
        warnings.simplefilter("ignore")
        program.layer("torch")
        program.size  # noqa: B018
    return program


def _control(p: ControlProblem, derived: dict) -> tuple[cp.Problem, tuple]:
    """Constraints on the state alone bind x_1..x_T (x_0 is given, so one there could only
    make the problem infeasible); constraints that involve the control bind t = 0..T-1;
    terminal constraints bind x_T."""
    n, m, T = p.n, p.m, p.horizon
    X = cp.Variable((n, T + 1), name=p.state.name)
    U = cp.Variable((m, T), name=p.control.name)
    if any(q.time_varying for q in p.parameters()):
        return _control_per_stage(p, derived, X, U)
    stage = Translator({id(p.state): Value(X[:, :T], True), id(p.control): Value(U, True)}, derived, T)
    later = Translator({id(p.state): Value(X[:, 1:], True)}, derived, T)
    final = Translator({id(p.state): Value(X[:, T], False)}, derived)
    pieces = [("initial_state", X[:, 0] == stage(p.initial_state).expr),
              ("dynamics", X[:, 1:] == stage.over_time(stage(p.transition), (n,)))]
    pieces += [(str(c), _constraint(stage if nodes_of_type([c.lhs, c.rhs], Control) else later, c))
               for c in p.constraints]
    pieces += [(f"{c} (terminal)", _constraint(final, c)) for c in p.terminal_constraints]
    cost = stage(p.cost)
    objective = cp.sum(cost.expr) if cost.timed else T * cost.expr
    terms = [("cost", objective)]
    if p.terminal_cost is not None:
        terminal = final(p.terminal_cost).expr
        objective = objective + terminal
        terms.append(("terminal_cost", terminal))
    return _checked(objective, terms, pieces), (X, U)


def _control_per_stage(p: ControlProblem, derived: dict, X: Any, U: Any) -> tuple[cp.Problem, tuple]:
    """:func:`_control` written stage by stage, for time-varying parameters: stage t's
    expressions read their row t (a cvxpy Parameter per stage), x_t's state constraints row
    t, the terminal terms row T. Parameters' expressions that vary with no stage stay one
    cvxpy Parameter."""
    T = p.horizon

    def at(t: int, control: bool = True) -> Translator:
        leaves = {id(p.state): Value(X[:, t], False)}
        if control:
            leaves[id(p.control)] = Value(U[:, t], False)
        return Translator(leaves, derived, stage=t)

    with_control = [c for c in p.constraints if nodes_of_type([c.lhs, c.rhs], Control)]
    state_only = [c for c in p.constraints if not nodes_of_type([c.lhs, c.rhs], Control)]
    pieces = [("initial_state", X[:, 0] == at(0)(p.initial_state).expr)]
    objective, terms = 0, []
    for t in range(T):
        stage = at(t)
        pieces.append((f"dynamics at t = {t}", X[:, t + 1] == stage(p.transition).expr))
        pieces += [(f"{c} at t = {t}", _constraint(stage, c)) for c in with_control]
        cost = stage(p.cost).expr
        objective = objective + cost
        terms.append((f"cost at t = {t}", cost))
    for t in range(1, T + 1):
        pieces += [(f"{c} at t = {t}", _constraint(at(t, control=False), c)) for c in state_only]
    final = at(T, control=False)
    pieces += [(f"{c} (terminal)", _constraint(final, c)) for c in p.terminal_constraints]
    if p.terminal_cost is not None:
        terminal = final(p.terminal_cost).expr
        objective = objective + terminal
        terms.append(("terminal_cost", terminal))
    return _checked(objective, terms, pieces), (X, U)


def _generic(p: Problem, derived: dict) -> tuple[cp.Problem, tuple]:
    variables = p.variables()
    cvx_vars = [cp.Variable(v.shape, name=v.name) for v in variables]
    tr = Translator({id(v): Value(c, False) for v, c in zip(variables, cvx_vars)}, derived)
    objective = tr(p.objective.expr).expr
    pieces = [(str(c), _constraint(tr, c)) for c in p.constraints]
    return _checked(objective, [("objective", objective)], pieces), tuple(cvx_vars)


def _constraint(tr: Translator, c: Constraint) -> Any:
    op = (lambda a, b: a == b) if isinstance(c, Equality) else (lambda a, b: a <= b)  # >= is stored as <=
    return tr.combine(op, tr(c.lhs), tr(c.rhs)).expr


def _checked(objective: Any, terms: list, pieces: list) -> cp.Problem:
    """The problem minimising ``objective`` subject to the pieces' constraints, if cvxpy finds
    it DCP and DPP; else a ModelError naming the DSL term and quoting cvxpy."""
    problem = cp.Problem(cp.Minimize(objective), [con for _, con in pieces])
    if problem.is_dcp(dpp=True):
        return problem
    named = [(f"the {name}", expr, not (expr.is_convex() or expr.is_affine())) for name, expr in terms]
    named += [(f"the constraint {name}", con, not con.is_dcp()) for name, con in pieces]
    for what, expr, not_dcp in named:
        if not_dcp:
            raise ModelError(f"{what} is not convex by cvxpy's DCP rules: cvxpy reads it as {expr}; the "
                             "'cone' backend takes convex problems only")
        if not expr.is_dcp(dpp=True):
            raise ModelError(f"{what} is convex (DCP) but not DPP: a parameter multiplies an expression "
                             f"that depends on parameters (cvxpy reads it as {expr}); cvxpylayers can only "
                             "differentiate DPP problems: let one dc.Parameter (or one parameter "
                             "expression) multiply each term of the decision variables")
    raise ModelError(f"cvxpy does not accept the problem as DCP/DPP: {problem}")


def explain_lowering(program: Any, options: dict) -> list[str]:
    lines = ["Lowered problem (a DPP cvxpy problem, canonicalised once at compile for cvxpylayers)"]
    if isinstance(program.problem, ControlProblem):
        p = program.problem
        lines.append(f"  variables: {p.state.name} ({p.n}, {p.horizon + 1}) holds x_0..x_T by columns, "
                     f"{p.control.name} ({p.m}, {p.horizon}) holds u_0..u_(T-1); each declared expression "
                     "is one cvxpy expression over the whole horizon")
    lines.append("  cvxpy problem:")
    lines += [f"    {line}" for line in str(program.cvx).splitlines()]
    data = program.cone_program()
    dims, (rows, cols) = data["dims"], data["A"].shape
    soc = f"{len(dims.soc)} of sizes {min(dims.soc)}..{max(dims.soc)}" if dims.soc else "none"
    lines.append(f"  cone program (diffcp's form): {cols} variables, {rows} constraint rows: zero cone "
                 f"{dims.zero}, nonnegative {dims.nonneg}, second-order cones {soc}, exponential "
                 f"{dims.exp}, PSD {list(dims.psd) or 'none'}")
    lines.append(f"  size N = {program.size} (variables + rows; derivative='auto' differentiates densely "
                 "up to dense_max_size, iteratively (lsmr) above)")
    mode, limit = options.get("derivative", "auto"), options.get("dense_max_size", 1000)
    chosen = mode if mode != "auto" else ("dense" if program.size <= limit else "lsmr")
    why = (f"N {'<=' if program.size <= limit else '>'} dense_max_size = {limit}" if mode == "auto"
           else "derivative option")
    accuracy = ("exact (a dense solve of the derivative's linear system)" if chosen == "dense" else
                "approximate (iterative; under 'auto' a GradientFallbackWarning says so at each call that "
                "differentiates): "
                "derivative='dense' is exact at O(N^3)")
    lines.append(f"  gradients: diffcp's {chosen} derivative ({why}): {accuracy}")
    lines.append("  cvxpy parameters, computed per call from the dc.Parameters by the layer's framework "
                 "(its autodiff carries their gradients on):")
    lines += [f"    {d.describe()}  shape {d.parameter.shape}" for d in program.derived]
    return lines
