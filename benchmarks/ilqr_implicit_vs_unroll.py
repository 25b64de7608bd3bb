"""Backward time of the ilqr layer: exact implicit vs unrolled autodiff vs mpc.pytorch, against
the number of forward iterations (DiLQR's setup: pendulum, horizon 10, batch 20, unconstrained).

The forward runs a fixed number of iterations (tol far below reach, so it keeps iterating
past convergence); the backward is timed alone (loss.backward()), medians after a warm-up.
Each row also gives the gradient's relative error against central finite differences of a
converged solve (d loss / d (g, m, l)).

    python benchmarks/ilqr_implicit_vs_unroll.py           # writes benchmarks/results/ilqr_implicit_vs_unroll.md
    python benchmarks/ilqr_implicit_vs_unroll.py --quick   # 10 and 50 iterations, fewer repeats
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

import diffcontrol as dc

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mpc_pytorch_reference  # noqa: E402
from common import initial_states, write_results  # noqa: E402

T, BATCH = 10, 20


def values(pend) -> dict:
    return {k: torch.as_tensor(v, dtype=torch.float64) for k, v in pend.defaults().items()}


def loss_of(x, u):
    return x[..., 2].square().sum() + u.square().sum()


def ours(pend, mode: str, iterations: int):
    layer = pend.problem.compile(backward=mode, max_iter=iterations, tol=1e-300).to_torch()

    def run(vals, x0):
        leaves = {k: v.clone().requires_grad_(k in ("g", "m", "l")) for k, v in vals.items()}
        x, u = layer(**leaves, x0=x0)
        return loss_of(x, u), [leaves[k] for k in ("g", "m", "l")]

    return run


def theirs(iterations: int):
    def run(vals, x0):
        leaves = {k: v.clone().requires_grad_(k in ("g", "m", "l")) for k, v in vals.items()}
        x, u, _, _ = mpc_pytorch_reference.solve("pendulum", leaves, x0, T, lqr_iter=iterations, eps=0.0,
                                                 backward=True, bound=1e6)
        return loss_of(x, u), [leaves[k] for k in ("g", "m", "l")]

    return run


def timed_backward(run, vals, x0, repeats: int) -> tuple[float, torch.Tensor]:
    times, grad = [], None
    for i in range(repeats + 1):
        loss, leaves = run(vals, x0)
        start = time.perf_counter()
        loss.backward()
        if i:  # the first is the warm-up
            times.append(time.perf_counter() - start)
        grad = torch.stack([p.grad for p in leaves])
    return statistics.median(times), grad


def finite_differences(pend, vals, x0) -> torch.Tensor:
    layer = pend.problem.compile(tol=1e-12, max_iter=500).to_torch()
    grads = []
    for name in ("g", "m", "l"):
        plus, minus = dict(vals), dict(vals)
        plus[name], minus[name] = vals[name] + 1e-6, vals[name] - 1e-6
        grads.append((loss_of(*layer(**plus, x0=x0)) - loss_of(*layer(**minus, x0=x0))) / 2e-6)
    return torch.stack(grads)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "ilqr_implicit_vs_unroll.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", dc.NotConvergedWarning)
    pend = dc.models.pendulum(horizon=T, max_torque=None)
    vals, x0 = values(pend), initial_states("pendulum", BATCH)
    fd = finite_differences(pend, vals, x0)
    counts = [10, 50] if args.quick else [10, 50, 300]
    rows = []
    for k in counts:
        row = {"iterations": k}
        competitors = [("implicit", ours(pend, "implicit", k)), ("gauss_newton", ours(pend, "gauss_newton", k)),
                       ("unroll", ours(pend, "unroll", k))]
        if mpc_pytorch_reference.available():
            competitors.append(("mpc.pytorch", theirs(k)))
        for name, run in competitors:
            repeats = 1 if (name == "unroll" and k >= 300) or args.quick else 5
            row[name], grad = timed_backward(run, vals, x0, repeats)
            row[name + " err"] = float((grad - fd).norm() / fd.norm())
            print(f"{k:4d} iterations  {name:13s} backward {row[name]:.4f}s  grad err {row[name + ' err']:.1e}",
                  flush=True)
        rows.append(row)
    write_markdown(rows, args)


def write_markdown(rows, args):
    names = [n for n in ("implicit", "gauss_newton", "unroll", "mpc.pytorch") if n in rows[0]]
    lines = [
        "# ilqr: implicit vs unrolled backward",
        "",
        f"`python benchmarks/ilqr_implicit_vs_unroll.py{' --quick' if args.quick else ''}` on {platform.machine()} "
        f"({os.cpu_count()} cores), torch {torch.__version__}, float64, 1 torch thread. DiLQR's setup: "
        f"pendulum (mpc.pytorch's model), horizon {T}, batch {BATCH}, unconstrained; the forward runs exactly the "
        "given number of iterations; backward time = `loss.backward()` alone, median of 5 runs after a warm-up "
        "(unroll at 300 iterations: 1 run). Gradient error: relative error of d loss / d (g, m, l) against "
        "central finite differences of a converged solve. mpc.pytorch (0.0.6) runs with the same model "
        "(its implicit backward differentiates the final Gauss-Newton LQR).",
        "",
        "| forward iterations | " + " | ".join(f"{n} backward (s)" for n in names) + " | unroll / implicit | "
        + " | ".join(f"{n} grad err" for n in names) + " |",
        "|---:|" + "---:|" * (2 * len(names) + 1),
    ]
    for r in rows:
        lines.append(f"| {r['iterations']} | " + " | ".join(f"{r[n]:.4f}" for n in names)
                     + f" | {r['unroll'] / r['implicit']:.0f}x | " + " | ".join(f"{r[n + ' err']:.1e}" for n in names)
                     + " |")
    write_results(args.out, lines)


if __name__ == "__main__":
    main()
