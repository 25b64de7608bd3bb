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

    python examples/pendulum_imitation.py            # 8, 32, 128 trajectories, 200 steps each (~15 min)
    python examples/pendulum_imitation.py --quick    # 8 and 32 trajectories, 25 steps (about 1 min on 2 cores)
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from _common import arguments, progress, pyplot, save_figure, write_table

import diffcontrol as dc
from diffcontrol.demo import TRUE, expert_data, train_mpc_dx

DT = 0.05


def pendulum_step(x: torch.Tensor, u: torch.Tensor, g, m, l) -> torch.Tensor:
    """dc.models.pendulum's dynamics in torch (for sysid's regression on transitions)."""
    th, dth = torch.atan2(x[..., 1], x[..., 0]), x[..., 2]
    new_dth = dth + DT * (3.0 * g / (2.0 * l) * x[..., 1] + 3.0 * u[..., 0] / (m * l ** 2))
    new_th = th + DT * new_dth
    return torch.stack([new_th.cos(), new_th.sin(), new_dth], -1)


def test_loss(layer, test: dict, physical: dict) -> float:
    with torch.no_grad():
        _, u = layer(**physical, **test["cost"], x0=test["x0"])
    return float(((u - test["u"]) ** 2).mean())


def sysid(layer, train: dict, test: dict, steps: int, seed: int) -> float:
    gen = torch.Generator().manual_seed(seed)
    logs = {k: (math.log(v) + 0.4 * torch.randn((), generator=gen, dtype=torch.float64)).requires_grad_()
            for k, v in TRUE.items()}
    with torch.no_grad():
        x, _ = layer(**{k: torch.tensor(v, dtype=torch.float64) for k, v in TRUE.items()}, **train["cost"],
                     x0=train["x0"])
    opt = torch.optim.RMSprop(list(logs.values()), lr=3e-2, alpha=0.5)
    for _ in progress(range(steps), "sysid"):
        p = {k: v.exp() for k, v in logs.items()}
        loss = ((pendulum_step(x[:, :-1], train["u"], p["g"], p["m"], p["l"]) - x[:, 1:]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return test_loss(layer, test, {k: v.detach().exp() for k, v in logs.items()})


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
        return float(((policy(test["x0"]) - test["u"]) ** 2).mean())


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
                              progress=True)["test_loss"][-1]
        results[size] = {"nn": nn_baseline(train, test, horizon, steps, seed=0),
                         "sysid": sysid(layer, train, test, steps, seed=0), "mpc.dx": mpc_dx}
        rows.append([size, *(f"{results[size][k]:.3e}" for k in ("nn", "sysid", "mpc.dx"))])
    out = Path(args.out)
    write_table(out / "pendulum_imitation.md", ["expert trajectories", "nn (LSTM)", "sysid", "mpc.dx"], rows,
                f"Pendulum imitation: test imitation loss, horizon {horizon}, {steps} training steps")
    plt = pyplot()
    if plt:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for method in ("nn", "sysid", "mpc.dx"):
            ax.loglog(sizes, [results[s][method] for s in sizes], "o-", label=method)
        ax.set(xlabel="expert trajectories", ylabel="test imitation loss", title="pendulum imitation")
        ax.legend()
        save_figure(fig, out / "pendulum_imitation.png")


if __name__ == "__main__":
    main()
