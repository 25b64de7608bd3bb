"""cone: the accuracy / speed trade-off of the solver options, against the lqr backend.

On box-constrained LQ problems (which both backends take), the cone backend's
solutions and gradients are compared with the lqr backend's (exact to roundoff),
for each solver (SCS, Clarabel), tolerance and derivative mode (dense, lsmr).

    python benchmarks/cone_options.py [--out benchmarks/results/cone_options.md]
    python benchmarks/cone_options.py --quick --out /tmp/cone_options.md    # small problem, batch 2
"""

from __future__ import annotations

import argparse
import platform
import sys
import warnings
from pathlib import Path

import torch

import diffcontrol as dc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import timed, write_results  # noqa: E402

CASES = {"small (n=3, m=2, T=5)": (3, 2, 5), "large (n=12, m=4, T=50)": (12, 4, 50)}
SETTINGS = [
    dict(solver="SCS", eps=1e-9, derivative="dense"),
    dict(solver="SCS", eps=1e-9, derivative="lsmr"),
    dict(solver="SCS", eps=1e-6, derivative="dense"),
    dict(solver="Clarabel", eps=1e-9, derivative="dense"),
    dict(solver="Clarabel", eps=1e-9, derivative="lsmr"),
]


def lq(n: int, m: int, T: int) -> dc.ControlProblem:
    x, u = dc.State(n, name="x"), dc.Control(m, name="u")
    A, B, x0 = dc.Parameter((n, n), name="A"), dc.Parameter((n, m), name="B"), dc.Parameter(n, name="x0")
    return dc.ControlProblem(dynamics=x.next == A @ x + B @ u, cost=dc.sum_squares(x) + 0.1 * dc.sum_squares(u),
                             terminal_cost=dc.sum_squares(x), horizon=T, initial_state=x0,
                             constraints=[-1 <= u, u <= 1])


def values(n: int, m: int, batch: int) -> dict:
    g = torch.Generator().manual_seed(0)
    A = torch.eye(n, dtype=torch.float64) + 0.1 * torch.randn(n, n, generator=g, dtype=torch.float64)
    A = A / torch.linalg.eigvals(A).abs().max().clamp_min(1.0)
    return {"A": A, "B": torch.randn(n, m, generator=g, dtype=torch.float64),
            "x0": 3 * torch.randn(batch, n, generator=g, dtype=torch.float64)}


def run(layer, vals: dict, w: torch.Tensor):
    inputs = {k: v.clone().requires_grad_() for k, v in vals.items()}
    x, u = layer(**inputs)
    grads = torch.autograd.grad((u * w).sum(), [inputs["A"], inputs["B"]])
    return u.detach(), torch.cat([g.reshape(-1) for g in grads])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/cone_options.md")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="the small problem only, batch 2")
    args = parser.parse_args()
    cases = dict(list(CASES.items())[:1]) if args.quick else CASES
    if args.quick:
        args.batch = 2
    torch.set_num_threads(1)
    lines = [
        "# cone: solver options, accuracy and speed",
        "",
        f"`python benchmarks/cone_options.py{' --quick' if args.quick else ''}` on "
        f"{platform.machine()}, torch {torch.__version__}, float64, "
        f"batch {args.batch}, n_jobs 1. Box-constrained LQ (x+ = A x + B u, |u| <= 1, cost "
        "||x||^2 + 0.1 ||u||^2), loss <w, u>; errors relative to the lqr backend (exact). Time: one "
        "forward + backward, median of 3 after a warm-up. The default is SCS, eps 1e-9, derivative "
        "'auto' (dense up to dense_max_size = 1000, lsmr above). The large problem (cone program "
        "size N ~ 3000) is run with lsmr only: a dense derivative there takes about 6 s per example.",
        "",
        "| problem | solver | eps | derivative | solution err (max abs) | gradient err (rel) | time (s) |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    for name, (n, m, T) in cases.items():
        prob, vals = lq(n, m, T), values(n, m, args.batch)
        w = torch.randn(args.batch, T, m, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        u_ref, g_ref = run(prob.compile(backend="lqr").to_torch(), vals, w)
        for setting in SETTINGS:
            if n * T > 100 and setting["derivative"] == "dense":
                continue  # dense at N ~ 3000: about 6 s per example (see docs/cone.md)
            layer = prob.compile(backend="cone", **setting).to_torch()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", dc.NotConvergedWarning)
                u, g = run(layer, vals, w)
                seconds = timed(lambda layer=layer, vals=vals, w=w: run(layer, vals, w), 3)
            sol_err = float((u - u_ref).abs().max())
            grad_err = float((g - g_ref).norm() / g_ref.norm())
            lines.append(f"| {name} | {setting['solver']} | {setting['eps']:.0e} | {setting['derivative']} | "
                         f"{sol_err:.1e} | {grad_err:.1e} | {seconds:.3f} |")
            print(lines[-1])
    write_results(args.out, lines)


if __name__ == "__main__":
    main()
