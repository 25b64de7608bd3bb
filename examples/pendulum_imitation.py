"""Pendulum imitation (the Differentiable MPC paper, section 5.3, Figure 4; DiLQR, section 4.2).

An expert MPC (box-constrained iLQR on ``dc.models.pendulum``, true g, m, l and cost) acts
from random initial states. With a varying number of expert trajectories, five learners
(``_imitation.py`` has the details):

- **nn**: an LSTM policy from the initial state to the control sequence (Adam);
- **sysid**: g, m, l fitted to the expert's state transitions (it sees the states);
- **mpc.dx**: g, m, l learned from the expert's *controls only*, through the ilqr layer;
- **mpc.cost**: the cost ||w o (tau - tau_g)||^2 learned through the layer (dynamics known);
- **mpc.cost.dx**: the cost and g, m, l, through the layer.

Reported: each method's test imitation loss (mean squared control error on held-out initial
states) at its best validation loss, the mean over four trials, as in the paper. Its finding
to reproduce: the MPC learners are far more data-efficient than the LSTM, and mpc.dx matches
sysid while using controls only.

The first trial's learners trained on the most data then act as closed-loop controllers (MPC
re-solved at every step) in gymnasium's Pendulum-v1, the environment with the same physics,
beside the expert; their returns are saved to ``pendulum_imitation_gym.md``, what they learned to
``pendulum_imitation_learned.md``.

    python examples/pendulum_imitation.py            # 8, 32, 128 trajectories, horizon 20, 200 steps, 4 trials (~35 m)
    python examples/pendulum_imitation.py --quick    # 8 and 32 trajectories, horizon 10, 30 steps, 1 trial (~40 s)
"""

from __future__ import annotations

from pathlib import Path

from _common import arguments, write_table
from _imitation import METHODS, experiment
from _pendulum import gym_returns, pendulum_task

import diffcontrol as dc

TRIALS = 4  # the full run's, as the paper's Figure 6 (each trial: its own data sets and learners' starts)


def main() -> None:
    args = arguments(__doc__)
    out = Path(args.out)
    task, trials = experiment(pendulum_task, args.quick, out, trials=1 if args.quick else TRIALS)
    sizes = sorted(trials[0])
    largest = trials[0][sizes[-1]]
    # the first trial's learners of the largest data set as closed-loop controllers in gymnasium's Pendulum-v1
    controllers = {"expert MPC (true g, m, l and cost)":
                   lambda: dc.MPCPolicy(task.layer, **task.expert_physical(), **task.expert_cost())}
    for method in METHODS[1:]:
        controllers[method] = lambda values=largest[method]["values"]: dc.MPCPolicy(task.layer, **values)
    controllers["nn (LSTM)"] = lambda: (lambda obs: largest["nn"]["policy"](obs)[:, 0].detach())
    episodes, episode_steps = (3, 30) if args.quick else (10, 200)
    returns = gym_returns(controllers, episodes, episode_steps)
    if returns:
        write_table(out / "pendulum_imitation_gym.md", ["controller", "mean return", "std"],
                    [[name, f"{mean:.1f}", f"{std:.1f}"] for name, (mean, std) in returns.items()],
                    f"Pendulum-v1: return over {episode_steps} steps, {episodes} episodes (seeds 0-{episodes - 1}); "
                    f"learners trained on {sizes[-1]} expert trajectories")


if __name__ == "__main__":
    main()
