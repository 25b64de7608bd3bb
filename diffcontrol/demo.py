"""The demo: pendulum imitation by mpc.dx (the Differentiable MPC paper, section 5.3), quick.

An expert MPC controller (box-constrained iLQR on ``dc.models.pendulum`` with the true
gravity, mass and length) acts from random initial states. A learner with the same cost
but wrong physical parameters learns them from the expert's *controls only*, by
differentiating through the ilqr layer (RMSprop with the paper's decay 0.5; lr 3e-2 on the
parameters' logarithms, so they stay positive). Each example's solve is warm-started from
its previous solution. Run it with
``diffcontrol demo`` or ``python -m diffcontrol.demo``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

import diffcontrol as dc

TRUE = {"g": 10.0, "m": 1.0, "l": 1.0}


def initial_states(n: int, gen: torch.Generator) -> torch.Tensor:
    """n pendulum states (n, 3): angle uniform in [-pi, pi), speed in [-1, 1)."""
    th = (torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1) * math.pi
    dth = torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1
    return torch.stack([th.cos(), th.sin(), dth], -1)


def expert_data(model: dc.models.ModelProblem, layer, n: int, seed: int, **true_values) -> dict:
    """n initial states (angle uniform in [-pi, pi), speed in [-1, 1)), the expert's states
    ``x`` (n, T+1, 3) and controls ``u`` (n, T, 1), and the cost it used. The expert is
    ``layer`` at the model's defaults, updated with ``true_values``."""
    x0 = initial_states(n, torch.Generator().manual_seed(seed))
    values = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in model.defaults(**true_values).items()}
    with torch.no_grad():
        x, u = layer(**values, x0=x0)
    return {"x0": x0, "x": x, "u": u, "cost": {k: values[k] for k in ("q", "p")}}


def train_mpc_dx(layer, train: dict, test: dict, iterations: int, batch: int, seed: int, lr: float = 3e-2,
                 log_every: int = 10, progress: bool = False) -> dict:
    """Learn (g, m, l) from the expert's controls; returns the history of the imitation loss
    (mean squared control error, training batch and test set) and the parameters."""
    gen = torch.Generator().manual_seed(seed)
    log_params = {k: (math.log(v) + 0.4 * torch.randn((), generator=gen, dtype=torch.float64)).requires_grad_()
                  for k, v in TRUE.items()}
    opt = torch.optim.RMSprop(list(log_params.values()), lr=lr, alpha=0.5)
    warm = train["u"].clone()  # each example's last solution: the next solve starts there
    history: dict = {"iteration": [], "train_loss": [], "test_loss": [], **{k: [] for k in TRUE}}
    steps = range(iterations)
    if progress:
        try:
            from tqdm import tqdm

            steps = tqdm(steps, desc="mpc.dx", leave=False)
        except ImportError:
            pass
    for it in steps:
        idx = torch.randint(0, train["x0"].shape[0], (batch,), generator=gen)
        physical = {k: v.exp() for k, v in log_params.items()}
        _, u = layer(**physical, **train["cost"], x0=train["x0"][idx], u_init=warm[idx])
        warm[idx] = u.detach()
        loss = ((u - train["u"][idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it % log_every == 0 or it == iterations - 1:
            with torch.no_grad():
                physical = {k: v.exp() for k, v in log_params.items()}
                _, u_test = layer(**physical, **test["cost"], x0=test["x0"])
                test_loss = float(((u_test - test["u"]) ** 2).mean())
            history["iteration"].append(it)
            history["train_loss"].append(float(loss.detach()))
            history["test_loss"].append(test_loss)
            for k in TRUE:
                history[k].append(float(physical[k]))
            if not progress:
                print(f"iteration {it:4d}   imitation loss {loss.item():.3e}   test {test_loss:.3e}   "
                      + "   ".join(f"{k} {float(physical[k]):.3f}" for k in TRUE), flush=True)
    return history


def run(iterations: int = 60, out: str = "demo_output", seed: int = 0, horizon: int = 10) -> dict:
    """Train, print the progress, save the loss table and figure; returns the history."""
    model = dc.models.pendulum(horizon=horizon)
    print(model.problem.explain(), "\n")
    layer = model.problem.compile(max_iter=300).to_torch()
    train = expert_data(model, layer, 64, seed)
    test = expert_data(model, layer, 32, seed + 1)
    print(f"learning g, m, l (true {TRUE}) from the expert's controls only\n")
    history = train_mpc_dx(layer, train, test, iterations, batch=16, seed=seed)

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    table = folder / "pendulum_mpc_dx.md"
    rows = zip(history["iteration"], history["train_loss"], history["test_loss"], *(history[k] for k in TRUE))
    table.write_text("| iteration | imitation loss (batch) | test imitation loss | g | m | l |\n"
                     "|---:|---:|---:|---:|---:|---:|\n"
                     + "".join(f"| {i} | {a:.3e} | {b:.3e} | {g:.3f} | {m:.3f} | {ll:.3f} |\n"
                               for i, a, b, g, m, ll in rows))
    print(f"\nwrote {table}")
    figure = _plot(history, folder / "pendulum_mpc_dx.png")
    if figure:
        print(f"wrote {figure}")
    return history


def _plot(history: dict, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'diffcontrol[bench]'); no figure written")
        return None
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax.semilogy(history["iteration"], history["train_loss"], label="imitation loss (batch)")
    ax.semilogy(history["iteration"], history["test_loss"], label="test imitation loss")
    ax.set_xlabel("iteration")
    ax.set_title("pendulum mpc.dx through the ilqr layer")
    ax.legend()
    for k, v in TRUE.items():
        line = bx.plot(history["iteration"], history[k], label=f"{k} (true {v:g})")[0]
        bx.axhline(v, color=line.get_color(), linestyle=":")
    bx.set_xlabel("iteration")
    bx.set_title("learned physical parameters")
    bx.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="pendulum mpc.dx demo")
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--out", default="demo_output")
    args = parser.parse_args()
    run(args.iterations, args.out)
