"""Lowering an unconstrained generic Problem to the ift_cg program
(:mod:`diffcontrol.programs.ift`, which documents what it evaluates per call), and
explain()'s section.
"""

from __future__ import annotations

from typing import Any

from diffcontrol.compilers.analysis import ProblemForm
from diffcontrol.dsl.function import FunctionCall
from diffcontrol.dsl.problems import Problem
from diffcontrol.dsl.traverse import nodes_of_type
from diffcontrol.programs.ift import IFTProgram


def lower_ift(problem: Problem, form: ProblemForm) -> IFTProgram:
    opaque = tuple(dict.fromkeys(c.function.name for c in nodes_of_type([problem.objective.expr], FunctionCall)))
    return IFTProgram(problem, tuple(problem.variables()), tuple(problem.parameters()), opaque)


def explain_lowering(program: Any, options: dict) -> list[str]:
    from diffcontrol.backends.ift_cg import forward_solver

    n = program.size
    solver = forward_solver(options, n) if options else "newton"
    solver = getattr(solver, "__name__", repr(solver)) if callable(solver) else solver
    how = {"newton": "damped Newton on the exact Hessian, Armijo line search",
           "lbfgs": "L-BFGS with a strong-Wolfe line search"}.get(solver, f"the user's solver {solver} (a black box)")
    expr = program.problem.objective.expr
    kind = (f"contains opaque dc.Functions ({', '.join(program.opaque)}): derivatives by autodiff"
            if program.opaque else "symbolic: every atom differentiated by the framework's autodiff")
    linear = options.get("linear_solver", "cg")
    lines = [
        "Lowered problem (a smooth unconstrained argmin y* = argmin_y f(y; theta))",
        f"  y = [{', '.join(f'{v.name}{v.shape}' for v in program.variables)}] flattened: n = {n}",
        f"  f = {expr}",
        f"  objective: {kind}",
        f"  forward: {how} (never differentiated through); then the check max |grad_y f| <= tol",
        f"  backward: (H + eps I) g = dL/dy at y* by {linear}"
        + (" (conjugate gradient on Hessian-vector products, H never formed"
           if linear == "cg" else " (CG on the normal equations H^T H g = H^T dL/dy"
           if linear == "cg_normal" else " (H formed and factorised: the dense oracle")
        + f"; cg_tol={options.get('cg_tol') or 'sqrt(eps)'}, cg_max_iter={options.get('cg_max_iter')}, "
          f"eps={options.get('tikhonov')}), then -g^T d2f/dy dtheta by the framework's autodiff",
    ]
    return lines
