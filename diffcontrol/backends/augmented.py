"""General path and terminal constraints around an iLQR solve: an augmented-Lagrangian outer
loop forward, and an exact implicit backward with the active constraints as equalities.

Forward (as ALTRO, Howell, Jackson & Manchester 2019; Nocedal & Wright, Alg. 17.4): the
model's costs carry, per constraint row, the term of the augmented Lagrangian with
multiplier lam and penalty rho (:mod:`diffcontrol.compilers.augmented`). Each outer
step solves that smooth problem by iLQR (warm-started from the last controls; far from
feasibility only to 1e-2 x the violation), then sets lam <- max(0, lam + rho c)
(inequalities; lam + rho c for equalities) and, per example, raises rho by
``penalty_factor`` where the violation did not fall by 4. Once the active set repeats
(and the violation fell by 4), the active rows' multipliers take a Newton step on the
dual instead, lam_A <- lam_A + (J_A K^{-1} J_A^T)^{-1} c_A (the Schur complement below),
which converges quadratically where the first-order update crawls at a rate near 1/rho.
An example is done once its solve converged to ``tol`` and every row's
|max(c, -lam/rho)| (|c| of an equality) is below ``constraint_tol``: feasible and
complementary. One that is not after ``outer_max_iter`` steps is reported with
``Status.INFEASIBLE_SOLUTION`` (never returned as if solved).

Backward (implicit function theorem on the KKT conditions of the constrained problem,
strictly complementary case): the active rows A (equalities, and inequalities with
lam > 0) are equalities there. With K the Hessian of the augmented Lagrangian, which
at c_A = 0 is the Lagrangian's plus rho J_A^T J_A (the same KKT solution, and positive
definite where the constrained minimum is strict), the inner solver's VJP gives
-K^{-1} v (on the free controls, the box-active ones frozen):

    G = J_A K^{-1} J_A^T   (k_A x k_A, from k_A inner VJPs run as one tiled batch)
    eta = G^{-1} J_A K^{-1} v,   cotangent of the data = the inner VJP of v - J_A^T eta,
    cotangent of the active rows' values = -eta.

So the backward is k_A + 1 LQR solves, batched. An example whose G is singular (active
constraints that are linearly dependent: no unique multipliers) gets NaN gradients
where its outputs are used, and one with a weakly active row (at zero with a zero
multiplier: only one-sidedly differentiable) the one-sided gradient, each with a warning.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

from diffcontrol.backends.ops import Ops
from diffcontrol.backends.tiling import tiled_vjp
from diffcontrol.errors import GradientFallbackWarning, Status

#: the implicit inputs of the rows' values: stage rows (B, T, k_s), terminal rows (B, k_T)
KEYS = ("path", "path_T")
#: the inner solves' tolerance relative to the violation, until it reaches tol
INEXACT = 1e-2
#: rho stops growing here (the subproblems' conditioning worsens with it)
PENALTY_MAX = 1e8


class Multipliers(NamedTuple):
    """lam (B, T+1, k_s) of the stage rows (row T unused), lam_T (B, k_T), rho (B,)."""

    stage: Any
    terminal: Any
    penalty: Any


class Active(NamedTuple):
    """At the solution: which rows are active, stage (B, T, k_s) and terminal (B, k_T), their
    Jacobians J (B, T, k_s, N) in tau_t and J_T (B, k_T, n) in x_T, and the number of weakly
    active rows (B,): inequalities at zero (within constraint_tol) with a zero multiplier."""

    stage: Any
    terminal: Any
    J: Any
    J_T: Any
    weak: Any


class _Outer(NamedTuple):
    """The outer loop's state: multipliers, warm start, violation (B,), which examples are
    done, their inner iterations, and last step's active rows (B, rows)."""

    lam: Multipliers
    u: Any
    violation: Any
    done: Any
    iterations: Any
    active: Any


def constraint_tolerance(options: dict, tol: float) -> float:
    return options["constraint_tol"] if options.get("constraint_tol") is not None else tol


def _violation(ops: Ops, c: Any, c_T: Any, lam: Multipliers, masks: tuple) -> Any:
    """The largest violation (B,) of the KKT conditions the rows add, where they bind: |c| of an
    equality row, |max(c, -lam / rho)| of an inequality row, which is small once c <= 0 nearly
    and either c = 0 or lam = 0 (feasibility and complementarity; Nocedal & Wright, 17.4)."""
    xp = ops.xp
    weights, weights_T, eq, eq_T = masks
    T = c.shape[1]
    rho = lam.penalty
    v = xp.where(eq > 0.5, c, xp.maximum(c, -lam.stage[:, :T] / rho[:, None, None]))
    v_T = xp.where(eq_T > 0.5, c_T, xp.maximum(c_T, -lam.terminal / rho[:, None]))
    return xp.maximum(xp.amax(xp.abs(v) * weights[:T], (1, 2)), xp.amax(xp.abs(v_T) * weights_T, -1))


def _updated(ops: Ops, lam: Multipliers, c: Any, c_T: Any, masks: tuple) -> tuple[Any, Any]:
    """The first-order multiplier update: max(0, lam + rho c) (lam + rho c for equalities)."""
    xp = ops.xp
    weights, weights_T, eq, eq_T = masks
    rho = lam.penalty
    pad = xp.concatenate([c, 0.0 * c[:, :1]], 1)  # (row T of the stage rows is unused)
    s = lam.stage + rho[:, None, None] * pad
    s_T = lam.terminal + rho[:, None] * c_T
    return (xp.where(eq > 0.5, s, xp.maximum(s, 0.0 * s)) * weights,
            xp.where(eq_T > 0.5, s_T, xp.maximum(s_T, 0.0 * s_T)) * weights_T)


def _active(ops: Ops, stage: Any, terminal: Any, masks: tuple, T: int) -> tuple[Any, Any]:
    """Which rows are active (B, T, k_s), (B, k_T): equalities where they bind, inequalities
    with a positive multiplier."""
    weights, weights_T, eq, eq_T = masks
    return (((stage[:, :T] != 0) | (eq > 0.5)) & (weights[:T] > 0),
            ((terminal != 0) | (eq_T > 0.5)) & (weights_T > 0))


def solve(inner: Callable, inner_vjp: Callable, data: dict, options: dict, ops: Ops, tol: float,
          u_init: Any = None) -> tuple:
    """Solve with the path and terminal constraints of ``data["model"]`` by the augmented
    Lagrangian around ``inner`` (the unconstrained solve; ``inner_vjp`` its VJP, for the
    Newton updates of the multipliers). Returns its (outputs, info, saved), with
    ``saved.multipliers`` and ``saved.path`` set."""
    xp = ops.xp
    model = data["model"]
    lo = data["lo"]
    B, T, m = lo.shape
    ks, kT = model.path_sizes
    masks = model.path_masks()
    c_tol = constraint_tolerance(options, tol)
    like = data["x0"]

    def run(lam: Multipliers, u: Any, inner_tol: Any = tol) -> tuple:
        d = {**data, "model": model.with_multipliers(*lam)}
        return inner(d, {**options, "tol": inner_tol}, ops, u)

    def body(state: _Outer) -> _Outer:
        # far from feasibility the subproblems need not be solved to tol (Nocedal & Wright,
        # Alg. 17.4: the inner tolerance shrinks with the violation); a finished example's
        # solve, and the final one after the loop, are to tol
        zero = 0.0 * state.lam.penalty
        inexact = xp.where(state.done, zero + tol,
                           xp.maximum(zero + tol, INEXACT * xp.minimum(state.violation, zero + 1.0)))
        (x, u), info, saved = run(state.lam, state.u, inexact)
        c, c_T = model.path_values(x, u)
        violation = _violation(ops, c, c_T, state.lam, masks)
        stage, terminal = _updated(ops, state.lam, c, c_T, masks)
        on, on_T = _active(ops, stage, terminal, masks, T)
        active = xp.concatenate([on.reshape(B, -1), on_T], -1)
        # once the active set repeats, Newton on the active rows' multipliers (the dual's
        # Hessian is -J K^{-1} J^T, from the inner VJPs): quadratic where first-order updates
        # crawl at a rate of about 1 / rho
        settled = (active == state.active).all(-1) & (violation <= 0.25 * state.violation)
        if ops.known_any(settled) is not False:
            J, J_T = model.path_jacobians(x, u)
            rows = _rows(ops, on, on_T, J, J_T)
            G, _ = _schur(ops, inner_vjp, saved, rows, [])
            c_r = rows.select(xp.concatenate([c.reshape(B, -1), c_T], -1))
            lam_r = rows.select(xp.concatenate([state.lam.stage[:, :T].reshape(B, -1), state.lam.terminal], -1))
            step = ops.cho_solve(ops.cholesky(G, strict=False), c_r[..., None])[..., 0]
            newton = rows.scatter(xp.where(rows.present, lam_r + step, 0.0 * step))
            eq_all = xp.concatenate([xp.broadcast_to(masks[2], (T, ks if ks else 1)).reshape(-1), masks[3]], -1)
            newton = xp.where(eq_all > 0.5, newton, xp.maximum(newton, 0.0 * newton))
            ok = settled & xp.isfinite(newton).all(-1)
            first = xp.concatenate([stage[:, :T].reshape(B, -1), terminal], -1)
            chosen = xp.where(ok[:, None] & active, newton, first)
            stage = xp.concatenate([chosen[:, :T * stage.shape[-1]].reshape(B, T, -1), stage[:, T:]], 1)
            terminal = chosen[:, T * stage.shape[-1]:]

        done = state.done | ((info.residual <= tol) & (violation <= c_tol))
        keep = done  # a finished example keeps the multipliers of its solution
        rho = state.lam.penalty
        grow = ~done & (violation > 0.25 * state.violation)
        rho = xp.where(grow, xp.minimum(rho * options["penalty_factor"], 0.0 * rho + PENALTY_MAX), rho)
        lam = Multipliers(xp.where(keep[:, None, None], state.lam.stage, stage),
                          xp.where(keep[:, None], state.lam.terminal, terminal), rho)
        return _Outer(lam, u, xp.where(keep, state.violation, violation), done,
                      state.iterations + xp.where(state.done, 0, info.iterations), active)

    def unfinished(state: _Outer) -> Any:
        return (~state.done).any()

    zero = 0.0 * like[:, 0]
    lam = Multipliers(ops.zeros((B, T + 1, max(ks, 1)), like), ops.zeros((B, max(kT, 1)), like),
                      zero + float(options["penalty"]))
    u = ops.zeros((B, T, m), like) if u_init is None else u_init
    none = xp.zeros_like(ops.zeros((B, T * max(ks, 1) + max(kT, 1)), like), dtype=bool)
    start = _Outer(lam, u, zero + float("inf"), xp.zeros_like(zero, dtype=bool), xp.where(zero > 0, 1, 0), none)
    end = ops.loop(unfinished, body, start, options["outer_max_iter"])
    # the final solve at each example's multipliers (warm: a finished one takes no iteration)
    (x, u), info, saved = run(end.lam, end.u)
    c, c_T = model.path_values(x, u)
    violation = _violation(ops, c, c_T, end.lam, masks)
    met = violation <= c_tol
    stage, terminal = _updated(ops, end.lam, c, c_T, masks)
    J, J_T = model.path_jacobians(x, u)
    weights, weights_T, eq, eq_T = masks
    on, on_T = _active(ops, stage, terminal, masks, T)
    # strict complementarity fails where an inequality sits at zero with a zero multiplier: the
    # solution is then only one-sidedly differentiable there (the backward warns)
    weak = (((xp.abs(c) <= c_tol) & ~on & (weights[:T] > 0) & (eq < 0.5)).sum((1, 2))
            + ((xp.abs(c_T) <= c_tol) & ~on_T & (weights_T > 0) & (eq_T < 0.5)).sum(-1))
    active = Active(on, on_T, J, J_T, weak)
    info = dataclasses.replace(
        info, converged=info.converged & met, iterations=end.iterations + info.iterations,
        residual=xp.maximum(info.residual, violation * (tol / c_tol)),
        status=xp.where(met | ~info.converged, info.status, Status.INFEASIBLE_SOLUTION.code))
    return (x, u), info, saved._replace(multipliers=end.lam, path=active)


class _Rows(NamedTuple):
    """The active rows of each example, compacted to R (the most any example has): ``sel``
    (B, R, rows) picks example b's r-th active row, ``present`` (B, R) marks real ones (the
    rest pad), ``J`` (B, R, N) their Jacobians, ``onehot`` (B, R, T+1) their stages, and their
    cotangents on the trajectory, gx (B, R, T+1, n) and gu (B, R, T, m)."""

    sel: Any
    present: Any
    J: Any
    onehot: Any
    gx: Any
    gu: Any

    def select(self, values: Any) -> Any:
        """(B, rows) -> the active rows' values (B, R)."""
        return (self.sel @ values[..., None])[..., 0]

    def scatter(self, values: Any) -> Any:
        """(B, R) -> (B, rows), zero off the active rows."""
        return (values[..., None] * self.sel).sum(1)


def _rows(ops: Ops, on: Any, on_T: Any, J: Any, J_T: Any) -> _Rows:
    """The active rows (stage rows t-major, then terminal ones) of ``on`` (B, T, k_s) and ``on_T``
    (B, k_T), with their Jacobians J (B, T, k_s, N), J_T (B, k_T, n)."""
    xp = ops.xp
    B, T, ks, N = J.shape
    kT, n = J_T.shape[1:]
    m = N - n
    active = xp.concatenate([on.reshape(B, T * ks), on_T], -1)
    J_all = xp.concatenate([J.reshape(B, T * ks, N), xp.concatenate([J_T, ops.zeros((B, kT, m), J)], -1)], 1)
    stage_of = ops.cast_like(ops.as_array([t for t in range(T) for _ in range(ks)] + [T] * kT, J), J)
    known = ops.known_any(active)
    # (under jax.jit the count is not known: every row gets a slot)
    R = max(int(ops.to_numpy(active.sum(-1)).max()) if known is not None else active.shape[-1], 1)
    ones = xp.where(active, 1.0 + 0.0 * J_all[..., 0], 0.0 * J_all[..., 0])
    position = xp.cumsum(ones, -1) - 1
    ranks = ops.cast_like(ops.as_array(list(range(R)), J), J)
    sel = ones[:, None, :] * xp.where(xp.abs(position[:, None, :] - ranks[None, :, None]) < 0.5, 1.0, 0.0)
    present = sel.sum(-1) > 0.5
    Jr = sel @ J_all
    t_r = (sel @ stage_of[:, None])[..., 0]
    steps = ops.cast_like(ops.as_array(list(range(T + 1)), J), J)
    onehot = xp.where(xp.abs(t_r[..., None] - steps) < 0.5, 1.0 + 0.0 * t_r[..., None], 0.0 * t_r[..., None])
    gx, gu = onehot[..., None] * Jr[:, :, None, :n], onehot[:, :, :T, None] * Jr[:, :, None, n:]
    return _Rows(sel, present, Jr, onehot, gx, gu)


def _schur(ops: Ops, inner_vjp: Callable, saved: Any, rows: _Rows, vectors: list) -> tuple[Any, list]:
    """G = J_A K^{-1} J_A^T (B, R, R), identity on the padding rows, and J_A K^{-1} v (B, R)
    for each cotangent pair v = (gx, gu) in ``vectors``: one tiled batch of R + len(vectors)
    inner VJPs (copy-major rows r * B + b). The inner VJP's cotangent of the stationarity
    residual is -K^{-1} v (K the Hessian of the augmented Lagrangian, on the free controls)."""
    xp = ops.xp
    B, R, T1, n = rows.gx.shape
    pairs = [(rows.gx[:, r], rows.gu[:, r]) for r in range(R)] + list(vectors)
    P = tiled_vjp(ops, inner_vjp, {}, saved, pairs, ("grad_tau", "grad_T"))

    def joined(p: dict) -> Any:
        """A copy's cotangent of (tau_0..tau_{T-1}, x_T) as one array (B, T+1, N)."""
        last = xp.concatenate([p["grad_T"], 0.0 * p["grad_tau"][:, 0, n:]], -1)
        return xp.concatenate([p["grad_tau"], last[:, None]], 1)

    Pz = xp.stack([joined(p) for p in P], 1)  # (B, copies, T+1, N)
    JKv = -((rows.onehot[:, None] @ Pz) * rows.J[:, None]).sum(-1)  # (B, copies, R): J_i K^{-1} (column)
    G = xp.swapaxes(JKv[:, :R], -1, -2)
    pad = ~(rows.present[..., None] & rows.present[:, None, :])
    G = xp.where(pad, 0.0 * G, G) + ops.eye_like(G) * xp.where(rows.present, 0.0, 1.0)[..., None]
    return 0.5 * (G + xp.swapaxes(G, -1, -2)), [JKv[:, R + i] for i in range(len(vectors))]


def vjp(inner_vjp: Callable, data: dict, saved: Any, cotangents: tuple, ops: Ops, needs: Any) -> dict:
    """Cotangents of the data named in ``needs`` (the inner solver's keys and :data:`KEYS`)."""
    xp = ops.xp
    gx, gu = cotangents
    B, T, m = gu.shape
    act = saved.path
    ks = act.stage.shape[-1]
    rows = _rows(ops, act.stage, act.terminal, act.J, act.J_T)
    G, (JKv,) = _schur(ops, inner_vjp, saved, rows, [(gx, gu)])
    eta = ops.cho_solve(ops.cholesky(G, strict=False), JKv[..., None])[..., 0]  # G^{-1} J K^{-1} v
    singular = ~xp.isfinite(eta).all(-1)
    if ops.known_any(act.weak > 0):
        weak = [int(b) for b in ops.to_numpy(act.weak).nonzero()[0]]
        warnings.warn(f"examples {weak[:10]}{' ...' if len(weak) > 10 else ''} have weakly active constraints (an "
                      "inequality at zero with a zero multiplier): the solution is not differentiable there, and "
                      "their gradient is the one-sided one that keeps those constraints inactive",
                      GradientFallbackWarning, stacklevel=3)
    if ops.known_any(singular):
        warnings.warn(f"{int(singular.sum())} of {B} examples have linearly dependent active constraints (no "
                      "unique multipliers): their gradients are NaN", GradientFallbackWarning, stacklevel=3)
    # (a singular example's eta is NaN: zero it here, so the solves below stay finite, and
    # poison its gradients at the end instead)
    eta = xp.where(rows.present & ~singular[:, None], eta, 0.0 * xp.nan_to_num(eta))
    reduced = (gx - (eta[..., None, None] * rows.gx).sum(1), gu - (eta[..., None, None] * rows.gu).sum(1))
    out = inner_vjp(data, saved, reduced, ops, tuple(set(needs) - set(KEYS)))
    values = rows.scatter(-eta)  # the active rows' values' cotangent
    out["path"] = values[:, :T * ks].reshape(B, T, ks)
    out["path_T"] = values[:, T * ks:]
    used = (xp.abs(gx).reshape(B, -1).sum(-1) + xp.abs(gu).reshape(B, -1).sum(-1)) > 0
    poison = xp.where(singular & used, float("nan") + 0.0 * eta[:, 0], 0.0 * eta[:, 0])

    def checked(v: Any) -> Any:
        if v is None or v.ndim == 0 or v.shape[0] != B:
            return v
        return v + poison.reshape((B,) + (1,) * (v.ndim - 1))

    return {k: checked(v) if k in needs else None for k, v in out.items()}
