"""The ``lqr`` backend: time-varying LQR with box-constrained controls, and its implicit VJP.

Forward: the box-constrained LQR is a convex QP; it is solved by box-DDP
(projected Newton per stage inside the Riccati sweep, a line search on the
exact cost) iterated until the projected gradient of the total cost with
respect to the controls is below ``tol``. Without bounds, one sweep is exact.

Backward (Differentiable MPC paper, Module 1 and eq. 19): one more LQR solve
with the cotangents as linear cost terms, f = 0, x_0 = 0 and the active
controls frozen at zero, then the paper's eq. (8) for the cotangents of
(C, c, F, f, x_0) and, from the reduced stationarity, of the bounds.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from diffcontrol.backends import condensed, kkt, terminal
from diffcontrol.backends.base import Info
from diffcontrol.backends.ops import Ops
from diffcontrol.backends.riccati import (
    Policy,
    affine_rollout,
    control_gradient,
    costates,
    frozen_lqr_adjoint,
    masked_hessian,
    mv,
    riccati_sweep,
    rollout,
    sweep_costates,
)

#: The IR's arrays, batch-first: C (B,T,N,N), c (B,T,N), F (B,T,n,N), f (B,T,n),
#: CT (B,n,n), cT (B,n), x0 (B,n), lo / hi (B,T,m) (infinite where unbounded).
#: C, c, F, f may come without the T axis: time-invariant, and their cotangents then
#: come summed over time (contractions instead of (B,T,n,N) outer products).
DATA_KEYS = ("C", "c", "F", "f", "CT", "cT", "x0", "lo", "hi")
_STAGE_NDIM = {"C": 4, "c": 3, "F": 4, "f": 3}


def _over_time(ops: Ops, data: dict) -> dict:
    """The data with every stage array carrying its T axis (views, no copies)."""
    B, T = data["lo"].shape[:2]
    full = dict(data)
    for k, ndim in _STAGE_NDIM.items():
        a = data[k]
        if a.ndim == ndim - 1:
            full[k] = ops.xp.broadcast_to(a[:, None], (B, T) + tuple(a.shape[1:]))
    return full


def _outer(a: Any, b: Any, summed: bool) -> Any:
    """a_t b_t^T per stage (B, T, p, q), or its sum over t (B, p, q) as one contraction."""
    return a.mT @ b if summed else a[..., :, None] * b[..., None, :]


#: 'auto' condenses up to this many stacked controls T*m
CONDENSE_MAX = 64


class Saved(NamedTuple):
    """What the VJP needs of a solve: the solution (x, u) and costates lam (None: the VJP finds
    them), the active bounds (B, T, m), the last solve's ``factors`` with the free set
    ``free_fwd`` they were made for, the condensed QP (None: solved by Riccati sweeps), and
    whether the factors may be reused (``reusable``, a scalar bool)."""

    x: Any
    u: Any
    lam: Any
    active_lo: Any
    active_hi: Any
    factors: Any
    free_fwd: Any
    condensed: condensed.Condensed | None
    reusable: Any
    #: with terminal equalities (:mod:`~diffcontrol.backends.terminal`): their multipliers
    #: (B, k) and G dx_T/dnu (B, k, k)
    nu: Any = None
    M: Any = None

    FROM_DATA = {}
    STATIC = ()

    @property
    def outputs(self) -> tuple[Any, Any]:
        return self.x, self.u


def _condenses(options: dict, T: int, m: int) -> bool:
    return options["condense"] is True or (options["condense"] == "auto" and T * m <= CONDENSE_MAX)


def _affine_step(ops: Ops):
    """x_{t+1} = F_t [x_t; u_t] + f_t as the rollout's step function (stages: F, f)."""

    def step(x: Any, u: Any, s: dict) -> Any:
        return mv(s["F"], ops.xp.concatenate([x, u], -1)) + s["f"]

    return step


def total_cost(ops: Ops, data: dict, x: Any, u: Any) -> Any:
    """Exact objective (B,): sum_t 1/2 tau^T C tau + c^T tau + 1/2 x_T^T CT x_T + cT^T x_T."""
    xp = ops.xp
    tau = xp.concatenate([x[:, :-1], u], -1)
    stage = 0.5 * (tau * mv(data["C"], tau)).sum(-1) + (data["c"] * tau).sum(-1)
    xT = x[:, -1]
    return stage.sum(-1) + 0.5 * (xT * mv(data["CT"], xT)).sum(-1) + (data["cT"] * xT).sum(-1)


def projected_gradient_residual(ops: Ops, data: dict, x: Any, u: Any, g_u: Any) -> Any:
    """The scaled KKT residual (B,) of :func:`~diffcontrol.backends.kkt.projected_gradient_residual`,
    scaled by the terms of the LQ problem's control gradient."""
    return kkt.projected_gradient_residual(ops, u, data["lo"], data["hi"], g_u, _control_terms(ops, data, x, u))


def _newton_step(ops: Ops, data: dict, x: Any, u: Any, free: Any = None) -> tuple[Any, Any, Policy]:
    """The exact minimiser of the LQ problem with the controls where ``free`` is False held at
    their values in ``u`` (None: all free). (x, u) is the reference; it need not satisfy the
    dynamics (its defects enter the sweep); x and u None: the zero reference. Also returns the
    sweep's policy, whose factorisation the backward pass can reuse."""
    xp = ops.xp
    if x is None:  # about zero the cost gradient and the defects are the data's own terms
        c_dev, cT_dev, defect = data["c"], data["cT"], data["f"]
    else:
        tau = xp.concatenate([x[:, :-1], u], -1)
        c_dev = mv(data["C"], tau) + data["c"]          # cost gradient about the reference
        cT_dev = mv(data["CT"], x[:, -1]) + data["cT"]
        defect = mv(data["F"], tau) + data["f"] - x[:, 1:]
    policy = riccati_sweep(ops, data["C"], c_dev, data["F"], data["CT"], cT_dev, f=defect, free=free)
    x, u = affine_rollout(ops, data["F"], data["f"], data["x0"], u, x, policy.K, policy.k)
    return x, u, policy


def _simulate(ops: Ops, data: dict, u: Any) -> Any:
    """x (B, T+1, n) under the open-loop controls u (B, T, m)."""
    B, T, m = u.shape
    n = data["x0"].shape[-1]
    return affine_rollout(ops, data["F"], data["f"], data["x0"], u, ops.zeros((B, T, n), u),
                          ops.zeros((B, T, m, n), u), 0.0 * u)[0]


class _RiccatiSolves:
    """The active-set method's linear algebra by Riccati sweeps (any horizon). Each solve is
    a Newton step from the zero state with the fixed controls, so that its result depends on
    the free set and the fixed controls only. (Not from the open-loop rollout of the warm
    start: an unstable system amplifies that rollout, to 1e13 over 200 cartpole stages, and
    the sweep's linear terms about it lose every digit; about zero, the defects are the data's
    own, and the sweep's rollout is closed-loop.)"""

    def __init__(self, ops: Ops, data: dict):
        self.ops, self.data = ops, data

    def shared(self, u: Any) -> dict:
        """What the solves read, per example: the data."""
        return self.data

    def gradient(self, shared: dict, u: Any) -> Any:
        """The total cost's gradient w.r.t. u at the controls u (and their states)."""
        d = shared
        return costates(self.ops, d["C"], d["c"], d["F"], d["CT"], d["cT"], _simulate(self.ops, d, u), u)[1]

    def solve_free(self, shared: dict, u_fix: Any, free: Any) -> tuple:
        """The LQ solution with the controls where ``free`` is False held at ``u_fix``: u, the
        total cost's gradient w.r.t. u there, the factors the backward can reuse, and the
        states (from the sweep's closed-loop rollout)."""
        zero = self.no_states(u_fix)
        x_new, u_new, policy = _newton_step(self.ops, shared, zero, u_fix, free)
        g_u = control_gradient(policy, x_new[:, :-1], u_new - u_fix)
        return u_new, g_u, policy.factorisation(), x_new

    def no_states(self, u: Any) -> Any:
        """Zero states (B, T+1, n), the placeholder of :meth:`solve_free`'s."""
        B, T, _ = u.shape
        return self.ops.zeros((B, T + 1, self.data["x0"].shape[-1]), u)

    def no_factors(self, u: Any) -> Policy:
        """Placeholders with the structure of :meth:`solve_free`'s factors."""
        ops, xp, (B, T, m), n = self.ops, self.ops.xp, u.shape, self.data["x0"].shape[-1]
        zeros_mn, eye_m = ops.zeros((B, T, m, n), u), ops.zeros((B, T, m, m), u) + ops.eye_like(ops.zeros((m, m), u))
        return Policy(K=zeros_mn, k=None, free=xp.ones_like(u, dtype=bool), L=eye_m, Q_ux=zeros_mn,
                      Q_uu=eye_m, V=ops.zeros((B, T, n, n), u))

    def finish(self, u: Any, x_solved: Any, solved: Any) -> tuple:
        """x, the costates and the gradient w.r.t. u at the controls u, and the residual's terms.
        x is the last solve's closed-loop rollout ``x_solved`` where ``solved`` (B,) (its sets
        repeated, so u is that solve's), else the open-loop rollout of u, whose roundoff an
        unstable system amplifies."""
        d, ops, xp = self.data, self.ops, self.ops.xp
        x = ops.cond(solved.all(), lambda: x_solved,
                     lambda: xp.where(solved[:, None, None], x_solved, _simulate(ops, d, u)))
        lam, g_u = costates(self.ops, d["C"], d["c"], d["F"], d["CT"], d["cT"], x, u)
        return x, lam, g_u, _control_terms(self.ops, d, x, u)

    def frozen_adjoint(self, saved: Saved, free: Any, reuse: Any, g_tau: Any, g_T: Any, needs_costates: bool) -> tuple:
        """The backward's LQR solve with the controls outside ``free`` frozen: (dx, du, dlam, r_u,
        lam), reusing the forward's factors where ``reuse`` (a scalar bool array) says so."""
        ops, d = self.ops, self.data
        forward = saved.factors._replace(free=free)
        dx, du, dlam, r_u, _ = ops.cond(
            reuse, lambda: frozen_lqr_adjoint(ops, d["C"], d["F"], d["CT"], free, g_tau, g_T, forward),
            lambda: frozen_lqr_adjoint(ops, d["C"], d["F"], d["CT"], free, g_tau, g_T))
        return dx, du, dlam, r_u, saved.lam


class _CondensedSolves:
    """The active-set method's linear algebra on the condensed QP: one dense Cholesky of the
    free block of H per iteration (short horizons; see :mod:`~diffcontrol.backends.condensed`)."""

    def __init__(self, ops: Ops, data: dict, cond: condensed.Condensed):
        self.ops, self.data, self.cond = ops, data, cond

    def shared(self, u: Any) -> dict:
        return {"H": self.cond.H, "h": self.cond.h}

    def gradient(self, shared: dict, u: Any) -> Any:
        return _condensed_gradient(shared, u.reshape(u.shape[0], -1)).reshape(u.shape)

    def solve_free(self, shared: dict, u_fix: Any, free: Any) -> tuple:
        ops = self.ops
        shape = u_fix.shape
        mask, u_fix = free.reshape(shape[0], -1), u_fix.reshape(shape[0], -1)
        L = ops.cholesky(masked_hessian(ops, shared["H"], mask))
        u_new = u_fix - ops.cho_solve(L, _condensed_gradient(shared, u_fix) * mask)
        # the states are not needed inside the loop (the caller finds them once at its end)
        return u_new.reshape(shape), _condensed_gradient(shared, u_new).reshape(shape), L, None

    def no_states(self, u: Any) -> None:
        return None

    def no_factors(self, u: Any) -> Any:
        return 0.0 * self.cond.H + self.ops.eye_like(self.cond.H)

    def finish(self, u: Any, x_solved: Any = None, solved: Any = None) -> tuple:
        """x, no costates (the VJP computes them with its own), the gradient w.r.t. u and the
        residual's terms at the controls u (short horizons: the states from u directly)."""
        B = u.shape[0]
        Hu = mv(self.cond.H, u.reshape(B, -1))
        return condensed.states(self.cond, u), None, (Hu + self.cond.h).reshape(u.shape), [Hu, self.cond.h]

    def frozen_adjoint(self, saved: Saved, free: Any, reuse: Any, g_tau: Any, g_T: Any, needs_costates: bool) -> tuple:
        """As :meth:`_RiccatiSolves.frozen_adjoint`, on the condensed QP; the forward left the
        costates to here, and one recursion gives them with the adjoint's where needed."""
        ops, d, cond = self.ops, self.data, self.cond
        mask = free.reshape(free.shape[0], -1)
        L = ops.cond(reuse, lambda: saved.factors, lambda: ops.cholesky(masked_hessian(ops, cond.H, mask)))
        forward = (saved.x, saved.u, d["c"], d["cT"]) if saved.lam is None and needs_costates else None
        dx, du, dlam, r_u, lam_fwd = condensed.frozen_adjoint(ops, cond, L, d["C"], d["F"], d["CT"], free, g_tau,
                                                              g_T, forward)
        return dx, du, dlam, r_u, saved.lam if forward is None else lam_fwd


def _strategy(ops: Ops, data: dict, cond: condensed.Condensed | None) -> _RiccatiSolves | _CondensedSolves:
    """The active-set method's linear algebra: on the condensed QP where there is one."""
    return _RiccatiSolves(ops, data) if cond is None else _CondensedSolves(ops, data, cond)


def _condensed_gradient(shared: dict, u: Any) -> Any:
    """H u + h (B, T m) for stacked controls u (B, T m)."""
    return mv(shared["H"], u) + shared["h"]


def _active_set_method(ops: Ops, data: dict, solves: Any, u: Any, max_iter: int, tol: float,
                       warm: bool) -> tuple:
    """Primal-dual active-set method for the box-constrained LQ problem (Hintermueller, Ito and
    Kunisch 2002; a semismooth Newton method): each iteration is one solve with the active
    controls held at their bounds (``solves``: :class:`_RiccatiSolves` or
    :class:`_CondensedSolves`), then the sets are updated from the primal violations and the
    multipliers' signs. An example stops once its sets repeat, which is exactly the KKT
    point. Usually 2-6 iterations; it can cycle on rare problems, and the caller's box-DDP
    then finishes those examples. Each solve depends on the sets only, so an example whose
    sets repeat would repeat its solve (what :meth:`Ops.batch_loop` asks of its body).
    ``warm``: ``u`` is a warm start; the initial sets are then the controls it holds at a
    bound the gradient pushes against, and the examples where it already meets ``tol`` take
    no iteration (without one, the first iteration is the unconstrained solve).
    Returns u (clipped to the box), the iterations, each example's factors of its last solve
    with the free set they were made for, that solve's states (None where the solves give
    none) and which examples' sets repeated.
    """
    xp = ops.xp
    lo, hi = data["lo"], data["hi"]
    shared = {**solves.shared(u), "lo": lo, "hi": hi, "u_ref": u}
    if warm:
        g_u = solves.gradient(shared, u)
        at_lo, at_hi = (u <= lo) & (g_u > 0), (u >= hi) & (g_u < 0)
        # (scaled by the gradient alone, which is stricter than the final check)
        settled = kkt.projected_gradient_residual(ops, u, lo, hi, g_u, []) <= tol
    else:
        at_lo = at_hi = xp.zeros_like(u, dtype=bool)
        settled = xp.zeros_like(u[:, 0, 0], dtype=bool)

    def iteration(state, shared):
        at_lo, at_hi, _ = state
        lo, hi = shared["lo"], shared["hi"]
        free = ~(at_lo | at_hi)
        u_fix = xp.where(at_lo, lo, xp.where(at_hi, hi, shared["u_ref"]))
        u_new, g_u, factors, x_new = solves.solve_free(shared, u_fix, free)
        # a free control that leaves the box is clamped; a clamped one stays while its
        # multiplier (the gradient) pushes against the bound
        new_lo = xp.where(free, u_new < lo, at_lo & (g_u > 0))
        new_hi = xp.where(free, u_new > hi, at_hi & (g_u < 0))
        same = ~((new_lo ^ at_lo) | (new_hi ^ at_hi)).reshape(at_lo.shape[0], -1).any(-1)
        return (new_lo, new_hi, (u_new, factors, free, x_new)), same

    start = (at_lo, at_hi, (u, solves.no_factors(u), xp.ones_like(u, dtype=bool), solves.no_states(u)))
    (_, _, (u, factors, free, x)), iterations, stopped = ops.batch_loop(iteration, start, shared, settled, max_iter)
    # (a warm start that met tol took no solve: its states are its open-loop rollout)
    return xp.minimum(xp.maximum(u, lo), hi), iterations, (factors, free), x, stopped & (iterations > 0)


def _control_terms(ops: Ops, data: dict, x: Any, u: Any) -> list:
    """The terms of the LQ problem's control gradient, C_u. tau and c_u: the scale of its
    projected-gradient residual."""
    n = x.shape[-1]
    tau = ops.xp.concatenate([x[:, :-1], u], -1)
    return [mv(data["C"], tau)[..., n:], data["c"][..., n:]]


class _DDPState(NamedTuple):
    """Box-DDP's iterate: the trajectory, its cost (B,), costates, control gradient, residual
    (B,), which examples stalled (B,), their iterations (B,), and whether any step was taken."""

    x: Any
    u: Any
    cost: Any
    lam: Any
    g_u: Any
    residual: Any
    stalled: Any
    iterations: Any
    moved: Any


def _box_ddp(ops: Ops, data: dict, x: Any, u: Any, lam: Any, g_u: Any, residual: Any, iterations: Any,
             bounded: bool, options: dict, tol: float) -> _DDPState:
    """Box-DDP (projected Newton per stage, a line search on the exact cost) from (x, u) for
    the examples whose ``residual`` is above ``tol``, until each reaches it or stalls. ``lam``,
    ``g_u``: the costates (None: not known yet) and the control gradient at (x, u). Returns
    the final :class:`_DDPState`."""
    xp = ops.xp
    C, c, F, f, CT, cT, x0, lo, hi = (data[k] for k in DATA_KEYS)
    step = _affine_step(ops)
    slack = 10 * ops.eps(C)

    def optimality(x, u):
        lam, g_u = costates(ops, C, c, F, CT, cT, x, u)
        return lam, g_u, projected_gradient_residual(ops, data, x, u, g_u)

    def unfinished(state: _DDPState):
        return (~((state.residual <= tol) | state.stalled)).any()

    def iteration(state: _DDPState) -> _DDPState:
        x, u, cost, stalled = state.x, state.u, state.cost, state.stalled
        active = ~((state.residual <= tol) | stalled)
        # linear terms of the cost in deviation coordinates about the current iterate
        tau = xp.concatenate([x[:, :-1], u], -1)
        box = (lo - u, hi - u) if bounded else None
        K, k, _ = riccati_sweep(ops, C, mv(C, tau) + c, F, CT, mv(CT, x[:, -1]) + cT, box=box,
                                qp_max_iter=options["qp_max_iter"])[:3]

        def searching(ls):
            return ~(ls[1] | ~active).all()

        def trial(ls):
            alpha, accepted, new_x, new_u, new_cost = ls
            cand_x, cand_u = rollout(ops, step, x0, u, x, K, k, alpha, lo if bounded else None, hi,
                                     stages={"F": F, "f": f})
            cand_cost = total_cost(ops, data, cand_x, cand_u)
            ok = active & ~accepted & (cand_cost <= cost + slack * (1 + xp.abs(cost)))
            return (alpha * options["ls_decay"], accepted | ok, xp.where(ok[:, None, None], cand_x, new_x),
                    xp.where(ok[:, None, None], cand_u, new_u), xp.where(ok, cand_cost, new_cost))

        start = (ops.full_like(cost, 1.0)[:, None], xp.zeros_like(active), x, u, cost)
        _, accepted, x, u, cost = ops.loop(searching, trial, start, options["ls_max_iter"])
        return _DDPState(x, u, cost, *optimality(x, u), stalled | (active & ~accepted),
                         state.iterations + xp.where(accepted, 1, 0), ~xp.zeros_like(accepted[0]))

    lam = costates(ops, C, c, F, CT, cT, x, u)[0] if lam is None else lam
    start = _DDPState(x, u, total_cost(ops, data, x, u), lam, g_u, residual, xp.zeros_like(x0[:, 0], dtype=bool),
                      iterations, xp.zeros_like(x0[0, 0], dtype=bool))
    return ops.loop(unfinished, iteration, start, options["max_iter"])


def solve(data: dict, options: dict, ops: Ops, u_init: Any = None) -> tuple[tuple[Any, Any], Info, Saved]:
    """Solve the batch of (box-constrained) LQRs, with terminal equalities G x_T = g where the
    data have them (``G`` (B, k, n), ``g`` (B, k)). Returns (x, u), Info and what the VJP needs."""
    if "G" not in data:
        return _solve(data, options, ops, u_init)
    tol = options["tol"] if options["tol"] is not None else ops.eps(data["C"]) ** 0.5

    def cost(d: dict, x: Any, u: Any) -> Any:
        return total_cost(ops, _over_time(ops, d), x, u)

    return terminal.solve(terminal.Inner(_solve, _vjp, cost), data, options, ops, tol, u_init)


def _solve(data: dict, options: dict, ops: Ops, u_init: Any = None) -> tuple[tuple[Any, Any], Info, Saved]:
    """Solve the batch of (box-constrained) LQRs. Returns (x, u), Info and the residuals the VJP needs.

    Without bounds one Riccati solve is exact. With bounds, the active-set method usually
    finishes; box-DDP (projected Newton per stage, line search on the exact cost) then
    takes whatever has not reached ``tol``, so the result is always verified by the KKT residual.
    """
    xp = ops.xp
    data = _over_time(ops, data)
    C, x0, lo, hi = data["C"], data["x0"], data["lo"], data["hi"]
    B, T, m = lo.shape
    bounded = ops.known_any(xp.isfinite(lo) | xp.isfinite(hi)) is not False
    tol = options["tol"] if options["tol"] is not None else ops.eps(C) ** 0.5

    u = ops.zeros((B, T, m), C) if u_init is None else u_init
    u = xp.minimum(xp.maximum(u, lo), hi)
    cond = condensed.condense(ops, data) if _condenses(options, T, m) else None
    if cond is not None or bounded:
        solves = _strategy(ops, data, cond)
        u, iterations, (solve_factors, free_fwd), x_solved, sets_repeated = _active_set_method(
            ops, data, solves, u, options["max_iter"], tol, warm=u_init is not None)
        x, lam, g_u, terms = solves.finish(u, x_solved, sets_repeated)
        solved = iterations > 0  # the examples whose factors come from a solve
    else:  # one exact solve; its sweep also gives the costates and the gradient for the check
        ref = (None, None) if u_init is None else (ops.zeros((B, T + 1, x0.shape[-1]), C), u)
        x, u_new, policy = _newton_step(ops, data, *ref)
        lam, g_u = sweep_costates(ops, policy, x[:, :-1], u_new - u, mv(data["CT"], x[:, -1]) + data["cT"])
        u = u_new
        terms = _control_terms(ops, data, x, u)
        iterations = xp.where(xp.isfinite(u[:, 0, 0]), 1, 1)
        solve_factors, free_fwd, solved = policy.factorisation(), xp.ones_like(u, dtype=bool), iterations > 0
    residual = kkt.projected_gradient_residual(ops, u, lo, hi, g_u, terms)
    stalled, moved = xp.zeros_like(solved), xp.zeros_like(solved[0])
    if ops.known_any(residual > tol) is not False:  # box-DDP finishes what the solves left
        ddp = _box_ddp(ops, data, x, u, lam, g_u, residual, iterations, bounded, options, tol)
        x, u, lam, g_u, residual = ddp.x, ddp.u, ddp.lam, ddp.g_u, ddp.residual
        iterations, stalled, moved = ddp.iterations, ddp.stalled, ddp.moved

    converged = residual <= tol
    active_lo, active_hi = kkt.active_bounds(u, lo, hi, g_u)
    # the last solve's factorisation serves the backward pass where the free set is the same
    # (and, for the sweeps, unless box-DDP moved the point); lam None: the VJP finds the costates
    saved = Saved(x, u, lam, active_lo, active_hi, solve_factors, free_fwd, cond,
                  solved.all() & ~moved if cond is None else solved.all())
    return (x, u), Info(converged, iterations, residual, kkt.status_codes(ops, converged, stalled)), saved


def vjp(data: dict, saved: Saved, cotangents: tuple[Any, Any], ops: Ops, needs: Any = DATA_KEYS) -> dict:
    """Cotangents of the data named in ``needs`` (the others are None) given those of (x, u):
    one LQR solve with the active set frozen (two with terminal equalities)."""
    if saved.nu is not None:
        return terminal.vjp(terminal.Inner(_solve, _vjp, None), data, saved, cotangents, ops, needs)
    return _vjp(data, saved, cotangents, ops, needs)


def _vjp(data: dict, saved: Saved, cotangents: tuple[Any, Any], ops: Ops, needs: Any = DATA_KEYS) -> dict:
    """:func:`vjp` without terminal equalities."""
    xp = ops.xp
    invariant = {k for k, ndim in _STAGE_NDIM.items() if data[k].ndim == ndim - 1}
    data = _over_time(ops, data)
    x, u = saved.x, saved.u
    gx, gu = cotangents
    T = u.shape[1]
    free = ~(saved.active_lo | saved.active_hi)

    g_tau = xp.concatenate([gx[:, :T], gu], -1)
    # same C, F, CT and free set as the forward's last solve: reuse its factorisation
    reuse = saved.reusable & (saved.free_fwd == free).all()
    dx, du, dlam, r_u, lam = _strategy(ops, data, saved.condensed).frozen_adjoint(
        saved, free, reuse, g_tau, gx[:, T], needs_costates="F" in needs)

    tau = xp.concatenate([x[:, :T], u], -1)
    d_tau = xp.concatenate([dx[:, :T], du], -1)
    zero = 0.0 * r_u

    def over_t(key: str, a: Any) -> Any:
        return a.sum(1) if key in invariant else a

    formulas = {  # the Differentiable MPC paper's eq. (8) in our horizon convention
        "C": lambda: _symmetric(_outer(d_tau, tau, "C" in invariant)),
        "c": lambda: over_t("c", d_tau),
        "F": lambda: _outer(lam[:, 1:], d_tau, "F" in invariant) + _outer(dlam[:, 1:], tau, "F" in invariant),
        "f": lambda: over_t("f", dlam[:, 1:]),
        "CT": lambda: _symmetric(_outer(dx[:, T:], x[:, T:], True)),
        "cT": lambda: dx[:, T],
        "x0": lambda: dlam[:, 0],
        "lo": lambda: xp.where(saved.active_lo, r_u, zero),
        "hi": lambda: xp.where(saved.active_hi, r_u, zero),
    }
    return {k: formulas[k]() if k in needs else None for k in DATA_KEYS}


def _symmetric(M: Any) -> Any:
    return 0.5 * (M + M.mT)
