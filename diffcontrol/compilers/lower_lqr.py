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
from diffcontrol.compilers.symbolic import hessian_blocks, render_block_matrix, render_constant, render_folded
from diffcontrol.dsl.atoms import broadcast_batch
from diffcontrol.dsl.expression import Expression
from diffcontrol.dsl.problems import ControlProblem
from diffcontrol.explain import feeds


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
    """The LQR data as the solve computes them. Parameter-free data are printed by value and
    zero terms as 0, both read off the program's own arrays (evaluated at two random draws of
    the parameters, so a term is called 0 only where the solve's is); terms that depend on
    parameters are printed as expressions, the dynamics' Jacobians as the very expressions
    the solve evaluates."""
    p: ControlProblem = program.problem
    x, u = p.state, p.control
    n, m, T = p.n, p.m, p.horizon
    draws = [_probe(program, seed) for seed in (0, 1)]

    def fixed(key: str, ndim: int) -> np.ndarray | None:
        """Stage 0 of the solve's array ``key`` where the parameters do not move it, else None."""
        a, b = (_stage(d[key], ndim) for d in draws)
        return a if np.array_equal(a, b) else None

    def term(key: str, words: str) -> str:
        """c, f or c_T: 0 where the solve's is, its value where the parameters do not move it."""
        if all(not np.any(d[key]) for d in draws):
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
    C = _hessian_text(p.cost, [x, u], fixed("C", 2), "stage cost")
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
        CT = _hessian_text(p.terminal_cost, [x], fixed("CT", 2), "terminal cost")
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


def _hessian_text(cost: Expression, variables: list[Any], value: np.ndarray | None, what: str) -> str:
    """A cost's Hessian in blocks (one variable: the block): by value (``value``, the solve's own)
    where the parameters do not move it, else symbolically from the Jacobian rules the
    dynamics use."""
    if value is not None:
        sizes = np.cumsum([0] + [v.shape[0] for v in variables])
        blocks = {(i, j): render_constant(value[sizes[i]:sizes[i + 1], sizes[j]:sizes[j + 1]])
                  for i in range(len(variables)) for j in range(len(variables))}
    else:
        blocks = hessian_blocks(cost, variables)
        if blocks is None:
            return f"Hessian of the {what} (per call)"
        blocks = {k: str(b) for k, b in blocks.items()}
    if len(variables) == 1:
        return blocks.get((0, 0), "0")
    return render_block_matrix({k: b for k, b in blocks.items() if b != "0"}, len(variables))
