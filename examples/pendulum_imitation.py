"""Pendulum imitation (the Differentiable MPC paper, section 5.3; DiLQR, section 4.2).

An expert MPC (box-constrained iLQR on ``dc.models.pendulum``, true g, m, l) acts from
random initial states. With a varying number of expert trajectories, three learners:

- **nn**: an LSTM policy from the initial state to the control sequence (Adam);
- **sysid**: g, m, l fitted to the expert's state transitions (x_t, u_t) -> x_(t+1)
  (it sees the states), then used inside the MPC;
- **mpc.dx**: g, m, l learned from the expert's *controls only*, through the ilqr layer.

Reported: the test imitation loss (mean squared control error on held-out initial states).
The paper's finding to reproduce: the MPC learners are far more data-efficient than the
LSTM, and mpc.dx matches sysid while using controls only. (mpc.cost / mpc.cost.dx, which
learn the cost as well, are not in this script yet.)

The learners trained on the most data then act as closed-loop controllers (MPC re-solved at
every step) in gymnasium's Pendulum-v1, the environment with the same physics, beside the
expert; their returns are saved to ``pendulum_imitation_gym.md``.

    python examples/pendulum_imitation.py            # 8, 32, 128 trajectories, 200 steps each (~15 min)
    python examples/pendulum_imitation.py --quick    # 8 and 32 trajectories, 25 steps (about 1 min on 2 cores)
"""

from __future__ import annotations

from pathlib import Path

import torch
from _common import arguments, mpc_controller, progress, pyplot, save_figure, write_table
from _pendulum import gym_returns, imitation_loss, sysid

import diffcontrol as dc
from diffcontrol.demo import TRUE, expert_data, train_mpc_dx

METHODS = ("nn", "sysid", "mpc.dx")


def as_tensors(values: dict) -> dict:
    return {k: torch.as_tensor(v, dtype=torch.float64) for k, v in values.items()}


class LSTMPolicy(torch.nn.Module):
    """The paper's nn baseline: the initial state in, the nominal control sequence out."""

    def __init__(self, horizon: int, hidden: int = 64):
        super().__init__()
        self.horizon = horizon
        self.lstm = torch.nn.LSTM(3, hidden, batch_first=True)
        self.head = torch.nn.Linear(hidden, 1)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x0[:, None].expand(-1, self.horizon, -1))
        return self.head(out)


def nn_baseline(train: dict, test: dict, horizon: int, steps: int, seed: int) -> float:
    torch.manual_seed(seed)
    policy = LSTMPolicy(horizon).double()
    opt = torch.optim.Adam(policy.parameters(), lr=1e-3)
    for _ in progress(range(steps * 10), "nn"):  # cheap steps: ten per MPC step
        loss = ((policy(train["x0"]) - train["u"]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(((policy(test["x0"]) - test["u"]) ** 2).mean()), policy


def main() -> None:
    args = arguments(__doc__)
    sizes, steps, horizon = ((8, 32), 25, 10) if args.quick else ((8, 32, 128), 200, 20)
    model = dc.models.pendulum(horizon=horizon)
    layer = model.problem.compile(max_iter=300).to_torch()
    test = expert_data(model, layer, 64, seed=1000)
    rows, results = [], {}
    for size in sizes:
        train = expert_data(model, layer, size, seed=size)
        mpc_dx = train_mpc_dx(layer, train, test, steps, batch=min(size, 16), seed=0, log_every=steps,
                              progress=True)
        nn_loss, policy = nn_baseline(train, test, horizon, steps, seed=0)
        fitted = sysid(train, steps, seed=0)[-1]
        results[size] = {"nn": nn_loss, "sysid": imitation_loss(layer, test, fitted), "mpc.dx": mpc_dx["test_loss"][-1]}
        rows.append([size, *(f"{results[size][k]:.3e}" for k in METHODS)])
    out = Path(args.out)
    # the learners of the largest data set as closed-loop controllers in gymnasium's Pendulum-v1
    cost = test["cost"]
    controllers = {
        "expert MPC (true g, m, l)": lambda: mpc_controller(layer, {**as_tensors(TRUE), **cost}),
        "mpc.dx": lambda: mpc_controller(layer, {**as_tensors({k: mpc_dx[k][-1] for k in TRUE}), **cost}),
        "sysid": lambda: mpc_controller(layer, {**fitted, **cost}),
        "nn (LSTM)": lambda: (lambda obs: policy(obs)[:, 0].detach()),
    }
    episodes, episode_steps = (4, 60) if args.quick else (10, 200)
    returns = gym_returns(controllers, episodes, episode_steps)
    if returns:
        write_table(out / "pendulum_imitation_gym.md", ["controller", "mean return", "std"],
                    [[name, f"{mean:.1f}", f"{std:.1f}"] for name, (mean, std) in returns.items()],
                    f"Pendulum-v1: return over {episode_steps} steps, {episodes} episodes (seeds 0-{episodes - 1}); "
                    f"learners trained on {sizes[-1]} expert trajectories")
    write_table(out / "pendulum_imitation.md", ["expert trajectories", "nn (LSTM)", *METHODS[1:]], rows,
                f"Pendulum imitation: test imitation loss, horizon {horizon}, {steps} training steps")
    plt = pyplot()
    if plt:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for method in METHODS:
            ax.loglog(sizes, [results[s][method] for s in sizes], "o-", label=method)
        ax.set(xlabel="expert trajectories", ylabel="test imitation loss", title="pendulum imitation")
        ax.legend()
        save_figure(fig, out / "pendulum_imitation.png")


if __name__ == "__main__":
    main()
