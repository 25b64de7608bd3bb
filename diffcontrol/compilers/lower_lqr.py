"""Lowering a ControlProblem with affine dynamics and quadratic costs to the LQR IR.

The IR's numbers are functions of the parameters: at call time the emitter's
framework evaluates the declared expressions and takes their exact
derivatives (the dynamics are affine and the costs quadratic, so Jacobian and
Hessian at tau = 0 *are* F, C, and the values there f, c), all with ordinary
framework ops, so its autodiff carries the backend's cotangents to the
Parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from diffcontrol.compilers.analysis import ProblemForm
from diffcontrol.compilers.control_program import ControlProgram, check_bounds
from diffcontrol.compilers.evaluate import Framework, evaluate, evaluate_batched
from diffcontrol.compilers.linearize import jacobian_expression
from diffcontrol.compilers.symbolic import coefficient, hessian_blocks, render_block_matrix, render_folded
from diffcontrol.dsl.atoms import broadcast_batch
from diffcontrol.dsl.expression import Expression
from diffcontrol.dsl.problems import ControlProblem
from diffcontrol.explain import feeds, is_linear, linear_term


@dataclass(frozen=True)
class LQRProgram(ControlProgram):
    """A time-invariant LQ problem: the expressions it was lowered from and its sizes."""

    #: (df/dx, df/du) as expressions in the parameters, or None: autodiff per call
    jacobians: tuple[Expression, Expression] | None = None

    def data(self, fw: Framework, params: dict[str, Any], like: Any) -> dict[str, Any]:
        """The IR arrays (see :data:`diffcontrol.backends.lqr.DATA_KEYS`) for a batch.

        ``params`` maps each parameter's name to an array with a leading batch
        dimension B; ``like`` is an array of shape (B,) giving dtype and device.
        C, c, F, f stay time-invariant (no T axis); the bounds carry it.
        """
        return self._evaluate_pieces(fw, params, like, self._pieces())

    def implicit_inputs(self, fw: Framework, params: dict, data: dict, saved: dict) -> dict[str, Any]:
        """The arrays whose cotangents the backend's VJP returns: the IR data itself."""
        from diffcontrol.backends.lqr import DATA_KEYS
        from diffcontrol.backends.terminal import KEYS

        return {k: data[k] for k in (*DATA_KEYS, *KEYS) if k in data}

    def _pieces(self):
        """(data keys, expressions they depend on, function computing them for one example)."""
        prob = self.problem
        terminal = [prob.terminal_cost] if prob.terminal_cost is not None else []
        return [
            (("F", "f"), [prob.transition], *((self._dynamics, False) if self.jacobians is None
                                               else (self._affine_dynamics, True))),
            (("C", "c"), [prob.cost], self._stage_cost),
            (("CT", "cT"), terminal, self._terminal_cost),
            *self._bound_pieces(),
        ] + self._terminal_pieces()

    def _affine_dynamics(self, fw: Framework, p: dict, like: Any) -> tuple:
        """F (b, n, N) and f (b, n) from the symbolic Jacobians, for batched parameters ``p``."""
        env = self._env(p)
        zero = fw.constant(np.zeros((1, self.n + self.m)), like)
        env[id(self.problem.state)], env[id(self.problem.control)] = zero[:, :self.n], zero[:, self.n:]
        Fx, Fu, f = evaluate_batched([*self.jacobians, self.problem.transition], env, fw, like)
        return fw.xp.concatenate(broadcast_batch(fw.xp, [Fx, Fu]), -1), f

    def _dynamics(self, fw: Framework, p: dict, ref: Any) -> tuple:
        """F (n, N) and f (n,) for one example, by the framework's autodiff (no symbolic Jacobian)."""
        def g(tau):
            return evaluate([self.problem.transition], self._env(p, tau), fw, ref)[0]

        zero = fw.constant(np.zeros(self.n + self.m), ref)
        return fw.jacobian(g)(zero), g(zero)

    def _stage_cost(self, fw: Framework, p: dict, ref: Any) -> tuple:
        def g(tau):
            return evaluate([self.problem.cost], self._env(p, tau), fw, ref)[0]

        zero = fw.constant(np.zeros(self.n + self.m), ref)
        return fw.hessian(g)(zero), fw.grad(g)(zero)

    def _terminal_cost(self, fw: Framework, p: dict, ref: Any) -> tuple:
        n = self.n
        if self.problem.terminal_cost is None:
            return fw.constant(np.zeros((n, n)), ref), fw.constant(np.zeros(n), ref)

        def g(z):
            env = self._env(p)
            env[id(self.problem.state)] = z
            return evaluate([self.problem.terminal_cost], env, fw, ref)[0]

        zero = fw.constant(np.zeros(n), ref)
        return fw.hessian(g)(zero), fw.grad(g)(zero)


def lower_lqr(problem: ControlProblem, form: ProblemForm) -> LQRProgram:
    """Check the box bounds' shapes, build the dynamics' Jacobians, freeze the program."""
    check_bounds(problem, form.box_bounds)
    Fx = jacobian_expression(problem.transition, problem.state)
    Fu = jacobian_expression(problem.transition, problem.control)
    jacobians = None if Fx is None or Fu is None else (Fx, Fu)
    return LQRProgram(problem, form.box_bounds, tuple(problem.parameters()), jacobians=jacobians)


def explain_lowering(program: Any, options: dict) -> list[str]:
    p: ControlProblem = program.problem
    x, u = p.state, p.control
    n, m, T = p.n, p.m, p.horizon
    if program.jacobians is not None:  # the expressions the solve evaluates for F, as they are
        F = "[" + ", ".join(render_folded(J) for J in program.jacobians) + "]"
    else:  # (F by the framework's autodiff at call time)
        Fx, Fu = coefficient(p.transition, x), coefficient(p.transition, u)
        F = f"[{Fx or '0'}, {Fu or '0'}]"
    f = "0" if is_linear(p.transition) else f"{p.transition} at x = u = 0"
    blocks = hessian_blocks(p.cost, [x, u])
    C = render_block_matrix(blocks, 2) if blocks is not None else "Hessian of the stage cost (per call)"
    lines = [
        "Lowered problem (LQR data, "
        + ("per stage t = 0..T-1 where marked 'per stage'; terminal data from stage T)"
           if any(q.time_varying for q in program.parameters) else "time-invariant over t = 0..T-1)"),
        f"  sizes: n={n}, m={m}, N=n+m={n + m}, T={T}; tau_t = [{x.name}_t; {u.name}_t]",
        f"  dynamics    x_(t+1) = F tau_t + f        F = {F}, f = {f}   ({feeds([p.transition])})",
        f"  stage cost  1/2 tau^T C tau + c^T tau    C = {C}, c = {linear_term(p.cost, 'stage cost')}"
        f"   ({feeds([p.cost])})",
    ]
    if p.terminal_cost is None:
        lines.append("  terminal    none (C_T = 0, c_T = 0)")
    else:
        tb = hessian_blocks(p.terminal_cost, [x])
        CT = str(tb.get((0, 0), "0")) if tb is not None else "Hessian of the terminal cost (per call)"
        source = feeds([p.terminal_cost], terminal=True)
        lines.append(f"  terminal    1/2 x^T C_T x + c_T^T x     C_T = {CT}, "
                     f"c_T = {linear_term(p.terminal_cost, 'terminal cost')}   ({source})")
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
