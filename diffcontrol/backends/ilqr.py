"""The ``ilqr`` backend: box-constrained iLQR for smooth dynamics, with exact implicit gradients.

Forward (the Differentiable MPC paper's Appendix A; Tassa et al. 2014): at the
current trajectory, linearize the dynamics and quadraticize the costs; one
Riccati sweep with a projected-Newton box QP per stage (the kernel of the lqr
backend) gives a feedback policy; a line search on the true cost rolls it out
for several step sizes at once (longer ones than the full step too) and keeps,
per example, the one with the lowest cost. An example stops once the projected
gradient of its total cost with respect to the controls is below ``tol`` (or no
step lowers its cost). Gauss-Newton (the cost's Hessian only) converges
linearly; near the solution (``hessian="newton"``, the default) the sweep takes
the Hessian of the Lagrangian on the free controls instead, the one the exact
backward uses, and the tail converges quadratically.

Backward (``backward="implicit"``): the implicit function theorem at the fixed
point. The KKT conditions of the *nonlinear* problem (stationarity of the
Lagrangian, the dynamics, x_0, the active bounds) are differentiated: their
Jacobian in (x, u, lam) is the KKT matrix of an LQR whose stage Hessian is the
Hessian of the Lagrangian, C_t + sum_i lam_{t+1,i} d2 f_i, so the backward is
one Riccati solve with the active controls frozen (the paper's eq. 19, made
exact; cf. Jin et al. 2020 and Xu, Molloy & Gould 2023), linear in the
horizon and independent of the number of forward iterations.
``backward="gauss_newton"`` drops the dynamics' second derivatives, as the
Differentiable MPC paper and mpc.pytorch do (inexact for nonlinear dynamics;
kept for comparison). The VJP returns the cotangents of the KKT conditions'
parameter-dependent parts (see :meth:`ILQRProgram.implicit_inputs`); the
framework's autodiff carries them to the parameters.
"""

from __future__ import annotations

import warnings
from typing import Any

from diffcontrol.backends import kkt
from diffcontrol.backends.kkt import Info
from diffcontrol.backends.ops import Ops
from diffcontrol.backends.riccati import adjoint, frozen_lqr_adjoint, riccati_sweep, rollout
from diffcontrol.errors import BackendError, GradientFallbackWarning

NAME = "ilqr"

#: The arrays of the implicit backward (the KKT conditions' parameter-dependent parts).
DATA_KEYS = ("grad_tau", "next", "grad_T", "x0", "lo", "hi")

#: Options with their defaults and one line of documentation each.
OPTIONS = {
    "max_iter": (100, "iLQR iterations at most"),
    "tol": (None, "tolerance on the scaled projected gradient of the total cost w.r.t. the controls; "
                  "None: sqrt(machine epsilon) of the dtype"),
    "backward": ("implicit", "'implicit' (exact: one LQR solve on the Hessian of the Lagrangian), "
                             "'gauss_newton' (the final LQR approximation, as mpc.pytorch; inexact "
                             "for nonlinear dynamics) or 'unroll' (autodiff through every iteration)"),
    "on_nonconvergence": ("warn", "'warn' (NotConvergedWarning) or 'raise' (SolverError)"),
    "qp_max_iter": (20, "projected-Newton iterations of each stage's box QP"),
    "ls_decay": (0.5, "step shrink factor of the line search"),
    "ls_max_iter": (10, "step sizes tried per iteration: 1, decay, decay^2, ..."),
    "ls_parallel": (4, "step sizes rolled out at once (one batched rollout) per line-search round"),
    "ls_expand": (1, "step sizes above the full step tried too, in its round: 1/decay, ..., "
                     "(1/decay)^ls_expand (at most ls_parallel - 1; 0: none); the round's lowest cost wins, "
                     "and per example they grow by 1/decay while the longest keeps winning"),
    "hessian": ("newton", "'newton': near the solution (scaled residual below newton_switch) the sweep "
                          "uses the Hessian of the Lagrangian, cost Hessian + sum lam d2f, as the exact "
                          "backward does, on the free controls (those at a bound the gradient pushes "
                          "against stay), for quadratic instead of linear convergence, falling back to "
                          "Gauss-Newton per example where it is not positive definite or its step "
                          "fails, until the residual has halved; 'gauss_newton': the cost Hessian "
                          "throughout (classic iLQR). "
                          "backward='unroll' always iterates Gauss-Newton"),
    "newton_switch": (1e-3, "scaled residual below which hessian='newton' uses the Lagrangian's Hessian"),
}
BACKWARD_MODES = ("implicit", "gauss_newton", "unroll")


def validate_options(options: dict) -> None:
    if options["hessian"] not in ("newton", "gauss_newton"):
        raise BackendError(f"hessian must be 'newton' or 'gauss_newton', got {options['hessian']!r}")
    if not isinstance(options["ls_expand"], int) or options["ls_expand"] < 0:
        raise BackendError(f"ls_expand must be a nonnegative int, got {options['ls_expand']!r}")
    if not options["newton_switch"] >= 0:
        raise BackendError(f"newton_switch must be nonnegative, got {options['newton_switch']!r}")


def solve(data: dict, options: dict, ops: Ops, u_init: Any = None) -> tuple[tuple[Any, Any], Info, dict]:
    """Solve the batch. ``data``: x0 (B, n), lo / hi (B, T, m) and ``model`` (see
    :class:`~diffcontrol.compilers.lower_ilqr.Model`). Returns (x, u), Info, and what the VJP needs."""
    xp = ops.xp
    model, x0, lo, hi = data["model"], data["x0"], data["lo"], data["hi"]
    B, T, m = lo.shape
    n = x0.shape[-1]
    bounded = ops.known_any(xp.isfinite(lo) | xp.isfinite(hi)) is not False
    tol = options["tol"] if options["tol"] is not None else ops.eps(x0) ** 0.5

    def approximate(x, u):
        """The LQ approximation at (x, u), its costates and the residual."""
        C, c, CT, cT = model.quadraticize(x, u)
        F = model.linearize(x, u)
        lam, g_u = adjoint(ops, c, F, cT)
        residual = kkt.projected_gradient_residual(ops, u, lo, hi, g_u, [c[..., n:]])
        return (C, c, CT, cT, F, lam, g_u), residual

    newton = options["hessian"] == "newton" and options["backward"] != "unroll"

    def unfinished(state):
        residual, stalled = state[4], state[5]
        return (~((residual <= tol) | stalled)).any()

    def sweep(x, u, approx, near):
        """The policy (K, k) from the LQ approximation; for the examples ``near`` the solution,
        from the Hessian of the Lagrangian, with Gauss-Newton wherever that one is not
        positive definite. Also returns which examples got the Newton policy."""
        C, c, CT, cT, F, lam, _ = approx
        box = (lo - u, hi - u) if bounded else None

        def gauss_newton():
            policy = riccati_sweep(ops, C, c, F, CT, cT, box=box, qp_max_iter=options["qp_max_iter"])
            return policy.K, policy.k

        def lagrangian():
            curvature = model.dynamics_curvature(x[:, :-1], u, lam[:, 1:])
            H = C + xp.where(near[:, None, None, None], curvature, 0.0 * curvature)
            near_box = box
            if bounded:
                # Newton on the reduced problem: the controls at a bound that the gradient pushes
                # against stay there (a zero-width box), so only the free controls' curvature
                # counts; the full Hessian may well be indefinite along a clamped one
                g_u = approx[6]
                clamped = near[:, None, None] & (((u <= lo) & (g_u > 0)) | ((u >= hi) & (g_u < 0)))
                near_box = tuple(xp.where(clamped, 0.0 * b, b) for b in box)
            exact = riccati_sweep(ops, H, c, F, CT, cT, box=near_box, qp_max_iter=options["qp_max_iter"],
                                  strict=False)
            ok = xp.isfinite(exact.K).reshape(B, -1).all(-1) & xp.isfinite(exact.k).reshape(B, -1).all(-1)
            K, k = ops.cond((near & ~ok).any(), gauss_newton, lambda: (exact.K, exact.k))
            return (xp.where(ok[:, None, None, None], exact.K, K), xp.where(ok[:, None, None], exact.k, k),
                    near & ok, near & ~ok)

        def plain():
            return (*gauss_newton(), near & False, near & False)

        return ops.cond(near.any(), lagrangian, plain) if newton else plain()

    def iteration(state):
        x, u, cost, approx, residual, stalled, iterations, newton_below, stretch = state
        active = ~((residual <= tol) | stalled)
        K, k, used, indefinite = sweep(x, u, approx, active & (residual <= newton_below))
        x, u, cost, accepted, stretch = _line_search(
            ops, model, x0, x, u, cost, K, k, (lo, hi) if bounded else None, active, stretch, options)
        # an example whose Lagrangian Hessian is indefinite is not near a strict minimum yet, and
        # a failed Newton step is retried with Gauss-Newton: both go on with Gauss-Newton until
        # their residual has halved (they may have left a saddle region for a strict minimum,
        # where Newton's tail is quadratic while Gauss-Newton's can crawl at a rate near 1)
        failed = active & ~accepted
        retry = indefinite | (failed & used)
        return (x, u, cost, *approximate(x, u), stalled | (failed & ~used),
                iterations + xp.where(accepted, 1, 0), xp.where(retry, 0.5 * residual, newton_below), stretch)

    u = ops.zeros((B, T, m), x0) if u_init is None else u_init
    u = xp.minimum(xp.maximum(u, lo), hi)
    x = _simulate(ops, model, x0, u)
    cost = model.cost(x, u)
    stalled = xp.zeros_like(cost, dtype=bool)
    switch = options["newton_switch"] if newton else -1.0  # never
    start = (x, u, cost, *approximate(x, u), stalled, xp.where(stalled, 1, 0), 0.0 * cost + switch, 0.0 * cost)
    x, u, _, (C, _, CT, _, F, lam, g_u), residual, stalled, iterations, _, _ = ops.loop(
        unfinished, iteration, start, options["max_iter"])

    converged = residual <= tol
    active_lo, active_hi = kkt.active_bounds(u, lo, hi, g_u)
    saved = {"x": x, "u": u, "lam": lam, "active_lo": active_lo, "active_hi": active_hi,
             "C": C, "F": F, "CT": CT, "model": model, "mode": options["backward"]}
    return (x, u), Info(converged, iterations, residual, kkt.status_codes(ops, converged, stalled)), saved


def _simulate(ops: Ops, model: Any, x0: Any, u: Any) -> Any:
    """x (B, T+1, n) from x0 (B, n) under the open-loop controls u (B, T, m)."""

    def stage(x: Any, s: dict) -> tuple:
        x_next = model.step(x, s["u"])
        return x_next, (x_next,)

    _, (xs,) = ops.scan(stage, x0, {"u": u})
    return ops.xp.concatenate([x0[:, None], xs], 1)


def _line_search(ops: Ops, model: Any, x0: Any, x: Any, u: Any, cost: Any, K: Any, k: Any,
                 box: tuple[Any, Any] | None, active: Any, stretch: Any, options: dict) -> tuple:
    """Per example, a step size alpha whose rollout of u_t = clip(u_t + alpha k_t + K_t (x'_t - x_t))
    lowers the cost, among 1/decay^(ls_expand + stretch), ..., 1/decay^(1 + stretch) (the
    longer steps; ``stretch`` (B,) per example), 1, decay, decay^2, ... (down to
    decay^(ls_max_iter - 1)): ``ls_parallel`` step sizes are rolled out as one batch per
    round, longest first, and the first round with an acceptable one gives the lowest cost
    among them. Returns the new x, u, cost, which examples moved, and the next stretch."""
    xp = ops.xp
    B = cost.shape[0]
    # the full step always shares the first round with the longer ones: near the solution
    # it is the one that wins, and Newton's quadratic convergence needs it
    expand = min(options["ls_expand"], options["ls_parallel"] - 1)
    copies = min(options["ls_parallel"], options["ls_max_iter"] + expand)
    rounds = -(-(options["ls_max_iter"] + expand) // copies)

    def tile(a: Any) -> Any:
        return a if copies == 1 else xp.concatenate([a] * copies, 0)

    lo, hi = (tile(box[0]), tile(box[1])) if box is not None else (None, None)
    model = model.tiled(copies)
    x0s, us, xs, Ks, ks = tile(x0), tile(u), tile(x[:, :-1]), tile(K), tile(k)
    # a decrease, or, for the full step, no increase beyond roundoff: near the solution the
    # decrease of a Newton step drops below roundoff of the cost before its gradient does
    slack = 10 * ops.eps(cost) * (1 + xp.abs(cost))
    offsets = xp.concatenate([ops.zeros((B, 1), x0) + j for j in range(copies)], 0)  # (copies * B, 1)
    stretches = tile(stretch[:, None])

    def searching(state):
        return ~(state[1] | ~active).all()

    def round_(state):
        first, accepted, new_x, new_u, new_cost, won = state
        trial = first + offsets  # the step sizes' exponents, copy-major
        trial = trial - xp.where(trial < 0, stretches, 0.0 * stretches)  # the longer steps, stretched
        alpha = options["ls_decay"] ** trial
        cx, cu = rollout(ops, lambda xt, ut, _: model.step(xt, ut), x0s, us, xs, Ks, ks, alpha, lo, hi)
        ccost = model.cost(cx, cu)
        # where GN's curvature overstates the cost's (a plateau: steps far shorter than the
        # way to go), a longer step than the full one is cheaper per unit progress; so per
        # example the round's lowest acceptable cost wins, not the first acceptable step
        before = accepted
        for j in range(copies):
            rows = slice(j * B, (j + 1) * B)
            exponent = trial[rows, 0]
            bound = xp.where(exponent == 0, cost + slack, cost)
            take = (active & ~before & (ccost[rows] < bound) & (exponent < options["ls_max_iter"])
                    & (~accepted | (ccost[rows] < new_cost)))
            new_x = xp.where(take[:, None, None], cx[rows], new_x)
            new_u = xp.where(take[:, None, None], cu[rows], new_u)
            new_cost = xp.where(take, ccost[rows], new_cost)
            won = xp.where(take, exponent, won)
            accepted = accepted | take
        return first + copies, accepted, new_x, new_u, new_cost, won

    start = (0.0 * cost[0] - expand, xp.zeros_like(active), x, u, cost, 0.0 * cost)
    _, accepted, new_x, new_u, new_cost, won = ops.loop(searching, round_, start, rounds)
    # the stretch grows while the longest step keeps winning (a plateau) and is gone once a
    # step no longer than the full one wins
    longest = accepted & (won == -(expand + stretch)) & (expand > 0)
    stretch = xp.where(longest, xp.minimum(stretch + 1, 0.0 * stretch + options["ls_max_iter"]),
                       xp.where(accepted & (won >= 0), 0.0 * stretch, stretch))
    return new_x, new_u, new_cost, accepted, stretch


def vjp(data: dict, saved: dict, cotangents: tuple[Any, Any], ops: Ops, needs: Any = DATA_KEYS) -> dict:
    """Cotangents of the KKT conditions' parameter-dependent parts (:data:`DATA_KEYS`) given
    those of (x, u): one LQR solve on the Hessian of the Lagrangian (Gauss-Newton: of the
    cost only) with the active controls frozen."""
    xp = ops.xp
    x, u, lam = saved["x"], saved["u"], saved["lam"]
    T = u.shape[1]
    C = saved["C"]
    exact = saved["mode"] != "gauss_newton"
    H = C + saved["model"].dynamics_curvature(x[:, :-1], u, lam[:, 1:]) if exact else C
    free = ~(saved["active_lo"] | saved["active_hi"])
    gx, gu = cotangents
    g_tau = xp.concatenate([gx[:, :T], gu], -1)
    dx, du, dlam, r_u, fell_back = frozen_lqr_adjoint(ops, H, saved["F"], saved["CT"], free, g_tau, gx[:, T],
                                                      fallback_C=C if exact else None)
    if fell_back is not None and ops.known_any(fell_back):  # (not known under jax.jit: no warning)
        warnings.warn(f"{int(fell_back.sum())} of {fell_back.shape[0]} examples got the Gauss-Newton gradient: "
                      "the Hessian of the Lagrangian is not positive definite on their free controls (the solve "
                      "did not reach a strict local minimum there; check info.converged)",
                      GradientFallbackWarning, stacklevel=2)
    zero = 0.0 * r_u
    grads = {
        "grad_tau": xp.concatenate([dx[:, :T], du], -1),
        "next": dlam[:, 1:],
        "grad_T": dx[:, T],
        "x0": dlam[:, 0],
        "lo": xp.where(saved["active_lo"], r_u, zero),
        "hi": xp.where(saved["active_hi"], r_u, zero),
    }
    return {k: grads[k] if k in needs else None for k in DATA_KEYS}
