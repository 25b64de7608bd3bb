"""Receding-horizon tracking of a moving reference with a time-varying parameter.

A planar double integrator (state: position and velocity, control: acceleration in
[-1, 1]^2) follows a point running around a circle. At every step an MPC layer solves a
horizon-15 problem from the measured state and applies its first control; the next solve
is warm-started from the plan shifted by one stage (``dc.shift``). Two controllers:

- the reference as a time-varying parameter: ``r`` stands for r_t, and the layer gets the
  window r_k..r_{k+T} of the moving point (what the controller should know);
- the reference held constant over the horizon: a plain parameter set to r_k, what one can
  write without time-varying data; it plans to stop at the point where the point is now,
  so it lags behind it.

    python examples/receding_horizon_tracking.py            # 200 closed-loop steps
    python examples/receding_horizon_tracking.py --quick    # 60 steps
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from _common import arguments, progress, pyplot, save_figure, write_table

import diffcontrol as dc

DT, T, N_LOOP = 0.1, 15, 200
A_NP = np.block([[np.eye(2), DT * np.eye(2)], [np.zeros((2, 2)), np.eye(2)]])
B_NP = np.vstack([0.5 * DT ** 2 * np.eye(2), DT * np.eye(2)])
W = np.array([10.0, 10.0, 1.0, 1.0])  # position errors weigh most


def reference(k: np.ndarray) -> np.ndarray:
    """The moving point at steps k (..., 4): position and velocity on a circle of radius 1."""
    omega = 0.8
    t = np.asarray(k, dtype=float)[..., None] * DT
    return np.concatenate([np.cos(omega * t), np.sin(omega * t), -omega * np.sin(omega * t),
                           omega * np.cos(omega * t)], -1)


def mpc_layer(time_varying: bool):
    x, u = dc.State(4, name="x"), dc.Control(2, name="u")
    r = dc.Parameter(4, name="r", time_varying=time_varying)
    x0 = dc.Parameter(4, name="x0")
    prob = dc.ControlProblem(dynamics=x.next == A_NP @ x + B_NP @ u,
                             cost=dc.sum(W * (x - r) ** 2) + 0.1 * dc.sum_squares(u),
                             terminal_cost=dc.sum(W * (x - r) ** 2), horizon=T, initial_state=x0,
                             constraints=[-1 <= u, u <= 1])
    compiled = prob.compile()
    print(compiled.explain().split("Lowered problem")[1].split("Options")[0])
    return compiled.to_torch()


def closed_loop(layer, time_varying: bool, steps: int) -> dict:
    x = torch.tensor([1.5, 0.0, 0.0, 0.0], dtype=torch.float64)
    plan, path, errors, times, iterations = None, [x.numpy()], [], [], []
    for k in progress(range(steps), "closed loop"):
        window = reference(np.arange(k, k + T + 1)) if time_varying else reference(k)
        start = time.perf_counter()
        with torch.no_grad():
            _, u, info = layer(r=torch.tensor(window), x0=x, u_init=plan, return_info=True)
        times.append(time.perf_counter() - start)
        iterations.append(int(info.iterations))
        plan = dc.shift(u)  # the next warm start: u_1..u_{T-1}, u_{T-1}
        x = torch.tensor(A_NP) @ x + torch.tensor(B_NP) @ u[0]
        path.append(x.numpy())
        errors.append(float(np.linalg.norm(x.numpy()[:2] - reference(k + 1)[:2])))
    return {"path": np.array(path), "errors": np.array(errors), "ms": 1e3 * np.median(times),
            "iterations": float(np.mean(iterations))}


def main() -> None:
    args = arguments(__doc__)
    out = Path(args.out)
    steps = 60 if args.quick else N_LOOP
    runs = {}
    for name, tv in (("time-varying reference r_t", True), ("reference held constant", False)):
        runs[name] = closed_loop(mpc_layer(tv), tv, steps)
    settle = steps // 3  # after the approach from the start
    rows = [[name, f"{r['errors'][settle:].mean():.4f}", f"{r['errors'][settle:].max():.4f}", f"{r['ms']:.2f}",
             f"{r['iterations']:.1f}"] for name, r in runs.items()]
    write_table(out / "receding_horizon_tracking.md",
                ["controller", "mean position error (steady)", "max position error (steady)",
                 "median solve (ms)", "mean active-set iterations"], rows,
                title=f"Closed-loop tracking of a point on a circle, {steps} steps, horizon {T}, warm-started "
                      "with dc.shift")
    plt = pyplot()
    if plt is not None:
        fig, ax = plt.subplots(figsize=(5, 5))
        circle = reference(np.arange(0, 400))
        ax.plot(circle[:, 0], circle[:, 1], "k:", label="reference")
        for name, r in runs.items():
            ax.plot(r["path"][:, 0], r["path"][:, 1], label=name)
        ax.set_aspect("equal")
        ax.legend(loc="lower left", fontsize=8)
        save_figure(fig, out / "receding_horizon_tracking.png")


if __name__ == "__main__":
    main()
