"""Mass-spring-damper, infinite-horizon LQR (Differentiable Implicit Layers, Appendix C).

The expert applies u = -K x, with K = (R + B'SB)^-1 B'SA and S the stabilising solution of
the discrete algebraic Riccati equation (DARE)

    A'SA - S - (A'SB)(R + B'SB)^-1 (B'SA) + Q = 0.

The learner sees only the expert's controls along one 50-step trajectory and learns A. As in
the paper, the DARE becomes an implicit layer, S(A) = argmin_S ||DARE(S; A)||^2 (ift_cg
backend; scipy solves the DARE, its solution warm-starts the layer, which confirms it and
differentiates it by the implicit function theorem). Two independent references train
beside it from the same initialisations:

- analytic: dS/dA from the differentiated DARE (East et al., 2020), one Stein equation
  S-bar - Acl S-bar Acl' = dL/dS per step, solved by scipy;
- unrolled: 100 Riccati iterations S <- Q + A'SA - A'SB(R + B'SB)^-1 B'SA, differentiated
  by autograd (the paper's "naive" implementation).

The paper's setup: m = k = 1, c = 1, Q = I, R = 2, x0 = (0, 3); A initialised at the truth
plus U[-0.5, 0.5] per entry; each step predicts 6 controls ahead from a random point of the
trajectory; 3000 steps, five initialisations (batched: one layer call trains all five).

    python examples/mass_spring_damper.py            # 3000 steps (~3 min on 2 cores)
    python examples/mass_spring_damper.py --quick    # 300 steps
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from _common import arguments, progress, pyplot, save_figure, write_table

import diffcontrol as dc

B_NP, Q_NP, R = np.array([[0.0], [1.0]]), np.eye(2), 2.0
HORIZON, DATA, SEEDS, UNROLL = 6, 50, 5, 100


def true_dynamics(m: float = 1.0, k: float = 1.0, c: float = 1.0) -> torch.Tensor:
    return torch.tensor([[0.0, 1.0], [-k / m, -c / m]], dtype=torch.float64)


def dare_layer():
    """S(A) = argmin_S ||A'SA - S - (A'SB)(R + B'SB)^-1 (B'SA) + Q||_F^2 as a torch layer."""
    S, A = dc.Variable((2, 2), name="S"), dc.Parameter((2, 2), name="A")
    SB = S @ B_NP
    residual = A.T @ S @ A - S - (A.T @ SB) @ (SB.T @ A) / (R + B_NP.T @ SB) + Q_NP
    compiled = dc.Problem(dc.Minimize(dc.sum_squares(residual))).compile(tol=1e-9)
    print(compiled.explain(), "\n")
    return compiled.to_torch()


def scipy_dare(A: torch.Tensor) -> torch.Tensor:
    """The stabilising DARE solution of every A in a (batch, 2, 2) tensor, by scipy."""
    return torch.stack([torch.from_numpy(scipy.linalg.solve_discrete_are(a, B_NP, Q_NP, R))
                        for a in A.detach().numpy()])


class AnalyticDare(torch.autograd.Function):
    """S(A) with the analytic derivative of East et al. (2020): for the stabilising S and
    Acl = A - BK, dS = Acl' dS Acl + dA' S Acl + Acl' S dA; the adjoint of dL/dS is the
    Stein equation Y = Acl Y Acl' + dL/dS, and dL/dA = S Acl (Y + Y')."""

    @staticmethod
    def forward(ctx, A):
        S = scipy_dare(A)
        ctx.save_for_backward(A, S)
        return S

    @staticmethod
    def backward(ctx, grad_S):
        A, S = ctx.saved_tensors
        B = torch.from_numpy(B_NP)
        grads = []
        for a, s, g in zip(A, S, grad_S):
            closed_loop = a - B @ gain(a, s)
            Y = torch.from_numpy(scipy.linalg.solve_discrete_lyapunov(closed_loop.numpy(), g.numpy()))
            grads.append(s @ closed_loop @ (Y + Y.T))
        return torch.stack(grads)


def unrolled_dare(A: torch.Tensor, iterations: int = UNROLL) -> torch.Tensor:
    """S(A) by value iteration on the Riccati map from S = Q, differentiated by autograd.
    Converges linearly at the rate of the closed loop's spectral radius squared."""
    B, Q = torch.from_numpy(B_NP), torch.from_numpy(Q_NP)
    S = Q.expand_as(A)
    for _ in range(iterations):
        SA, SB = S @ A, S @ B
        S = Q + A.mT @ SA - (A.mT @ SB) @ (SB.mT @ A) / (R + B.T @ SB)
        # keep S symmetric: for an unstable A, roundoff's antisymmetric part grows like A'EA
        S = (S + S.mT) / 2
    return S


def gain(A: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """K = (R + B'SB)^-1 B'SA, shape (..., 1, 2)."""
    B = torch.from_numpy(B_NP)
    return (B.T @ S @ A) / (R + B.T @ S @ B)


def rollout(A: torch.Tensor, K: torch.Tensor, x0: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """States (..., steps+1, 2) and controls (..., steps) of x' = Ax + Bu, u = -Kx."""
    B = torch.from_numpy(B_NP)
    xs, us = [x0], []
    for _ in range(steps):
        u = -(K @ xs[-1][..., None])[..., 0]
        us.append(u[..., 0])
        xs.append((A @ xs[-1][..., None])[..., 0] + (B @ u[..., None])[..., 0])
    return torch.stack(xs, -2), torch.stack(us, -1)


def train(solve_dare, A_init, xs_expert, us_expert, steps: int, desc: str) -> dict:
    """Adam on the imitation loss of 6-step control predictions; all initialisations at once."""
    A = A_init.clone().requires_grad_()
    opt = torch.optim.Adam([A], lr=1e-2)
    rng = np.random.default_rng(0)  # the same start points for every method
    history = {"imitation": [], "model": [], "seconds": 0.0}
    for _ in progress(range(steps), desc):
        start = int(rng.integers(0, DATA - HORIZON + 1))
        began = time.perf_counter()
        S = solve_dare(A)
        _, us = rollout(A, gain(A, S), xs_expert[start].expand(len(A), 2), HORIZON)
        losses = ((us - us_expert[start:start + HORIZON]) ** 2).sum(-1)
        opt.zero_grad()
        losses.sum().backward()  # initialisations are independent: one backward trains all
        history["seconds"] += time.perf_counter() - began
        history.setdefault("first_grad", A.grad.clone())  # compared across methods
        history["imitation"].append(losses.detach())
        history["model"].append(((A.detach() - true_dynamics()) ** 2).sum((-2, -1)))
        opt.step()
    history["A"] = A.detach()
    return {k: torch.stack(v) if isinstance(v, list) else v for k, v in history.items()}


def main() -> None:
    args = arguments(__doc__)
    steps = 300 if args.quick else 3000
    A_true = true_dynamics()
    xs_expert, us_expert = rollout(A_true, gain(A_true, scipy_dare(A_true[None])[0]),
                                   torch.tensor([0.0, 3.0], dtype=torch.float64), DATA)
    g = torch.Generator().manual_seed(0)
    A_init = A_true + torch.rand(SEEDS, 2, 2, generator=g, dtype=torch.float64) - 0.5

    layer = dare_layer()

    def implicit(A):
        (S,) = layer(A=A, y_init=(scipy_dare(A),))
        return S

    methods = {"IFT-CG layer (ours)": implicit, "analytic (East et al.)": AnalyticDare.apply,
               f"unrolled ({UNROLL} Riccati iterations)": unrolled_dare}
    runs = {name: train(solve, A_init, xs_expert, us_expert, steps, name.split()[0])
            for name, solve in methods.items()}
    ours, analytic = runs["IFT-CG layer (ours)"], runs["analytic (East et al.)"]
    # the same start points and the same initialisation: the first gradients must agree
    first_gap = ((ours["first_grad"] - analytic["first_grad"]).norm() / analytic["first_grad"].norm()).item()
    final_gap = (ours["model"][-1] - analytic["model"][-1]).abs().max().item()

    def imitation(A):  # 6-step control predictions from every point of the trajectory: (seeds,)
        starts = torch.arange(DATA - HORIZON + 1)
        with torch.no_grad():
            _, us = rollout(A, gain(A, scipy_dare(A)), xs_expert[starts, None].expand(-1, SEEDS, 2), HORIZON)
        expert = us_expert[starts[:, None] + torch.arange(HORIZON)]
        return ((us - expert[:, None]) ** 2).sum(-1).mean(0)

    rows = []
    for name, h in runs.items():
        start, end = imitation(A_init), imitation(h["A"])
        model = h["model"][-1]
        rows.append([name, f"{start.mean():.2e}", f"{end.mean():.2e} ± {end.std():.1e}",
                     f"{h['model'][0].mean():.2e}", f"{model.mean():.2e} ± {model.std():.1e}",
                     f"{1e3 * h['seconds'] / steps:.2f}"])
    out = Path(args.out)
    write_table(out / "mass_spring_damper.md",
                ["method", "imitation loss (start)", "imitation loss (end)", "model loss (start)",
                 "model loss (end)", "ms per step"], rows,
                f"Mass-spring-damper DARE imitation, {steps} steps, {SEEDS} initialisations (mean ± std); "
                f"first gradient IFT-CG vs analytic: relative gap {first_gap:.1e}; final model loss "
                f"IFT-CG vs analytic: largest gap {final_gap:.1e}")
    plt = pyplot()
    if plt:
        fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.5))
        window = max(steps // 30, 1)  # one random start point per step: smooth the imitation loss
        for (name, h), style in zip(runs.items(), ["-", "--", ":"]):
            smoothed = h["imitation"].T.unfold(-1, window, 1).mean(-1).T
            for series, axis in ((h["model"], ax), (smoothed, bx)):
                line, = axis.semilogy(series.median(1).values, style, label=name)
                axis.fill_between(range(len(series)), series.min(1).values, series.max(1).values,
                                  alpha=0.12, color=line.get_color())
        ax.set(xlabel="step", title="model loss ||A - A*||^2")
        bx.set(xlabel="step", title=f"imitation loss (6 controls, mean of {window} steps)")
        ax.legend(fontsize=8)
        fig.suptitle(f"median and range over {SEEDS} initialisations", fontsize=9)
        save_figure(fig, out / "mass_spring_damper.png")


if __name__ == "__main__":
    main()
