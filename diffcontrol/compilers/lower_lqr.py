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

from diffcontrol.compilers.analysis import BoxBound, ProblemForm
from diffcontrol.compilers.evaluate import Framework, evaluate
from diffcontrol.dsl.leaves import Parameter
from diffcontrol.dsl.problems import ControlProblem
from diffcontrol.errors import ModelError


@dataclass(frozen=True)
class LQRProgram:
    """A time-invariant LQ problem: the expressions it was lowered from and its sizes."""

    problem: ControlProblem
    bounds: tuple[BoxBound, ...]
    parameters: tuple[Parameter, ...]

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
        """
        xp = fw.xp
        per_example = fw.vmap(lambda p, ref: self._stage_data(fw, p, ref))
        C, c, F, f, CT, cT, x0, lo, hi = per_example(params, like)
        B, T = like.shape[0], self.T
        over_time = [xp.broadcast_to(a[:, None], (B, T) + tuple(a.shape[1:])) for a in (C, c, F, f, lo, hi)]
        C, c, F, f, lo, hi = over_time
        return {"C": C, "c": c, "F": F, "f": f, "CT": CT, "cT": cT, "x0": x0, "lo": lo, "hi": hi}

    def _stage_data(self, fw: Framework, p: dict[str, Any], ref: Any) -> tuple:
        prob, n, m = self.problem, self.n, self.m
        env = {id(param): p[param.name] for param in self.parameters}

        def at(tau: Any, expr) -> Any:
            local = dict(env)
            local[id(prob.state)] = tau[:n]
            local[id(prob.control)] = tau[n:]
            return evaluate([expr], local, fw, ref)[0]

        zero = fw.constant(np.zeros(n + m), ref)
        F = fw.jacobian(lambda tau: at(tau, prob.transition))(zero)
        f = at(zero, prob.transition)
        C = fw.hessian(lambda tau: at(tau, prob.cost))(zero)
        c = fw.grad(lambda tau: at(tau, prob.cost))(zero)
        if prob.terminal_cost is None:
            CT, cT = fw.constant(np.zeros((n, n)), ref), fw.constant(np.zeros(n), ref)
        else:
            terminal = prob.terminal_cost
            xT = fw.constant(np.zeros(n), ref)

            def term(z: Any) -> Any:
                return evaluate([terminal], {**env, id(prob.state): z}, fw, ref)[0]

            CT, cT = fw.hessian(term)(xT), fw.grad(term)(xT)
        x0 = evaluate([prob.initial_state], env, fw, ref)[0]
        lo, hi = self._bounds(fw, env, ref)
        return C, c, F, f, CT, cT, x0, lo, hi

    def _bounds(self, fw: Framework, env: dict, ref: Any) -> tuple[Any, Any]:
        xp, m = fw.xp, self.m
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
    return LQRProgram(problem, form.box_bounds, tuple(problem.parameters()))
