"""compile(): analysis -> selection -> options -> lowering, each step one call."""

from __future__ import annotations

from typing import Any

from diffcontrol.backends.registry import BY_NAME
from diffcontrol.compilers.analysis import analyse, expression_facts
from diffcontrol.compilers.compiled import CompiledProblem
from diffcontrol.compilers.lower_cone import lower_cone
from diffcontrol.compilers.lower_ift import lower_ift
from diffcontrol.compilers.lower_ilqr import lower_ilqr
from diffcontrol.compilers.lower_lqr import lower_lqr
from diffcontrol.compilers.selection import select
from diffcontrol.dsl.problems import Problem
from diffcontrol.errors import BackendError, ModelError

#: backend name -> lowering pass (ProblemForm facts were checked by selection)
LOWERINGS = {"lqr": lower_lqr, "ilqr": lower_ilqr, "cone": lower_cone, "ift_cg": lower_ift}


def resolve_options(backend_module: Any, options: dict[str, Any]) -> dict[str, Any]:
    """The backend's defaults updated with ``options``; unknown names and bad values raise."""
    known = backend_module.OPTIONS
    for name in options:
        if name not in known:
            raise BackendError(f"unknown option {name!r} for backend '{backend_module.NAME}'; "
                               f"valid options: {', '.join(known)}")
    resolved = {name: default for name, (default, _doc) in known.items()}
    resolved.update(options)
    if resolved["backward"] not in backend_module.BACKWARD_MODES:
        raise BackendError(f"backward={resolved['backward']!r} is not offered by '{backend_module.NAME}'; "
                           f"choose one of {', '.join(map(repr, backend_module.BACKWARD_MODES))}")
    if resolved["on_nonconvergence"] not in ("warn", "raise"):
        raise BackendError(f"on_nonconvergence must be 'warn' or 'raise', got {resolved['on_nonconvergence']!r}")
    for name in ("max_iter", "qp_max_iter", "ls_max_iter", "ls_parallel"):
        if name in resolved and (not isinstance(resolved[name], int) or resolved[name] < 1):
            raise BackendError(f"{name} must be a positive int, got {resolved[name]!r}")
    if "ls_decay" in resolved and not 0 < resolved["ls_decay"] < 1:
        raise BackendError(f"ls_decay must lie in (0, 1), got {resolved['ls_decay']!r}")
    if resolved.get("tol") is not None and not resolved["tol"] > 0:
        raise BackendError(f"tol must be positive, got {resolved['tol']!r}")
    if hasattr(backend_module, "validate_options"):
        backend_module.validate_options(resolved)
    return resolved


def compile_problem(problem: Any, backend: str, options: dict[str, Any]) -> CompiledProblem:
    _raise_for_unbounded(problem)
    form = analyse(problem)                      # facts, each with its reason
    decision = select(form, backend)             # raises BackendError for a forced misfit
    if decision.chosen is None:
        _raise_for_constrained_nonconvex(problem, form)
        reasons = "\n".join(f"  - {name}: {why}" for name, why in decision.rejected.items())
        raise BackendError(f"no available backend takes this problem:\n{reasons}")
    module = BY_NAME[decision.chosen].load()
    resolved = resolve_options(module, options)  # defaults + validation
    program = LOWERINGS[decision.chosen](problem, form)
    return CompiledProblem(problem, form, decision, program, module, resolved)


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
    if form.kind != "generic" or not problem.constraints or form.value("convexity") == "convex":
        return
    reason = form.facts["convexity"].reason
    culprit = next((c for c in problem.constraints if str(c) in reason), problem.constraints[0])
    raise ModelError(
        f"the constraint {culprit} makes this a constrained nonconvex problem ({reason}); 'cone' needs "
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
