"""Time-varying LQR (A_t and a reference r_t per stage) against our own time-invariant solve,
mpc.pytorch's native time-varying LQR (LinDx with F (T, B, n, n+m), QuadCost with per-stage
C, c) and cvxpylayers (one cvxpy parameter per A_t and r_t), in one process, interleaved,
medians after a warm-up.

Problem: n=12, m=4, T=50, x+ = A_t x + B u, stage w |x - r_t|^2 + 0.1 |u|^2, terminal
|x - r_T|^2, unconstrained (mpc.pytorch's LQR takes no box without its iLQR loop); forward +
backward of sum(x) + sum(u). mpc.pytorch's horizon has one more stage (its u_T moves nothing
and is 0 at the optimum), so both solve the same problem; their controls are compared.

    python benchmarks/time_varying_lqr.py            # writes benchmarks/results/time_varying_lqr.md
    python benchmarks/time_varying_lqr.py --quick    # batch 1 and 32, fewer repeats, cvxpylayers at 1
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch

import diffcontrol as dc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import timed, write_results  # noqa: E402
from mpc_pytorch_reference import _patch_for_current_torch, available  # noqa: E402

N_X, N_U, T = 12, 4, 50
CVXPYLAYERS_MAX_BATCH = 32


def problems() -> tuple[dc.ControlProblem, dc.ControlProblem]:
    """The time-varying problem and the same with one A and one r for every stage."""
    out = []
    for tv in (True, False):
        x, u = dc.State(N_X, name="x"), dc.Control(N_U, name="u")
        A = dc.Parameter((N_X, N_X), name="A", time_varying=tv)
        r = dc.Parameter(N_X, name="r", time_varying=tv)
        B, x0 = dc.Parameter((N_X, N_U), name="B"), dc.Parameter(N_X, name="x0")
        out.append(dc.ControlProblem(dynamics=x.next == A @ x + B @ u,
                                     cost=dc.sum_squares(x - r) + 0.1 * dc.sum_squares(u),
                                     terminal_cost=dc.sum_squares(x - r), horizon=T, initial_state=x0))
    return out[0], out[1]


def values(batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    A = np.eye(N_X) + 0.05 * rng.normal(size=(batch, T + 1, N_X, N_X))
    A /= np.maximum(np.abs(np.linalg.eigvals(A)).max(-1), 1.0)[..., None, None]
    return {k: torch.tensor(v) for k, v in {
        "A": A, "r": rng.normal(size=(batch, T + 1, N_X)), "B": rng.normal(size=(batch, N_X, N_U)),
        "x0": 3 * rng.normal(size=(batch, N_X))}.items()}


def ours(layer, v: dict) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = {k: t.clone().requires_grad_() for k, t in v.items()}
    x, u = layer(**inputs)
    (x.sum() + u.sum()).backward()
    return x, u


def mpc_pytorch(v: dict) -> tuple[torch.Tensor, torch.Tensor]:
    from mpc import mpc

    _patch_for_current_torch()
    Bn = v["x0"].shape[0]
    A, B, r, x0 = (v[k].clone().requires_grad_() for k in ("A", "B", "r", "x0"))
    F = torch.cat([A[:, :T], B[:, None].expand(Bn, T, N_X, N_U)], -1).transpose(0, 1)  # (T, B, n, N)
    C = torch.block_diag(2 * torch.eye(N_X), 0.2 * torch.eye(N_U)).to(A).expand(T + 1, Bn, N_X + N_U, N_X + N_U)
    c = torch.cat([-2 * r, torch.zeros(Bn, T + 1, N_U, dtype=r.dtype)], -1).transpose(0, 1)
    ctrl = mpc.MPC(N_X, N_U, T + 1, lqr_iter=1, verbose=-1, exit_unconverged=False, backprop=True, n_batch=Bn,
                   u_init=None)
    x, u, _ = ctrl(x0, mpc.QuadCost(C, c), mpc.LinDx(F))
    (x.sum() + u[:T].sum()).backward()
    return x.transpose(0, 1), u.transpose(0, 1)[:, :T]


def cvxpylayers_layer():
    """The time-varying problem in cvxpy, differentiated by cvxpylayers with its defaults and
    one job: A_0..A_{T-1} and r_0..r_T are separate cvxpy parameters (cvxpy has no time axis)."""
    import cvxpy as cp
    from cvxpylayers.torch import CvxpyLayer

    X, U = cp.Variable((T + 1, N_X)), cp.Variable((T, N_U))
    A = [cp.Parameter((N_X, N_X)) for _ in range(T)]
    r = [cp.Parameter(N_X) for _ in range(T + 1)]
    B, x0 = cp.Parameter((N_X, N_U)), cp.Parameter(N_X)
    cons = [X[0] == x0] + [X[t + 1] == A[t] @ X[t] + B @ U[t] for t in range(T)]
    obj = sum(cp.sum_squares(X[t] - r[t]) for t in range(T + 1)) + 0.1 * cp.sum_squares(U)
    layer = CvxpyLayer(cp.Problem(cp.Minimize(obj), cons), parameters=[*A, *r, B, x0], variables=[X, U])

    def call(v: dict) -> tuple[torch.Tensor, torch.Tensor]:
        A_, r_, B_, x0_ = (v[k].clone().requires_grad_() for k in ("A", "r", "B", "x0"))
        x, u = layer(*A_[:, :T].unbind(1), *r_.unbind(1), B_, x0_,
                     solver_args={"n_jobs_forward": 1, "n_jobs_backward": 1})
        (x.sum() + u.sum()).backward()
        return x, u

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "time_varying_lqr.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    batches, repeats = ([1, 32], 5) if args.quick else ([1, 32, 256], 15)
    tv_problem, ti_problem = problems()
    tv, ti = tv_problem.compile().to_torch(), ti_problem.compile().to_torch()
    cvx = cvxpylayers_layer()
    rows = ["| batch | time-varying (ours) | time-invariant (ours) | ratio tv/ti | mpc.pytorch tv LQR | "
            "mpc.pytorch / ours | max abs u difference | cvxpylayers tv | cvxpylayers / ours | "
            "cvxpylayers max abs u difference |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for batch in batches:
        v = values(batch)
        v_ti = {**v, "A": v["A"][:, 0], "r": v["r"][:, 0]}
        times = {"tv": [], "ti": [], "mpc": [], "cvx": []}
        with_cvx = batch <= (1 if args.quick else CVXPYLAYERS_MAX_BATCH)
        for _ in range(3):  # interleaved rounds; the median of each round's median
            times["tv"].append(timed(lambda v=v: ours(tv, v), repeats))
            times["ti"].append(timed(lambda v_ti=v_ti: ours(ti, v_ti), repeats))
            if available():
                times["mpc"].append(timed(lambda v=v: mpc_pytorch(v), max(3, repeats // 3)))
            if with_cvx:  # (seconds per call: one run per round)
                times["cvx"].append(timed(lambda v=v: cvx(v), 1))
        med = {k: float(np.median(t)) if t else float("nan") for k, t in times.items()}
        diff = float("nan")
        if available():
            diff = float((ours(tv, v)[1] - mpc_pytorch(v)[1]).abs().max().detach())
        cvx_diff = float((ours(tv, v)[1] - cvx(v)[1]).abs().max().detach()) if with_cvx else float("nan")
        rows.append(f"| {batch} | {1e3 * med['tv']:.2f} ms | {1e3 * med['ti']:.2f} ms | {med['tv'] / med['ti']:.2f} | "
                    f"{1e3 * med['mpc']:.1f} ms | {med['mpc'] / med['tv']:.1f}x | {diff:.1e} | "
                    + (f"{1e3 * med['cvx']:.0f} ms | {med['cvx'] / med['tv']:.0f}x | {cvx_diff:.1e} |" if with_cvx
                       else "- | - | - |"))
        print(rows[-1], flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    write_results(args.out, [
        "# Time-varying LQR: ours vs our time-invariant solve vs mpc.pytorch vs cvxpylayers",
        "",
        f"n={N_X}, m={N_U}, T={T}, unconstrained, float64, forward + backward of sum(x) + sum(u); 1 torch thread; "
        f"medians of {repeats} runs after a warm-up, in 3 interleaved rounds (median of the rounds); "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {load:.2f} at the end. "
        "cvxpylayers (its defaults: SCS, diffcp's lsqr derivative; one job) has A_t and r_t as separate cvxpy "
        f"parameters, one run per round, up to batch {CVXPYLAYERS_MAX_BATCH} (a call at batch 32 takes seconds). "
        "Generated by `python benchmarks/time_varying_lqr.py`.",
        "",
        *rows,
    ])


if __name__ == "__main__":
    main()
