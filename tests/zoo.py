"""The test problem zoo and the independent references the backends are checked against.

References here never call diffcontrol's solvers: a dense KKT solve written
from the problem's definition (differentiated by torch autograd), and cvxpy
solved directly with Clarabel at tight tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass

import cvxpy as cp
import torch

import diffcontrol as dc


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / max(||b||, 1e-12)."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@dataclass
class LQ:
    """An LQ problem: x+ = A x + B u + d, stage x^T Q x + u^T R u + q^T x + r^T u,
    terminal x^T QT x; parameters named as the fields."""

    problem: dc.ControlProblem
    n: int
    m: int
    T: int
    lo: float | None
    hi: float | None


def lq_problem(n: int, m: int, T: int, lo: float | None = None, hi: float | None = None) -> LQ:
    x, u = dc.State(n), dc.Control(m)
    A, B = dc.Parameter((n, n), name="A"), dc.Parameter((n, m), name="B")
    d, x0 = dc.Parameter(n, name="d"), dc.Parameter(n, name="x0")
    Q, R, QT = dc.Parameter((n, n), name="Q"), dc.Parameter((m, m), name="R"), dc.Parameter((n, n), name="QT")
    q, r = dc.Parameter(n, name="q"), dc.Parameter(m, name="r")
    constraints = []
    if lo is not None:
        constraints.append(lo <= u)
    if hi is not None:
        constraints.append(u <= hi)
    prob = dc.ControlProblem(
        dynamics=x.next == A @ x + B @ u + d,
        cost=dc.quad_form(x, Q) + dc.quad_form(u, R) + q @ x + r @ u,
        terminal_cost=dc.quad_form(x, QT),
        horizon=T, initial_state=x0, constraints=constraints)
    return LQ(prob, n, m, T, lo, hi)


def lq_values(n: int, m: int, batch: int | None, seed: int, scale_x0: float = 1.0,
              dtype=torch.float64) -> dict[str, torch.Tensor]:
    """Random well-posed values (Q, R, QT positive definite but not symmetric-stored)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        full = (batch, *shape) if batch is not None else shape
        return torch.randn(*full, generator=g, dtype=torch.float64)

    def pd(k):
        M = rnd(k, k)
        return M @ M.transpose(-1, -2) / k + torch.eye(k, dtype=torch.float64) + 0.1 * rnd(k, k)

    values = {
        "A": torch.eye(n, dtype=torch.float64) + 0.2 * rnd(n, n), "B": rnd(n, m), "d": 0.1 * rnd(n),
        "x0": scale_x0 * rnd(n), "Q": pd(n), "R": pd(m), "QT": pd(n), "q": 0.3 * rnd(n), "r": 0.3 * rnd(m),
    }
    return {k: v.to(dtype) for k, v in values.items()}


def _dense_pieces(v: dict[str, torch.Tensor], T: int):
    """H, h, E, e of  min 1/2 z^T H z + h^T z  s.t.  E z = e,  z = [x_0..x_T, u_0..u_{T-1}]."""
    A, B, d, x0 = v["A"], v["B"], v["d"], v["x0"]
    Q, R, QT, q, r = v["Q"], v["R"], v["QT"], v["q"], v["r"]
    n, m = B.shape
    nx, nz = (T + 1) * n, (T + 1) * n + T * m
    blocks = [Q + Q.T] * T + [QT + QT.T] + [R + R.T] * T
    H = torch.block_diag(*blocks)
    h = torch.cat([q.repeat(T), torch.zeros(n, dtype=q.dtype), r.repeat(T)])
    rows, rhs = [], []
    I = torch.eye(n, dtype=A.dtype)
    rows.append(torch.nn.functional.pad(I, (0, nz - n)))
    rhs.append(x0)
    for t in range(T):
        row = torch.cat([
            torch.zeros(n, t * n, dtype=A.dtype), -A, I, torch.zeros(n, nx - (t + 2) * n, dtype=A.dtype),
            torch.zeros(n, t * m, dtype=A.dtype), -B, torch.zeros(n, (T - t - 1) * m, dtype=A.dtype)], 1)
        rows.append(row)
        rhs.append(d)
    return H, h, torch.cat(rows), torch.cat(rhs)


def dense_kkt_solve(v: dict[str, torch.Tensor], T: int, active: dict[tuple[int, int], torch.Tensor] | None = None):
    """The LQ problem's KKT system, solved densely; differentiable in every value.

    ``active`` fixes controls at given bound values: {(t, i): bound} (the
    reduced KKT system with the active set held fixed). Returns x (T+1, n), u (T, m).
    """
    H, h, E, e = _dense_pieces(v, T)
    n, m = v["B"].shape
    nx = (T + 1) * n
    extra_rows, extra_rhs = [], []
    for (t, i), bound in (active or {}).items():
        row = torch.zeros(H.shape[0], dtype=H.dtype)
        row[nx + t * m + i] = 1.0
        extra_rows.append(row)
        extra_rhs.append(bound.reshape(1))
    if extra_rows:
        E = torch.cat([E, torch.stack(extra_rows)])
        e = torch.cat([e] + extra_rhs)
    k = E.shape[0]
    K = torch.cat([torch.cat([H, E.T], 1), torch.cat([E, torch.zeros(k, k, dtype=H.dtype)], 1)])
    z = torch.linalg.solve(K, torch.cat([-h, e]))[: H.shape[0]]
    return z[:nx].reshape(T + 1, n), z[nx:].reshape(T, m)


def cvxpy_box_solve(v: dict[str, torch.Tensor], T: int, lo: float, hi: float):
    """The box-constrained LQ problem solved by cvxpy + Clarabel at tight tolerance.
    Returns x (T+1, n), u (T, m) and the box duals (T, m) (lower - upper)."""
    A, B, d, x0, Q, R, QT, q, r = (v[k].detach().double().numpy() for k in
                                   ("A", "B", "d", "x0", "Q", "R", "QT", "q", "r"))
    n, m = B.shape
    X, U = cp.Variable((T + 1, n)), cp.Variable((T, m))
    Qs, Rs, QTs = (Q + Q.T) / 2, (R + R.T) / 2, (QT + QT.T) / 2
    cost = sum(cp.quad_form(X[t], Qs) + cp.quad_form(U[t], Rs) + q @ X[t] + r @ U[t] for t in range(T))
    cost = cost + cp.quad_form(X[T], QTs)
    low, up = U >= lo, U <= hi
    cons = [X[0] == x0, low, up] + [X[t + 1] == A @ X[t] + B @ U[t] + d for t in range(T)]
    cp.Problem(cp.Minimize(cost), cons).solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12,
                                              tol_feas=1e-12, max_iter=500)
    return (torch.tensor(X.value), torch.tensor(U.value), torch.tensor(low.dual_value - up.dual_value))
