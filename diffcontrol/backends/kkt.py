"""Optimality of a box-constrained control problem, shared by the LQR-type backends:
the scaled projected-gradient residual, the active set and the status codes."""

from __future__ import annotations

from typing import Any

from diffcontrol.backends.ops import Ops
from diffcontrol.errors import Status


def projected_gradient_residual(ops: Ops, u: Any, lo: Any, hi: Any, g_u: Any, terms: list) -> Any:
    """Scaled KKT residual per example (B,): the largest entry of the projected gradient
    (g_u (B, T, m), zeroed where a control sits at a bound that g_u pushes against),
    relative to 1 + the largest entry of each of ``terms`` (the terms summed into g_u, so
    that roundoff of the dtype is what ``tol`` compares to)."""
    xp = ops.xp
    slack = ops.eps(u) ** 0.5 * (1 + xp.abs(u))
    blocked = ((u - lo <= slack) & (g_u > 0)) | ((hi - u <= slack) & (g_u < 0))
    pg = xp.where(blocked, 0.0 * g_u, g_u)
    scale = 1 + sum(xp.amax(xp.abs(t).reshape(t.shape[0], -1), -1) for t in [*terms, g_u])
    return xp.amax(xp.abs(pg).reshape(pg.shape[0], -1), -1) / scale


def active_bounds(u: Any, lo: Any, hi: Any, g_u: Any) -> tuple[Any, Any]:
    """The controls held by their lower / upper bound: where the projected-gradient step
    u - g_u lands on (or beyond) the bound, with g_u pushing against it."""
    return (u - g_u <= lo) & (g_u > 0), (u - g_u >= hi) & (g_u < 0)


def status_codes(ops: Ops, converged: Any, stalled: Any, saddle: Any = None) -> Any:
    """(B,) Status codes: CONVERGED (SADDLE_POINT where ``saddle`` (B,) says the converged point
    is not a local minimum), else LINE_SEARCH_FAILED where the iterate stalled, else MAX_ITER."""
    xp = ops.xp
    done = Status.CONVERGED.code if saddle is None else xp.where(saddle, Status.SADDLE_POINT.code,
                                                                  Status.CONVERGED.code)
    return xp.where(converged, done, xp.where(stalled, Status.LINE_SEARCH_FAILED.code, Status.MAX_ITER.code))
