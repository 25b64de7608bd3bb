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
from diffcontrol.backends.riccati import costates, mv, vm


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
    m, M = N - n, T * (N - n)
    # x_t = S_t u + s_t is carried as one matrix [S_t s_t] (B, n, M+1), an affine function of
    # [u; 1]: each stage is then one product, A_t [S_t s_t] + [B_t placed in u_t's columns, f_t].
    placed = (F[..., n:][:, :, :, None, :] * ops.eye_like(ops.zeros((T, T), C))[None, :, None, :, None])
    drive = xp.concatenate([placed.reshape(B, T, n, M), f[..., None]], -1)

    def stage(S: Any, st: dict) -> tuple:
        S = st["A"] @ S + st["drive"]
        return S, (S,)

    S0 = xp.concatenate([ops.zeros((B, n, M), C), x0[..., None]], -1)
    _, (S,) = ops.scan(stage, S0, {"A": F[..., :n], "drive": drive})
    S = xp.concatenate([S0[:, None], S], 1)                                    # (B, T+1, n, M+1)
    # tau_t = [x_t; u_t] = [D_t d_t] [u; 1]: (B, T, N, M+1)
    select_u = ops.eye_like(ops.zeros((M + 1, M + 1), C))[:M].reshape(T, m, M + 1)
    Dd = xp.concatenate([S[:, :T], xp.broadcast_to(select_u, (B, T, m, M + 1))], -2)
    Dd_flat, S_T = Dd.reshape(B, T * N, M + 1), S[:, T]
    # the total cost is 1/2 [u; 1]^T G [u; 1] + g^T [u; 1] + const
    G = Dd_flat.mT @ (C @ Dd).reshape(B, T * N, M + 1) + S_T.mT @ (CT @ S_T)
    g = linear_term(Dd_flat, S_T, c, cT)
    H, h = G[:, :M, :M], G[:, :M, M] + g[:, :M]
    return Condensed(S[..., :M].reshape(B, (T + 1) * n, M), S[..., M].reshape(B, (T + 1) * n),
                     Dd_flat[..., :M], 0.5 * (H + H.mT), h)


def linear_term(D: Any, S_T: Any, g_tau: Any, g_T: Any) -> Any:
    """The gradient w.r.t. u (B, T m) of sum_t g_tau_t^T tau_t + g_T^T x_T along x = s + S u:
    ``D`` (B, T N, T m), ``S_T`` (B, n, T m), ``g_tau`` (B, T, N), ``g_T`` (B, n). (With the
    columns of s appended to D and S_T, the last entry is the terms' value at u = 0.)"""
    B = g_tau.shape[0]
    return vm(g_tau.reshape(B, -1), D) + vm(g_T, S_T)


def states(cond: Condensed, u: Any) -> Any:
    """x (B, T+1, n) under the controls u (B, T, m)."""
    B, T = u.shape[:2]
    return (cond.s + mv(cond.S, u.reshape(B, -1))).reshape(B, T + 1, -1)


def frozen_adjoint(ops: Ops, cond: Condensed, L: Any, C: Any, F: Any, CT: Any, free: Any, g_tau: Any,
                   g_T: Any, forward: tuple | None = None) -> tuple[Any, Any, Any, Any, Any]:
    """:func:`~diffcontrol.backends.riccati.frozen_lqr_adjoint` in condensed form: the LQ
    problem with linear terms ``g_tau`` (B, T, N), ``g_T`` (B, n), x_0 = 0, no defects and the
    controls where ``free`` (B, T, m) is False held at zero, solved with ``L``, the Cholesky
    factor of H restricted to the free controls (identity on the others).
    ``forward``: (x, u, c, cT), the forward solution and the problem's linear terms, whose
    costates then come from the same recursion.
    Returns dx (B, T+1, n), du (B, T, m), the costates dlam (B, T+1, n), the reduced
    gradient r_u (B, T, m), and the forward's costates lam (B, T+1, n) (None without
    ``forward``)."""
    xp = ops.xp
    B, T, m = free.shape
    n = CT.shape[-1]
    mask = free.reshape(B, -1)
    lin = linear_term(cond.D, cond.S[:, T * n:], g_tau, g_T)
    du = -ops.cho_solve(L, lin * mask)  # zero on the frozen controls: L is the identity there
    dx = mv(cond.S, du).reshape(B, T + 1, n)
    du = du.reshape(B, T, m)
    if forward is None:
        dlam, r_u = costates(ops, C, g_tau, F, CT, g_T, dx, du)
        return dx, du, dlam, r_u, None
    x, u, c, cT = forward
    both = [xp.stack(pair, -1) for pair in ((dx, x), (du, u), (g_tau, c), (g_T, cT))]
    lams, r_u = costates(ops, C, both[2], F, CT, both[3], both[0], both[1])
    return dx, du, lams[..., 0], r_u[..., 0], lams[..., 1]
