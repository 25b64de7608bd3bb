"""The batched Riccati kernel shared by the LQR-type backends (framework-neutral).

Conventions (batch-first): ``C`` (B, T, N, N) and ``c`` (B, T, N) are the stage
cost's Hessian and linear term over tau_t = [x_t; u_t] (N = n + m), ``F``
(B, T, n, N) the dynamics' Jacobian, ``CT`` (B, n, n) and ``cT`` (B, n) the
terminal cost's. ``ops`` supplies the array module and the two factorisations
that differ between frameworks (see :mod:`diffcontrol.backends.ops`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from diffcontrol.backends.ops import Ops


def mv(A: Any, x: Any) -> Any:
    """Batched matrix-vector product: (..., p, q) @ (..., q) -> (..., p)."""
    return (A @ x[..., None])[..., 0]


def vm(x: Any, A: Any) -> Any:
    """Batched vector-matrix product x^T A: (..., p), (..., p, q) -> (..., q). As a product
    and a sum, not a matmul of A's transpose: for the small matrices of a stage that is about
    twice as fast in torch (the transposed operand costs the matmul a copy)."""
    return (x[..., :, None] * A).sum(-2)


def masked_hessian(ops: Ops, H: Any, free: Any) -> Any:
    """H restricted to the free coordinates, with the identity on the clamped ones,
    so one Cholesky serves every batch element whatever its free set."""
    return ops.xp.where(free[..., :, None] & free[..., None, :], H, ops.eye_like(H))


def box_qp(ops: Ops, H: Any, q: Any, lo: Any, hi: Any, max_iter: int, strict: bool = True) -> tuple[Any, Any, Any]:
    """min_x 1/2 x^T H x + q^T x  s.t.  lo <= x <= hi, batched over the leading dims.

    Projected Newton (Bertsekas 1982, as in Tassa et al. 2014's box-DDP) from
    x = clip(0): Newton steps on the free set, Armijo backtracking along the
    projection arc. Returns x, the free mask at x, and the Cholesky factor of
    the free block (identity on clamped rows), which the caller reuses for K. A
    coordinate with lo == hi is never free (whatever H's curvature along it).
    ``strict=False``: where H is not positive definite, NaNs instead of a SolverError.
    """
    xp = ops.xp
    if q.shape[-1] == 1:  # one control: the clipped Newton step is the exact solution
        x = xp.minimum(xp.maximum(-q / H[..., 0], lo), hi)
        free = (x > lo) & (x < hi)
        return x, free, ops.cholesky(masked_hessian(ops, H, free), strict)
    x = xp.minimum(xp.maximum(0.0 * q, lo), hi)
    tol = 100 * ops.eps(q)

    def objective(z):
        return 0.5 * (z * mv(H, z)).sum(-1) + (q * z).sum(-1)

    def newton_direction(x):
        g = mv(H, x) + q
        free = ~(((x <= lo) & (g > 0)) | ((x >= hi) & (g < 0))) & (lo < hi)
        dx = -ops.cho_solve(ops.cholesky(masked_hessian(ops, H, free), strict), g * free)
        return g, dx

    def unfinished(dx, x):
        return xp.amax(xp.abs(dx), -1) > tol * (1 + xp.amax(xp.abs(x), -1))

    def moving(state):
        x, dx, _ = state
        return unfinished(dx, x).any()

    def newton_step(state):
        x, dx, g = state
        f0 = objective(x)
        searching = unfinished(dx, x)

        def untried(ls):
            return ~ls[2].all()

        def backtrack(ls):  # Armijo along the projection arc; the first acceptable step is kept
            step, new, accepted = ls
            cand = xp.minimum(xp.maximum(x + step[..., None] * dx, lo), hi)
            ok = objective(cand) <= f0 + 1e-4 * (g * (cand - x)).sum(-1)
            new = xp.where((ok & ~accepted)[..., None], cand, new)
            return step * 0.5, new, accepted | ok

        # the finished problems take no step (their Armijo test would only see roundoff)
        start = (ops.full_like(f0, 1.0), x, ~searching)
        _, new, accepted = ops.loop(untried, backtrack, start, 20)
        x = xp.where((accepted & searching)[..., None], new, x)
        g, dx = newton_direction(x)
        return x, dx, g

    g, dx = newton_direction(x)
    x, _, _ = ops.loop(moving, newton_step, (x, dx, g), max_iter)
    g = mv(H, x) + q
    free = ~(((x <= lo) & (g > 0)) | ((x >= hi) & (g < 0))) & (lo < hi)
    return x, free, ops.cholesky(masked_hessian(ops, H, free), strict)


class Policy(NamedTuple):
    """du_t = K_t dx_t + k_t: K (B, T, m, n), k (B, T, m), the free mask (B, T, m) or None
    (unconstrained). Without a box, also the sweep's factorisation, which lets
    :func:`resweep` redo the sweep for new linear terms: L (B, T, m, m), the Cholesky factors
    of the free blocks of Q_uu (identity on the clamped controls); and what gives the
    costates and the control gradient at the rolled-out point without another pass
    (:func:`sweep_costates`): the Q-function's control block q_u (B, T, m), Q_ux (B, T, m, n),
    Q_uu (B, T, m, m) and the value function V (B, T, n, n), v (B, T, n) of each stage."""

    K: Any
    k: Any
    free: Any
    L: Any = None
    q_u: Any = None
    Q_ux: Any = None
    Q_uu: Any = None
    V: Any = None
    v: Any = None

    def factorisation(self) -> Policy:
        """The parts that depend on C, F, CT and the free set only (k, q_u and v dropped)."""
        return self._replace(k=None, q_u=None, v=None)


def _symmetric(V: Any) -> Any:
    """(V + V^T) / 2 over the last two axes."""
    return 0.5 * (V + V.mT)


def riccati_sweep(
    ops: Ops,
    C: Any,
    c: Any,
    F: Any,
    CT: Any,
    cT: Any,
    *,
    f: Any = None,
    box: tuple[Any, Any] | None = None,
    free: Any = None,
    qp_max_iter: int = 20,
    strict: bool = True,
) -> Policy:
    """Backward Riccati recursion for the deviation problem
    min sum_t 1/2 d_t^T C_t d_t + c_t^T d_t + 1/2 dx_T^T CT dx_T + cT^T dx_T,
    dx_{t+1} = F_t d_t + f_t (``f`` (B, T, n): the reference trajectory's defects; None: 0).

    Controls are limited either by ``box = (lo, hi)`` (each (B, T, m), bounds on
    the control *deviation*; a box QP per stage decides the free set) or by a
    fixed ``free`` mask (B, T, m) whose False entries are held at zero (the
    backward pass's frozen active set). Neither: unconstrained.
    ``strict=False``: an example whose Q_uu is not positive definite (on its free controls)
    gets NaNs in its policy instead of raising.
    Returns the :class:`Policy`.
    """
    xp = ops.xp
    B, T, n, N = F.shape
    # The value function is carried as P = [V v] (B, n, n+1), and each stage's Q-function as
    # Z = [Q_x. q_. Q_u.] (rows x, u; columns x, 1, u) = [C_x c C_u] + F^T P [[A f B], [0 1 0]]:
    # two products per stage give the quadratic and the linear terms (the defects f included),
    # and the blocks the stage needs are contiguous column ranges of Z.
    f = ops.zeros((B, T, n), C) if f is None else f
    F_aug = xp.concatenate([
        xp.concatenate([F[..., :n], f[..., None], F[..., n:]], -1),
        xp.broadcast_to(ops.eye_like(ops.zeros((N + 1, N + 1), C))[n:n + 1], (B, T, 1, N + 1))], -2)
    C_ext = xp.concatenate([C[..., :n], c[..., None], C[..., n:]], -1)
    stages = {"C_ext": C_ext, "F": F, "F_aug": F_aug}
    if box is not None:
        stages["lo"], stages["hi"] = box
    if free is not None:
        stages["free"] = free

    def stage(P: Any, s: dict) -> tuple:
        Z = ops.matmul_add(s["C_ext"], s["F"].mT, P @ s["F_aug"])
        Zx, Zu = Z[:, :n], Z[:, n:]
        rhs, Quu = Zu[..., :n + 1], Zu[..., n + 1:]  # [Q_ux q_u], Q_uu
        # The value function: V = Qxx + Qxu K, v = qx + Qxu k. The general form's K^T terms,
        # K^T (Qux + Quu K) and K^T (qu + Quu k), vanish: K's rows are zero on the clamped
        # controls, and on the free ones Quu K = -Qux and (qu + Quu k) = 0 (the box QP's
        # stationarity there). With W = L^{-1} [Q_ux q_u] on the free rows, V = Qxx - W_x^T W_x
        # and K = -L^{-T} W_x. V is symmetrised: the roundoff of A^T V A is not, and over a long
        # horizon of unstable dynamics its skew part grows until Q_uu loses definiteness (a
        # cartpole swing-up at T=200: Q_uu = -7e-4 where the symmetric recursion gives 3.8e-3).
        if box is not None:
            k, free_t, L = box_qp(ops, Quu, Zu[..., n], s["lo"], s["hi"], qp_max_iter, strict)
            Wx = ops.tri_solve(L, rhs[..., :n] * free_t[..., None])
            v = Zx[..., n] + mv(Zx[..., n + 1:], k)  # k is not zero on the clamped controls
            P = xp.concatenate([_symmetric(Zx[..., :n] - Wx.mT @ Wx), v[..., None]], -1)
            return P, (-ops.tri_solve(L, Wx, transpose=True), k, free_t)
        H = Quu
        if free is not None:
            H = masked_hessian(ops, Quu, s["free"])
            rhs = rhs * s["free"][..., None]
        L = ops.cholesky(H, strict)
        W = ops.tri_solve(L, rhs)
        P = ops.matmul_add(Zx[..., :n + 1], W[..., :n].mT, W, alpha=-1.0)
        P = xp.concatenate([_symmetric(P[..., :n]), P[..., n:]], -1)
        return P, (L, W, Zu, P)

    _, out = ops.scan(stage, xp.concatenate([CT, cT[..., None]], -1), stages, reverse=True)
    if box is not None:
        return Policy(*out)
    L, W, Zu, P = out
    # K and k for all t at once (after the loop: its stages are overhead-bound)
    Kk = -ops.tri_solve(L, W, transpose=True)
    return Policy(Kk[..., :n], Kk[..., n], free, L, Zu[..., n], Zu[..., :n], Zu[..., n + 1:], P[..., :n], P[..., n])


def resweep(ops: Ops, policy: Policy, c: Any, F: Any, cT: Any, closed: Any = None) -> Policy:
    """The sweep of :func:`riccati_sweep` for new linear terms ``c``, ``cT`` and the same
    C, F, CT and free set, reusing its factorisation (``policy`` needs K and L, and for
    :func:`sweep_costates` Q_ux, Q_uu, V): only k, q_u and v change (the Differentiable MPC
    paper's "reusing the factorizations from the forward pass"). With the gains fixed, the
    value gradient follows the closed loop's adjoint, v_t = c_x + K^T c_u + (A + B K)^T v_{t+1}
    (v_t = q_x + K^T q_u, as K^T is zero on the clamped controls), one product per stage;
    q_u and k = -Q_uu^{-1} q_u (on the free controls) then for all t at once. ``closed``:
    the closed-loop matrices A_t + B_t K_t (B, T, n, n) when the caller has them."""
    xp = ops.xp
    n = cT.shape[-1]
    K = policy.K
    closed = closed_loop(F, K) if closed is None else closed

    def stage(v: Any, s: dict) -> tuple:
        v = ops.matmul_add(s["c"][..., None], s["closed"].mT, v[..., None])[..., 0]
        return v, (v,)

    _, (v,) = ops.scan(stage, cT, {"c": c[..., :n] + vm(c[..., n:], K), "closed": closed}, reverse=True)
    q_u = c[..., n:] + vm(xp.concatenate([v[:, 1:], cT[:, None]], 1), F[..., n:])  # c_u + B^T v_{t+1}
    k = -ops.cho_solve(policy.L, q_u if policy.free is None else q_u * policy.free)
    return policy._replace(k=k, q_u=q_u, v=v)


def closed_loop(F: Any, K: Any) -> Any:
    """A_t + B_t K_t (B, T, n, n), the closed loop of the gains K (B, T, m, n) on F (B, T, n, N)."""
    n = K.shape[-1]
    return F[..., :n] + F[..., n:] @ K


def control_gradient(policy: Policy, dx: Any, du: Any) -> Any:
    """d(total cost)/d u_t (B, T, m) at the point reached by rolling out ``policy``, from its
    Q-function: q_u + Q_ux dx + Q_uu du with (dx, du) (B, T, n), (B, T, m) the deviations
    from the sweep's reference."""
    return policy.q_u + mv(policy.Q_ux, dx) + mv(policy.Q_uu, du)


def sweep_costates(ops: Ops, policy: Policy, dx: Any, du: Any, lam_T: Any) -> tuple[Any, Any]:
    """:func:`costates` at the point reached by rolling out ``policy`` (deviations (dx, du)
    (B, T, n), (B, T, m) from the sweep's reference), from the sweep instead of another pass
    over time: lam_t = V_t dx_t + v_t, the gradient of the cost-to-go (the free controls
    after t are optimal there, the others fixed), and the control gradient by
    :func:`control_gradient`. ``lam_T`` (B, n): the terminal cost's gradient.
    Returns lam (B, T+1, n) and g_u (B, T, m)."""
    lam = mv(policy.V, dx) + policy.v
    return ops.xp.concatenate([lam, lam_T[:, None]], 1), control_gradient(policy, dx, du)


def rollout(
    ops: Ops,
    step: Callable[[Any, Any, dict], Any],
    x0: Any,
    u_ref: Any,
    x_ref: Any,
    K: Any,
    k: Any,
    alpha: Any,
    lo: Any = None,
    hi: Any = None,
    stages: dict | None = None,
) -> tuple[Any, Any]:
    """Forward pass of the policy u_t = clip(u_ref_t + alpha k_t + K_t (x_t - x_ref_t)),
    x_{t+1} = step(x_t, u_t, stage_t), ``stage_t`` the slices [:, t] of ``stages`` (e.g. the
    dynamics' F_t, f_t). ``x_ref`` (B, T or T+1, n); ``alpha`` a number or (B, 1).
    Returns x (B, T+1, n) and u (B, T, m)."""
    xp = ops.xp
    T = u_ref.shape[1]
    over_time = {"u_ref": u_ref, "x_ref": x_ref[:, :T], "K": K, "k": k, **(stages or {})}
    if lo is not None:
        over_time["lo"], over_time["hi"] = lo, hi

    def stage(x: Any, s: dict) -> tuple:
        u = s["u_ref"] + alpha * s["k"] + mv(s["K"], x - s["x_ref"])
        if lo is not None:
            u = xp.minimum(xp.maximum(u, s["lo"]), s["hi"])
        x_next = step(x, u, s)
        return x_next, (x_next, u)

    _, (xs, us) = ops.scan(stage, x0, over_time)
    return xp.concatenate([x0[:, None], xs], 1), us


def affine_rollout(ops: Ops, F: Any, f: Any, x0: Any, u_ref: Any, x_ref: Any, K: Any, k: Any,
                   closed: Any = None) -> tuple[Any, Any]:
    """:func:`rollout` for affine dynamics x_{t+1} = F_t [x_t; u_t] + f_t (``f`` None: 0) and
    no bounds, as the closed loop x_{t+1} = (A_t + B_t K_t) x_t + b_t: the loop's matrices
    are formed for all t at once, so each stage is one product (the scan is overhead-bound).
    ``x_ref`` (B, T or T+1, n); ``u_ref`` and ``x_ref`` None: the zero reference. ``closed``:
    the closed-loop matrices (:func:`closed_loop`) when the caller has them.
    Returns x (B, T+1, n) and u (B, T, m)."""
    xp = ops.xp
    T, n = k.shape[1], x0.shape[-1]
    Bu = F[..., n:]
    # u_t = offset_t + K_t x_t
    offset = k if u_ref is None else u_ref + k - mv(K, x_ref[:, :T])
    b = mv(Bu, offset) if f is None else mv(Bu, offset) + f

    def stage(x: Any, s: dict) -> tuple:
        x_next = ops.matmul_add(s["b"][..., None], s["A"], x[..., None])[..., 0]
        return x_next, (x_next,)

    _, (xs,) = ops.scan(stage, x0, {"A": closed_loop(F, K) if closed is None else closed, "b": b})
    x = xp.concatenate([x0[:, None], xs], 1)
    return x, offset + mv(K, x[:, :T])


def costates(ops: Ops, C: Any, c: Any, F: Any, CT: Any, cT: Any, x: Any, u: Any) -> tuple[Any, Any]:
    """The adjoint recursion of an LQ problem at (x, u): :func:`adjoint` with the cost
    gradients C_t tau_t + c_t and CT x_T + cT. With a trailing axis of k on c (B, T, N, k),
    cT (B, n, k), x (B, T+1, n, k) and u (B, T, m, k): k trajectories in one recursion."""
    tau = ops.xp.concatenate([x[:, :-1], u], -2 if u.ndim == 4 else -1)
    if u.ndim == 4:
        return adjoint(ops, C @ tau + c, F, CT @ x[:, -1] + cT)
    return adjoint(ops, mv(C, tau) + c, F, mv(CT, x[:, -1]) + cT)


def adjoint(ops: Ops, grad_tau: Any, F: Any, grad_T: Any) -> tuple[Any, Any]:
    """The costate recursion (the Differentiable MPC paper's eq. 7, our horizon convention)
    given the stage costs' gradients ``grad_tau`` (B, T, N) and the terminal cost's
    ``grad_T`` (B, n) along a trajectory, and the dynamics' Jacobians F (B, T, n, N) there:
    lam_T = grad_T, g_t = grad_tau_t + F_t^T lam_{t+1}, lam_t = g_t[:n].
    A trailing axis of k on grad_tau (B, T, N, k) and grad_T (B, n, k) runs k at once.

    Returns lam (B, T+1, n) and g_u (B, T, m), the gradient of the total cost
    with respect to each control through the dynamics (with the trailing k where given).
    """
    n = F.shape[-2]
    several = grad_T.ndim == 3

    def stage(lam: Any, s: dict) -> tuple:
        g = s["grad_tau"] + (s["F"].mT @ lam if several else vm(lam, s["F"]))
        return g[:, :n], (g[:, :n], g[:, n:])

    _, (lams, g_u) = ops.scan(stage, grad_T, {"grad_tau": grad_tau, "F": F}, reverse=True)
    return ops.xp.concatenate([lams, grad_T[:, None]], 1), g_u


def frozen_lqr_adjoint(
    ops: Ops, C: Any, F: Any, CT: Any, free: Any, g_tau: Any, g_T: Any, policy: Policy | None = None,
    fallback_C: Any = None,
) -> tuple[Any, Any, Any, Any, Any]:
    """The backward pass shared by the LQR-type backends (the Differentiable MPC paper's
    eq. 19): one LQR solve with the output cotangents ``g_tau`` (B, T, N), ``g_T`` (B, n) as
    linear cost terms, x_0 = 0, no defects and the controls where ``free`` (B, T, m) is False
    held at zero. ``policy``: a forward sweep with the same C, F, CT and free set, whose
    factorisation is then reused. ``fallback_C``: stage Hessians used instead of C for the
    examples where C gives a Q_uu that is not positive definite.

    Returns (dx (B, T+1, n), du (B, T, m), dlam (B, T+1, n), r_u (B, T, m), fell_back (B,)):
    the solution, its costates, the reduced gradient r_u (the multipliers of the frozen
    controls), and which examples used ``fallback_C`` (None without one).
    """
    fell_back, closed = None, None
    if policy is not None:  # the forward's gains: the closed loop serves the sweep and the rollout
        closed = closed_loop(F, policy.K)
        policy = resweep(ops, policy, g_tau, F, g_T, closed)
    elif fallback_C is None:
        policy = riccati_sweep(ops, C, g_tau, F, CT, g_T, free=free)
    else:
        xp = ops.xp
        first = riccati_sweep(ops, C, g_tau, F, CT, g_T, free=free, strict=False)
        fell_back = ~xp.isfinite(first.k).reshape(first.k.shape[0], -1).all(-1)
        C = xp.where(fell_back[:, None, None, None], fallback_C, C)
        policy = ops.cond(fell_back.any(), lambda: riccati_sweep(ops, C, g_tau, F, CT, g_T, free=free),
                          lambda: first)
    n = CT.shape[-1]
    dx, du = affine_rollout(ops, F, None, ops.zeros(g_T.shape[:1] + (n,), C), None, None, policy.K, policy.k,
                            closed)
    dlam, r_u = sweep_costates(ops, policy, dx[:, :-1], du, mv(CT, dx[:, -1]) + g_T)
    return dx, du, dlam, r_u, fell_back
