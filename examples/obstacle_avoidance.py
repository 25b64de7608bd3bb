"""Learning an obstacle's size from demonstrations, through a constrained nonlinear layer.

A unicycle (state: position and heading; controls: speed and turn rate in a box) drives
to a goal past a disc-shaped obstacle. The expert keeps out of a disc of radius 0.5: a
hard path constraint ``r^2 <= ||p_t - c||^2`` at every stage, which the ilqr backend
meets by its augmented Lagrangian. The learner knows the dynamics and the goal, and
learns the radius r and the weight of the control effort from the expert's trajectories
(8 starts), by Adam on the trajectories' squared error. The radius reaches the loss only
through the constraints that are active (the trajectories that graze the disc), so
its gradient is the exact one of the constrained problem, with the active rows as
equalities; a penalty approximation would give a different answer.

    python examples/obstacle_avoidance.py            # 60 steps of Adam
    python examples/obstacle_avoidance.py --quick    # 12 steps, 4 starts
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from _common import arguments, progress, pyplot, save_figure, write_table

import diffcontrol as dc

DT, T = 0.1, 30
CENTRE, GOAL = np.array([1.5, 0.0]), np.array([3.0, 0.0, 0.0])
TRUE_RADIUS, TRUE_EFFORT = 0.5, 0.05


def unicycle_layer():
    x, u = dc.State(3, name="x"), dc.Control(2, name="u")
    radius, effort = dc.Parameter((), name="radius"), dc.Parameter((), name="effort", nonneg=True)
    x0 = dc.Parameter(3, name="x0")
    step = dc.stack([x[0] + DT * u[0] * dc.cos(x[2]), x[1] + DT * u[0] * dc.sin(x[2]), x[2] + DT * u[1]])
    prob = dc.ControlProblem(
        dynamics=x.next == step, cost=effort * dc.sum_squares(u) + 0.1 * dc.sum_squares(x - GOAL),
        terminal_cost=50 * dc.sum_squares(x - GOAL), horizon=T, initial_state=x0,
        constraints=[radius ** 2 <= dc.sum_squares(x[:2] - CENTRE), -2 <= u, u <= 2])
    compiled = prob.compile()
    print(compiled.explain().split("Lowered problem")[1].split("  derivatives")[0])
    return compiled.to_torch()


def starts(n: int) -> torch.Tensor:
    """n initial states on a line left of the obstacle, heading to the goal."""
    y = np.linspace(-0.35, 0.35, n)
    return torch.tensor(np.stack([np.zeros(n), y, np.zeros(n)], -1))


def main() -> None:
    args = arguments(__doc__)
    out = Path(args.out)
    steps = 12 if args.quick else 60
    layer = unicycle_layer()
    x0 = starts(4 if args.quick else 8)
    with torch.no_grad():
        expert_x, expert_u, info = layer(radius=torch.tensor(TRUE_RADIUS, dtype=torch.float64),
                                         effort=torch.tensor(TRUE_EFFORT, dtype=torch.float64), x0=x0,
                                         return_info=True)
    assert bool(info.converged.all())
    log_radius = torch.tensor(np.log(0.25), dtype=torch.float64, requires_grad=True)
    log_effort = torch.tensor(np.log(0.2), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([log_radius, log_effort], lr=0.1)
    history, plan, start = [], None, time.perf_counter()
    for k in progress(range(steps), "Adam"):
        optimizer.zero_grad()
        xs, us = layer(radius=log_radius.exp(), effort=log_effort.exp(), x0=x0, u_init=plan)
        loss = ((xs - expert_x) ** 2).mean() + ((us - expert_u) ** 2).mean()
        loss.backward()
        optimizer.step()
        plan = us.detach()  # the next solve starts from this one's controls
        history.append((k, loss.item(), log_radius.exp().item(), log_effort.exp().item()))
    seconds = time.perf_counter() - start
    with torch.no_grad():
        learned_x, _ = layer(radius=log_radius.exp(), effort=log_effort.exp(), x0=x0, u_init=plan)
    rows = [[k, f"{loss:.2e}", f"{r:.4f}", f"{e:.4f}"] for k, loss, r, e in history[:: max(1, steps // 12)]]
    rows.append(["final", f"{history[-1][1]:.2e}", f"{history[-1][2]:.4f}", f"{history[-1][3]:.4f}"])
    rows.append(["expert", "0", f"{TRUE_RADIUS:.4f}", f"{TRUE_EFFORT:.4f}"])
    write_table(out / "obstacle_avoidance.md", ["step", "imitation loss", "radius", "effort weight"], rows,
                title=f"Learning an obstacle's radius through hard path constraints: unicycle, T={T}, "
                      f"{x0.shape[0]} starts, "
                      f"{steps} Adam steps, {seconds:.0f} s on this machine")
    plt = pyplot()
    if plt is not None:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        for i in range(x0.shape[0]):
            ax.plot(expert_x[i, :, 0], expert_x[i, :, 1], "k-", lw=1, label="expert" if i == 0 else None)
            ax.plot(learned_x[i, :, 0], learned_x[i, :, 1], "C1--", lw=1, label="learned" if i == 0 else None)
        for r, color, ls, name in ((TRUE_RADIUS, "k", "-", "true disc"), (history[0][2], "C0", ":", "initial guess"),
                                   (history[-1][2], "C1", "--", "learned disc")):
            ax.add_patch(plt.Circle(CENTRE, r, fill=False, ls=ls, color=color, label=name))
        ax.set_aspect("equal")
        ax.legend(loc="upper left", fontsize=7)
        save_figure(fig, out / "obstacle_avoidance.png")


if __name__ == "__main__":
    main()
