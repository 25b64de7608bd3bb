"""compile(): analysis -> selection -> options -> lowering, each step one call."""

from __future__ import annotations

from typing import Any

from diffcontrol.backends.registry import BY_NAME
from diffcontrol.compilers.analysis import analyse, expression_facts
from diffcontrol.compilers.compiled import CompiledProblem
from diffcontrol.compilers.selection import select
from diffcontrol.dsl.problems import Problem
from diffcontrol.errors import BackendError, ModelError
from diffcontrol.facts import Form, Kind


def compile_problem(problem: Any, backend: str, options: dict[str, Any]) -> CompiledProblem:
    _raise_for_unbounded(problem)
    form = analyse(problem)                      # facts, each with its reason
    decision = select(form, backend)             # raises BackendError for a forced misfit
    if decision.chosen is None:
        _raise_for_constrained_nonconvex(problem, form)
        reasons = "\n".join(f"  - {name}: {why}" for name, why in decision.rejected.items())
        raise BackendError(f"no available backend takes this problem:\n{reasons}")
    spec = BY_NAME[decision.chosen]
    resolved = spec.resolve_options(options)     # defaults + validation
    solver = spec.load()                         # (the cone backend imports cvxpy here, not before)
    program = spec.lower(problem, form)
    return CompiledProblem(problem, form, decision, program, spec, solver, resolved)


def _raise_for_unbounded(problem: Any) -> None:
    """A generic problem whose objective is affine in the variables and has no constraints has
    no argmin (it is unbounded below, or constant); every backend would only run out of
    iterations on it, so say so before solving."""
    if not isinstance(problem, Problem) or problem.constraints:
        return
    degree = expression_facts(problem.objective.expr).degree
    if degree is not None and degree <= 1:
        raise ModelError(
            f"the objective {problem.objective.expr} is affine in the variables and there are no "
            "constraints, so it has no minimiser (it is unbounded, or constant); add constraints or a "
            "strictly convex term such as 1e-3 * dc.sum_squares(y)")


def _raise_for_constrained_nonconvex(problem: Any, form: Any) -> None:
    """A generic problem with constraints that is not convex: no backend solves it (cone needs
    convexity, ift_cg takes no constraints); name the constraint and the way out."""
    if form.kind is not Kind.GENERIC or not problem.constraints or form.value("convexity") is Form.CONVEX:
        return
    fact = form.facts["convexity"]
    culprit = next((c for c in problem.constraints if c is fact.culprit), problem.constraints[0])
    raise ModelError(
        f"the constraint {culprit} makes this a constrained nonconvex problem ({fact.reason}); 'cone' needs "
        "convexity and 'ift_cg' takes no constraints. Move the constraint into the objective as a "
        f"smooth penalty, e.g. + rho * dc.sum_squares({culprit.lhs} - {culprit.rhs}) for an equality, or "
        "write the problem in convex form")


def explain_problem(problem: Any) -> str:
    """explain() of compile(backend="auto"), or of the analysis alone when nothing fits."""
    from diffcontrol.explain import report

    form = analyse(problem)
    decision = select(form, "auto")
    if decision.chosen is None:
        return report(problem, form, decision, None, None)
    return compile_problem(problem, "auto", {}).explain()
