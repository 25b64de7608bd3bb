"""The LQR program: the IR arrays C, c, F, f, C_T, c_T, x_0, the bounds and the terminal
equalities of a lowered problem, evaluated for a batch on every layer call.

The numbers are functions of the parameters: the emitter's framework evaluates the
declared expressions and takes their exact derivatives (the dynamics are affine and the
costs quadratic, so Jacobian and Hessian at tau = 0 *are* F, C, and the values there f, c),
all with ordinary framework ops, so its autodiff carries the backend's cotangents to the
Parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from diffcontrol.dsl.atoms import broadcast_batch
from diffcontrol.dsl.expression import Expression
from diffcontrol.programs.control import ControlProgram
from diffcontrol.programs.evaluate import Framework, evaluate_batched


@dataclass(frozen=True)
class LQRProgram(ControlProgram):
    """A time-invariant LQ problem: the expressions it was lowered from and its sizes."""

    #: (df/dx, df/du) as expressions in the parameters, or None: autodiff per call
    jacobians: tuple[Expression, Expression] | None = None
    #: the stage cost's Hessian blocks (xx, xu, ux, uu) as expressions, or None: autodiff per call
    hessian: tuple[Expression, ...] | None = None
    #: the terminal cost's Hessian (n, n) as an expression, or None: autodiff per call
    terminal_hessian: Expression | None = None

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
        return [
            (("F", "f"), [prob.transition], self._dynamics if self.jacobians is None else self._affine_dynamics, True),
            *self._cost_pieces(),
            *self._bound_pieces(),
        ] + self._terminal_pieces()

    def _cost_pieces(self) -> list:
        """C and c (C_T and c_T): the Hessian from its block expressions where the lowering built
        them, evaluated only on the parameters they use (a reference r_t leaves C one matrix
        for all stages), and the gradient at 0 by autodiff; else both by autodiff."""
        prob = self.problem
        terminal = [prob.terminal_cost] if prob.terminal_cost is not None else []
        stage = [(("C", "c"), [prob.cost], self._stage_cost, True)] if self.hessian is None else [
            (("C",), list(self.hessian), self._stage_hessian, True), (("c",), [prob.cost], self._stage_gradient, True)]
        final = [(("CT", "cT"), terminal, self._terminal_cost, True)] if self.terminal_hessian is None else [
            (("CT",), [self.terminal_hessian], self._terminal_hessian, True),
            (("cT",), terminal, self._terminal_gradient, True)]
        return stage + final

    def _affine_dynamics(self, fw: Framework, p: dict, like: Any) -> tuple:
        """F (b, n, N) and f (b, n) from the symbolic Jacobians, for batched parameters ``p``."""
        env = self._env(p)
        zero = fw.constant(np.zeros((1, self.n + self.m)), like)
        env[id(self.problem.state)], env[id(self.problem.control)] = zero[:, :self.n], zero[:, self.n:]
        Fx, Fu, f = evaluate_batched([*self.jacobians, self.problem.transition], env, fw, like)
        return fw.xp.concatenate(broadcast_batch(fw.xp, [Fx, Fu]), -1), f

    # The derivatives below are of functions of rows (one per example, or per example and
    # stage), at tau = 0, by the framework's row derivatives: exact, for the dynamics are
    # affine and the costs quadratic.
    def _rows(self, fw: Framework, like: Any, k: int) -> Any:
        return fw.constant(np.zeros((like.shape[0], k)), like)

    def _dynamics(self, fw: Framework, p: dict, like: Any) -> tuple:
        """F (b, n, N) and f (b, n) by the framework's autodiff (no symbolic Jacobian)."""
        f, F = fw.row_jacobian(self._at_rows(fw, self.problem.transition), self._rows(fw, like, self.n + self.m), p)
        return F, f

    def _stage_cost(self, fw: Framework, p: dict, like: Any) -> tuple:
        c, C = fw.row_gradient(self._at_rows(fw, self.problem.cost), self._rows(fw, like, self.n + self.m), p,
                               hessian=True)
        return C, c

    def _stage_hessian(self, fw: Framework, p: dict, like: Any) -> tuple:
        """C (b, N, N) from the Hessian's block expressions, for batched parameters ``p``."""
        xp = fw.xp
        xx, xu, ux, uu = broadcast_batch(xp, evaluate_batched(self.hessian, self._env(p), fw, like))
        return (xp.concatenate([xp.concatenate([xx, xu], -1), xp.concatenate([ux, uu], -1)], -2),)

    def _stage_gradient(self, fw: Framework, p: dict, like: Any) -> tuple:
        return (fw.row_gradient(self._at_rows(fw, self.problem.cost), self._rows(fw, like, self.n + self.m), p),)

    def _terminal_hessian(self, fw: Framework, p: dict, like: Any) -> tuple:
        return (evaluate_batched([self.terminal_hessian], self._env(p), fw, like)[0],)

    def _terminal_gradient(self, fw: Framework, p: dict, like: Any) -> tuple:
        return (fw.row_gradient(self._at_rows(fw, self.problem.terminal_cost, terminal=True),
                                self._rows(fw, like, self.n), p),)

    def _terminal_cost(self, fw: Framework, p: dict, like: Any) -> tuple:
        n = self.n
        if self.problem.terminal_cost is None:
            return fw.constant(np.zeros((1, n, n)), like), fw.constant(np.zeros((1, n)), like)
        cT, CT = fw.row_gradient(self._at_rows(fw, self.problem.terminal_cost, terminal=True),
                                 self._rows(fw, like, n), p, hessian=True)
        return CT, cT
