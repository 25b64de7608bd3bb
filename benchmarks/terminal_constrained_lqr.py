"""A goal constraint on the lqr backend: x_T == goal met exactly, against the same problem
without it, with and without a control box, in one process, interleaved, medians after a
warm-up.

Problem: n=12, m=4, T=50, x+ = A x + B u (A stable, random B), stage |x|^2 + 0.1 |u|^2,
terminal_constraints=[x == goal] (goal (B, n)); forward + backward of sum(x) + sum(u).
The box |u| <= 2 is active at about 14% of the controls. Target (issue 25): a
terminal-constrained solve no slower than 2x an unconstrained one (not met: see the table).

    python benchmarks/terminal_constrained_lqr.py            # writes benchmarks/results/terminal_constrained_lqr.md
    python benchmarks/terminal_constrained_lqr.py --quick    # batch 1 and 32, fewer repeats
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

import diffcontrol as dc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import timed, write_results  # noqa: E402

N_X, N_U, T, UMAX = 12, 4, 50, 2.0


def problem(goal: bool, box: bool) -> dc.ControlProblem:
    x, u = dc.State(N_X, name="x"), dc.Control(N_U, name="u")
    A, B = dc.Parameter((N_X, N_X), name="A"), dc.Parameter((N_X, N_U), name="B")
    x0, g = dc.Parameter(N_X, name="x0"), dc.Parameter(N_X, name="goal")
    return dc.ControlProblem(dynamics=x.next == A @ x + B @ u, cost=dc.sum_squares(x) + 0.1 * dc.sum_squares(u),
                             # (without the goal, a zero term keeps its parameter: both layers take one call)
                             terminal_cost=None if goal else 0.0 * dc.sum(g), horizon=T, initial_state=x0,
                             constraints=[-UMAX <= u, u <= UMAX] if box else [],
                             terminal_constraints=[x == g] if goal else [])


def values(batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    A = np.eye(N_X) + 0.05 * rng.normal(size=(batch, N_X, N_X))
    A /= np.maximum(np.abs(np.linalg.eigvals(A)).max(-1), 1.0)[..., None, None]
    return {k: torch.tensor(v) for k, v in {
        "A": A, "B": rng.normal(size=(batch, N_X, N_U)), "x0": rng.normal(size=(batch, N_X)),
        "goal": rng.normal(size=(batch, N_X))}.items()}


def run(layer, v: dict) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = {k: t.clone().requires_grad_() for k, t in v.items()}
    x, u, info = layer(**inputs, return_info=True)
    keep = info.converged[:, None, None]  # an unmet goal's gradient is NaN: leave it out
    (torch.where(keep, x, 0).sum() + torch.where(keep, u, 0).sum()).backward()
    return x, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "terminal_constrained_lqr.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", dc.NotConvergedWarning)  # (the table counts the goals not met)
    batches, repeats = ([1, 32], 5) if args.quick else ([1, 32, 256], 7)
    rows = ["| box | batch | with goal | without | ratio | goal met to | goal's Newton steps (mean) | "
            "active controls |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for box in (False, True):
        goal, free = (problem(g, box).compile().to_torch() for g in (True, False))
        # (with the box, batch 1 only: a batch runs until its slowest example's multipliers
        # settle, up to 4 * max_iter solves; at batch 32 one call takes about 15 s)
        for batch in (batches if not box else batches[:1]):
            reps = repeats if not box else 3
            v = values(batch)
            times = {"goal": [], "free": []}
            for _ in range(3):  # interleaved rounds; the median of the rounds' medians
                times["goal"].append(timed(lambda v=v, layer=goal: run(layer, v), reps))
                times["free"].append(timed(lambda v=v, layer=free: run(layer, v), reps))
            med = {k: float(np.median(t)) for k, t in times.items()}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                x, info = run(goal, v)
                _, u = goal(**v)
            met = float((x[:, -1] - v["goal"]).abs().max().detach())
            active = float((u.abs() >= UMAX - 1e-9).double().mean())
            met_all = f"{met:.1e}" + ("" if bool(info.converged.all()) else
                                      f" ({int((~info.converged).sum())} of {batch} not met)")
            rows.append(f"| {'|u| <= 2' if box else 'none'} | {batch} | {1e3 * med['goal']:.2f} ms | "
                        f"{1e3 * med['free']:.2f} ms | {med['goal'] / med['free']:.2f} | {met_all} | "
                        f"{float(info.iterations.double().mean()):.1f} | {100 * active:.0f}% |")
            print(rows[-1], flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    write_results(args.out, [
        "# Terminal equality x_T == goal on lqr: with vs without",
        "",
        f"n={N_X}, m={N_U}, T={T}, float64, forward + backward of sum(x) + sum(u); 1 torch thread; medians of "
        f"{repeats} runs (3 with the box) after a warm-up, in 3 interleaved rounds (median of the rounds); "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {load:.2f} at the end. "
        "Generated by `python benchmarks/terminal_constrained_lqr.py`.",
        "",
        *rows,
    ])


if __name__ == "__main__":
    main()
