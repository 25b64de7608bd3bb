"""diffcontrol's lqr backend vs cvxpylayers on the same LQ problems, in one process.

Problems: the Differentiable MPC paper's LQR imitation size (n=3, m=3, T=5,
box [-1, 1]; also without the box) and a larger one (n=12, m=4, T=50),
unconstrained and boxed.
Batch 1, 32, 128; forward and forward+backward; medians of repeated runs after
a warm-up; the speed ratio; and each method's gradient error against a dense
reduced-KKT reference (the active set taken from cvxpy + Clarabel).

    python benchmarks/lqr_vs_cvxpylayers.py            # writes benchmarks/results/lqr_vs_cvxpylayers.md
    python benchmarks/lqr_vs_cvxpylayers.py --quick    # small sizes only, fewer repeats
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import cvxpy as cp
import diffcp
import torch
from cvxpylayers.torch import CvxpyLayer

import diffcontrol as dc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import repeats_within, timed, write_results  # noqa: E402
from zoo import cvxpy_box_solve, dense_kkt_solve, rel_err  # noqa: E402  (the independent reference)


def diffcontrol_layer(n, m, T, box):
    x, u = dc.State(n), dc.Control(m)
    A, B, x0 = dc.Parameter((n, n), name="A"), dc.Parameter((n, m), name="B"), dc.Parameter(n, name="x0")
    prob = dc.ControlProblem(dynamics=x.next == A @ x + B @ u, cost=dc.sum_squares(x) + 0.1 * dc.sum_squares(u),
                             terminal_cost=dc.sum_squares(x), horizon=T, initial_state=x0,
                             constraints=[-box <= u, u <= box] if box else [])
    layer = prob.compile().to_torch()
    return lambda A, B, x0: layer(A=A, B=B, x0=x0)


def cvxpylayers_layer(n, m, T, box):
    """cvxpylayers (diffcp underneath) with its defaults and one job (the issue's "1 thread")."""
    X, U = cp.Variable((T + 1, n)), cp.Variable((T, m))
    A, B, x0 = cp.Parameter((n, n)), cp.Parameter((n, m)), cp.Parameter(n)
    cons = [X[0] == x0] + [X[t + 1] == A @ X[t] + B @ U[t] for t in range(T)]
    if box:
        cons += [U >= -box, U <= box]
    obj = cp.sum_squares(X) + 0.1 * cp.sum_squares(U)  # X includes x_T: the terminal cost
    layer = CvxpyLayer(cp.Problem(cp.Minimize(obj), cons), parameters=[A, B, x0], variables=[X, U])

    def call(A, B, x0):
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in (A, B, x0))
        jobs = {"n_jobs_forward": 1, "n_jobs_backward": 1} if grad else {"n_jobs_forward": 1}
        return layer(A, B, x0, solver_args=jobs)

    return call


def inputs(n, m, batch, seed):
    g = torch.Generator().manual_seed(seed)
    A = torch.eye(n, dtype=torch.float64) + 0.1 * torch.randn(batch, n, n, generator=g, dtype=torch.float64)
    # spectral radius at most 1: over T = 50 steps an unstable A makes both solvers' numbers meaningless
    radius = torch.linalg.eigvals(A).abs().amax(-1).clamp_min(1.0)
    A = A / radius[:, None, None]
    B = torch.randn(batch, n, m, generator=g, dtype=torch.float64)
    x0 = 3 * torch.randn(batch, n, generator=g, dtype=torch.float64)
    return A, B, x0


def run_case(layer, A, B, x0, backward):
    params = [t.clone().requires_grad_(backward) for t in (A, B, x0)]
    xs, us = layer(*params)
    if backward:
        (xs.sum() + us.sum()).backward()
    return params


def reference_x0_grad(A, B, x0, T, box):
    """d(sum x + sum u)/d x0 per example from the dense KKT solve with Clarabel's active set."""
    grads = []
    n, m = B.shape[-2:]
    for i in range(A.shape[0]):
        v = {"A": A[i], "B": B[i], "d": torch.zeros(n, dtype=torch.float64), "x0": x0[i].clone().requires_grad_(),
             "Q": torch.eye(n, dtype=torch.float64), "R": 0.1 * torch.eye(m, dtype=torch.float64),
             "QT": torch.eye(n, dtype=torch.float64), "q": torch.zeros(n, dtype=torch.float64),
             "r": torch.zeros(m, dtype=torch.float64)}
        active = {}
        if box:
            _, _, dual = cvxpy_box_solve(v, T, -box, box)
            active = {(t, j): torch.tensor(-box if dual[t, j] > 0 else box, dtype=torch.float64)
                      for t in range(T) for j in range(m) if abs(float(dual[t, j])) > 1e-6}
        xs, us = dense_kkt_solve(v, T, active)
        (g,) = torch.autograd.grad(xs.sum() + us.sum(), v["x0"])
        grads.append(g)
    return torch.stack(grads)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small problem only, fewer repeats")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "lqr_vs_cvxpylayers.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    problems = [("n=3, m=3, T=5, box [-1, 1]", 3, 3, 5, 1.0)]
    if not args.quick:
        # the small problem without the box: what a plain batched Riccati solve can do
        problems += [("n=3, m=3, T=5, unconstrained", 3, 3, 5, None),
                     ("n=12, m=4, T=50, unconstrained", 12, 4, 50, None),
                     ("n=12, m=4, T=50, box [-1, 1]", 12, 4, 50, 1.0)]
    batches = [1, 32] if args.quick else [1, 32, 128]
    rows = []
    for label, n, m, T, box in problems:
        ours, theirs = diffcontrol_layer(n, m, T, box), cvxpylayers_layer(n, m, T, box)
        for batch in batches:
            A, B, x0 = inputs(n, m, batch, seed=batch)
            big = n * T * batch > 12 * 50 * 32
            reps_cvx = 1 if args.quick or big else 3
            row = {"problem": label, "batch": batch}
            for name, layer in (("ours", ours), ("cvx", theirs)):
                for key, backward in (("fwd", False), ("fb", True)):
                    def call(layer=layer, A=A, B=B, x0=x0, backward=backward):
                        return run_case(layer, A, B, x0, backward)

                    reps = (3 if args.quick else repeats_within(call, 1.0, 15, 300)) if name == "ours" else reps_cvx
                    row[f"{name}_{key}"] = timed(call, reps)
            k = min(batch, 4)
            ref = reference_x0_grad(A[:k], B[:k], x0[:k], T, box)
            row["ours_err"] = rel_err(run_case(ours, A[:k], B[:k], x0[:k], True)[2].grad, ref)
            row["cvx_err"] = rel_err(run_case(theirs, A[:k], B[:k], x0[:k], True)[2].grad, ref)
            rows.append(row)
            print(f"{label:34s} B={batch:4d}  ours {row['ours_fwd']:.4f}s / {row['ours_fb']:.4f}s   "
                  f"cvxpylayers {row['cvx_fwd']:.3f}s / {row['cvx_fb']:.3f}s   "
                  f"ratio fwd {row['cvx_fwd'] / row['ours_fwd']:.0f}x fwd+bwd {row['cvx_fb'] / row['ours_fb']:.0f}x   "
                  f"grad err ours {row['ours_err']:.1e} cvxpylayers {row['cvx_err']:.1e}", flush=True)
    write_markdown(rows, args)


def write_markdown(rows, args):
    import cvxpylayers

    lines = [
        "# lqr backend vs cvxpylayers",
        "",
        f"`python benchmarks/lqr_vs_cvxpylayers.py{' --quick' if args.quick else ''}` on "
        f"{platform.machine()} ({os.cpu_count()} cores), torch {torch.__version__}, cvxpylayers "
        f"{getattr(cvxpylayers, '__version__', '?')}, diffcp {diffcp.__version__}, cvxpy {cp.__version__}; "
        "float64, 1 torch thread, cvxpylayers with one job (`n_jobs_forward = n_jobs_backward = 1`). "
        "cvxpylayers runs with its defaults (for these problems the same results and times as forcing diffcp's "
        "`solve_method='SCS'`). Medians of repeated runs after one warm-up (ours: as many runs as fit in 1 s, "
        "15 to 300; cvxpylayers: 3, 1 at the largest sizes). Forward: no gradient requested (cvxpylayers then "
        "skips its derivative setup). "
        "Gradient error: relative error of d(sum x + sum u)/d x0 on the first <= 4 examples against a dense "
        "reduced-KKT solve whose active set comes from cvxpy + Clarabel at tolerance 1e-12.",
        "",
        "| problem | batch | ours fwd (s) | ours fwd+bwd (s) | cvxpylayers fwd (s) | cvxpylayers fwd+bwd (s) "
        "| speed-up fwd | speed-up fwd+bwd | grad err ours | grad err cvxpylayers |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['problem']} | {r['batch']} | {r['ours_fwd']:.4f} | {r['ours_fb']:.4f} | {r['cvx_fwd']:.3f} | "
            f"{r['cvx_fb']:.3f} | {r['cvx_fwd'] / r['ours_fwd']:.0f}x | {r['cvx_fb'] / r['ours_fb']:.0f}x | "
            f"{r['ours_err']:.1e} | {r['cvx_err']:.1e} |")
    write_results(args.out, lines)


if __name__ == "__main__":
    main()
