"""The report behind ``explain()``: rendered from the same ProblemForm, Decision and IR
that the solve uses."""

from __future__ import annotations

from typing import Any

from diffcontrol.backends.registry import BY_NAME
from diffcontrol.compilers.analysis import ProblemForm
from diffcontrol.compilers.selection import Decision
from diffcontrol.dsl.expression import Expression
from diffcontrol.dsl.leaves import Parameter
from diffcontrol.dsl.problems import ControlProblem
from diffcontrol.dsl.traverse import nodes_of_type


def report(problem: Any, form: ProblemForm, decision: Decision, program: Any, options: dict | None) -> str:
    lines = [_header(problem), "", "Structure"]
    width = max(len(k) for k in form.facts)
    for name, fact in form.facts.items():
        lines.append(f"  {name:<{width}}  {fact.value}")
        lines.append(f"  {'':<{width}}    because {fact.reason}")
    lines += ["", f"Backend: {decision.chosen or 'none'}", f"  why: {decision.why}"]
    if decision.chosen:
        lines.append(f"  what it does: {BY_NAME[decision.chosen].summary}")
    lines.append("  not chosen:" if decision.chosen else "  rejected:")
    for name, why in decision.rejected.items():
        lines.append(f"    {name}: {why}")
    if program is not None:
        lines += ["", *BY_NAME[decision.chosen].explain_lowering(program, options or {})]
    if options:
        lines += ["", "Options", *(f"  {k} = {v!r}" for k, v in options.items())]
    return "\n".join(lines)


def _header(problem: Any) -> str:
    params = ", ".join(f"{p.name}{p.shape}" for p in problem.parameters()) or "none"
    if isinstance(problem, ControlProblem):
        return (f"ControlProblem: state {problem.state.name} in R^{problem.n}, control "
                f"{problem.control.name} in R^{problem.m}, horizon T={problem.horizon}; "
                f"parameters: {params}")
    variables = ", ".join(f"{v.name}{v.shape}" for v in problem.variables())
    return f"Problem: variables {variables}; parameters: {params}"


def feeds(exprs: list[Expression], terminal: bool = False) -> str:
    """Where a piece of lowered data comes from: "from A, r, per stage" (a time-varying
    parameter among them: the piece is evaluated for each stage; for a ``terminal`` piece, at
    stage T), or "constant"."""
    params = nodes_of_type(exprs, Parameter)
    if not params:
        return "constant"
    time = ", at stage T" if terminal else ", per stage"
    per_stage = time if any(p.time_varying for p in params) else ""
    return f"from {', '.join(p.name for p in params)}{per_stage}"
