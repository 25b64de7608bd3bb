"""The report behind ``explain()``: rendered from the same ProblemForm, Decision and IR
that the solve uses."""

from __future__ import annotations

from typing import Any

import numpy as np

from diffcontrol.backends.registry import BY_NAME
from diffcontrol.compilers.analysis import ProblemForm
from diffcontrol.compilers.selection import Decision
from diffcontrol.compilers.symbolic import coefficient, hessian_blocks, render_block_matrix
from diffcontrol.dsl import atoms
from diffcontrol.dsl.expression import Expression
from diffcontrol.dsl.function import FunctionCall
from diffcontrol.dsl.leaves import Constant, Leaf, Parameter
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
    if program is not None and decision.chosen in _LOWERING_REPORTS:
        lines += ["", *_LOWERING_REPORTS[decision.chosen](program, options or {})]
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


def _feeds(exprs: list[Expression]) -> str:
    names = [p.name for p in nodes_of_type(exprs, Parameter)]
    return f"from {', '.join(names)}" if names else "constant"


def _is_linear(expr: Expression) -> bool:
    """True when expr vanishes at x = u = 0 by structure (no constant offset)."""
    if isinstance(expr, Constant):
        return bool(np.all(expr.value == 0))
    if isinstance(expr, Leaf):
        return expr.is_decision
    if isinstance(expr, (atoms.Multiply, atoms.MatMul)):
        return any(_is_linear(a) for a in expr.args)
    if isinstance(expr, (atoms.SumSquares, atoms.Square, atoms.QuadForm)):
        return _is_linear(expr.args[0])
    if isinstance(expr, (atoms.Add, atoms.Neg, atoms.Index, atoms.Stack, atoms.Concat, atoms.Sum,
                         atoms.Transpose, atoms.Divide)):
        args = expr.args[:1] if isinstance(expr, atoms.Divide) else expr.args
        return all(_is_linear(a) for a in args)
    return False


def _linear_term(expr: Expression, what: str) -> str:
    return "0" if _is_linear(expr) else f"gradient of the {what} at 0 (evaluated per call)"


def _lqr_lowering(program: Any, options: dict) -> list[str]:
    p: ControlProblem = program.problem
    x, u = p.state, p.control
    n, m, T = p.n, p.m, p.horizon
    Fx, Fu = coefficient(p.transition, x), coefficient(p.transition, u)
    F = f"[{Fx or '0'}, {Fu or '0'}]"
    f = "0" if _is_linear(p.transition) else f"{p.transition} at x = u = 0"
    blocks = hessian_blocks(p.cost, [x, u])
    C = render_block_matrix(blocks, 2) if blocks is not None else "Hessian of the stage cost (per call)"
    lines = [
        "Lowered problem (LQR data, time-invariant over t = 0..T-1)",
        f"  sizes: n={n}, m={m}, N=n+m={n + m}, T={T}; tau_t = [{x.name}_t; {u.name}_t]",
        f"  dynamics    x_(t+1) = F tau_t + f        F = {F}, f = {f}   ({_feeds([p.transition])})",
        f"  stage cost  1/2 tau^T C tau + c^T tau    C = {C}, c = {_linear_term(p.cost, 'stage cost')}"
        f"   ({_feeds([p.cost])})",
    ]
    if p.terminal_cost is None:
        lines.append("  terminal    none (C_T = 0, c_T = 0)")
    else:
        tb = hessian_blocks(p.terminal_cost, [x])
        CT = str(tb.get((0, 0), "0")) if tb is not None else "Hessian of the terminal cost (per call)"
        lines.append(f"  terminal    1/2 x^T C_T x + c_T^T x     C_T = {CT}, "
                     f"c_T = {_linear_term(p.terminal_cost, 'terminal cost')}   ({_feeds([p.terminal_cost])})")
    lines.append(f"  x_0 = {p.initial_state}   ({_feeds([p.initial_state])})")
    if program.bounds:
        bounds = "; ".join(str(b.source) for b in program.bounds)
        lines.append(f"  control box  {bounds}   ({_feeds([b.bound for b in program.bounds])})")
    else:
        lines.append("  control box  none")
    lines.append(f"  arrays: C (B,{T},{n + m},{n + m}), c (B,{T},{n + m}), F (B,{T},{n},{n + m}), "
                 f"f (B,{T},{n}), C_T (B,{n},{n}), c_T (B,{n}), x_0 (B,{n}), lo/hi (B,{T},{m})")
    return lines


def _ilqr_lowering(program: Any, options: dict) -> list[str]:
    p: ControlProblem = program.problem
    x, u = p.state, p.control
    n, m, T = p.n, p.m, p.horizon
    opaque = [c.function.name for c in nodes_of_type([p.transition, p.cost] + (
        [p.terminal_cost] if p.terminal_cost is not None else []), FunctionCall)]
    how = "the layer framework's autodiff (e.g. torch.func), vectorised over batch and time"
    lines = [
        "Lowered problem (iLQR: the functions, linearized along each iterate)",
        f"  sizes: n={n}, m={m}, N=n+m={n + m}, T={T}; tau_t = [{x.name}_t; {u.name}_t]",
        f"  dynamics    x_(t+1) = {p.transition}   ({_feeds([p.transition])})",
        f"  stage cost  {p.cost}   ({_feeds([p.cost])})",
        f"  terminal    {p.terminal_cost if p.terminal_cost is not None else 'none'}",
        f"  x_0 = {p.initial_state}   ({_feeds([p.initial_state])})",
        "  control box  " + ("; ".join(str(b.source) for b in program.bounds) if program.bounds else "none"),
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


def _cone_lowering(program: Any, options: dict) -> list[str]:
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
    lines.append("  cvxpy parameters, computed per call from the dc.Parameters by the layer's framework "
                 "(its autodiff carries their gradients on):")
    lines += [f"    {d.describe()}  shape {d.parameter.shape}" for d in program.derived]
    return lines


def _ift_lowering(program: Any, options: dict) -> list[str]:
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


_LOWERING_REPORTS = {"lqr": _lqr_lowering, "ilqr": _ilqr_lowering, "cone": _cone_lowering,
                     "ift_cg": _ift_lowering}
