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

from typing import Any

from diffcontrol.backends import kkt
from diffcontrol.backends.kkt import Info
from diffcontrol.backends.ops import Ops
from diffcontrol.errors import BackendError

NAME = "ift_cg"

OPTIONS = {
    "max_iter": (100, "iterations of the forward solver at most"),
    "tol": (None, "tolerance on the largest entry of grad_y f at the returned point; "
                  "None: sqrt(machine epsilon) of the dtype"),
    "backward": ("implicit", "'implicit' (IFT, one linear solve) or 'unroll' (autodiff through "
                             "every Newton iteration)"),
    "on_nonconvergence": ("warn", "'warn' (NotConvergedWarning) or 'raise' (SolverError)"),
    "solver": ("auto", "'newton', 'lbfgs', 'auto' (newton up to newton_max_size variables, lbfgs "
                       "above) or a callable solver(fun, y0) -> y, fun mapping y (B, n) to f (B,)"),
    "newton_max_size": (500, "the largest n that solver='auto' solves by Newton"),
    "linear_solver": ("cg", "'cg' (on Hessian-vector products), 'cg_normal' (CG on the normal "
                            "equations, for an indefinite Hessian) or 'dense' (form and solve H)"),
    "cg_tol": (None, "CG stops when ||residual|| <= cg_tol * ||dL/dy|| for every example; None: "
                     "sqrt(machine epsilon) of the dtype, the accuracy of y* itself at the default tol"),
    "cg_max_iter": (1000, "CG iterations at most"),
    "tikhonov": (0.0, "eps of (H + eps I) g = dL/dy, for a singular Hessian (Algorithm 1)"),
    "ls_max_iter": (30, "backtracking steps of Newton's line search"),
}
BACKWARD_MODES = ("implicit", "unroll")
WARM_START = True

_LINEAR = ("cg", "cg_normal", "dense")


def validate_options(options: dict) -> None:
    if not (callable(options["solver"]) or options["solver"] in ("auto", "newton", "lbfgs")):
        raise BackendError(f"solver must be 'auto', 'newton', 'lbfgs' or a callable, got {options['solver']!r}")
    if options["linear_solver"] not in _LINEAR:
        raise BackendError(f"linear_solver must be one of {', '.join(map(repr, _LINEAR))}, "
                           f"got {options['linear_solver']!r}")
    for name in ("cg_max_iter", "newton_max_size"):
        if not isinstance(options[name], int) or options[name] < 1:
            raise BackendError(f"{name} must be a positive int, got {options[name]!r}")
    if options["cg_tol"] is not None and not options["cg_tol"] > 0:
        raise BackendError(f"cg_tol must be positive, got {options['cg_tol']!r}")
    if not options["tikhonov"] >= 0:
        raise BackendError(f"tikhonov must be nonnegative, got {options['tikhonov']!r}")
    if callable(options["solver"]) and options["backward"] == "unroll":
        raise BackendError("backward='unroll' differentiates the built-in Newton solver; a user's "
                           "solver is a black box: use backward='implicit'")


def forward_solver(options: dict, n: int) -> Any:
    """The solver in force for n variables: 'newton', 'lbfgs' or the user's callable."""
    solver = options["solver"]
    if solver == "auto":
        return "newton" if n <= options["newton_max_size"] else "lbfgs"
    return solver


# ---- forward --------------------------------------------------------------------------------


def solve(data: dict, options: dict, ops: Ops, y_init: Any = None) -> tuple[tuple, Info, dict]:
    """Minimise for the batch; returns the variables' values, Info and what vjp needs."""
    objective, like = data["objective"], data["like"]
    n = objective.program.size
    y = y_init if y_init is not None else ops.zeros((like.shape[0], n), like)
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
    saved = {"y": y, "objective": objective, "options": options,
             "outputs": tuple(f"y{i}" for i in range(len(outputs))), **{f"y{i}": o for i, o in enumerate(outputs)}}
    return outputs, info, saved


def _newton(objective: Any, y: Any, options: dict, tol: float, ops: Ops) -> tuple[Any, Any, Any]:
    """Damped Newton, batched: each example's Hessian gets the smallest shift mu I (from 0,
    then 1e-8 * scale, growing tenfold) that makes it positive definite, so each step is a
    descent direction; Armijo backtracking on the exact f; converged examples stop moving."""
    xp = ops.xp
    B = y.shape[0]
    # Newton converges quadratically: one more step past tol buys a solution (and IFT gradient)
    # accurate to near roundoff. Examples that cannot get there still count as converged at tol.
    target = 1e-3 * tol

    def progressing(state):
        _, g, _, _, moved = state
        return (xp.amax(xp.abs(g), -1) > target).any() & moved

    def iteration(state):
        y, g, iterations, stalled, _ = state
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
        return (y, objective.gradient(y), iterations + xp.where(move, 1, 0), stalled | (active & ~accepted),
                move.any())

    zeros = ops.zeros((B,), y)
    start = (y, objective.gradient(y), xp.where(zeros > 0, 1, 0), zeros > 0, ~(zeros[0] > 0))
    y, _, iterations, stalled, _ = ops.loop(progressing, iteration, start, options["max_iter"])
    return y, iterations, stalled


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


def vjp(inputs: dict, saved: dict, cotangents: tuple, ops: Ops, needs: Any = ("grad_y",)) -> dict:
    """The cotangent -g of grad_y f(y*; theta), g solving (H + eps I) g = dL/dy."""
    objective, y = saved["objective"], saved["y"]
    ybar = objective.program.join(ops.xp, list(cotangents))
    g = linear_solve(objective, y, ybar, saved["options"], ops)
    return {"grad_y": -g}


def linear_solve(objective: Any, y: Any, b: Any, options: dict, ops: Ops) -> Any:
    """g with (H(y) + eps I) g = b (B, n), by the configured linear solver."""
    eps, kind = options["tikhonov"], options["linear_solver"]
    if kind == "dense":
        H = objective.hessian(y)
        return ops.xp.linalg.solve(H + eps * ops.eye_like(H), b[..., None])[..., 0]
    hvp = objective.hvp_operator(y)
    if kind == "cg":
        return conjugate_gradient(lambda v: hvp(v) + eps * v, b, options, ops)
    # normal equations (H^T H + eps I) g = H^T b; H^T = H for a Hessian
    return conjugate_gradient(lambda v: hvp(hvp(v)) + eps * v, hvp(b), options, ops)


def conjugate_gradient(apply: Any, b: Any, options: dict, ops: Ops) -> Any:
    """Batched CG for A x = b with A symmetric positive (semi)definite, given as v -> A v;
    each example stops at ||r|| <= cg_tol * ||b||."""
    xp = ops.xp
    rr = (b * b).sum(-1)
    # a relative residual below the dtype's sqrt(eps) buys nothing: y*, where H is formed,
    # is itself only that accurate (and float32 could never reach a float64-sized tolerance)
    cg_tol = options["cg_tol"] if options["cg_tol"] is not None else ops.eps(b) ** 0.5
    target = (cg_tol ** 2) * rr

    def unconverged(state):
        return (state[3] > target).any()

    def iteration(state):
        x, r, p, rr = state
        live = rr > target
        Ap = apply(p)
        pAp = (p * Ap).sum(-1)
        alpha = xp.where(live, rr / xp.where(pAp == 0, 1.0, pAp), 0.0)
        x = x + alpha[:, None] * p
        r = r - alpha[:, None] * Ap
        rr_new = (r * r).sum(-1)
        beta = xp.where(live, rr_new / xp.where(rr == 0, 1.0, rr), 0.0)
        return x, r, r + beta[:, None] * p, rr_new

    x, _, _, _ = ops.loop(unconverged, iteration, (0.0 * b, b, b, rr), options["cg_max_iter"])
    return x
