"""Lowering a ControlProblem with affine dynamics and quadratic costs to the LQR IR.

The IR's numbers are functions of the parameters: at call time the emitter's
framework evaluates the declared expressions and takes their exact
derivatives (the dynamics are affine and the costs quadratic, so Jacobian and
Hessian at tau = 0 *are* F, C, and the values there f, c), all with ordinary
framework ops, so its autodiff carries the backend's cotangents to the
Parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from diffcontrol.compilers.analysis import BoxBound, ProblemForm
from diffcontrol.compilers.evaluate import Framework, evaluate
from diffcontrol.compilers.linearize import jacobian_expression
from diffcontrol.dsl.expression import Expression
from diffcontrol.dsl.function import FunctionCall
from diffcontrol.dsl.leaves import Parameter
from diffcontrol.dsl.problems import ControlProblem
from diffcontrol.dsl.traverse import nodes_of_type
from diffcontrol.errors import ModelError


@dataclass(frozen=True)
class LQRProgram:
    """A time-invariant LQ problem: the expressions it was lowered from and its sizes."""

    problem: ControlProblem
    bounds: tuple[BoxBound, ...]
    parameters: tuple[Parameter, ...]
    #: (df/dx, df/du) as expressions in the parameters, or None: autodiff per call
    jacobians: tuple[Expression, Expression] | None = None
    # parameter-free data per (keys, dtype, device): a pure cache, never per-call state
    _constants: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def n(self) -> int:
        return self.problem.n

    @property
    def m(self) -> int:
        return self.problem.m

    @property
    def T(self) -> int:
        return self.problem.horizon

    def data(self, fw: Framework, params: dict[str, Any], like: Any) -> dict[str, Any]:
        """The IR arrays (see :data:`diffcontrol.backends.lqr.DATA_KEYS`) for a batch.

        ``params`` maps each parameter's name to an array with a leading batch
        dimension B; ``like`` is an array of shape (B,) giving dtype and device.
        Pieces that depend on no parameter are computed once per dtype and device.
        """
        xp = fw.xp
        B, T = like.shape[0], self.T
        out: dict[str, Any] = {}
        for keys, exprs, piece in self._pieces():
            names = {p.name for p in nodes_of_type(exprs, Parameter)}
            if names or nodes_of_type(exprs, FunctionCall):  # a dc.Function's weights may change
                sub = {k: v for k, v in params.items() if k in names}
                values = fw.vmap(lambda p, ref, piece=piece: piece(fw, p, ref))(sub, like)
            else:
                cache_key = (keys, str(like.dtype), str(getattr(like, "device", "")))
                if cache_key not in self._constants:
                    self._constants[cache_key] = piece(fw, {}, like[0])
                values = [xp.broadcast_to(v, (B,) + tuple(v.shape)) for v in self._constants[cache_key]]
            out.update(zip(keys, values))
        for k in ("lo", "hi"):  # C, c, F, f stay time-invariant (no T axis); the bounds carry it
            out[k] = xp.broadcast_to(out[k][:, None], (B, T) + tuple(out[k].shape[1:]))
        return out

    def _pieces(self):
        """(data keys, expressions they depend on, function computing them for one example)."""
        prob = self.problem
        terminal = [prob.terminal_cost] if prob.terminal_cost is not None else []
        return [
            (("F", "f"), [prob.transition], self._dynamics),
            (("C", "c"), [prob.cost], self._stage_cost),
            (("CT", "cT"), terminal, self._terminal_cost),
            (("x0",), [prob.initial_state], self._initial_state),
            (("lo", "hi"), [b.bound for b in self.bounds], self._bounds),
        ]

    def _env(self, p: dict[str, Any], tau: Any = None) -> dict[int, Any]:
        env = {id(param): p[param.name] for param in self.parameters if param.name in p}
        if tau is not None:
            env[id(self.problem.state)] = tau[: self.n]
            env[id(self.problem.control)] = tau[self.n:]
        return env

    def _dynamics(self, fw: Framework, p: dict, ref: Any) -> tuple:
        def g(tau):
            return evaluate([self.problem.transition], self._env(p, tau), fw, ref)[0]

        zero = fw.constant(np.zeros(self.n + self.m), ref)
        if self.jacobians is None:
            return fw.jacobian(g)(zero), g(zero)
        Fx, Fu, f = evaluate([*self.jacobians, self.problem.transition], self._env(p, zero), fw, ref)
        return fw.xp.concatenate([Fx, Fu], -1), f

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

    def _initial_state(self, fw: Framework, p: dict, ref: Any) -> tuple:
        return (evaluate([self.problem.initial_state], self._env(p), fw, ref)[0],)

    def _bounds(self, fw: Framework, p: dict, ref: Any) -> tuple[Any, Any]:
        xp, m, env = fw.xp, self.m, self._env(p)
        lo = fw.constant(np.full(m, -np.inf), ref)
        hi = fw.constant(np.full(m, np.inf), ref)
        for b in self.bounds:
            rows = np.atleast_1d(np.arange(m)[b.index])
            value = xp.broadcast_to(evaluate([b.bound], env, fw, ref)[0], (rows.size,))
            scatter = np.zeros((m, rows.size))
            scatter[rows, np.arange(rows.size)] = 1.0
            full = fw.constant(scatter, ref) @ value
            mask = fw.constant(np.isin(np.arange(m), rows).astype(float), ref) > 0.5
            if b.lower:
                lo = xp.where(mask, xp.maximum(lo, full), lo)
            else:
                hi = xp.where(mask, xp.minimum(hi, full), hi)
        return lo, hi


def lower_lqr(problem: ControlProblem, form: ProblemForm) -> LQRProgram:
    """Check the box bounds' shapes and freeze the program."""
    for b in form.box_bounds:
        rows = np.atleast_1d(np.arange(problem.m)[b.index])
        try:
            np.broadcast_to(np.empty(b.bound.shape), (rows.size,))
        except ValueError:
            raise ModelError(
                f"the bound {b.bound} of shape {b.bound.shape} in '{b.source}' does not fit "
                f"the {rows.size} control entries it bounds"
            ) from None
    Fx = jacobian_expression(problem.transition, problem.state)
    Fu = jacobian_expression(problem.transition, problem.control)
    jacobians = None if Fx is None or Fu is None else (Fx, Fu)
    return LQRProgram(problem, form.box_bounds, tuple(problem.parameters()), jacobians)
