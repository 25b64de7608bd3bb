"""Cartpole imitation (the Differentiable MPC paper, section 5.3, Figure 4, its cartpole half).

An expert MPC (box-constrained iLQR on ``dc.models.cartpole``: mpc.pytorch's cartpole, true
gravity, cart and pole masses, pole length and cost) acts from random initial states. With a
varying number of expert trajectories, the five learners of the pendulum experiment
(``_imitation.py``): nn (an LSTM policy), sysid (the four physical parameters fitted to the
expert's transitions), mpc.dx (the same parameters from the expert's controls only, through the
ilqr layer), mpc.cost (the cost ||w o (tau - tau_g)||^2 through the layer) and mpc.cost.dx
(both). Reported: each method's test imitation loss at its best validation loss (the mean over
three trials; the paper averages four), and what the first trial's learners of the largest
data set learned.

Initial states: pole angle uniform in [-pi, pi), cart position, speed and pole speed uniform
in [-0.5, 0.5) (the paper does not give its distribution). gymnasium's CartPole is not the
same system (discrete pushes of 10 N, Euler steps of 0.02 s, a failure angle), so there is no
closed-loop rollout here.

    python examples/cartpole_imitation.py            # 8, 32, 128 trajectories, horizon 20, 200 steps, 3 trials (~50 m)
    python examples/cartpole_imitation.py --quick    # 8 and 32 trajectories, horizon 10, 30 steps, 1 trial
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from _common import arguments
from _imitation import Task, experiment

import diffcontrol as dc

TRUE = {"gravity": 9.8, "masscart": 1.0, "masspole": 0.1, "length": 0.5}
DT = 0.05


def cartpole_step(s: torch.Tensor, u: torch.Tensor, p: dict) -> torch.Tensor:
    """dc.models.cartpole's transition in torch, s (..., 5), u (..., 1) -> (..., 5); an
    independent transcription (mpc.pytorch's CartpoleDx) used by sysid's regression."""
    x, dx, cos_th, sin_th, dth = s.unbind(-1)
    total = p["masscart"] + p["masspole"]
    pole = p["masspole"] * p["length"]
    push = (u[..., 0] + pole * dth**2 * sin_th) / total
    th_acc = (p["gravity"] * sin_th - cos_th * push) / (p["length"] * (4 / 3 - p["masspole"] * cos_th**2 / total))
    x_acc = push - pole * th_acc * cos_th / total
    th = torch.atan2(sin_th, cos_th) + DT * dth
    return torch.stack([x + DT * dx, dx + DT * x_acc, th.cos(), th.sin(), dth + DT * th_acc], -1)


def initial_states(n: int, gen: torch.Generator) -> torch.Tensor:
    """(n, 5): angle uniform in [-pi, pi), position and the speeds uniform in [-0.5, 0.5)."""
    th = (torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1) * math.pi
    x, dx, dth = (torch.rand(3, n, generator=gen, dtype=torch.float64) - 0.5).unbind(0)
    return torch.stack([x, dx, th.cos(), th.sin(), dth], -1)


TRIALS = 3  # the full run's, each with its own data sets and learners' starts (49 min for three, on one core)


def cartpole_task(horizon: int) -> Task:
    model = dc.models.cartpole(horizon=horizon, dt=DT)
    return Task("cartpole", model, model.problem.compile(max_iter=300).to_torch(), dict(TRUE), cartpole_step,
                initial_states, ("x", "x_dot", "cos th", "sin th", "th_dot", "u"))


def main() -> None:
    args = arguments(__doc__)
    experiment(cartpole_task, args.quick, Path(args.out), trials=1 if args.quick else TRIALS)

if __name__ == "__main__":
    main()
