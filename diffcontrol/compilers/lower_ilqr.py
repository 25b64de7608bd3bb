"""Lowering a ControlProblem with smooth dynamics and costs to the iLQR IR.

The ilqr backend needs the problem's functions, not fixed arrays: the
dynamics' value and Jacobian, the costs' gradients and Hessians, and the
second derivatives of the dynamics (for the exact backward), all at
trajectories it only knows while it iterates. :class:`Model` evaluates them
for a batch with the emitter's framework (vectorised over batch and time,
derivatives by the framework's autodiff, which is also how a ``dc.Function``
is differentiated).

For the implicit backward, :meth:`ILQRProgram.implicit_inputs` evaluates,
with the framework's autodiff recording, the pieces of the problem's KKT
conditions that depend on the parameters at the (fixed) solution: the
stationarity residual, the dynamics' values, the terminal gradient, x0 and
the bounds. The backend returns their cotangents (implicit function theorem),
and the framework carries them on to the Parameters and the weights of every
``dc.Function``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np

from diffcontrol.compilers.analysis import ProblemForm
from diffcontrol.compilers.control_program import ControlProgram, check_bounds, repeat_rows
from diffcontrol.compilers.evaluate import Framework, constant_arrays, evaluate, evaluate_batched
from diffcontrol.dsl.function import FunctionCall
from diffcontrol.dsl.leaves import Parameter
from diffcontrol.dsl.problems import ControlProblem
from diffcontrol.dsl.traverse import nodes_of_type
from diffcontrol.explain import feeds

_QUADRATIC = ("quadratic, convex", "quadratic, convexity unknown")


@dataclass(frozen=True)
class ILQRProgram(ControlProgram):
    """A smooth finite-horizon control problem: its expressions, bounds and parameters."""

    #: whether the stage / terminal cost is quadratic (its Hessian is then evaluated once per call)
    quadratic_cost: bool = False
    quadratic_terminal: bool = False

    def data(self, fw: Framework, params: dict[str, Any], like: Any) -> dict[str, Any]:
        """x0 (B, n), lo / hi (B, T, m) and the :class:`Model` bound to ``params``."""
        out = self._evaluate_pieces(fw, params, like, self._bound_pieces() + self._terminal_pieces())
        out["model"] = Model(self, fw, params, like)
        return out

    def implicit_inputs(self, fw: Framework, params: dict, data: dict, saved: dict) -> dict[str, Any]:
        """The parameter-dependent parts of the KKT conditions at the solution (x, u, lam)
        in ``saved``, recorded by the framework's autodiff: the stationarity residual
        ``grad_tau`` (B, T, N) = grad of l_t + lam_{t+1}^T f_t, the dynamics' values ``next``
        (B, T, n), the terminal gradient ``grad_T`` (B, n), and x0, lo, hi."""
        model: Model = data["model"]
        x, u, lam = saved.x, saved.u, saved.lam
        grad_tau, next_x = model.lagrangian_gradient(x[:, :-1], u, lam[:, 1:])
        inputs = {"grad_tau": grad_tau, "next": next_x, "grad_T": model.terminal_gradient(x[:, -1]),
                  "x0": data["x0"], "lo": data["lo"], "hi": data["hi"]}
        return {**inputs, **{k: data[k] for k in ("G", "g") if k in data}}


class Model:
    """The problem's functions for one batch of parameters, vectorised over batch and time.

    Arrays are batch-first: x (B, n), u (B, m) for one stage, or (B, T, n), (B, T, m)
    along a trajectory (B the parameters' batch; :meth:`tiled` gives the model for several
    stacked copies of it). A time-varying parameter's value is (B, T+1, ...): stage t reads
    row t, the terminal cost row T; the rollouts pass the dynamics' rows stage by stage
    (:meth:`stage_inputs`, the third argument of :meth:`step`).
    """

    def __init__(self, program: ILQRProgram, fw: Framework, params: dict[str, Any], like: Any):
        self._tiled: dict[int, Model] = {}
        self.program, self.fw, self.params, self.like = program, fw, params, like
        p = program.problem
        self._names = {
            "dynamics": {q.name for q in nodes_of_type([p.transition], Parameter)},
            "cost": {q.name for q in nodes_of_type([p.cost], Parameter)},
            "terminal": {q.name for q in nodes_of_type([p.terminal_cost], Parameter)}
            if p.terminal_cost is not None else set(),
        }
        self._names["lagrangian"] = self._names["dynamics"] | self._names["cost"]
        self._time_varying = program._time_varying
        self._quadratic_stage: tuple | None = None  # (C, c at 0) once per call, if quadratic
        self._quadratic_terminal: tuple | None = None
        #: an extra terminal linear cost c^T x_T (B, n) or None: the multipliers of terminal
        #: equalities (not part of :meth:`terminal_gradient`, the KKT conditions' own term)
        self.terminal_linear: Any = None
        roots = [r for r in (p.transition, p.cost, p.terminal_cost) if r is not None]
        self._constants = constant_arrays(roots, fw, like)

    def with_terminal_linear(self, c: Any) -> Model:
        """The same functions with the terminal linear cost c^T x_T (c (B, n)) added."""
        out = copy.copy(self)
        out.terminal_linear, out._tiled = c, {}
        return out

    def tiled(self, copies: int) -> Model:
        """The same functions for ``copies`` stacked copies of the batch (copy-major rows
        j * B + b): the line search rolls several step sizes out at once."""
        if copies == 1:
            return self
        if copies in self._tiled:  # every iteration's line search asks for the same
            return self._tiled[copies]
        xp = self.fw.xp
        tiled = copy.copy(self)  # same names and constants
        tiled.params = {k: xp.concatenate([v] * copies, 0) for k, v in self.params.items()}
        tiled.like = xp.concatenate([self.like] * copies, 0)
        if self.terminal_linear is not None:
            tiled.terminal_linear = xp.concatenate([self.terminal_linear] * copies, 0)
        tiled._quadratic_stage = tiled._quadratic_terminal = None
        tiled._tiled = {}
        if self.fw.caches_arrays:  # (not across a jit trace: the arrays would leak its tracers)
            self._tiled[copies] = tiled
        return tiled

    # -- batching ---------------------------------------------------------------------------

    def _params(self, which: str) -> tuple[dict, Any]:
        """The parameters ``which`` uses (B, ...) and the reference array (B,) for dtype and
        device; for the terminal cost, the time-varying ones at t = T."""
        p = {name: self.params[name] for name in self._names[which]}
        if which == "terminal":
            p = {k: v[:, -1] if k in self._time_varying else v for k, v in p.items()}
        return p, self.like

    def _over_stages(self, p: dict, T: int) -> dict:
        """Each parameter as B * T stage rows, example-major: the time-varying ones' rows
        p_0..p_{T-1}, the others repeated."""
        return {k: v[:, :T].reshape((v.shape[0] * T,) + tuple(v.shape[2:])) if k in self._time_varying
                else self._repeat(v, T) for k, v in p.items()}

    def stage_inputs(self) -> dict:
        """The dynamics' time-varying parameters (B, T, ...): the rollouts' per-stage inputs."""
        T = self.program.T
        return {f"param:{k}": self.params[k][:, :T] for k in self._names["dynamics"] if k in self._time_varying}

    def _per_stage(self, which: str, fn: Any, *arrays: Any) -> Any:
        """Apply the per-point ``fn(p, ref, *points)`` to arrays (B, T, ...) over B * T points."""
        B, T = arrays[0].shape[:2]
        p, ref = self._params(which)

        p = self._over_stages(p, T)
        flat = [a.reshape((B * T,) + tuple(a.shape[2:])) for a in arrays]
        out = self.fw.vmap(fn)(p, self._repeat(ref, T), *flat)
        if isinstance(out, tuple):
            return tuple(o.reshape((B, T) + tuple(o.shape[1:])) for o in out)
        return out.reshape((B, T) + tuple(out.shape[1:]))

    # -- per-point functions of tau = [x; u] --------------------------------------------------

    def _f(self, p: dict, ref: Any, tau: Any) -> Any:
        return evaluate([self.program.problem.transition], self.program._env(p, tau), self.fw, ref)[0]

    def _l(self, p: dict, ref: Any, tau: Any) -> Any:
        return evaluate([self.program.problem.cost], self.program._env(p, tau), self.fw, ref)[0]

    def _lT(self, p: dict, ref: Any, x: Any) -> Any:
        env = self.program._env(p)
        env[id(self.program.problem.state)] = x
        return evaluate([self.program.problem.terminal_cost], env, self.fw, ref)[0]

    def _tau(self, x: Any, u: Any) -> Any:
        return self.fw.xp.concatenate([x, u], -1)

    # -- what the backend calls ----------------------------------------------------------------

    def _batched(self, root: Any, which: str, x: Any, u: Any = None, over_time: int = 0,
                 stage: dict | None = None) -> Any:
        """``root`` for the whole batch in one pass (no vmap: the rollout calls this T times
        per line-search round) at x (B', n) and u (B', m); with ``over_time`` = T, the rows
        are B' * T stage points, example-major, and each parameter is repeated T times (a
        time-varying one gives its T rows); ``stage``: one stage's time-varying rows, from
        :meth:`stage_inputs`."""
        p, _ = self._params(which)
        if over_time:
            p = self._over_stages(p, over_time)
        elif stage is not None:
            p = {k: stage[f"param:{k}"] if k in self._time_varying else v for k, v in p.items()}
        problem = self.program.problem
        env = self.program._env(p)
        env[id(problem.state)] = x
        if u is not None:
            env[id(problem.control)] = u
        return evaluate_batched([root], env, self.fw, self.like, self._constants)[0]

    def _repeat(self, v: Any, T: int) -> Any:
        """(B, ...) -> (B * T, ...), each row T times."""
        return repeat_rows(self.fw.xp, v, T)

    def step(self, x: Any, u: Any, stage: dict | None = None) -> Any:
        """x_{t+1} (B', n) from x_t (B', n), u_t (B', m); ``stage``: the slice at t of
        :meth:`stage_inputs` (needed where the dynamics have time-varying parameters)."""
        return self._batched(self.program.problem.transition, "dynamics", x, u, stage=stage)

    def cost(self, x: Any, u: Any) -> Any:
        """The total cost (B',) of trajectories x (B', T+1, n), u (B', T, m)."""
        B, T, m = u.shape
        n = x.shape[-1]
        stage = self._batched(self.program.problem.cost, "cost", x[:, :-1].reshape(B * T, n),
                              u.reshape(B * T, m), over_time=T)
        total = self.fw.xp.broadcast_to(stage, (B * T,)).reshape(B, T).sum(1)
        if self.terminal_linear is not None:
            total = total + (self.terminal_linear * x[:, -1]).sum(-1)
        if self.program.problem.terminal_cost is None:
            return total
        return total + self.fw.xp.broadcast_to(
            self._batched(self.program.problem.terminal_cost, "terminal", x[:, -1]), (B,))

    def linearize(self, x: Any, u: Any) -> Any:
        """F (B, T, n, N): the dynamics' Jacobians along x (B, T+1, n), u (B, T, m)."""
        # per point, vmapped: the Jacobian of the points' sum would serve reverse mode only
        # (JAX's jacobian is forward mode, which would push B * T * N tangents through it)
        return self._per_stage("dynamics", self.fw.jacobian(self._f, argnums=2), self._tau(x[:, :-1], u))

    def quadraticize(self, x: Any, u: Any) -> tuple[Any, Any, Any, Any]:
        """The stage costs' Hessians C (B, T, N, N) and gradients c (B, T, N) along the
        trajectory, and the terminal cost's CT (B, n, n), cT (B, n) at x_T."""
        fw, xp = self.fw, self.fw.xp
        tau = self._tau(x[:, :-1], u)
        if self.program.quadratic_cost:
            if self._quadratic_stage is None:  # constant Hessian: once per call, at tau = 0
                per_stage = self._names["cost"] & self._time_varying
                zero = 0.0 * (tau if per_stage else tau[:, :1])
                self._quadratic_stage = self._per_stage(
                    "cost", lambda p, ref, t: (fw.hessian(self._l, argnums=2)(p, ref, t),
                                               fw.grad(self._l, argnums=2)(p, ref, t)), zero)
            C0, c0 = self._quadratic_stage
            C = xp.broadcast_to(C0, tau.shape[:2] + C0.shape[2:])
            c = (C0 @ tau[..., None])[..., 0] + c0
        else:
            C, c = self._per_stage("cost", lambda p, ref, t: (fw.hessian(self._l, argnums=2)(p, ref, t),
                                                              fw.grad(self._l, argnums=2)(p, ref, t)), tau)
        CT, cT = self._terminal_derivatives(x[:, -1])
        return C, c, CT, cT if self.terminal_linear is None else cT + self.terminal_linear

    def _terminal_derivatives(self, xT: Any) -> tuple[Any, Any]:
        fw = self.fw
        if self.program.problem.terminal_cost is None:
            zero = 0.0 * xT
            return zero[..., None] * zero[..., None, :], zero
        p, ref = self._params("terminal")

        def derivatives(p: dict, ref: Any, z: Any) -> tuple[Any, Any]:
            return fw.hessian(self._lT, argnums=2)(p, ref, z), fw.grad(self._lT, argnums=2)(p, ref, z)

        if not self.program.quadratic_terminal:
            return fw.vmap(derivatives)(p, ref, xT)
        if self._quadratic_terminal is None:  # constant Hessian: once per call, at x = 0
            self._quadratic_terminal = fw.vmap(derivatives)(p, ref, 0.0 * xT)
        CT, cT0 = self._quadratic_terminal
        return CT, (CT @ xT[..., None])[..., 0] + cT0

    def terminal_gradient(self, xT: Any) -> Any:
        """grad of the terminal cost (B, n) at x_T (B, n); zeros without a terminal cost."""
        if self.program.problem.terminal_cost is None:
            return 0.0 * xT
        p, ref = self._params("terminal")
        return self.fw.vmap(self.fw.grad(self._lT, argnums=2))(p, ref, xT)

    def dynamics_curvature(self, x: Any, u: Any, lam_next: Any) -> Any:
        """sum_i lam_{t+1,i} d2 f_i / d tau2 (B, T, N, N): the dynamics' share of the
        Hessian of the Lagrangian, x (B, T, n) and u (B, T, m) the stages' points."""
        # Hessian-vector products of the points' sum (its Hessian is block diagonal): with
        # the j-th unit vector at every point, one product gives every point's column j, so
        # N products instead of a per-point nested Jacobian under vmap
        xp = self.fw.xp
        B, T, n = x.shape
        N = n + u.shape[-1]
        lam = lam_next.reshape(B * T, n)

        def weighted(tau: Any) -> Any:
            f = self._batched(self.program.problem.transition, "dynamics", tau[:, :n], tau[:, n:], over_time=T)
            return (f * lam).sum(-1)

        hvp = self.fw.hvp_operator(weighted, self._tau(x, u).reshape(B * T, N))
        eye = self.fw.constant(np.eye(N), self.like)
        columns = [hvp(xp.broadcast_to(eye[j], (B * T, N))) for j in range(N)]
        return xp.stack(columns, -1).reshape(B, T, N, N)

    def lagrangian_gradient(self, x: Any, u: Any, lam_next: Any) -> tuple[Any, Any]:
        """(grad_tau of l_t + lam_{t+1}^T f_t (B, T, N), f_t (B, T, n)) at the stages' points
        x (B, T, n), u (B, T, m), recorded by the framework's autodiff (the parameters and
        the dc.Functions' weights stay differentiable; x, u, lam are constants)."""
        fw = self.fw

        def lagrangian(tau: Any, p: dict, ref: Any, lam: Any) -> tuple[Any, Any]:
            f = self._f(p, ref, tau)
            return self._l(p, ref, tau) + (f * lam).sum(), f

        def point(p: dict, ref: Any, tau: Any, lam: Any) -> tuple[Any, Any]:
            return fw.grad(lagrangian, has_aux=True)(tau, p, ref, lam)

        return self._per_stage("lagrangian", point, self._tau(x, u), lam_next)

def lower_ilqr(problem: ControlProblem, form: ProblemForm) -> ILQRProgram:
    """Check the box bounds' shapes and freeze the program."""
    check_bounds(problem, form.box_bounds)
    return ILQRProgram(problem, form.box_bounds, tuple(problem.parameters()),
                       quadratic_cost=form.value("stage cost") in _QUADRATIC,
                       quadratic_terminal=form.value("terminal cost") in _QUADRATIC)


def explain_lowering(program: Any, options: dict) -> list[str]:
    p: ControlProblem = program.problem
    x, u = p.state, p.control
    n, m, T = p.n, p.m, p.horizon
    opaque = [c.function.name for c in nodes_of_type([p.transition, p.cost] + (
        [p.terminal_cost] if p.terminal_cost is not None else []), FunctionCall)]
    how = "the layer framework's autodiff (e.g. torch.func), vectorised over batch and time"
    lines = [
        "Lowered problem (iLQR: the functions, linearized along each iterate)",
        f"  sizes: n={n}, m={m}, N=n+m={n + m}, T={T}; tau_t = [{x.name}_t; {u.name}_t]",
        f"  dynamics    x_(t+1) = {p.transition}   ({feeds([p.transition])})",
        f"  stage cost  {p.cost}   ({feeds([p.cost])})",
        f"  terminal    {p.terminal_cost if p.terminal_cost is not None else 'none'}",
        f"  x_0 = {p.initial_state}   ({feeds([p.initial_state])})",
        "  control box  " + ("; ".join(str(b.source) for b in program.bounds) if program.bounds else "none"),
        "  terminal equalities  " + ("; ".join(map(str, p.terminal_constraints)) + " at x_T: met exactly by Newton "
                                     "on their multipliers around the iLQR solve (sensitivities from its exact "
                                     "backward; the gradient adds one more LQR solve)"
                                     if p.terminal_constraints else "none"),
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
