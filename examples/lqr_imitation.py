"""LQR imitation (the Differentiable MPC paper, section 5.2).

Expert and learner LQR controllers, n = m = 3, horizon 5, controls in [-1, 1], the same cost
(the identity quadratic plus a random linear term, as in the authors' released experiment).
The learner learns its (A, B) by imitation (RMSprop, lr 1e-2, batches of 32 initial states
x0 ~ N(0, I)), differentiating through the lqr layer, from eight random initialisations
(A = I + 0.2 N(0, 1), B = N(0, 1), as the expert's). Two imitation losses: the controls only
(what the paper's text says) and the whole trajectory, states and controls (the paper's
equation and the authors' code). The paper finds about half the runs converge to the true
model; the others imitate well with a different model (the data do not identify (A, B)
uniquely from everywhere).

    python examples/lqr_imitation.py            # 3000 iterations x 8 seeds x 2 losses (~3 min on 2 cores)
    python examples/lqr_imitation.py --quick    # 150 iterations x 8 seeds, controls only (< 1 min)
"""

from __future__ import annotations

from pathlib import Path

import torch
from _common import arguments, progress, pyplot, save_figure, write_table

import diffcontrol as dc

LOSSES = {"controls": "controls only", "trajectory": "states and controls"}


def imitation_problem(n: int = 3, m: int = 3, horizon: int = 5) -> dc.ControlProblem:
    """min sum_t 1/2 |tau_t|^2 + p^T tau_t (and the same on x_T) s.t. x' = A x + B u, |u| <= 1."""
    x, u = dc.State(n, name="x"), dc.Control(m, name="u")
    A, B, x0 = dc.Parameter((n, n), name="A"), dc.Parameter((n, m), name="B"), dc.Parameter(n, name="x0")
    p = dc.Parameter(n + m, name="p")
    tau = dc.concat([x, u])
    return dc.ControlProblem(dynamics=x.next == A @ x + B @ u, cost=0.5 * dc.sum_squares(tau) + p @ tau,
                             terminal_cost=0.5 * dc.sum_squares(x) + p[:n] @ x,
                             horizon=horizon, initial_state=x0, constraints=[-1 <= u, u <= 1])


def train(layer, expert: dict, loss_kind: str, seeds: list[int], iterations: int) -> dict:
    """All the seeds' learners at once, as one batch of len(seeds) * 32 problems with
    per-example (A, B): RMSprop acts elementwise and each seed's loss depends on its own (A, B)
    only, so this is the same as training them one by one, in one layer call per step."""
    gens = [torch.Generator().manual_seed(seed) for seed in seeds]
    n, m = expert["B"].shape
    A = torch.stack([torch.eye(n, dtype=torch.float64) + 0.2 * torch.randn(n, n, generator=g, dtype=torch.float64)
                     for g in gens]).requires_grad_()
    B = torch.stack([torch.randn(n, m, generator=g, dtype=torch.float64) for g in gens]).requires_grad_()
    opt = torch.optim.RMSprop([A, B], lr=1e-2)
    history = {"imitation": [], "model": []}
    k = len(seeds)
    for _ in progress(range(iterations), f"{loss_kind}, seeds {seeds[0]}-{seeds[-1]}"):
        x0 = torch.cat([torch.randn(32, n, generator=g, dtype=torch.float64) for g in gens])
        with torch.no_grad():
            x_expert, u_expert = layer(**expert, x0=x0)
        x, u = layer(A=A.repeat_interleave(32, 0), B=B.repeat_interleave(32, 0), p=expert["p"], x0=x0)
        per_seed = ((u - u_expert) ** 2).reshape(k, -1).mean(-1)
        if loss_kind == "trajectory":
            per_seed = per_seed + ((x - x_expert) ** 2).reshape(k, -1).mean(-1)
        opt.zero_grad()
        per_seed.sum().backward()
        opt.step()
        history["imitation"].append(per_seed.detach())
        model_loss = ((A - expert["A"]) ** 2).mean((1, 2)) + ((B - expert["B"]) ** 2).mean((1, 2))
        history["model"].append(model_loss.detach())
    return {name: torch.stack(h, 1) for name, h in history.items()}  # (seeds, iterations)


def main() -> None:
    args = arguments(__doc__)
    iterations = 150 if args.quick else 3000
    kinds = ["controls"] if args.quick else list(LOSSES)
    layer = imitation_problem().compile().to_torch()
    g = torch.Generator().manual_seed(0)
    expert = {"A": torch.eye(3, dtype=torch.float64) + 0.2 * torch.randn(3, 3, generator=g, dtype=torch.float64),
              "B": torch.randn(3, 3, generator=g, dtype=torch.float64),
              "p": torch.randn(6, generator=g, dtype=torch.float64)}
    seeds = list(range(1, 9))
    runs = {}
    for kind in kinds:
        history = train(layer, expert, kind, seeds, iterations)
        runs.update({(kind, s): {name: h[i].tolist() for name, h in history.items()} for i, s in enumerate(seeds)})
    out = Path(args.out)
    rows = [[LOSSES[kind], seed, f"{h['imitation'][0]:.2e}", f"{h['imitation'][-1]:.2e}", f"{h['model'][0]:.2e}",
             f"{h['model'][-1]:.2e}", "yes" if h["model"][-1] < 1e-3 else "no"] for (kind, seed), h in runs.items()]
    recovered = {kind: sum(r[-1] == "yes" for r in rows if r[0] == LOSSES[kind]) for kind in kinds}
    write_table(out / "lqr_imitation.md",
                ["imitation loss on", "seed", "imitation loss (start)", "imitation loss (end)", "model loss (start)",
                 "model loss (end)", "recovered (A, B)"], rows,
                f"LQR imitation, {iterations} iterations, batches of 32; recovered (model loss < 1e-3): "
                + ", ".join(f"{LOSSES[k]} {v} of 8" for k, v in recovered.items()))
    plt = pyplot()
    if plt:
        fig, axes = plt.subplots(len(kinds), 2, figsize=(10, 3.5 * len(kinds)), squeeze=False)
        for row, kind in zip(axes, kinds):
            for seed in range(1, 9):
                h = runs[(kind, seed)]
                row[0].semilogy(h["imitation"], lw=1)
                row[1].semilogy(h["model"], lw=1, label=f"seed {seed}")
            row[0].set(xlabel="iteration", title=f"imitation loss ({LOSSES[kind]})")
            row[1].set(xlabel="iteration", title="model loss mean (A - A*)^2 + mean (B - B*)^2")
        axes[0][1].legend(fontsize=7)
        save_figure(fig, out / "lqr_imitation.png")


if __name__ == "__main__":
    main()
