"""Lowering a ControlProblem with affine dynamics and quadratic costs to the LQR program
(:mod:`diffcontrol.programs.lqr`): the dynamics' Jacobians as expressions, the bounds'
checks, and explain()'s section.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from diffcontrol.compilers.analysis import ProblemForm, check_bounds
from diffcontrol.compilers.rules import hessian_expressions, jacobian_expression
from diffcontrol.compilers.symbolic import render_block_matrix, render_constant, render_folded
from diffcontrol.dsl.expression import Expression
from diffcontrol.dsl.leaves import Constant
from diffcontrol.dsl.problems import ControlProblem
from diffcontrol.explain import feeds
from diffcontrol.programs.lqr import LQRProgram


def lower_lqr(problem: ControlProblem, form: ProblemForm) -> LQRProgram:
    """Check the box bounds' shapes, build the dynamics' Jacobians, freeze the program."""
    check_bounds(problem, form.box_bounds)
    Fx = jacobian_expression(problem.transition, problem.state)
    Fu = jacobian_expression(problem.transition, problem.control)
    jacobians = None if Fx is None or Fu is None else (Fx, Fu)
    return LQRProgram(problem, form.box_bounds, tuple(problem.parameters()), jacobians=jacobians,
                      hessian=_stage_hessian(problem), terminal_hessian=_terminal_hessian(problem))


def _stage_hessian(problem: ControlProblem) -> tuple[Expression, ...] | None:
    """The stage cost's Hessian blocks (xx, xu, ux, uu), zeros where a block vanishes."""
    blocks = hessian_expressions(problem.cost, [problem.state, problem.control])
    if blocks is None:
        return None
    sizes = (problem.n, problem.m)
    return tuple(blocks.get((i, j), Constant(np.zeros((sizes[i], sizes[j])))) for i in (0, 1) for j in (0, 1))


def _terminal_hessian(problem: ControlProblem) -> Expression | None:
    if problem.terminal_cost is None:
        return None
    blocks = hessian_expressions(problem.terminal_cost, [problem.state])
    if blocks is None:
        return None
    return blocks.get((0, 0), Constant(np.zeros((problem.n, problem.n))))


def explain_lowering(program: Any, options: dict) -> list[str]:
    """The LQR data as the solve computes them. Parameter-free data are printed by value and
    zero terms as 0, both read off the program's own arrays (evaluated at two random draws of
    the parameters, so a term is called 0 only where the solve's is); terms that depend on
    parameters are printed as expressions, the dynamics' Jacobians as the very expressions
    the solve evaluates."""
    p: ControlProblem = program.problem
    x, u = p.state, p.control
    n, m, T = p.n, p.m, p.horizon
    try:
        draws = [_probe(program, seed) for seed in (0, 1)]
    except Exception:  # noqa: BLE001  (explain() must not fail where a random draw is a bad value: say less)
        draws = None

    def fixed(key: str, ndim: int) -> np.ndarray | None:
        """Stage 0 of the solve's array ``key`` where the parameters do not move it, else None."""
        if draws is None:
            return None
        a, b = (_stage(d[key], ndim) for d in draws)
        return a if np.array_equal(a, b) else None

    def term(key: str, words: str) -> str:
        """c, f or c_T: 0 where the solve's is, its value where the parameters do not move it."""
        if draws is not None and all(not np.any(d[key]) for d in draws):
            return "0"
        value = fixed(key, 1)
        return words if value is None else render_constant(value)

    if program.jacobians is not None:  # the expressions the solve evaluates for F, as they are
        F = "[" + ", ".join(render_folded(J) for J in program.jacobians) + "]"
    elif fixed("F", 2) is not None:
        F = render_constant(fixed("F", 2))
    else:
        F = "Jacobian of the dynamics at x = u = 0 (autodiff per call)"
    f = term("f", f"{p.transition} at x = u = 0")
    C = _hessian_text(program.hessian, fixed("C", 2), (n, m), "stage cost")
    lines = [
        "Lowered problem (LQR data, "
        + ("per stage t = 0..T-1 where marked 'per stage'; terminal data from stage T)"
           if any(q.time_varying for q in program.parameters) else "time-invariant over t = 0..T-1)"),
        f"  sizes: n={n}, m={m}, N=n+m={n + m}, T={T}; tau_t = [{x.name}_t; {u.name}_t]",
        f"  dynamics    x_(t+1) = F tau_t + f        F = {F}, f = {f}   ({feeds([p.transition])})",
        f"  stage cost  1/2 tau^T C tau + c^T tau    C = {C}, "
        f"c = {term('c', 'gradient of the stage cost at 0 (evaluated per call)')}"
        f"   ({feeds([p.cost])})",
    ]
    if p.terminal_cost is None:
        lines.append("  terminal    none (C_T = 0, c_T = 0)")
    else:
        CT = _hessian_text(None if program.terminal_hessian is None else (program.terminal_hessian,),
                           fixed("CT", 2), (n,), "terminal cost")
        source = feeds([p.terminal_cost], terminal=True)
        lines.append(f"  terminal    1/2 x^T C_T x + c_T^T x     C_T = {CT}, "
                     f"c_T = {term('cT', 'gradient of the terminal cost at 0 (evaluated per call)')}"
                     f"   ({source})")
    lines.append(f"  x_0 = {p.initial_state}   ({feeds([p.initial_state])})")
    if p.terminal_constraints:
        sides = [e for c in p.terminal_constraints for e in (c.lhs, c.rhs)]
        lines.append(f"  terminal equalities  G x_T = g: {'; '.join(map(str, p.terminal_constraints))}   "
                     f"({feeds(sides, terminal=True)}); met exactly: Newton on their multipliers nu, each step "
                     "an LQR solve with c_T + G^T nu and one sensitivity solve per row")
    if program.bounds:
        bounds = "; ".join(str(b.source) for b in program.bounds)
        lines.append(f"  control box  {bounds}   ({feeds([b.bound for b in program.bounds])})")
    else:
        lines.append("  control box  none")
    lines.append(f"  arrays: C (B,{T},{n + m},{n + m}), c (B,{T},{n + m}), F (B,{T},{n},{n + m}), "
                 f"f (B,{T},{n}), C_T (B,{n},{n}), c_T (B,{n}), x_0 (B,{n}), lo/hi (B,{T},{m})")
    return lines


def _probe(program: Any, seed: int) -> dict[str, np.ndarray]:
    """The program's arrays for one example at random parameter values (nonnegative where
    declared so; a time-varying one with its time axis), as NumPy."""
    import torch

    from diffcontrol.emitters.torch_ops import TorchFramework

    rng = np.random.default_rng(seed)
    T = program.problem.horizon
    values = {}
    for q in program.parameters:
        shape = (1, T + 1, *q.shape) if q.time_varying else (1, *q.shape)
        v = rng.uniform(0.5, 1.5, shape) if q.nonneg else rng.normal(size=shape)
        values[q.name] = torch.as_tensor(v)
    data = program.data(TorchFramework, values, torch.zeros(1, dtype=torch.float64))
    return {k: np.asarray(v.detach().numpy()) for k, v in data.items() if isinstance(v, torch.Tensor)}


def _stage(a: np.ndarray, ndim: int) -> np.ndarray:
    """Stage 0 of one example's array: a (1, ..., *shape) array's last ``ndim`` axes."""
    return a.reshape(-1, *a.shape[a.ndim - ndim:])[0]


def _hessian_text(blocks: tuple[Expression, ...] | None, value: np.ndarray | None, sizes: tuple[int, ...],
                  what: str) -> str:
    """A cost's Hessian in blocks (one variable: the block): by value (``value``, the solve's
    own) where the parameters do not move it, else the block expressions the solve evaluates."""
    k = len(sizes)
    if value is not None:
        edges = np.cumsum((0, *sizes))
        text = {(i, j): render_constant(value[edges[i]:edges[i + 1], edges[j]:edges[j + 1]])
                for i in range(k) for j in range(k)}
    elif blocks is not None:
        text = {(i, j): render_folded(blocks[i * k + j]) for i in range(k) for j in range(k)}
    else:
        return f"Hessian of the {what} (autodiff per call)"
    if k == 1:
        return text[(0, 0)]
    return render_block_matrix({key: t for key, t in text.items() if t != "0"}, k)
