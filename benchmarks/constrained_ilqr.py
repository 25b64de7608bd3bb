"""General constraints on the ilqr backend (augmented Lagrangian): solve time, iterations,
constraint violation and gradient error, against references in the same process.

Cases (float64, forward + backward of sum(x) + sum(u)):

- pendulum, T=50, |theta_dot| <= 1.2 at every stage, |u| <= 5, batch 1 and 16 (starting
  angles spread over [-0.5, 0.5]): against scipy's SLSQP on the same problem (batch 1,
  forward only: SLSQP gives no gradient);
- unicycle, T=40, a disc of radius 0.5 kept out of (r^2 <= |p_t - c|^2), |u| <= 2, batch 1
  and 16 (goals spread around (3, 0.2)): against SLSQP likewise;
- an LQ problem with a state and a mixed constraint and a box (n=2, T=12) forced onto ilqr,
  against the cone backend (cvxpylayers + Clarabel), which auto-selection picks for it.

Gradient error: the gradient w.r.t. the constraint's parameter (the speed limit, the
radius, the state bound), relative to central differences of our re-solves (h = 1e-5);
the forward is checked against SLSQP / cvxpy in tests/test_path_constraints.py.

    python benchmarks/constrained_ilqr.py            # writes benchmarks/results/constrained_ilqr.md
    python benchmarks/constrained_ilqr.py --quick    # batch 1, one round of one run
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import minimize

import diffcontrol as dc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import timed, write_results  # noqa: E402

DT = 0.1


def pendulum(T: int = 50):
    x, u = dc.State(2, name="x"), dc.Control(1, name="u")
    limit, x0 = dc.Parameter((), name="limit"), dc.Parameter(2, name="x0")
    goal = np.array([np.pi, 0.0])
    prob = dc.ControlProblem(
        dynamics=x.next == dc.stack([x[0] + DT * x[1], x[1] + DT * (-10 * dc.sin(x[0]) + u[0])]),
        cost=dc.sum_squares(x - goal) + 0.01 * dc.sum_squares(u), terminal_cost=10 * dc.sum_squares(x - goal),
        horizon=T, initial_state=x0, constraints=[x[1] <= limit, -limit <= x[1], -5 <= u, u <= 5])

    def values(batch: int) -> dict:
        th = np.linspace(-0.5, 0.5, batch) if batch > 1 else np.zeros(1)
        return {"limit": torch.tensor(1.2, dtype=torch.float64),
                "x0": torch.tensor(np.stack([th, np.zeros(batch)], -1))}

    def slsqp(v: dict) -> np.ndarray:
        lim, x0v = float(v["limit"]), v["x0"][0].numpy()

        def roll(U):
            X = [x0v]
            for t in range(T):
                X.append(np.array([X[-1][0] + DT * X[-1][1], X[-1][1] + DT * (-10 * np.sin(X[-1][0]) + U[t])]))
            return np.array(X)

        def cost(U):
            X = roll(U)
            return ((X[:-1] - goal) ** 2).sum() + 0.01 * (U ** 2).sum() + 10 * ((X[-1] - goal) ** 2).sum()

        cons = {"type": "ineq", "fun": lambda U: np.concatenate([lim - roll(U)[1:, 1], lim + roll(U)[1:, 1]])}
        return minimize(cost, np.zeros(T), method="SLSQP", bounds=[(-5, 5)] * T, constraints=[cons],
                        options={"ftol": 1e-12, "maxiter": 1000}).x

    return prob, values, slsqp, "limit", lambda x, v: float((x[..., 1:, 1].abs() - v["limit"]).clamp(min=0).max())


def unicycle(T: int = 40):
    x, u = dc.State(3, name="x"), dc.Control(2, name="u")
    goal, radius = dc.Parameter(3, name="goal"), dc.Parameter((), name="radius")
    centre = np.array([1.5, 0.0])
    step = dc.stack([x[0] + DT * u[0] * dc.cos(x[2]), x[1] + DT * u[0] * dc.sin(x[2]), x[2] + DT * u[1]])
    prob = dc.ControlProblem(
        dynamics=x.next == step, cost=0.05 * dc.sum_squares(u) + 0.1 * dc.sum_squares(x - goal),
        terminal_cost=50 * dc.sum_squares(x - goal), horizon=T, initial_state=np.zeros(3),
        constraints=[radius ** 2 <= dc.sum_squares(x[:2] - centre), -2 <= u, u <= 2])

    def values(batch: int) -> dict:
        rng = np.random.default_rng(0)
        goals = np.array([3.0, 0.2, 0.0]) + (0.3 * rng.normal(size=(batch, 3)) if batch > 1 else 0.0)
        return {"goal": torch.tensor(goals), "radius": torch.tensor(0.5, dtype=torch.float64)}

    def slsqp(v: dict) -> np.ndarray:
        g, r = v["goal"][0].numpy(), float(v["radius"])

        def roll(U):
            U = U.reshape(T, 2)
            X = [np.zeros(3)]
            for t in range(T):
                p = X[-1]
                X.append(p + DT * np.array([U[t, 0] * np.cos(p[2]), U[t, 0] * np.sin(p[2]), U[t, 1]]))
            return np.array(X)

        def cost(U):
            X = roll(U)
            return 0.05 * (U ** 2).sum() + 0.1 * ((X[:-1] - g) ** 2).sum() + 50 * ((X[-1] - g) ** 2).sum()

        cons = {"type": "ineq", "fun": lambda U: ((roll(U)[1:, :2] - centre) ** 2).sum(-1) - r ** 2}
        U0 = np.tile([1.0, 0.0], T)
        return minimize(cost, U0, method="SLSQP", bounds=[(-2, 2)] * (2 * T), constraints=[cons],
                        options={"ftol": 1e-12, "maxiter": 1000}).x

    def violation(x, v):
        d = ((x[..., 1:, :2] - torch.tensor(centre)) ** 2).sum(-1).sqrt()
        return float((v["radius"] - d).clamp(min=0).max())

    return prob, values, slsqp, "radius", violation


def lq(T: int = 12):
    x, u = dc.State(2, name="x"), dc.Control(1, name="u")
    lo, x0 = dc.Parameter((), name="lo"), dc.Parameter(2, name="x0")
    A, B = np.array([[1.0, 0.2], [0.0, 1.0]]), np.array([[0.05], [1.0]])
    prob = dc.ControlProblem(
        dynamics=x.next == A @ x + B @ u, cost=dc.sum_squares(x) + 0.1 * dc.sum_squares(u),
        terminal_cost=dc.sum_squares(x), horizon=T, initial_state=x0,
        constraints=[x[0] >= lo, x[1] + 0.5 * u[0] <= 0.1, -0.5 <= u, u <= 0.5])

    def values(batch: int) -> dict:
        x0 = np.array([[0.5, -1.6]]) + (np.stack([np.linspace(0.0, 0.3, batch), np.zeros(batch)], -1)
                                        if batch > 1 else 0.0)
        return {"lo": torch.tensor(-0.09, dtype=torch.float64), "x0": torch.tensor(x0)}

    return prob, values, None, "lo", lambda x, v: float((v["lo"] - x[..., 1:, 0]).clamp(min=0).max())


def run(layer, v: dict, key: str) -> tuple:
    inputs = {k: t.clone().requires_grad_(k == key) for k, t in v.items()}
    x, u, info = layer(**inputs, return_info=True)
    keep = info.converged[..., None, None]  # (a failed example's gradient may be NaN: the table counts them)
    (torch.where(keep, x, 0).sum() + torch.where(keep, u, 0).sum()).backward()
    return x.detach(), info, float(inputs[key].grad)


def gradient_error(layer, v: dict, key: str, grad: float, h: float = 1e-5) -> float:
    def loss(delta):
        with torch.no_grad():
            x, u = layer(**{**v, key: v[key] + delta})
        return float(x.sum() + u.sum())

    fd = (loss(h) - loss(-h)) / (2 * h)
    return abs(grad - fd) / max(1.0, abs(fd))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "constrained_ilqr.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", dc.NotConvergedWarning)  # (the table counts them)
    repeats, rounds, batches = (1, 1, (1,)) if args.quick else (5, 3, (1, 16))
    rows = ["| case | batch | ilqr (fwd+bwd) | reference | reference time | iLQR iterations (mean) | "
            "max violation | gradient error (rel. to central differences) |",
            "|---|---:|---:|---|---:|---:|---:|---:|"]
    for name, case in (("pendulum, speed limit, T=50", pendulum), ("unicycle, disc obstacle, T=40", unicycle),
                       ("LQ, state + mixed constraints, T=12", lq)):
        prob, values, slsqp, key, violation = case()
        layer = prob.compile(backend="ilqr").to_torch()
        cone = prob.compile(backend="cone", solver="Clarabel").to_torch() if slsqp is None else None
        for batch in batches:
            v = values(batch)
            ours, ref = [], []
            # interleaved rounds with the reference; the median of the rounds' medians (batch 16,
            # whose calls take seconds and have no reference: one round)
            for _ in range(rounds if batch == 1 else 1):
                ours.append(timed(lambda v=v, layer=layer, key=key: run(layer, v, key), repeats))
                if cone is not None:
                    ref.append(timed(lambda v=v, cone=cone, key=key: run(cone, v, key), repeats))
                elif batch == 1:
                    start = time.perf_counter()
                    slsqp(v)
                    ref.append(time.perf_counter() - start)
            x, info, grad = run(layer, v, key)
            error = gradient_error(layer, v, key, grad) if batch == 1 else float("nan")
            reference = "cone (cvxpylayers, Clarabel)" if cone is not None else ("SLSQP, forward only" if batch == 1
                                                                                   else "–")
            ref_time = f"{1e3 * np.median(ref):.0f} ms" if ref else "–"
            failed = int((~info.converged).sum())
            rows.append(f"| {name} | {batch} | {1e3 * np.median(ours):.0f} ms | {reference} | {ref_time} | "
                        f"{float(info.iterations.double().mean()):.0f} | {violation(x, v):.1e}"
                        f"{f' ({failed} not converged)' if failed else ''} | "
                        f"{'–' if batch > 1 else f'{error:.1e}'} |")
            print(rows[-1], flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    write_results(args.out, [
        "# General constraints on ilqr (augmented Lagrangian): time, iterations, violation, gradient error",
        "",
        f"float64; 1 torch thread; medians of {repeats} runs after a warm-up, in {rounds} interleaved rounds at "
        f"batch 1 "
        f"(SLSQP: one solve per round), one round at batch 16; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, load {load:.2f} at the end. Iterations: iLQR iterations summed over the "
        "augmented-Lagrangian updates. "
        "Generated by `python benchmarks/constrained_ilqr.py`.",
        "",
        *rows,
    ])


if __name__ == "__main__":
    main()
