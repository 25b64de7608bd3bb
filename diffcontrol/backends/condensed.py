"""The condensed form of a short-horizon LQ problem: the states eliminated through the
dynamics, a dense QP in the stacked controls u = (u_0, ..., u_{T-1}) (B, T*m).

For a short horizon the Riccati sweep's T sequential small stages cost more in
per-operation overhead than one dense factorisation of the (T*m, T*m) Hessian,
and an active-set or projected-Newton method needs one such solve per
iteration instead of one sweep. The backward pass reuses the forward's
Cholesky factor when the active set is the same (it does not depend on the
point: the Hessian is the problem's).

Conventions as in :mod:`diffcontrol.backends.riccati` (batch-first, tau_t = [x_t; u_t],
N = n + m; data carrying the T axis).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from diffcontrol.backends.ops import Ops
from diffcontrol.backends.riccati import _mv, costates


class Condensed(NamedTuple):
    """x = s + S u: ``S`` (B, (T+1) n, T m) and ``s`` (B, (T+1) n) (x with u = 0) stacked over
    time; ``D`` (B, T N, T m) = d tau / d u stacked; the total cost is
    1/2 u^T H u + h^T u + const with ``H`` (B, T m, T m), ``h`` (B, T m)."""

    S: Any
    s: Any
    D: Any
    H: Any
    h: Any


def condense(ops: Ops, data: dict) -> Condensed:
    """The condensed QP of the LQ problem in ``data`` (C, c, F, f (B, T, ...), CT, cT, x0)."""
    xp = ops.xp
    C, c, F, f, CT, cT, x0 = (data[k] for k in ("C", "c", "F", "f", "CT", "cT", "x0"))
    B, T, n, N = F.shape
    m = N - n
    eye_T = ops.eye_like(ops.zeros((T, T), C))
    # B_t placed in the columns of u_t: (B, T, n, T m)
    placed = (F[..., n:][:, :, :, None, :] * eye_T[None, :, None, :, None]).reshape(B, T, n, T * m)

    def stage(carry: tuple, st: dict) -> tuple:
        S, s = carry  # d x_t / d u (B, n, T m) and x_t at u = 0 (B, n)
        A = st["F"][:, :, :n]
        S_next = A @ S + st["placed"]
        s_next = _mv(A, s) + st["f"]
        return (S_next, s_next), (S_next, s_next)

    S0 = ops.zeros((B, n, T * m), C)
    _, (S, s) = ops.scan(stage, (S0, x0), {"F": F, "f": f, "placed": placed})
    S = xp.concatenate([S0[:, None], S], 1)                        # (B, T+1, n, T m)
    s = xp.concatenate([x0[:, None], s], 1)                        # (B, T+1, n)
    select_u = ops.eye_like(ops.zeros((T * m, T * m), C)).reshape(T, m, T * m)
    D = xp.concatenate([S[:, :T], xp.broadcast_to(select_u, (B, T, m, T * m))], -2)  # (B, T, N, T m)
    CD = C @ D
    H = D.reshape(B, T * N, T * m).mT @ CD.reshape(B, T * N, T * m) + S[:, T].mT @ CT @ S[:, T]
    tau0 = xp.concatenate([s[:, :T], ops.zeros((B, T, m), C)], -1)
    h = linear_term(D.reshape(B, T * N, T * m), S[:, T], _mv(C, tau0) + c, _mv(CT, s[:, T]) + cT)
    return Condensed(S.reshape(B, (T + 1) * n, T * m), s.reshape(B, (T + 1) * n),
                     D.reshape(B, T * N, T * m), 0.5 * (H + H.mT), h)


def linear_term(D: Any, S_T: Any, g_tau: Any, g_T: Any) -> Any:
    """The gradient w.r.t. u (B, T m) of sum_t g_tau_t^T tau_t + g_T^T x_T along x = s + S u:
    ``D`` (B, T N, T m), ``S_T`` (B, n, T m), ``g_tau`` (B, T, N), ``g_T`` (B, n)."""
    B = g_tau.shape[0]
    return _mv(D.mT, g_tau.reshape(B, -1)) + _mv(S_T.mT, g_T)


def states(cond: Condensed, u: Any) -> Any:
    """x (B, T+1, n) under the controls u (B, T, m)."""
    B, T = u.shape[:2]
    return (cond.s + _mv(cond.S, u.reshape(B, -1))).reshape(B, T + 1, -1)


def frozen_adjoint(ops: Ops, cond: Condensed, L: Any, C: Any, F: Any, CT: Any, free: Any, g_tau: Any,
                   g_T: Any) -> tuple[Any, Any, Any, Any]:
    """:func:`~diffcontrol.backends.riccati.frozen_lqr_adjoint` in condensed form: the LQ
    problem with linear terms ``g_tau`` (B, T, N), ``g_T`` (B, n), x_0 = 0, no defects and the
    controls where ``free`` (B, T, m) is False held at zero, solved with ``L``, the Cholesky
    factor of H restricted to the free controls (identity on the others).
    Returns dx (B, T+1, n), du (B, T, m), the costates dlam (B, T+1, n) and the reduced
    gradient r_u (B, T, m)."""
    B, T, m = free.shape
    n = CT.shape[-1]
    mask = free.reshape(B, -1)
    lin = linear_term(cond.D, cond.S[:, T * n:], g_tau, g_T)
    du = -ops.cho_solve(L, lin * mask)  # zero on the frozen controls: L is the identity there
    dx = _mv(cond.S, du).reshape(B, T + 1, n)
    du = du.reshape(B, T, m)
    dlam, r_u = costates(ops, C, g_tau, F, CT, g_T, dx, du)
    return dx, du, dlam, r_u
