"""Lowering a ControlProblem with smooth dynamics and costs to the iLQR program
(:mod:`diffcontrol.programs.ilqr`, which documents what it evaluates per call): the path
constraints' augmented-Lagrangian terms, the bounds' checks, and explain()'s section.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from diffcontrol.compilers.analysis import ProblemForm, check_bounds, expression_facts
from diffcontrol.compilers.augmented import path_constraints
from diffcontrol.dsl.constraints import Equality
from diffcontrol.dsl.function import FunctionCall
from diffcontrol.dsl.problems import ControlProblem
from diffcontrol.dsl.traverse import nodes_of_type
from diffcontrol.explain import feeds
from diffcontrol.facts import ConstraintKind
from diffcontrol.programs.ilqr import ILQRProgram

_QUADRATIC = ("quadratic, convex", "quadratic, convexity unknown")


def lower_ilqr(problem: ControlProblem, form: ProblemForm) -> ILQRProgram:
    """Check the box bounds' shapes and freeze the program. General path constraints, or
    terminal constraints other than affine equalities, become augmented-Lagrangian rows."""
    check_bounds(problem, form.box_bounds)
    general = [c for _, c in form.other_constraints]
    affine_goal = form.value("terminal constraints") <= {ConstraintKind.TERMINAL_EQUALITY}
    path = path_constraints(problem, general) if general or not affine_goal else None
    return ILQRProgram(problem, form.box_bounds, tuple(problem.parameters()),
                       quadratic_cost=form.value("stage cost") in _QUADRATIC and path is None,
                       quadratic_terminal=form.value("terminal cost") in _QUADRATIC and path is None, path=path)


def _constraint_lines(program: ILQRProgram) -> list[str]:
    """Each general constraint: where it binds and how it is met."""
    p = program.problem
    if program.path is None:
        if not p.terminal_constraints:
            return ["  constraints  none beyond the box"]
        return ["  terminal equalities  " + "; ".join(map(str, p.terminal_constraints)) + " at x_T: met exactly by "
                "Newton on their multipliers around the iLQR solve (sensitivities from its exact backward; the "
                "gradient adds one more LQR solve)"]
    lines = ["  constraints  (augmented Lagrangian around iLQR: multipliers updated after each solve, penalty rho "
             "raised where the violation stalls; backward: one LQR solve per active row, batched, with the active "
             "rows as equalities)"]
    general = program.path.general
    u = p.control
    for c in general:
        uses_u = id(u) in (expression_facts(c.lhs).uses | expression_facts(c.rhs).uses)
        where = f"t = 0..{p.horizon - 1}" if uses_u else f"x_1..x_{p.horizon}"
        lines.append(f"    {c}   ({'equality' if isinstance(c, Equality) else 'inequality'}, "
                     f"{int(np.prod(c.shape)) if c.shape else 1} row(s) per stage, binds at {where})")
    for c in p.terminal_constraints:
        lines.append(f"    {c}   (terminal {'equality' if isinstance(c, Equality) else 'inequality'}, at x_T)")
    return lines


def explain_lowering(program: Any, options: dict) -> list[str]:
    p: ControlProblem = program.problem
    x, u = p.state, p.control
    n, m, T = p.n, p.m, p.horizon
    opaque = [c.function.name for c in nodes_of_type([p.transition, p.cost] + (
        [p.terminal_cost] if p.terminal_cost is not None else []), FunctionCall)]
    how = "the layer framework's autodiff (e.g. torch.func), vectorised over batch and time"
    lines = [
        "Lowered problem (iLQR: the functions, linearized along each iterate)",
        f"  sizes: n={n}, m={m}, N=n+m={n + m}, T={T}; tau_t = [{x.name}_t; {u.name}_t]",
        f"  dynamics    x_(t+1) = {p.transition}   ({feeds([p.transition])})",
        f"  stage cost  {p.cost}   ({feeds([p.cost])})",
        f"  terminal    {p.terminal_cost if p.terminal_cost is not None else 'none'}",
        f"  x_0 = {p.initial_state}   ({feeds([p.initial_state])})",
        "  control box  " + ("; ".join(str(b.source) for b in program.bounds) if program.bounds else "none"),
    ] + _constraint_lines(program) + [
        "  derivatives:",
        f"    dynamics Jacobian F_t (B,{T},{n},{n + m}): {how}",
        f"    cost Hessian C_t, gradient c_t: {how}"
        + ("; the stage cost is quadratic, so C is evaluated once per call" if program.quadratic_cost else ""),
        f"    exact backward: the dynamics' second derivatives sum_i lam_i d2f_i (B,{T},{n + m},{n + m}) "
        f"by {how}, once per backward",
    ]
    if opaque:
        lines.append(f"    opaque dc.Functions (autodiff only): {', '.join(sorted(set(opaque)))}")
    return lines
