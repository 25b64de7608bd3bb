"""General path and terminal constraints around an iLQR solve: an augmented-Lagrangian outer
loop forward, and an exact implicit backward with the active constraints as equalities.

Forward (as ALTRO, Howell, Jackson & Manchester 2019; Nocedal & Wright, Alg. 17.4): the
model's costs carry, per constraint row, the term of the augmented Lagrangian with
multiplier lam and penalty rho (:mod:`diffcontrol.compilers.augmented`). Each outer
step solves that smooth problem by iLQR (warm-started from the last controls), then
sets lam <- max(0, lam + rho c) (inequalities; lam + rho c for equalities) and, per
example, raises rho by ``penalty_factor`` where the violation did not fall by 4. An
example is done once its solve converged and no row is violated by more than
``constraint_tol``; one still violated after ``outer_max_iter`` steps is reported
with ``Status.INFEASIBLE_SOLUTION`` (never returned as if solved).

Backward (implicit function theorem on the KKT conditions of the constrained problem,
strictly complementary case): the active rows A (equalities, and inequalities with
lam > 0) are equalities there. With K the Hessian of the augmented Lagrangian, which
at c_A = 0 is the Lagrangian's plus rho J_A^T J_A (the same KKT solution, and positive
definite where the constrained minimum is strict), and P the inner solver's VJP
(v -> K^{-1} v up to sign, the box-active controls frozen):

    S = J_A P(J_A^T)   (k_A x k_A, from k_A inner VJPs run as one tiled batch)
    eta = S^{-1} J_A P(v),   cotangent of the data = P-side VJP of (v - J_A^T eta),
    cotangent of the active rows' values = -eta.

So the backward is k_A + 1 LQR solves, batched. An example whose S is singular (active
constraints that are linearly dependent: no unique multipliers) gets NaN gradients
where its outputs are used, with a warning.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

from diffcontrol.backends.ops import Ops
from diffcontrol.backends.terminal import _tile
from diffcontrol.errors import GradientFallbackWarning, Status

#: the implicit inputs of the rows' values: stage rows (B, T, k_s), terminal rows (B, k_T)
KEYS = ("path", "path_T")
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
    lam: Multipliers
    u: Any
    violation: Any
    done: Any
    iterations: Any


def constraint_tolerance(options: dict, tol: float) -> float:
    return options["constraint_tol"] if options.get("constraint_tol") is not None else tol ** 0.75


def _violation(ops: Ops, c: Any, c_T: Any, masks: tuple) -> tuple[Any, Any]:
    """The largest violation (B,): |c| of equality rows, max(c, 0) of inequality rows, where
    they bind; and the per-row violations of the stage (B, T, k_s) and terminal rows."""
    xp = ops.xp
    weights, weights_T, eq, eq_T = masks
    T = c.shape[1]
    v = xp.where(eq > 0.5, xp.abs(c), xp.maximum(c, 0.0 * c)) * weights[:T]
    v_T = xp.where(eq_T > 0.5, xp.abs(c_T), xp.maximum(c_T, 0.0 * c_T)) * weights_T
    return xp.maximum(xp.amax(v, (1, 2)), xp.amax(v_T, -1)), (v, v_T)


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


def solve(inner: Callable, data: dict, options: dict, ops: Ops, tol: float, u_init: Any = None) -> tuple:
    """Solve with the path and terminal constraints of ``data["model"]`` by the augmented
    Lagrangian around ``inner`` (the unconstrained solve). Returns its (outputs, info,
    saved), with ``saved.multipliers`` and ``saved.path`` set."""
    xp = ops.xp
    model = data["model"]
    lo = data["lo"]
    B, T, m = lo.shape
    ks, kT = model.path_sizes
    masks = model.path_masks()
    c_tol = constraint_tolerance(options, tol)
    like = data["x0"]

    def run(lam: Multipliers, u: Any) -> tuple:
        d = {**data, "model": model.with_multipliers(*lam)}
        return inner(d, options, ops, u)

    def body(state: _Outer) -> _Outer:
        (x, u), info, _ = run(state.lam, state.u)
        c, c_T = model.path_values(x, u)
        violation, _ = _violation(ops, c, c_T, masks)
        stage, terminal = _updated(ops, state.lam, c, c_T, masks)
        done = state.done | (info.converged & (violation <= c_tol))
        keep = state.done  # a finished example keeps the multipliers of its solution
        rho = state.lam.penalty
        grow = ~done & (violation > 0.25 * state.violation)
        rho = xp.where(grow, xp.minimum(rho * options["penalty_factor"], 0.0 * rho + PENALTY_MAX), rho)
        lam = Multipliers(xp.where(keep[:, None, None], state.lam.stage, stage),
                          xp.where(keep[:, None], state.lam.terminal, terminal), rho)
        return _Outer(lam, u, xp.where(keep, state.violation, violation), done,
                      state.iterations + xp.where(state.done, 0, info.iterations))

    def unfinished(state: _Outer) -> Any:
        return (~state.done).any()

    zero = 0.0 * like[:, 0]
    lam = Multipliers(ops.zeros((B, T + 1, max(ks, 1)), like), ops.zeros((B, max(kT, 1)), like),
                      zero + float(options["penalty"]))
    u = ops.zeros((B, T, m), like) if u_init is None else u_init
    start = _Outer(lam, u, zero + float("inf"), xp.zeros_like(zero, dtype=bool), xp.where(zero > 0, 1, 0))
    end = ops.loop(unfinished, body, start, options["outer_max_iter"])
    # the final solve at each example's multipliers (warm: a finished one takes no iteration)
    (x, u), info, saved = run(end.lam, end.u)
    c, c_T = model.path_values(x, u)
    violation, _ = _violation(ops, c, c_T, masks)
    met = violation <= c_tol
    stage, terminal = _updated(ops, end.lam, c, c_T, masks)
    J, J_T = model.path_jacobians(x, u)
    weights, weights_T, eq, eq_T = masks
    on, on_T = (stage[:, :T] != 0) & (weights[:T] > 0), (terminal != 0) & (weights_T > 0)
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


def vjp(inner_vjp: Callable, data: dict, saved: Any, cotangents: tuple, ops: Ops, needs: Any) -> dict:
    """Cotangents of the data named in ``needs`` (the inner solver's keys and :data:`KEYS`)."""
    xp = ops.xp
    gx, gu = cotangents
    B, T, m = gu.shape
    n = gx.shape[-1]
    N = n + m
    act = saved.path
    ks, kT = act.stage.shape[-1], act.terminal.shape[-1]
    # all rows, stage rows first (t-major), then the terminal ones: (B, R) with R = T k_s + k_T
    active = xp.concatenate([act.stage.reshape(B, T * ks), act.terminal], -1)
    J_all = xp.concatenate([act.J.reshape(B, T * ks, N),
                            xp.concatenate([act.J_T, ops.zeros((B, kT, m), gx)], -1)], 1)  # (B, R, N)
    stage_of = ops.cast_like(ops.as_array([t for t in range(T) for _ in range(ks)] + [T] * kT, gx), gx)
    known = ops.known_any(active)
    count = ops.to_numpy(active.sum(-1)) if known is not None else None
    R = max(int(count.max()) if count is not None else active.shape[-1], 1)
    # the active rows, compacted: sel[b, r, i] = 1 where row i is example b's r-th active row
    ones = xp.where(active, 1.0 + 0.0 * J_all[..., 0], 0.0 * J_all[..., 0])
    position = xp.cumsum(ones, -1) - 1
    ranks = ops.cast_like(ops.as_array(list(range(R)), gx), gx)
    sel = ones[:, None, :] * xp.where(xp.abs(position[:, None, :] - ranks[None, :, None]) < 0.5, 1.0, 0.0)
    present = sel.sum(-1) > 0.5  # (B, R)
    Jr = sel @ J_all  # (B, R, N)
    t_r = (sel @ stage_of[:, None])[..., 0]  # (B, R)
    steps = ops.cast_like(ops.as_array(list(range(T + 1)), gx), gx)
    onehot = xp.where(xp.abs(t_r[..., None] - steps) < 0.5, 1.0 + 0.0 * t_r[..., None], 0.0 * t_r[..., None])
    gx_r = onehot[..., None] * Jr[:, :, None, :n]  # (B, R, T+1, n)
    gu_r = onehot[:, :, :T, None] * Jr[:, :, None, n:]  # (B, R, T, m)
    # one tiled batch of R + 1 inner VJPs (copy-major rows r * B + b): the rows, then v
    tiled_gx = xp.concatenate([gx_r[:, r] for r in range(R)] + [gx], 0)
    tiled_gu = xp.concatenate([gu_r[:, r] for r in range(R)] + [gu], 0)
    keys = ("grad_tau", "grad_T")
    P = inner_vjp(_tile(xp, data, B, R + 1), _tile(xp, saved, B, R + 1), (tiled_gx, tiled_gu), ops, keys)
    Pz = xp.concatenate([P["grad_tau"], xp.concatenate([P["grad_T"], 0.0 * P["grad_tau"][:, 0, n:]], -1)[:, None]],
                        1)  # (R+1)B, T+1, N
    Pz = xp.stack([Pz[r * B:(r + 1) * B] for r in range(R + 1)], 1)  # (B, R+1, T+1, N)
    at_rows = onehot[:, None] @ Pz  # (B, R+1, R, N): column r's solution at row i's stage
    JP = (at_rows * Jr[:, None]).sum(-1)  # (B, R+1, R): J_i P(column r)
    # P(v) = -K^{-1} v (the inner VJP's cotangent of the stationarity residual), so
    # -S = J K^{-1} J^T: positive definite where the active rows are independent; the padding
    # rows get -1 on the diagonal
    S = -xp.swapaxes(JP[:, :R], -1, -2)
    pad = ~(present[..., None] & present[:, None, :])
    S = xp.where(pad, 0.0 * S, S) + ops.eye_like(S) * xp.where(present, 0.0, 1.0)[..., None]
    L = ops.cholesky(0.5 * (S + xp.swapaxes(S, -1, -2)), strict=False)
    eta = -ops.cho_solve(L, JP[:, R][..., None])[..., 0]  # S_P^{-1} J P(v), S_P = J P(J^T)
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
    eta = xp.where(present, eta, 0.0 * eta)
    reduced = (gx - (eta[..., None, None] * gx_r).sum(1), gu - (eta[..., None, None] * gu_r).sum(1))
    out = inner_vjp(data, saved, reduced, ops, tuple(set(needs) - set(KEYS)))
    rows = ((-eta)[..., None] * sel).sum(1)  # (B, rows)
    out["path"] = rows[:, :T * ks].reshape(B, T, ks)
    out["path_T"] = rows[:, T * ks:]
    used = (xp.abs(gx).reshape(B, -1).sum(-1) + xp.abs(gu).reshape(B, -1).sum(-1)) > 0
    poison = xp.where(singular & used, float("nan") + 0.0 * eta[:, 0], 0.0 * eta[:, 0])

    def checked(v: Any) -> Any:
        if v is None or v.ndim == 0 or v.shape[0] != B:
            return v
        return v + poison.reshape((B,) + (1,) * (v.ndim - 1))

    return {k: checked(v) if k in needs else None for k, v in out.items()}
