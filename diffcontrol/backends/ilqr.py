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

Regularisation (Levenberg-Marquardt on the trajectory, as trajax, Crocoddyl and
Tassa et al. 2012 regularise the backward pass): the Gauss-Newton sweep solves
the LQ model with ``mu * I`` added to every stage's Hessian in (x, u) and to the
terminal one, ``mu`` per example. A nonconvex cost (an obstacle penalty) makes
the model indefinite somewhere; a failed factorisation or a step that the line
search rejects raises that example's ``mu`` (to at least ``REG_FIRST`` times the
scale of its cost Hessian), an accepted step lowers it (to 0 below ``REG_MIN``),
each by a factor that grows while the same happens again (Tassa, Erez and Todorov
2012: 2, 4, 8, ...), so that ``mu`` settles where steps succeed instead of
alternating. An example stalls only once ``mu`` passes ``REG_MAX`` without a
step: then no descent is left at roundoff. The regularisation shapes the steps
only; the fixed point, its residual and the implicit backward use the true
Hessians.

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
from typing import Any, NamedTuple

from diffcontrol.backends import augmented, kkt, terminal
from diffcontrol.backends.base import Info
from diffcontrol.backends.ops import Ops, cholesky_failure
from diffcontrol.backends.riccati import adjoint, frozen_lqr_adjoint, riccati_sweep, rollout
from diffcontrol.errors import GradientFallbackWarning

#: The arrays of the implicit backward (the KKT conditions' parameter-dependent parts).
DATA_KEYS = ("grad_tau", "next", "grad_T", "x0", "lo", "hi")

#: Levenberg-Marquardt regularisation, relative to each example's cost-Hessian scale: the
#: least value after a failure, the value below which it drops to 0, the value past which a
#: failure stalls the example, and the base of its change factor.
REG_FIRST, REG_MIN, REG_MAX, REG_FACTOR = 1e-3, 1e-6, 1e6, 2.0


class Approximation(NamedTuple):
    """The LQ approximation at an iterate: C (B,T,N,N), c (B,T,N), CT (B,n,n), cT (B,n), F
    (B,T,n,N), the costates lam (B,T+1,n) and the control gradient g_u (B,T,m)."""

    C: Any
    c: Any
    CT: Any
    cT: Any
    F: Any
    lam: Any
    g_u: Any


class Iterate(NamedTuple):
    """iLQR's state: the trajectory, its cost (B,), its LQ approximation, the residual (B,),
    which examples stalled (B,), their iterations (B,), the residual below which each uses the
    Lagrangian's Hessian (B,), each one's line-search stretch (B,), its regularisation mu (B,)
    and the factor mu last changed by (B,)."""

    x: Any
    u: Any
    cost: Any
    approx: Approximation
    residual: Any
    stalled: Any
    iterations: Any
    newton_below: Any
    stretch: Any
    mu: Any
    delta: Any


class Saved(NamedTuple):
    """What the VJP needs: the solution, costates, active bounds, the final LQ data, the
    model (from the lowered data) and the backward mode."""

    x: Any
    u: Any
    lam: Any
    active_lo: Any
    active_hi: Any
    C: Any
    F: Any
    CT: Any
    model: Any
    mode: str
    #: with terminal equalities (:mod:`~diffcontrol.backends.terminal`): their multipliers
    #: (B, k) and G dx_T/dnu (B, k, k)
    nu: Any = None
    M: Any = None
    #: with general path / terminal constraints (:mod:`~diffcontrol.backends.augmented`): the
    #: multipliers and penalty of the last solve, and the active rows with their Jacobians
    multipliers: Any = None
    path: Any = None
    #: the Hessian of the Lagrangian (B, T, N, N) at the solution, from the forward's
    #: second-order check: the exact backward's stage Hessian
    H: Any = None

    FROM_DATA = {"model": "model"}
    STATIC = ("mode",)

    @property
    def outputs(self) -> tuple[Any, Any]:
        return self.x, self.u


def _cost(data: dict, x: Any, u: Any) -> Any:
    """The total cost (B,) with the data's terminal linear term c_T^T x_T, if any."""
    return _model(data).cost(x, u)


def _model(data: dict) -> Any:
    """The model with the terminal linear cost ``data["cT"]`` (B, n), if given (the multipliers
    of terminal equalities, G^T nu)."""
    model = data["model"]
    return model if data.get("cT") is None else model.with_terminal_linear(data["cT"])


def solve(data: dict, options: dict, ops: Ops, u_init: Any = None) -> tuple[tuple[Any, Any], Info, Saved]:
    """Solve the batch; with general path or terminal constraints (the model's rows), by the
    augmented Lagrangian around this solve; with only affine terminal equalities G x_T = g
    (``G`` (B, k, n), ``g`` (B, k) in the data), by Newton on their multipliers."""
    tol = options["tol"] if options["tol"] is not None else ops.eps(data["x0"]) ** 0.5
    if data["model"].path_sizes != (0, 0):
        return augmented.solve(_solve, _vjp, data, options, ops, tol, u_init)
    if "G" not in data:
        return _solve(data, options, ops, u_init)
    inner = terminal.Inner(_solve, _vjp, _cost, linear_key="cT", cotangent_key="grad_T", affine=False)
    return terminal.solve(inner, data, options, ops, tol, u_init)


def _solve(data: dict, options: dict, ops: Ops, u_init: Any = None) -> tuple[tuple[Any, Any], Info, Saved]:
    """Solve the batch. ``data``: x0 (B, n), lo / hi (B, T, m) and ``model`` (see
    :class:`~diffcontrol.programs.ilqr.Model`). Returns (x, u), Info, and what the VJP needs."""
    xp = ops.xp
    model, x0, lo, hi = _model(data), data["x0"], data["lo"], data["hi"]
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
        return Approximation(C, c, CT, cT, F, lam, g_u), residual

    newton = options["hessian"] == "newton" and options["backward"] != "unroll"

    def unfinished(state: Iterate):
        return (~((state.residual <= tol) | state.stalled)).any()

    eye_N = ops.eye_like(ops.zeros((n + m, n + m), x0))
    eye_n = ops.eye_like(ops.zeros((n, n), x0))

    def sweep(x, u, approx: Approximation, near, mu):
        """The policy (K, k) from the LQ approximation, regularised by ``mu`` (B,); for the
        examples ``near`` the solution, from the Hessian of the Lagrangian, with Gauss-Newton
        wherever that one is not positive definite. Also returns which examples got the Newton
        policy. Where even the regularised model is not convex, the policy is NaN."""
        C, c, CT, cT, F, lam = approx.C, approx.c, approx.CT, approx.cT, approx.F, approx.lam
        box = (lo - u, hi - u) if bounded else None
        finite = [xp.isfinite(a).reshape(B, -1).all(-1) for a in (C, c, F, CT, cT)]
        nonfinite = ~(finite[0] & finite[1] & finite[2] & finite[3] & finite[4])
        if ops.known_any(nonfinite):
            # no regularisation mends NaN data: a function left its domain (not known under jit,
            # where the NaN policy makes that example's step fail instead)
            raise cholesky_failure(nonfinite=True, failed=ops.to_numpy(nonfinite))

        def gauss_newton():
            policy = riccati_sweep(ops, C + mu[:, None, None, None] * eye_N, c, F, CT + mu[:, None, None] * eye_n,
                                   cT, box=box, qp_max_iter=options["qp_max_iter"], strict=False)
            return policy.K, policy.k

        def lagrangian():
            curvature = model.dynamics_curvature(x[:, :-1], u, lam[:, 1:])
            # the examples not near the solution keep their Gauss-Newton model, regularised
            H = C + xp.where(near[:, None, None, None], curvature, mu[:, None, None, None] * eye_N)
            HT = CT + xp.where(near[:, None, None], 0.0 * CT, mu[:, None, None] * eye_n)
            near_box = box
            if bounded:
                # Newton on the reduced problem: the controls at a bound that the gradient pushes
                # against stay there (a zero-width box), so only the free controls' curvature
                # counts; the full Hessian may well be indefinite along a clamped one
                g_u = approx.g_u
                clamped = near[:, None, None] & (((u <= lo) & (g_u > 0)) | ((u >= hi) & (g_u < 0)))
                near_box = tuple(xp.where(clamped, 0.0 * b, b) for b in box)
            exact = riccati_sweep(ops, H, c, F, HT, cT, box=near_box, qp_max_iter=options["qp_max_iter"],
                                  strict=False)
            ok = xp.isfinite(exact.K).reshape(B, -1).all(-1) & xp.isfinite(exact.k).reshape(B, -1).all(-1)
            K, k = ops.cond((near & ~ok).any(), gauss_newton, lambda: (exact.K, exact.k))
            return (xp.where(ok[:, None, None, None], exact.K, K), xp.where(ok[:, None, None], exact.k, k),
                    near & ok, near & ~ok)

        def plain():
            return (*gauss_newton(), near & False, near & False)

        return ops.cond(near.any(), lagrangian, plain) if newton else plain()

    def iteration(state: Iterate) -> Iterate:
        residual, stalled, mu = state.residual, state.stalled, state.mu
        active = ~((residual <= tol) | stalled)
        K, k, used, indefinite = sweep(state.x, state.u, state.approx, active & (residual <= state.newton_below), mu)
        x, u, cost, accepted, stretch, full = _line_search(
            ops, model, x0, state.x, state.u, state.cost, K, k, (lo, hi) if bounded else None, active,
            state.stretch, options)
        # an example whose Lagrangian Hessian is indefinite is not near a strict minimum yet, and
        # a failed Newton step is retried with Gauss-Newton: both go on with Gauss-Newton until
        # their residual has halved (they may have left a saddle region for a strict minimum,
        # where Newton's tail is quadratic while Gauss-Newton's can crawl at a rate near 1)
        failed = active & ~accepted
        retry = indefinite | (failed & used)
        # a failed Gauss-Newton step (an indefinite model, or no decrease) raises mu and retries
        gn_failed = failed & ~used
        # (lowered only after a full step: one the line search had to shorten says the model,
        # at this mu, still overstates the progress; lowering it then would fail next time)
        lower = accepted & full
        delta = xp.where(gn_failed, xp.maximum(0.0 * mu + REG_FACTOR, state.delta * REG_FACTOR),
                         xp.where(lower, xp.minimum(0.0 * mu + 1 / REG_FACTOR, state.delta / REG_FACTOR),
                                  state.delta))
        raised = xp.maximum(delta * mu, REG_FIRST * reg_scale)
        lowered = delta * mu
        mu = xp.where(gn_failed, raised,
                      xp.where(lower, xp.where(lowered < REG_MIN * reg_scale, 0.0 * mu, lowered), mu))
        return Iterate(x, u, cost, *approximate(x, u), stalled | (gn_failed & (raised > REG_MAX * reg_scale)),
                       state.iterations + xp.where(accepted, 1, 0),
                       xp.where(retry, 0.5 * residual, state.newton_below), stretch, mu, delta)

    u = ops.zeros((B, T, m), x0) if u_init is None else u_init
    u = xp.minimum(xp.maximum(u, lo), hi)
    x = _simulate(ops, model, x0, u)
    cost = model.cost(x, u)
    stalled = xp.zeros_like(cost, dtype=bool)
    switch = options["newton_switch"] if newton else -1.0  # never
    approx, residual = approximate(x, u)
    # the scale of each example's cost curvature (B,): mu is relative to it
    diag = xp.diagonal(approx.C, 0, -2, -1)
    reg_scale = xp.abs(diag).mean((1, 2)) + xp.abs(xp.diagonal(approx.CT, 0, -2, -1)).mean(-1) / (T + 1) \
        + ops.eps(cost) ** 0.5
    start = Iterate(x, u, cost, approx, residual, stalled, xp.where(stalled, 1, 0), 0.0 * cost + switch,
                    0.0 * cost, 0.0 * cost, 0.0 * cost + 1.0)
    end = ops.loop(unfinished, iteration, start, options["max_iter"])
    x, u, a = end.x, end.u, end.approx

    converged = end.residual <= tol
    active_lo, active_hi = kkt.active_bounds(u, lo, hi, a.g_u)
    saddle, H = _at_saddle(ops, model, x, u, a, ~(active_lo | active_hi))
    saddle = converged & saddle
    saved = Saved(x, u, a.lam, active_lo, active_hi, a.C, a.F, a.CT, model, options["backward"], H=H)
    status = kkt.status_codes(ops, converged, end.stalled, saddle)
    return (x, u), Info(converged, end.iterations, end.residual, status), saved


def _at_saddle(ops: Ops, model: Any, x: Any, u: Any, a: Approximation, free: Any) -> tuple[Any, Any]:
    """(B,) Where the Hessian of the Lagrangian (the cost's plus the costates times the
    dynamics' second derivatives) at (x, u) is finite but not positive definite on the free
    controls (B, T, m): the second-order condition of a strict local minimum fails (a saddle or
    a maximum). A Riccati sweep with the clamped controls frozen factors exactly that reduced
    Hessian, stage by stage; it fails somewhere iff the condition does. (A non-finite second
    derivative is not a saddle: the backward refuses it with its own error.) Also returns that
    Hessian H (B, T, N, N), which the exact backward reuses."""
    xp = ops.xp
    B = u.shape[0]
    H = a.C + model.dynamics_curvature(x[:, :-1], u, a.lam[:, 1:])
    policy = riccati_sweep(ops, H, a.c, a.F, a.CT, a.cT, free=free, strict=False)
    finite = xp.isfinite(H).reshape(B, -1).all(-1) & xp.isfinite(a.CT).reshape(B, -1).all(-1)
    factored = xp.isfinite(policy.L).reshape(B, -1).all(-1) & xp.isfinite(policy.V).reshape(B, -1).all(-1)
    return finite & ~factored, H


def _simulate(ops: Ops, model: Any, x0: Any, u: Any) -> Any:
    """x (B, T+1, n) from x0 (B, n) under the open-loop controls u (B, T, m)."""

    def stage(x: Any, s: dict) -> tuple:
        x_next = model.step(x, s["u"], s)
        return x_next, (x_next,)

    _, (xs,) = ops.scan(stage, x0, {"u": u, **model.stage_inputs()})
    return ops.xp.concatenate([x0[:, None], xs], 1)


def _line_search(ops: Ops, model: Any, x0: Any, x: Any, u: Any, cost: Any, K: Any, k: Any,
                 box: tuple[Any, Any] | None, active: Any, stretch: Any, options: dict) -> tuple:
    """Per example, a step size alpha whose rollout of u_t = clip(u_t + alpha k_t + K_t (x'_t - x_t))
    lowers the cost, among 1/decay^(ls_expand + stretch), ..., 1/decay^(1 + stretch) (the
    longer steps; ``stretch`` (B,) per example), 1, decay, decay^2, ... (down to
    decay^(ls_max_iter - 1)): ``ls_parallel`` step sizes are rolled out as one batch per
    round, longest first, and the first round with an acceptable one gives the lowest cost
    among them. Returns the new x, u, cost, which examples moved, the next stretch, and which
    moved by the full step or a longer one."""
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
        cx, cu = rollout(ops, model.step, x0s, us, xs, Ks, ks, alpha, lo, hi, stages=model.stage_inputs())
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
    return new_x, new_u, new_cost, accepted, stretch, accepted & (won <= 0)


def vjp(data: dict, saved: Saved, cotangents: tuple[Any, Any], ops: Ops, needs: Any = DATA_KEYS) -> dict:
    """Cotangents of the KKT conditions' parameter-dependent parts; with terminal equalities,
    also of their G and g (two LQR solves: :func:`~diffcontrol.backends.terminal.vjp`)."""
    if saved.path is not None:
        return augmented.vjp(_vjp, data, saved, cotangents, ops, needs)
    if saved.nu is not None:
        inner = terminal.Inner(_solve, _vjp, _cost, linear_key="cT", cotangent_key="grad_T", affine=False)
        return terminal.vjp(inner, data, saved, cotangents, ops, needs)
    return _vjp(data, saved, cotangents, ops, needs)


def _vjp(data: dict, saved: Saved, cotangents: tuple[Any, Any], ops: Ops, needs: Any = DATA_KEYS) -> dict:
    """Cotangents of the KKT conditions' parameter-dependent parts (:data:`DATA_KEYS`) given
    those of (x, u): one LQR solve on the Hessian of the Lagrangian (Gauss-Newton: of the
    cost only) with the active controls frozen."""
    xp = ops.xp
    x, u, lam = saved.x, saved.u, saved.lam
    T = u.shape[1]
    C = saved.C
    exact = saved.mode != "gauss_newton"
    if not exact:
        H = C
    elif saved.H is not None:  # (the forward's second-order check formed it at this point)
        H = saved.H
    else:
        H = C + saved.model.dynamics_curvature(x[:, :-1], u, lam[:, 1:])
    free = ~(saved.active_lo | saved.active_hi)
    gx, gu = cotangents
    g_tau = xp.concatenate([gx[:, :T], gu], -1)
    dx, du, dlam, r_u, fell_back = frozen_lqr_adjoint(ops, H, saved.F, saved.CT, free, g_tau, gx[:, T],
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
        "lo": xp.where(saved.active_lo, r_u, zero),
        "hi": xp.where(saved.active_hi, r_u, zero),
    }
    return {k: grads[k] if k in needs else None for k in DATA_KEYS}
