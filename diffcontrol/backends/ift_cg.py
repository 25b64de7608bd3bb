"""The ``ift_cg`` backend: a generic unconstrained argmin y*(theta) = argmin_y f(y; theta),
differentiated by the implicit function theorem (Differentiable Implicit Layers, Alg. 1).

Forward: any solver, never differentiated through. By default damped Newton with
an Armijo line search on the exact Hessian (n <= ``newton_max_size``), L-BFGS
with a strong-Wolfe line search above (the framework's own, see the emitter's
``Ops.lbfgs``), or a user's ``solver(fun, y0) -> y``. Before any gradient, the
optimality of the returned point is checked: the residual is the largest entry
of grad_y f (the IFT holds only at a stationary point).

Backward: solve (H + eps I) g = dL/dy at y* by conjugate gradient on
Hessian-vector products (one double-backward each; H is never formed), then
the framework's autodiff gives -g^T d2f/dy dtheta from the cotangent -g of
grad_y f. ``linear_solver="cg_normal"`` solves the normal equations
(H^T H + eps I) g = H^T dL/dy instead (two products per iteration), for
stationary points whose Hessian is not positive definite; ``"dense"`` forms H and
factorises it (the test oracle).
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

from diffcontrol.backends import kkt
from diffcontrol.backends.base import Info
from diffcontrol.backends.ops import Ops
from diffcontrol.errors import NotConvergedWarning, SolverError


class Saved(NamedTuple):
    """What the VJP needs: the minimiser y (B, n), the variables' values, the objective (from
    the lowered data) and the options."""

    y: Any
    outputs: tuple
    objective: Any
    options: dict

    FROM_DATA = {"objective": "objective"}
    STATIC = ("options",)


class _NewtonState(NamedTuple):
    y: Any
    gradient: Any
    iterations: Any
    stalled: Any
    moved: Any  # whether any example moved in the last iteration (a scalar)


class _CGState(NamedTuple):
    x: Any
    r: Any
    p: Any
    rr: Any  # |r|^2 (B,)


def forward_solver(options: dict, n: int) -> Any:
    """The solver in force for n variables: 'newton', 'lbfgs' or the user's callable."""
    solver = options["solver"]
    if solver == "auto":
        return "newton" if n <= options["newton_max_size"] else "lbfgs"
    return solver


# ---- forward --------------------------------------------------------------------------------


def solve(data: dict, options: dict, ops: Ops, y_init: Any = None) -> tuple[tuple, Info, Saved]:
    """Minimise for the batch; returns the variables' values, Info and what vjp needs."""
    objective, like = data["objective"], data["like"]
    n = objective.program.size
    y = y_init if y_init is not None else ops.zeros((like.shape[0], n), like)
    outside = ~ops.xp.isfinite(objective.value(y))
    if ops.known_any(outside):  # (under jax.jit the solve goes on, and its outputs are NaN)
        rows = [i for i, flag in enumerate(outside.tolist()) if flag]
        raise SolverError(
            f"the objective is NaN or Inf at the starting point for examples {rows} "
            f"({'the y_init given' if y_init is not None else 'y = 0, the default start'}); the solver cannot "
            "start outside the objective's domain (e.g. -dc.log(y) at y = 0): pass y_init= inside it")
    solver = forward_solver(options, n)
    tol = options["tol"] if options["tol"] is not None else ops.eps(like) ** 0.5
    stalled = ops.zeros((like.shape[0],), like) > 0
    iterations = ops.xp.where(stalled, 1, 0)  # integer counts, as the other backends report
    if solver == "newton":
        y, iterations, stalled = _newton(objective, y, options, tol, ops)
    elif solver == "lbfgs":
        y, iterations = ops.lbfgs(objective.value, y, options["max_iter"], tol)
    else:
        y = solver(objective.value, y)
    residual = ops.xp.amax(ops.xp.abs(objective.gradient(y)), -1)
    converged = residual <= tol
    info = Info(converged, iterations, residual, kkt.status_codes(ops, converged, stalled & ~converged))
    outputs = tuple(objective.program.split(ops.xp, y))
    return outputs, info, Saved(y, outputs, objective, options)


def _newton(objective: Any, y: Any, options: dict, tol: float, ops: Ops) -> tuple[Any, Any, Any]:
    """Damped Newton, batched: each example's Hessian gets the smallest shift mu I (from 0,
    then 1e-8 * scale, growing tenfold) that makes it positive definite, so each step is a
    descent direction; Armijo backtracking on the exact f; converged examples stop moving."""
    xp = ops.xp
    B = y.shape[0]
    # Newton converges quadratically: one more step past tol buys a solution (and IFT gradient)
    # accurate to near roundoff. Examples that cannot get there still count as converged at tol.
    target = 1e-3 * tol

    def progressing(state: _NewtonState):
        return (xp.amax(xp.abs(state.gradient), -1) > target).any() & state.moved

    def iteration(state: _NewtonState) -> _NewtonState:
        y, g = state.y, state.gradient
        active = xp.amax(xp.abs(g), -1) > target
        step = _damped_newton_step(objective.hessian(y), g, ops)
        f0 = objective.value(y)
        slope = (g * step).sum(-1)
        roundoff = 16 * ops.eps(f0) * xp.abs(f0)

        def searching(ls):
            return ~ls[1].all()

        def backtrack(ls):
            alpha, accepted = ls
            # Armijo, with f's roundoff allowed: near the minimum a Newton step's decrease
            # (~|g|^2 / H) drops below what f can resolve, and without the allowance the
            # gradient could never get below ~sqrt(eps)
            ok = objective.value(y + alpha[:, None] * step) <= f0 + 1e-4 * alpha * slope + roundoff
            accepted = accepted | ok
            return xp.where(accepted, alpha, 0.5 * alpha), accepted

        alpha, accepted = ops.loop(searching, backtrack, (ops.full_like(f0, 1.0), ~active), options["ls_max_iter"])
        move = active & accepted
        y = y + xp.where(move[:, None], alpha[:, None] * step, 0.0 * step)
        # no example can decrease f any more: stop
        return _NewtonState(y, objective.gradient(y), state.iterations + xp.where(move, 1, 0),
                            state.stalled | (active & ~accepted), move.any())

    zeros = ops.zeros((B,), y)
    start = _NewtonState(y, objective.gradient(y), xp.where(zeros > 0, 1, 0), zeros > 0, ~(zeros[0] > 0))
    end = ops.loop(progressing, iteration, start, options["max_iter"])
    return end.y, end.iterations, end.stalled


def _damped_newton_step(H: Any, g: Any, ops: Ops) -> Any:
    xp = ops.xp
    eye = ops.eye_like(H)
    scale = xp.amax(xp.abs(H), (-2, -1)) + 1.0

    def not_pd(state):
        return xp.isnan(state[1]).any()

    def shift(state):
        mu, L = state
        bad = xp.isnan(L).any(-1).any(-1)
        mu = xp.where(bad, xp.where(mu == 0, 1e-8 * scale, 10 * mu), mu)
        return mu, ops.cholesky(H + mu[:, None, None] * eye, strict=False)

    _, L = ops.loop(not_pd, shift, (0.0 * scale, ops.cholesky(H, strict=False)), 20)
    return -ops.cho_solve(L, g)


# ---- backward --------------------------------------------------------------------------------


def vjp(inputs: dict, saved: Saved, cotangents: tuple, ops: Ops, needs: Any = ("grad_y",)) -> dict:
    """The cotangent -g of grad_y f(y*; theta), g solving (H + eps I) g = dL/dy; every
    example's linear solve is checked (see :func:`checked_linear_solve`)."""
    objective = saved.objective
    ybar = objective.program.join(ops.xp, list(cotangents))
    g = checked_linear_solve(objective, saved.y, ybar, saved.options, ops)
    return {"grad_y": -g}


def checked_linear_solve(objective: Any, y: Any, b: Any, options: dict, ops: Ops) -> Any:
    """g with (H(y) + eps I) g = b (B, n), by the configured linear solver, each example's
    relative residual ||(H + eps I) g - b|| / ||b|| checked against cg_tol: examples that miss
    it are solved again with the dense Hessian (n <= dense_fallback_max_size), and those still
    missing it are named by a NotConvergedWarning (SolverError with on_nonconvergence='raise')
    where the values are known (eagerly), or get NaN gradients (under jax.jit): never a silent
    wrong gradient."""
    xp = ops.xp
    eps = options["tikhonov"]
    tol = options["cg_tol"] if options["cg_tol"] is not None else ops.eps(b) ** 0.5
    hvp = objective.hvp_operator(y)

    b_norm = xp.sqrt((b * b).sum(-1))

    def misses(g: Any) -> Any:
        """Where ||(H + eps I) g - b|| > 10 cg_tol ||b|| (B,): the slack lets the dense solve's own
        roundoff on an ill-conditioned H pass; NaN misses too."""
        r = hvp(g) + eps * g - b
        return ~(xp.sqrt((r * r).sum(-1)) <= 10 * tol * b_norm)

    def relative_residual(g: Any) -> Any:
        r = hvp(g) + eps * g - b
        return xp.sqrt((r * r).sum(-1)) / (b_norm + ops.eps(b))

    g = linear_solve(objective, y, b, options, ops, hvp)
    bad = misses(g)
    n = b.shape[-1]
    if options["linear_solver"] != "dense" and n <= options["dense_fallback_max_size"] \
            and ops.known_any(bad) is not False:
        dense = linear_solve(objective, y, b, {**options, "linear_solver": "dense"}, ops, hvp)
        g = xp.where(bad[:, None], dense, g)
        bad = misses(g)
    if ops.known_any(bad):
        rel = relative_residual(g)
        rows = [i for i, flag in enumerate(bad.tolist()) if flag]
        message = (
            f"the backward's linear solve (H + eps I) g = dL/dy missed its tolerance for examples {rows} "
            f"(relative residual up to {float(rel.max()):.2e} > cg_tol {tol:.1e} with linear_solver="
            f"{options['linear_solver']!r}, cg_max_iter={options['cg_max_iter']}"
            + (", and the dense fallback too" if n <= options["dense_fallback_max_size"] else
               f"; n = {n} is above dense_fallback_max_size={options['dense_fallback_max_size']}")
            + "); their gradients are inaccurate. Raise cg_max_iter, pass linear_solver='dense' (n small) or "
            "'cg_normal' (an indefinite Hessian), or tikhonov > 0 for a singular Hessian")
        if options["on_nonconvergence"] == "raise":
            raise SolverError(message)
        # as the forward does: a warning naming the examples, their gradients the best solve's
        warnings.warn(message, NotConvergedWarning, stacklevel=2)
        return g
    # under jax.jit the check can neither warn nor raise: the affected examples' gradients become NaN
    return xp.where(bad[:, None], xp.nan * g, g)


def linear_solve(objective: Any, y: Any, b: Any, options: dict, ops: Ops, hvp: Any = None) -> Any:
    """g with (H(y) + eps I) g = b (B, n), by the configured linear solver (unchecked)."""
    eps, kind = options["tikhonov"], options["linear_solver"]
    if kind == "dense":
        H = objective.hessian(y)
        return ops.xp.linalg.solve(H + eps * ops.eye_like(H), b[..., None])[..., 0]
    hvp = objective.hvp_operator(y) if hvp is None else hvp
    if kind == "cg":
        return conjugate_gradient(lambda v: hvp(v) + eps * v, b, options, ops)
    # normal equations (H^T H + eps I) g = H^T b; H^T = H for a Hessian
    return conjugate_gradient(lambda v: hvp(hvp(v)) + eps * v, hvp(b), options, ops)


def conjugate_gradient(apply: Any, b: Any, options: dict, ops: Ops) -> Any:
    """Batched CG for A x = b with A symmetric positive (semi)definite, given as v -> A v;
    each example stops at ||r|| <= cg_tol * ||b|| or after cg_max_iter iterations (the caller
    checks which)."""
    xp = ops.xp
    rr = (b * b).sum(-1)
    # a relative residual below the dtype's sqrt(eps) buys nothing: y*, where H is formed,
    # is itself only that accurate (and float32 could never reach a float64-sized tolerance)
    cg_tol = options["cg_tol"] if options["cg_tol"] is not None else ops.eps(b) ** 0.5
    target = (cg_tol ** 2) * rr

    def unconverged(state: _CGState):
        return (state.rr > target).any()

    def iteration(state: _CGState) -> _CGState:
        x, r, p, rr = state
        live = rr > target
        Ap = apply(p)
        pAp = (p * Ap).sum(-1)
        alpha = xp.where(live, rr / xp.where(pAp == 0, 1.0, pAp), 0.0)
        x = x + alpha[:, None] * p
        r = r - alpha[:, None] * Ap
        rr_new = (r * r).sum(-1)
        beta = xp.where(live, rr_new / xp.where(rr == 0, 1.0, rr), 0.0)
        return _CGState(x, r, r + beta[:, None] * p, rr_new)

    return ops.loop(unconverged, iteration, _CGState(0.0 * b, b, b, rr), options["cg_max_iter"]).x
