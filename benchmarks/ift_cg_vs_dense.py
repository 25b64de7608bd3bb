"""ift_cg: backward time of CG on Hessian-vector products vs the explicit Hessian (formed and
factorised) vs autodiff unrolled through the Newton forward, for growing dimension n.

The objective is a generic nonconvex one with coupled variables,

    f(y; p) = sum_i 1/2 (y_i - p_i)^2 + a cos(y_i)  +  c/2 sum_i (y_(i+1) - y_i)^2,

a = 1.5 (f'' changes sign), c = 0.5. All three backward passes start from the same solve;
the gradient error is relative to the dense oracle's gradient.

    python benchmarks/ift_cg_vs_dense.py [--out benchmarks/results/ift_cg_vs_dense.md]
    python benchmarks/ift_cg_vs_dense.py --quick --out /tmp/ift_cg_vs_dense.md    # n = 10, 100
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

import diffcontrol as dc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

A_COS, C_CHAIN, BATCH = 1.5, 0.5, 4


def problem(n: int) -> dc.Problem:
    y, p = dc.Variable(n, name="y"), dc.Parameter(n, name="p")
    chain = dc.sum_squares(y[1:] - y[:-1])
    return dc.Problem(dc.Minimize(0.5 * dc.sum_squares(y - p) + A_COS * dc.sum(dc.cos(y)) + 0.5 * C_CHAIN * chain))


def backward_time(layer, p: torch.Tensor, y0: torch.Tensor, w: torch.Tensor, repeats: int):
    """(median backward seconds, gradient) of loss = <w, y*(p)>: each run solves (warm-started,
    outside the clock), then times ``loss.backward()`` alone; one warm-up run first."""
    times, grad = [], None
    for run in range(repeats + 1):
        pv = p.clone().requires_grad_()
        (y,) = layer(p=pv, y_init=(y0,)) if y0 is not None else layer(p=pv)
        loss = (y * w).sum()
        start = time.perf_counter()
        loss.backward()
        if run:
            times.append(time.perf_counter() - start)
        grad = pv.grad
    return statistics.median(times), grad


def _ratio(r: float) -> str:
    return f"{r:.0f}x" if r >= 10 else f"{r:.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/ift_cg_vs_dense.md")
    parser.add_argument("--sizes", default="10,100,1000,4000")
    parser.add_argument("--quick", action="store_true", help="sizes 10 and 100 only")
    args = parser.parse_args()
    if args.quick:
        args.sizes = "10,100"
    torch.set_num_threads(1)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        g = torch.Generator().manual_seed(n)
        p = 3 * torch.randn(BATCH, n, generator=g, dtype=torch.float64)
        w = torch.randn(BATCH, n, generator=g, dtype=torch.float64)
        prob = problem(n)
        # one converged solve, shared as the warm start of every timed forward: Newton, after
        # L-BFGS at n > 1000 (whose line search on f stalls near a gradient of 1e-6 here)
        y0 = None
        if n > 1000:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", dc.NotConvergedWarning)
                (y0,) = prob.compile(solver="lbfgs", max_iter=5000).to_torch()(p=p)
        newton = prob.compile(solver="newton", max_iter=100, on_nonconvergence="raise").to_torch()
        (y0,) = newton(p=p) if y0 is None else newton(p=p, y_init=(y0,))
        repeats = 5 if n <= 1000 else 3
        t_cg, g_cg = backward_time(prob.compile(linear_solver="cg").to_torch(), p, y0, w, repeats)
        t_dense, g_dense = backward_time(prob.compile(linear_solver="dense").to_torch(), p, y0, w, repeats)
        if n <= 1000:
            # unrolling needs the iterations on the tape: a cold start, Newton to convergence
            unroll = prob.compile(backward="unroll", solver="newton", max_iter=50).to_torch()
            t_unroll, g_unroll = backward_time(unroll, p, None, w, 1 if n == 1000 else repeats)
            err_unroll = float((g_unroll - g_dense).norm() / g_dense.norm())
        else:
            t_unroll, err_unroll = None, None
        err_cg = float((g_cg - g_dense).norm() / g_dense.norm())
        rows.append((n, t_cg, t_dense, t_unroll, err_cg, err_unroll))
        print(rows[-1])
    lines = [
        "# ift_cg: CG on Hessian-vector products vs the dense Hessian vs unrolled Newton",
        "",
        f"`python benchmarks/ift_cg_vs_dense.py{' --quick' if args.quick else ''}` on "
        f"{platform.machine()} ({torch.get_num_threads()} torch "
        f"thread), torch {torch.__version__}, float64, batch {BATCH}. Objective: "
        f"sum_i 1/2 (y_i - p_i)^2 + {A_COS} cos(y_i) + {C_CHAIN}/2 sum_i (y_(i+1) - y_i)^2 (nonconvex, "
        "coupled). Backward time = `loss.backward()` alone (the forward, warm-started at a converged "
        "solution, runs outside the clock), median of 5 runs (3 at n = 4000, 1 for unroll at n = 1000) "
        "after a warm-up. CG: the default cg_tol (sqrt(eps) = 1.5e-8, relative residual). "
        "Dense: the Hessian formed by autodiff (n reverse passes, "
        "vectorised) and solved by LU. Unroll: autodiff through damped Newton from a cold start to "
        "convergence (each iteration forms and factorises the Hessian); not run at n = 4000. "
        "Gradient error: relative to the dense gradient.",
        "",
        "| n | CG backward (s) | dense backward (s) | unroll backward (s) | dense / CG | unroll / CG "
        "| CG grad err | unroll grad err |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, t_cg, t_dense, t_unroll, err_cg, err_unroll in rows:
        unroll = f"{t_unroll:.4f}" if t_unroll is not None else "not run"
        ratio_u = _ratio(t_unroll / t_cg) if t_unroll is not None else "-"
        err_u = f"{err_unroll:.1e}" if err_unroll is not None else "-"
        lines.append(f"| {n} | {t_cg:.4f} | {t_dense:.4f} | {unroll} | {_ratio(t_dense / t_cg)} | {ratio_u} "
                     f"| {err_cg:.1e} | {err_u} |")
    write_results(args.out, lines)


if __name__ == "__main__":
    main()
