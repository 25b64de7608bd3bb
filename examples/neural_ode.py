"""Backward-Euler neural ODE (Differentiable Implicit Layers, section 3.1, Table 1).

A neural ODE dx/dt = f_theta(x) (an MLP) discretised by backward Euler: each step solves
x_(k+1) = x_k + h f_theta(x_(k+1)), here as the implicit layer

    x_(k+1) = argmin_y ||y - x_k - h f_theta(y)||^2          (ift_cg backend)

so the network trains through the implicit function theorem (CG on Hessian-vector products),
never through the solver's iterations. Two extrapolation tasks, as in the paper:

- Van der Pol, x'' - mu (1 - x^2) x' + x = 0 with mu = 3 (state (x, x')): 320 points 0.1 s
  apart; the first 107 train, the next 106 validate, the last 106 test;
- spiral, dx/dt = A x^3 (cube per entry), A = [[-0.1, 2], [-2, -0.1]]: 300 points 0.1 s
  apart; 100 train, 50 validate, 150 test.

The ground truth comes from scipy's solve_ivp (RK45, tolerance 1e-10). Training fits
10-step pieces of the training segment (Adam, 16 pieces a step); the test MSE is the error
of the model's rollout from the training segment's last point through validation and test,
on the test segment. Beside it, the same network trained by explicit Euler with autograd and,
where torchdiffeq is installed, the paper's baseline: dopri5 with the adjoint method
(torchdiffeq.odeint_adjoint). Reported: test MSE (mean ± standard error over seeds) and the
backward pass's time per step.

    python examples/neural_ode.py            # both tasks, 3 seeds, 300 steps (~12 min on 2 cores)
    python examples/neural_ode.py --quick    # the spiral, 1 seed, 40 steps
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from _common import arguments, progress, pyplot, save_figure, write_table
from scipy.integrate import solve_ivp

import diffcontrol as dc

DT, PIECE, PIECES = 0.1, 10, 16
# the spiral of the neural-ODE literature (torchdiffeq's demo); the paper's text of A is garbled
SPIRAL_A = np.array([[-0.1, 2.0], [-2.0, -0.1]])
TASKS = {  # name: (vector field, initial state, points, train, validation, hidden units)
    "Van der Pol": (lambda t, x: [x[1], 3.0 * (1 - x[0] ** 2) * x[1] - x[0]], [2.0, 0.0], 320, 107, 106, 500),
    "spiral": (lambda t, x: SPIRAL_A @ np.asarray(x) ** 3, [2.0, 0.0], 300, 100, 50, 50),
}


def trajectory(task: str) -> torch.Tensor:
    """The task's observations (points, 2), by scipy's RK45 at tight tolerance."""
    field, x0, points, *_ = TASKS[task]
    times = DT * np.arange(points)
    sol = solve_ivp(field, (0.0, times[-1]), x0, t_eval=times, rtol=1e-10, atol=1e-10)
    return torch.from_numpy(sol.y.T.copy())


def mlp(hidden: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(2, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 2)).double()


def backward_euler_step(net: torch.nn.Module) -> dc.Problem:
    """One step of backward Euler from x: argmin_y ||y - x - h f_theta(y)||^2."""
    y, x = dc.Variable(2, name="y"), dc.Parameter(2, name="x")
    f = dc.Function(net, 2, name="f_theta")
    return dc.Problem(dc.Minimize(dc.sum_squares(y - x - DT * f(y))))


class BackwardEuler:
    """Steps of backward Euler through diffcontrol's implicit layer."""

    def __init__(self, net: torch.nn.Module):
        self.net = net
        self.layer = backward_euler_step(net).compile(tol=1e-10).to_torch()

    def rollout(self, x0: torch.Tensor, steps: int) -> torch.Tensor:
        """(batch, 2) -> (batch, steps + 1, 2)."""
        xs = [x0]
        for _ in range(steps):
            with torch.no_grad():  # explicit Euler's prediction warm-starts each solve
                guess = xs[-1] + DT * self.net(xs[-1])
            (x_next,) = self.layer(x=xs[-1], y_init=(guess,))
            xs.append(x_next)
        return torch.stack(xs, 1)


class ExplicitEuler:
    """x_(k+1) = x_k + h f_theta(x_k), differentiated by autograd."""

    def __init__(self, net: torch.nn.Module):
        self.net = net

    def rollout(self, x0: torch.Tensor, steps: int) -> torch.Tensor:
        xs = [x0]
        for _ in range(steps):
            xs.append(xs[-1] + DT * self.net(xs[-1]))
        return torch.stack(xs, 1)


class AdjointDopri5:
    """torchdiffeq's dopri5 with the adjoint method (the paper's NODE baseline)."""

    def __init__(self, net: torch.nn.Module):
        from torchdiffeq import odeint_adjoint

        class Field(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.net = net

            def forward(self, t, x):
                return self.net(x)

        self.field, self.odeint = Field(), odeint_adjoint

    def rollout(self, x0: torch.Tensor, steps: int) -> torch.Tensor:
        times = DT * torch.arange(steps + 1, dtype=x0.dtype)
        return self.odeint(self.field, x0, times, method="dopri5", rtol=1e-6, atol=1e-8).transpose(0, 1)


def methods() -> dict:
    found = {"backward Euler, IFT-CG (ours)": BackwardEuler, "explicit Euler, autograd": ExplicitEuler}
    try:
        import torchdiffeq  # noqa: F401
    except ImportError:
        print("torchdiffeq is not installed (pip install torchdiffeq): its adjoint baseline is left out")
    else:
        found["dopri5, adjoint (torchdiffeq)"] = AdjointDopri5
    return found


def train(method, task: str, data: torch.Tensor, steps: int, seed: int) -> dict:
    *_, points, n_train, n_val, hidden = TASKS[task]
    net = mlp(hidden, seed)
    model = method(net)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    losses, backward_seconds = [], 0.0
    for _ in progress(range(steps), f"{task}, {method.__name__}, seed {seed}"):
        starts = torch.randint(0, n_train - PIECE, (PIECES,), generator=gen)
        pieces = data[starts[:, None] + torch.arange(PIECE + 1)]
        loss = ((model.rollout(pieces[:, 0], PIECE) - pieces) ** 2).mean()
        opt.zero_grad()
        began = time.perf_counter()
        loss.backward()
        backward_seconds += time.perf_counter() - began
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():  # extrapolate from the last training point through validation and test
        future = model.rollout(data[n_train - 1][None], points - n_train)[0]
    test = future[1 + n_val:]
    return {"losses": losses, "test_mse": ((test - data[n_train + n_val:]) ** 2).mean().item(),
            "backward_ms": 1e3 * backward_seconds / steps, "future": future}


def main() -> None:
    args = arguments(__doc__)
    tasks, seeds, steps = (["spiral"], [0], 40) if args.quick else (list(TASKS), list(range(3)), 300)
    found = methods()
    print(backward_euler_step(mlp(8, 0)).compile(tol=1e-10).explain(), "\n")
    results, rows = {}, []
    data = {task: trajectory(task) for task in tasks}
    for task in tasks:
        for name, method in found.items():
            runs = [train(method, task, data[task], steps, seed) for seed in seeds]
            results[task, name] = runs
            mse = np.array([r["test_mse"] for r in runs])
            spread = f" ± {mse.std(ddof=1) / np.sqrt(len(mse)):.2f}" if len(mse) > 1 else ""
            rows.append([task, name, f"{np.mean([r['losses'][0] for r in runs]):.3e}",
                         f"{np.mean([np.mean(r['losses'][-10:]) for r in runs]):.3e}",
                         f"{mse.mean():.3f}{spread}", f"{np.mean([r['backward_ms'] for r in runs]):.1f}"])
    out = Path(args.out)
    write_table(out / "neural_ode.md", ["task", "method", "train loss (first step)", "train loss (last 10 steps)",
                                        "test MSE", "backward ms per step"], rows,
                f"Neural ODE extrapolation, {len(seeds)} seed(s), {steps} steps of {PIECES} pieces of {PIECE}")
    plt = pyplot()
    if plt:
        fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
        for ax, task in zip(axes[0], tasks):
            truth = data[task]
            *_, n_train, n_val, _ = TASKS[task]
            ax.plot(truth[:n_train, 0], truth[:n_train, 1], "k.", ms=3, label="training data")
            ax.plot(truth[n_train:, 0], truth[n_train:, 1], ":", color="gray", label="truth (validation, test)")
            for name in found:
                future = results[task, name][0]["future"]
                ax.plot(future[:, 0], future[:, 1], lw=1, label=name)
            ax.set(title=f"{task}: extrapolation (seed 0)", xlabel="x1", ylabel="x2")
            ax.legend(fontsize=7)
        save_figure(fig, out / "neural_ode.png")


if __name__ == "__main__":
    main()
