"""The iLQR program: a ControlProblem with smooth dynamics and costs, evaluated per call.

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
from typing import TYPE_CHECKING, Any

import numpy as np

from diffcontrol.dsl.leaves import Parameter
from diffcontrol.dsl.traverse import nodes_of_type
from diffcontrol.programs.control import ControlProgram, repeat_rows
from diffcontrol.programs.evaluate import Framework, constant_arrays, evaluate, evaluate_batched

if TYPE_CHECKING:  # (built by the lowering; the program calls its methods)
    from diffcontrol.compilers.augmented import PathConstraints


@dataclass(frozen=True)
class ILQRProgram(ControlProgram):
    """A smooth finite-horizon control problem: its expressions, bounds and parameters."""

    #: whether the stage / terminal cost is quadratic (its Hessian is then evaluated once per call)
    quadratic_cost: bool = False
    quadratic_terminal: bool = False
    #: the general path and terminal constraints as augmented-Lagrangian rows, or None (then
    #: affine terminal equalities, if any, are met by Newton on their multipliers)
    path: PathConstraints | None = None

    def data(self, fw: Framework, params: dict[str, Any], like: Any) -> dict[str, Any]:
        """x0 (B, n), lo / hi (B, T, m) and the :class:`Model` bound to ``params``."""
        terminal = self._terminal_pieces() if self.path is None else []
        out = self._evaluate_pieces(fw, params, like, self._bound_pieces() + terminal)
        out["model"] = Model(self, fw, params, like)
        return out

    def implicit_inputs(self, fw: Framework, params: dict, data: dict, saved: dict) -> dict[str, Any]:
        """The parameter-dependent parts of the KKT conditions at the solution (x, u, lam)
        in ``saved``, recorded by the framework's autodiff: the stationarity residual
        ``grad_tau`` (B, T, N) = grad of l_t + lam_{t+1}^T f_t, the dynamics' values ``next``
        (B, T, n), the terminal gradient ``grad_T`` (B, n), and x0, lo, hi; with path
        constraints, the Lagrangian includes their multipliers' terms, and their rows' values
        ``path`` (B, T, k_s) and ``path_T`` (B, k_T) join (the active ones are KKT conditions)."""
        model: Model = data["model"]
        if getattr(saved, "multipliers", None) is not None:
            model = model.with_multipliers(*saved.multipliers)
        x, u, lam = saved.x, saved.u, saved.lam
        grad_tau, next_x = model.lagrangian_gradient(x[:, :-1], u, lam[:, 1:])
        inputs = {"grad_tau": grad_tau, "next": next_x, "grad_T": model.terminal_gradient(x[:, -1]),
                  "x0": data["x0"], "lo": data["lo"], "hi": data["hi"]}
        if self.path is not None:
            inputs["path"], inputs["path_T"] = model.path_values(x, u)
        return {**inputs, **{k: data[k] for k in ("G", "g") if k in data}}

    @property
    def _time_varying(self) -> set[str]:
        own = super()._time_varying
        return own | self.path.time_varying if self.path is not None else own

    def _env(self, p: dict[str, Any], tau: Any = None) -> dict[int, Any]:
        env = super()._env(p, tau)
        if self.path is not None:
            env.update({id(q): p[q.name] for q in self.path.hidden if q.name in p})
        return env


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
        p, path = program.problem, program.path
        #: the stage and terminal costs the solver minimises: the problem's, plus the path
        #: constraints' augmented-Lagrangian terms (zero until :meth:`with_multipliers`)
        self.stage_cost, self.final_cost = p.cost, p.terminal_cost
        if path is not None:
            self.stage_cost = p.cost + path.stage_term() if path.stage is not None else p.cost
            if path.terminal is not None:
                term = path.terminal_term()
                self.final_cost = term if p.terminal_cost is None else p.terminal_cost + term
            self.params = {**params, **self._multiplier_values(path, like, None, None, None)}

        def names(root: Any) -> set:
            return {q.name for q in nodes_of_type([root], Parameter)} if root is not None else set()

        self._names = {"dynamics": names(p.transition), "cost": names(self.stage_cost),
                       "terminal": names(self.final_cost)}
        if path is not None:
            self._names["path"] = names(path.stage.values if path.stage is not None else None)
            self._names["path_terminal"] = names(path.terminal.values if path.terminal is not None else None)
        self._names["lagrangian"] = self._names["dynamics"] | self._names["cost"]
        self._time_varying = program._time_varying
        self._quadratic_stage: tuple | None = None  # (C, c at 0) once per call, if quadratic
        self._quadratic_terminal: tuple | None = None
        #: an extra terminal linear cost c^T x_T (B, n) or None: the multipliers of terminal
        #: equalities (not part of :meth:`terminal_gradient`, the KKT conditions' own term)
        self.terminal_linear: Any = None
        roots = [r for r in (p.transition, self.stage_cost, self.final_cost) if r is not None]
        self._constants = constant_arrays(roots, fw, like)

    # -- path constraints (augmented Lagrangian) -------------------------------------------------

    @property
    def path_sizes(self) -> tuple[int, int]:
        """(k_s, k_T): the numbers of stage and terminal constraint rows (0, 0 without)."""
        path = self.program.path
        if path is None:
            return 0, 0
        return (path.stage.size if path.stage is not None else 0,
                path.terminal.size if path.terminal is not None else 0)

    def path_masks(self) -> tuple[Any, Any, Any, Any]:
        """Constants (as arrays of the model's dtype and device): the stage weights (T+1, k_s),
        1 where a row binds; the terminal weights (k_T,); which stage rows (k_s,) and which
        terminal rows (k_T,) are equalities (1.0) rather than inequalities (0.0)."""
        path, fw = self.program.path, self.fw
        ks, kT = self.path_sizes
        weights = path.stage_weights(self.program.T) if ks else np.zeros((self.program.T + 1, 1))
        eq_s = path.stage.equality.astype(float) if ks else np.zeros(1)
        eq_T = path.terminal.equality.astype(float) if kT else np.zeros(1)
        return (fw.constant(weights, self.like), fw.constant(np.ones(max(kT, 1)) * (kT > 0), self.like),
                fw.constant(eq_s, self.like), fw.constant(eq_T, self.like))

    def _multiplier_values(self, path: PathConstraints, like: Any, lam: Any, lam_T: Any, rho: Any) -> dict:
        """The hidden parameters' values: multipliers lam (B, T+1, k_s), lam_T (B, k_T) and the
        penalty rho (B,); None: the model without the constraints' terms (weights 0)."""
        xp = self.fw.xp
        B, T = like.shape[0], self.program.T
        ks, kT = (max(k, 1) for k in self.path_sizes)
        if lam is None:
            zero = 0.0 * like
            return {path.multipliers.name: xp.broadcast_to(zero[:, None, None], (B, T + 1, ks)),
                    path.weights.name: xp.broadcast_to(zero[:, None, None], (B, T + 1, ks)),
                    path.terminal_multipliers.name: xp.broadcast_to(zero[:, None], (B, kT)),
                    path.terminal_weights.name: xp.broadcast_to(zero[:, None], (B, kT)),
                    path.penalty.name: zero + 1.0, path.half_inverse.name: zero + 0.5}
        weights, weights_T, _, _ = self.path_masks()
        return {path.multipliers.name: lam, path.weights.name: xp.broadcast_to(weights, (B, T + 1, ks)),
                path.terminal_multipliers.name: lam_T, path.terminal_weights.name: xp.broadcast_to(weights_T, (B, kT)),
                path.penalty.name: rho, path.half_inverse.name: 0.5 / rho}

    def with_multipliers(self, lam: Any, lam_T: Any, rho: Any) -> Model:
        """The model whose costs carry the path constraints' augmented-Lagrangian terms with
        multipliers lam (B, T+1, k_s), lam_T (B, k_T) and penalty rho (B,)."""
        out = copy.copy(self)
        out.params = {**self.params, **self._multiplier_values(self.program.path, self.like, lam, lam_T, rho)}
        out._tiled, out._quadratic_stage, out._quadratic_terminal = {}, None, None
        return out

    def path_values(self, x: Any, u: Any) -> tuple[Any, Any]:
        """The constraint rows' values: c_t (B, T, k_s) at (x_t, u_t, p_t), t < T, and c_T
        (B, k_T) at (x_T, p_T) (zeros (B, T, 1), (B, 1) for an empty set)."""
        path, xp = self.program.path, self.fw.xp
        B, T, m = u.shape
        n = x.shape[-1]
        if path.stage is not None:
            c = self._batched(path.stage.values, "path", x[:, :-1].reshape(B * T, n), u.reshape(B * T, m),
                              over_time=T)
            c = xp.broadcast_to(c, (B * T, path.stage.size)).reshape(B, T, path.stage.size)
        else:
            c = 0.0 * x[:, :-1, :1]
        if path.terminal is not None:
            c_T = xp.broadcast_to(self._batched(path.terminal.values, "path_terminal", x[:, -1]),
                                  (B, path.terminal.size))
        else:
            c_T = 0.0 * x[:, -1, :1]
        return c, c_T

    def path_jacobians(self, x: Any, u: Any) -> tuple[Any, Any]:
        """The rows' Jacobians: J_t (B, T, k_s, N) in tau_t = [x_t; u_t], J_T (B, k_T, n) in x_T
        (zeros with one row for an empty set)."""
        path, fw = self.program.path, self.fw
        if path.stage is not None:
            def rows(p: dict, ref: Any, tau: Any) -> Any:
                out = evaluate([path.stage.values], self.program._env(p, tau), fw, ref)[0]
                return fw.xp.broadcast_to(out, (path.stage.size,))

            J = self._per_stage("path", fw.jacobian(rows, argnums=2), self._tau(x[:, :-1], u))
        else:
            J = 0.0 * self._tau(x[:, :-1], u)[:, :, None, :]
        if path.terminal is not None:
            p, ref = self._params("path_terminal")

            def rows_T(p: dict, ref: Any, z: Any) -> Any:
                env = self.program._env(p)
                env[id(self.program.problem.state)] = z
                return fw.xp.broadcast_to(evaluate([path.terminal.values], env, fw, ref)[0], (path.terminal.size,))

            J_T = fw.vmap(fw.jacobian(rows_T, argnums=2))(p, ref, x[:, -1])
        else:
            J_T = 0.0 * x[:, -1, None, :]
        return J, J_T

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
        if which in ("terminal", "path_terminal"):
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
        return evaluate([self.stage_cost], self.program._env(p, tau), self.fw, ref)[0]

    def _lT(self, p: dict, ref: Any, x: Any) -> Any:
        env = self.program._env(p)
        env[id(self.program.problem.state)] = x
        return evaluate([self.final_cost], env, self.fw, ref)[0]

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
        stage = self._batched(self.stage_cost, "cost", x[:, :-1].reshape(B * T, n),
                              u.reshape(B * T, m), over_time=T)
        total = self.fw.xp.broadcast_to(stage, (B * T,)).reshape(B, T).sum(1)
        if self.terminal_linear is not None:
            total = total + (self.terminal_linear * x[:, -1]).sum(-1)
        if self.final_cost is None:
            return total
        return total + self.fw.xp.broadcast_to(self._batched(self.final_cost, "terminal", x[:, -1]), (B,))

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
        if self.final_cost is None:
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
        if self.final_cost is None:
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
