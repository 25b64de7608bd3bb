"""The demo: LQR imitation learning (the Differentiable MPC paper, section 5.2), quick.

An expert LQR controller with dynamics (A*, B*), box [-1, 1] on the controls,
n = m = 3, horizon 5. A learner with the same cost learns (A, B) from the
expert's *controls only*, by differentiating through the lqr layer (RMSprop,
batches of 32 initial states). Run it with ``diffcontrol demo`` or
``python -m diffcontrol.demo``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import diffcontrol as dc


def imitation_problem(n: int = 3, m: int = 3, horizon: int = 5) -> dc.ControlProblem:
    x, u = dc.State(n, name="x"), dc.Control(m, name="u")
    A, B, x0 = dc.Parameter((n, n), name="A"), dc.Parameter((n, m), name="B"), dc.Parameter(n, name="x0")
    return dc.ControlProblem(dynamics=x.next == A @ x + B @ u,
                             cost=dc.sum_squares(x) + dc.sum_squares(u),
                             horizon=horizon, initial_state=x0,
                             constraints=[-1 <= u, u <= 1])


def run(iterations: int = 300, out: str = "demo_output", seed: int = 0) -> dict:
    """Train, print the progress, save the loss table and figure; returns the loss history."""
    torch.manual_seed(seed)
    dtype = torch.float64
    n = m = 3
    prob = imitation_problem(n, m)
    print(prob.explain(), "\n")
    layer = prob.compile().to_torch()

    A_true = torch.eye(n, dtype=dtype) + 0.2 * torch.randn(n, n, dtype=dtype)
    B_true = torch.randn(n, m, dtype=dtype)
    A_hat = (torch.eye(n, dtype=dtype) + 0.2 * torch.randn(n, n, dtype=dtype)).requires_grad_()
    B_hat = torch.randn(n, m, dtype=dtype).requires_grad_()
    opt = torch.optim.RMSprop([A_hat, B_hat], lr=1e-2)
    history = {"iteration": [], "imitation_loss": [], "model_loss": []}
    for it in range(iterations):
        x0 = 3 * torch.randn(32, n, dtype=dtype)
        with torch.no_grad():
            _, u_expert = layer(A=A_true, B=B_true, x0=x0)
        _, u_learner = layer(A=A_hat, B=B_hat, x0=x0)
        loss = ((u_learner - u_expert) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        model_loss = float(((A_hat - A_true) ** 2).mean().detach() + ((B_hat - B_true) ** 2).mean().detach())
        history["iteration"].append(it)
        history["imitation_loss"].append(float(loss.detach()))
        history["model_loss"].append(model_loss)
        if it % max(iterations // 10, 1) == 0 or it == iterations - 1:
            print(f"iteration {it:4d}   imitation loss {history['imitation_loss'][-1]:.3e}   "
                  f"model loss {model_loss:.3e}", flush=True)

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    table = folder / "lqr_imitation.md"
    table.write_text("| iteration | imitation loss | model loss |\n|---:|---:|---:|\n" + "".join(
        f"| {i} | {a:.3e} | {b:.3e} |\n" for i, a, b in zip(*history.values()) if i % 10 == 0 or i == iterations - 1))
    print(f"\nwrote {table}")
    figure = _plot(history, folder / "lqr_imitation.png")
    if figure:
        print(f"wrote {figure}")
    return history


def _plot(history: dict, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'diffcontrol[demo]'); no figure written")
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.semilogy(history["iteration"], history["imitation_loss"], label="imitation loss (controls)")
    ax.semilogy(history["iteration"], history["model_loss"], label="model loss (A, B)")
    ax.set_xlabel("iteration")
    ax.set_title("LQR imitation through the lqr layer")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="LQR imitation demo")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--out", default="demo_output")
    args = parser.parse_args()
    run(args.iterations, args.out)
