"""LQR imitation (the Differentiable MPC paper, section 5.2).

Expert and learner LQR controllers, n = m = 3, horizon 5, controls in [-1, 1]. The learner
learns its (A, B) from the expert's controls only (RMSprop, lr 1e-2, batches of 32 initial
states), differentiating through the lqr layer. Eight random initialisations of (A, B); the
paper finds that about half converge to the true model (the others imitate well with a
different model: the controls do not identify (A, B) uniquely).

    python examples/lqr_imitation.py            # the paper's 1000 iterations x 8 seeds (~3 min on 2 cores)
    python examples/lqr_imitation.py --quick    # 150 iterations x 8 seeds (< 1 min)
"""

from __future__ import annotations

from pathlib import Path

import torch
from _common import arguments, progress, pyplot, save_figure, write_table

import diffcontrol as dc


def imitation_problem(n: int = 3, m: int = 3, horizon: int = 5) -> dc.ControlProblem:
    x, u = dc.State(n, name="x"), dc.Control(m, name="u")
    A, B, x0 = dc.Parameter((n, n), name="A"), dc.Parameter((n, m), name="B"), dc.Parameter(n, name="x0")
    return dc.ControlProblem(dynamics=x.next == A @ x + B @ u, cost=dc.sum_squares(x) + dc.sum_squares(u),
                             horizon=horizon, initial_state=x0, constraints=[-1 <= u, u <= 1])


def train(layer, A_true, B_true, seed: int, iterations: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    n, m = B_true.shape
    A = (torch.eye(n, dtype=torch.float64) + 0.2 * torch.randn(n, n, generator=g, dtype=torch.float64)).requires_grad_()
    B = torch.randn(n, m, generator=g, dtype=torch.float64).requires_grad_()
    opt = torch.optim.RMSprop([A, B], lr=1e-2)
    history = {"imitation": [], "model": []}
    for _ in progress(range(iterations), f"seed {seed}"):
        x0 = 3 * torch.randn(32, n, generator=g, dtype=torch.float64)
        with torch.no_grad():
            _, u_expert = layer(A=A_true, B=B_true, x0=x0)
        _, u = layer(A=A, B=B, x0=x0)
        loss = ((u - u_expert) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        history["imitation"].append(loss.item())
        history["model"].append((((A - A_true) ** 2).mean() + ((B - B_true) ** 2).mean()).item())
    return history


def main() -> None:
    args = arguments(__doc__)
    iterations = 150 if args.quick else 1000
    layer = imitation_problem().compile().to_torch()
    g = torch.Generator().manual_seed(0)
    A_true = torch.eye(3, dtype=torch.float64) + 0.2 * torch.randn(3, 3, generator=g, dtype=torch.float64)
    B_true = torch.randn(3, 3, generator=g, dtype=torch.float64)
    runs = {seed: train(layer, A_true, B_true, seed, iterations) for seed in range(1, 9)}
    out = Path(args.out)
    rows = [[seed, f"{h['imitation'][0]:.2e}", f"{h['imitation'][-1]:.2e}", f"{h['model'][0]:.2e}",
             f"{h['model'][-1]:.2e}", "yes" if h["model"][-1] < 1e-3 else "no"] for seed, h in runs.items()]
    write_table(out / "lqr_imitation.md",
                ["seed", "imitation loss (start)", "imitation loss (end)", "model loss (start)",
                 "model loss (end)", "recovered (A, B)"], rows,
                f"LQR imitation, {iterations} iterations, batches of 32")
    plt = pyplot()
    if plt:
        fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.5))
        for seed, h in runs.items():
            ax.semilogy(h["imitation"], lw=1)
            bx.semilogy(h["model"], lw=1, label=f"seed {seed}")
        ax.set(xlabel="iteration", title="imitation loss")
        bx.set(xlabel="iteration", title="model loss ||A - A*||^2 + ||B - B*||^2")
        bx.legend(fontsize=7)
        save_figure(fig, out / "lqr_imitation.png")


if __name__ == "__main__":
    main()
