"""Terminal equality constraints G x_T = g, exactly, around a solver that takes a terminal
linear cost: a Newton method on their multipliers nu, and an exact implicit VJP.

With the terminal linear cost c_T + G^T nu, the solver's solution x(nu) is the
constrained solution once G x_T(nu) = g. Each Newton step solves the problem at
nu and, from the solver's own VJP, its sensitivity S = d x_T / d nu: column i is
the VJP of the cotangent G_i on x_T with respect to c_T (the reduced Hessian's
inverse is symmetric), so M = G S is k x k with k the number of constraint rows,
and nu <- nu - alpha M^{-1} (G x_T - g), alpha halved until the dual function
rises. Without a control box x_T is affine in nu and one step is exact (a second
refines it to roundoff); with one, the multiplier map is piecewise affine and
the steps are a damped semismooth Newton method: a few where few controls are
at the box, tens where many are (44 on benchmarks/terminal_constrained_lqr.py).

An example whose residual G x_T - g stays above tolerance (the goal is out of
reach: an uncontrollable direction, or the box forbids it; or the steps ran out
at 4 * max_iter) is reported per example as ``Status.GOAL_NOT_MET``, never
returned as if solved, and its gradients are NaN.

Backward (implicit function theorem on the pair (solution, nu)): the output
depends on the data directly and through nu, which satisfies
Phi = G x_T(data, nu) - g = 0. With a = dL/dc_T from the solver's VJP,
w = -M^{-T} G a, and a second VJP with the cotangent G^T w on x_T gives the rest:
dL/dG = nu a_total^T + w x_T^T and dL/dg = -w. Two solver VJPs in all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from diffcontrol.backends.ops import Ops
from diffcontrol.backends.riccati import mv, vm
from diffcontrol.backends.tiling import tiled_vjp
from diffcontrol.errors import Status

#: The constraint's data keys: G (B, k, n) and g (B, k).
KEYS = ("G", "g")


@dataclass(frozen=True)
class Inner:
    """The solver the multipliers wrap: its ``solve`` and ``vjp`` (for data without
    :data:`KEYS`), ``cost(data, x, u)`` (B,) its objective, the data key of the terminal
    linear cost it takes (``linear_key``, absent: zero) and the VJP key of that term's
    cotangent (``cotangent_key``); ``affine``: x_T is affine in that term for a fixed active
    set (an LQ problem), so without a box M does not change with nu."""

    solve: Callable
    vjp: Callable
    cost: Callable
    linear_key: str = "cT"
    cotangent_key: str = "cT"
    affine: bool = True


def _with_multipliers(inner: Inner, data: dict, nu: Any, G: Any) -> dict:
    """The inner solver's data (without :data:`KEYS`) with the terminal linear cost c_T + G^T nu."""
    base = data.get(inner.linear_key)
    linear = vm(nu, G) if base is None else base + vm(nu, G)
    return {**{key: v for key, v in data.items() if key not in KEYS}, inner.linear_key: linear}


#: up to this many rows (batch x constraint rows) the sensitivity VJPs run as one tiled batch;
#: above, one VJP per constraint row (tiling copies every array k times: memory-bound there)
TILE_MAX_ROWS = 64


def _sensitivity(ops: Ops, inner: Inner, data: dict, G: Any, saved: Any, T: int, m: int) -> Any:
    """S = d x_T / d nu (B, n, k): the solver's VJP of each constraint row's cotangent G_j on
    x_T, read at its terminal linear term; small batches run the k VJPs as one tiled batch."""
    xp = ops.xp
    B, k, n = G.shape
    key = inner.cotangent_key
    zero_x, zero_u = ops.zeros((B, T, n), G), ops.zeros((B, T, m), G)
    pairs = [(xp.concatenate([zero_x, G[:, j:j + 1]], 1), zero_u) for j in range(k)]
    columns = tiled_vjp(ops, inner.vjp, data, saved, pairs, (key,), max_rows=TILE_MAX_ROWS)
    return xp.stack([c[key] for c in columns], -1)


def _inverse_times(ops: Ops, M: Any, r: Any) -> Any:
    """M^{-1} r (B, k) for the negative semidefinite M, nudged definite: a singular M (a goal
    direction the controls cannot reach) gives a large step, whose residual then stays."""
    xp = ops.xp
    scale = xp.amax(xp.abs(xp.diagonal(M, 0, -2, -1)), -1)
    shift = ops.eps(M) ** 0.75 * (scale + ops.eps(M))
    L = ops.cholesky(shift[:, None, None] * ops.eye_like(M) - M, strict=False)
    return -ops.cho_solve(L, r)


def residual_tolerance(ops: Ops, data: dict, tol: float) -> Any:
    """The per-example tolerance (B,) on |G x_T - g|: ``tol`` relative to the goal's size."""
    return tol * (1.0 + ops.xp.amax(ops.xp.abs(data["g"]), -1))


class _DualState(NamedTuple):
    """The dual ascent's iterate, per example: the multipliers nu (B, k), the dual value D (B,),
    the residual r = G x_T - g (B, k) and M (B, k, k) there, the Newton direction (B, k), the
    step length being tried (B,), the warm start u, which examples are done, their steps."""

    nu: Any
    dual: Any
    r: Any
    M: Any
    direction: Any
    alpha: Any
    u: Any
    done: Any
    steps: Any


def solve(inner_solver: Inner, data: dict, options: dict, ops: Ops, tol: float, u_init: Any = None) -> tuple:
    """Solve with the terminal equalities of ``data`` (keys :data:`KEYS`) around
    ``inner_solver``. Returns its (outputs, info, saved), with ``saved.nu`` and ``saved.M``
    set and the info marking the examples whose goal was not met.

    The multipliers maximise the concave dual D(nu) = min over the trajectory of the cost
    plus nu^T (G x_T - g), whose gradient is r and (generalised) Hessian M: Newton ascent
    steps, halved per example until D rises (the box makes D piecewise quadratic, where
    full steps can cycle), one solve per trial. (For nonlinear dynamics D is concave near
    a strict local minimum; a step that halves the residual is taken too.)"""
    xp = ops.xp
    G, g = data["G"], data["g"]
    B, k, n = G.shape
    inner = {key: v for key, v in data.items() if key not in KEYS}
    r_tol = residual_tolerance(ops, data, tol)

    bounded = ops.known_any(xp.isfinite(data["lo"]) | xp.isfinite(data["hi"])) is not False
    constant_M = inner_solver.affine and not bounded

    def evaluate(nu, u, M=None):
        """The solve at nu: its trajectory, dual value, residual and M (``M`` given: kept, as
        without a box, where it does not depend on nu)."""
        d = _with_multipliers(inner_solver, inner, nu, G)
        (x, u_new), _, saved = inner_solver.solve(d, options, ops, u)
        r = mv(G, x[:, -1]) - g
        if M is None:
            M = G @ _sensitivity(ops, inner_solver, d, G, saved, u.shape[1], u.shape[2])
        return u_new, inner_solver.cost(d, x, u_new) - (nu * g).sum(-1), r, M

    def body(state: _DualState) -> _DualState:
        trial = state.nu + state.alpha[:, None] * state.direction
        u, dual, r, M = evaluate(trial, state.u, state.M if constant_M else None)
        slack = 10 * ops.eps(dual) * (1 + xp.abs(state.dual))
        rise = (state.r * state.direction).sum(-1)  # the directional derivative, >= 0
        # (near the goal D's rise drops below roundoff before the residual does: a step that
        # halves the residual is taken too)
        shrinks = xp.amax(xp.abs(r), -1) <= 0.5 * xp.amax(xp.abs(state.r), -1)
        accept = ~state.done & ((dual >= state.dual + 1e-4 * state.alpha * rise - slack) | shrinks)

        def pick(new, old):
            return xp.where(accept.reshape((B,) + (1,) * (new.ndim - 1)), new, old)

        r, M = pick(r, state.r), pick(M, state.M)
        done = state.done | (accept & (xp.amax(xp.abs(r), -1) <= r_tol)) | (state.alpha < 1e-12)
        return _DualState(pick(trial, state.nu), pick(dual, state.dual), r, M,
                          pick(-_inverse_times(ops, M, r), state.direction),
                          # the next trial: after a shortened step, 4x that step, not the full one again
                          # (where the box makes D very kinky, full steps keep overshooting)
                          xp.where(accept, xp.minimum(4.0 * state.alpha, 1.0 + 0.0 * state.alpha), 0.5 * state.alpha),
                          pick(u, state.u),
                          done, state.steps + xp.where(state.done, 0, 1))

    def unfinished(state: _DualState):
        return (~state.done).any()

    nu = ops.zeros((B, k), G)
    u, dual, r, M = evaluate(nu, ops.zeros(data["lo"].shape, G) if u_init is None else u_init)
    done = xp.amax(xp.abs(r), -1) <= r_tol
    start = _DualState(nu, dual, r, M, -_inverse_times(ops, M, r), 1.0 + 0.0 * dual, u, done,
                       xp.where(done, 0, 0))
    # (each trial is one solve; a kinky dual may take several times the inner solver's cap)
    end = ops.loop(unfinished, body, start, 4 * options["max_iter"])
    (x, u), info, saved = inner_solver.solve(_with_multipliers(inner_solver, inner, end.nu, G), options, ops, end.u)
    violation = xp.amax(xp.abs(mv(G, x[:, -1]) - g), -1)
    met = violation <= r_tol
    # the residual reported is the larger of the solve's and the goal's, both scaled to tol
    info = dataclasses.replace(info, converged=info.converged & met, iterations=end.steps,
                               residual=xp.maximum(info.residual, violation * (tol / r_tol)),
                               status=xp.where(met, info.status, Status.GOAL_NOT_MET.code))
    # an example whose goal was not met has no gradient: NaN in M makes its VJP NaN (loud)
    M = xp.where(met[:, None, None], end.M, end.M * float("nan"))
    return (x, u), info, saved._replace(nu=end.nu, M=M)


def vjp(inner_solver: Inner, data: dict, saved: Any, cotangents: tuple, ops: Ops, needs: Any) -> dict:
    """Cotangents of the data (the inner solver's keys and :data:`KEYS`) named in ``needs``.
    An example whose goal was not met (its M is NaN) gets NaN where its outputs are used, and
    zeros where they are not."""
    xp = ops.xp
    G, nu, M = data["G"], saved.nu, saved.M
    B = G.shape[0]
    failed = ~xp.isfinite(M).reshape(B, -1).all(-1)
    M = xp.where(failed[:, None, None], -ops.eye_like(M) + 0.0 * xp.nan_to_num(M), M)
    inner = _with_multipliers(inner_solver, data, nu, G)
    key = inner_solver.cotangent_key
    wanted = tuple(set(needs) | {key})
    first = inner_solver.vjp(inner, saved, cotangents, ops, wanted)
    d_nu = mv(G, first[key])
    w = -_inverse_times(ops, M, d_nu)  # (M is symmetric)
    gx, gu = cotangents
    x_T = saved.x[:, -1]
    extra = xp.concatenate([0.0 * gx[:, :-1], vm(w, G)[:, None]], 1)
    second = inner_solver.vjp(inner, saved, (extra, 0.0 * gu), ops, wanted)
    total = {k: None if first.get(k) is None else first[k] + second[k] for k in first}
    total["G"] = nu[..., :, None] * total[key][..., None, :] + w[..., :, None] * x_T[..., None, :]
    total["g"] = -w
    used = (xp.abs(gx).reshape(B, -1).sum(-1) + xp.abs(gu).reshape(B, -1).sum(-1)) > 0
    poison = xp.where(failed & used, float("nan"), 0.0) + 0.0 * w[:, 0]

    def checked(v: Any) -> Any:
        if v is None or v.ndim == 0 or v.shape[0] != B:
            return v
        rows = failed.reshape((B,) + (1,) * (v.ndim - 1))
        return xp.where(rows, poison.reshape(rows.shape) + 0.0 * v, v)

    return {k: checked(total.get(k)) if k in needs else None for k in (*first.keys(), *KEYS)}
