"""The ilqr layer vs mpc.pytorch on the pendulum and cartpole, in one process.

Horizon 10 and 20, batch 1, 16, 64; forward and forward+backward (d loss / d physical
parameters); medians after a warm-up; both in float64 with 1 torch thread, mpc.pytorch with
its models' own settings (stopping threshold ``mpc_eps`` on the control step, line-search
decay and length, AUTO_DIFF linearization) and at most 100 iterations, as ours (default tol:
sqrt(eps) on the scaled projected gradient). Also the mean final cost of each (from the
model's definition) and each gradient's error against central finite differences.

    python benchmarks/ilqr_vs_mpc_pytorch.py            # writes benchmarks/results/ilqr_vs_mpc_pytorch.md
    python benchmarks/ilqr_vs_mpc_pytorch.py --quick    # horizon 10, batch 1 and 16
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import warnings
from pathlib import Path

import torch

import diffcontrol as dc

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mpc_pytorch_reference  # noqa: E402
from common import initial_states, model_cost, timed, write_results  # noqa: E402

PHYSICAL = {"pendulum": ("g", "m", "l"), "cartpole": ("gravity", "masscart", "masspole", "length")}


def loss_of(x, u):
    return x.square().sum() + u.square().sum()


class Ours:
    def __init__(self, name, T):
        self.model = getattr(dc.models, name)(horizon=T)
        self.layer = self.model.problem.compile().to_torch()
        self.name = name

    def __call__(self, vals, x0, backward):
        leaves = {k: v.clone().requires_grad_(backward and k in PHYSICAL[self.name]) for k, v in vals.items()}
        x, u, info = self.layer(**leaves, x0=x0, return_info=True)
        if backward:
            loss_of(x, u).backward()
        return x.detach(), u.detach(), leaves, info


class Theirs:
    def __init__(self, name, T):
        self.name, self.T = name, T

    def __call__(self, vals, x0, backward):
        leaves = {k: v.clone().requires_grad_(backward and k in PHYSICAL[self.name]) for k, v in vals.items()}
        x, u, _, _ = mpc_pytorch_reference.solve(self.name, leaves, x0, self.T, lqr_iter=100, backward=backward)
        if backward:
            loss_of(x, u).backward()
        return x.detach(), u.detach(), leaves, None


def finite_difference_grad(name, T, vals, x0):
    layer = getattr(dc.models, name)(horizon=T).problem.compile(tol=1e-12, max_iter=500).to_torch()
    out = []
    for k in PHYSICAL[name]:
        plus, minus = dict(vals), dict(vals)
        plus[k], minus[k] = vals[k] + 1e-6, vals[k] - 1e-6
        out.append((loss_of(*layer(**plus, x0=x0)) - loss_of(*layer(**minus, x0=x0))) / 2e-6)
    return torch.stack(out)


def grad_error(solver, name, vals, x0, fd):
    _, _, leaves, _ = solver(vals, x0, True)
    g = torch.stack([leaves[k].grad for k in PHYSICAL[name]])
    return float((g - fd).norm() / fd.norm())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "ilqr_vs_mpc_pytorch.md"))
    args = parser.parse_args()
    if not mpc_pytorch_reference.available():
        sys.exit("mpc.pytorch is not installed: pip install --no-deps mpc==0.0.6")
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    horizons, batches = ([10], [1, 16]) if args.quick else ([10, 20], [1, 16, 64])
    rows = []
    for name in ("pendulum", "cartpole"):
        for T in horizons:
            ours, theirs = Ours(name, T), Theirs(name, T)
            vals = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in ours.model.defaults().items()}
            x_small = initial_states(name, 2, seed=1)
            fd = finite_difference_grad(name, T, vals, x_small)
            errors = (grad_error(ours, name, vals, x_small, fd), grad_error(theirs, name, vals, x_small, fd))
            for B in batches:
                x0 = initial_states(name, B)
                row = {"problem": f"{name}, T={T}", "batch": B, "ours_err": errors[0], "theirs_err": errors[1]}
                reps_theirs = 1 if B == 64 or args.quick else 3
                for key, solver, reps in (("ours", ours, 1 if args.quick else 5), ("theirs", theirs, reps_theirs)):
                    row[key + "_fwd"] = timed(lambda s=solver, v=vals, x0=x0: s(v, x0, False), reps)
                    row[key + "_fb"] = timed(lambda s=solver, v=vals, x0=x0: s(v, x0, True), reps)
                    x, u, _, info = solver(vals, x0, False)
                    row[key + "_cost"] = float(model_cost(vals, x, u).mean())
                    if info is not None:
                        row["iters"] = f"{float(info.iterations.float().mean()):.1f} / {int(info.iterations.max())}"
                        row["converged"] = float(info.converged.float().mean())
                rows.append(row)
                print(f"{row['problem']:16s} B={B:3d} ours {row['ours_fwd']:.3f}s / {row['ours_fb']:.3f}s "
                      f"mpc.pytorch {row['theirs_fwd']:.3f}s / {row['theirs_fb']:.3f}s  "
                      f"speed-up fwd+bwd {row['theirs_fb'] / row['ours_fb']:.1f}x  cost {row['ours_cost']:.4f} vs "
                      f"{row['theirs_cost']:.4f}  grad err {row['ours_err']:.1e} vs {row['theirs_err']:.1e}",
                      flush=True)
    write_markdown(rows, args)


def write_markdown(rows, args):
    import mpc

    lines = [
        "# ilqr vs mpc.pytorch",
        "",
        f"`python benchmarks/ilqr_vs_mpc_pytorch.py{' --quick' if args.quick else ''}` on {platform.machine()} "
        f"({os.cpu_count()} cores), torch {torch.__version__}, mpc.pytorch {getattr(mpc, '__version__', '0.0.6')}; "
        "float64, 1 torch thread, both at most 100 iterations. Ours: default tol (sqrt(eps) on the scaled "
        "projected gradient), exact implicit backward. mpc.pytorch: its models' own stopping threshold on the "
        "control step (pendulum 1e-3, cartpole 1e-4) and line-search settings, AUTO_DIFF linearization, its "
        "implicit (Gauss-Newton) backward. Times: medians after a warm-up (ours 5 runs; mpc.pytorch 3, 1 at "
        "batch 64). Cost: the mean final cost, from the model's definition. Gradient error: d(sum x^2 + sum u^2) "
        "/ d(physical parameters) on 2 initial states against central finite differences of a solve converged to "
        "1e-12. Iterations: ours, mean / max over the batch (the batch iterates until its slowest example stops).",
        "",
        "| problem | batch | ours fwd (s) | ours fwd+bwd (s) | mpc.pytorch fwd (s) | mpc.pytorch fwd+bwd (s) "
        "| speed-up fwd | speed-up fwd+bwd | our iterations | converged | cost ours | cost mpc.pytorch "
        "| grad err ours | grad err mpc.pytorch |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['problem']} | {r['batch']} | {r['ours_fwd']:.3f} | {r['ours_fb']:.3f} | {r['theirs_fwd']:.3f} | "
            f"{r['theirs_fb']:.3f} | {r['theirs_fwd'] / r['ours_fwd']:.1f}x | {r['theirs_fb'] / r['ours_fb']:.1f}x | "
            f"{r['iters']} | {r['converged']:.0%} | {r['ours_cost']:.4f} | {r['theirs_cost']:.4f} | "
            f"{r['ours_err']:.1e} | {r['theirs_err']:.1e} |")
    write_results(args.out, lines)


if __name__ == "__main__":
    main()
