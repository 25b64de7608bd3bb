"""Kepler's equation (Differentiable Implicit Layers, Figure 1): fit the eccentricity e so
that the eccentric anomaly E(e, M), defined implicitly by E - e sin E = M, hits targets.

E(e, M) = argmin_E (E - e sin E - M)^2 is an ift_cg layer; dE/de comes from the implicit
function theorem, checked here against the closed form sin E / (1 - e cos E). Targets are
made with a true e* = 0.6 at 16 mean anomalies M; gradient descent on the squared error
recovers e* from e = 0.1.

    python examples/kepler.py            # 300 steps
    python examples/kepler.py --quick    # 60 steps
"""

from __future__ import annotations

from pathlib import Path

import torch
from _common import arguments, progress, pyplot, save_figure, write_table

import diffcontrol as dc


def kepler_layer():
    E, e, M = dc.Variable(name="E"), dc.Parameter(name="e"), dc.Parameter(name="M")
    compiled = dc.Problem(dc.Minimize(dc.square(E - e * dc.sin(E) - M))).compile()
    print(compiled.explain(), "\n")
    return compiled.to_torch()


def main() -> None:
    args = arguments(__doc__)
    steps = 60 if args.quick else 300
    layer = kepler_layer()
    M = torch.linspace(0.2, 3.0, 16, dtype=torch.float64)
    e_true = torch.full_like(M, 0.6)
    with torch.no_grad():
        (E_target,) = layer(e=e_true, M=M)
    e = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([e], lr=0.02)
    rows, history, worst_gap = [], [], 0.0
    for step in progress(range(steps), "fit e"):
        (E,) = layer(e=e.expand_as(M), M=M)
        loss = ((E - E_target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        # the IFT gradient against the closed form dE/de = sin E / (1 - e cos E)
        Ed = E.detach()
        closed = (2 * (Ed - E_target) * torch.sin(Ed) / (1 - e.detach() * torch.cos(Ed))).mean()
        worst_gap = max(worst_gap, abs(float(e.grad - closed)) / (1e-12 + abs(float(closed))))
        history.append((step, loss.item(), e.item()))
        if step % max(steps // 6, 1) == 0 or step == steps - 1:
            rows.append([step, f"{loss.item():.3e}", f"{e.item():.5f}", f"{float(e.grad):.3e}", f"{float(closed):.3e}"])
        opt.step()
    out = Path(args.out)
    write_table(out / "kepler.md", ["step", "loss", "e", "dL/de (IFT)", "dL/de (closed form)"], rows,
                f"Kepler: fit e (true 0.6); largest relative gap IFT vs closed form {worst_gap:.1e}")
    plt = pyplot()
    if plt:
        fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.5))
        ax.semilogy([h[0] for h in history], [h[1] for h in history])
        ax.set(xlabel="step", title="squared error of E(e, M)")
        bx.plot([h[0] for h in history], [h[2] for h in history], label="e")
        bx.axhline(0.6, linestyle=":", label="true e")
        bx.set(xlabel="step", title="eccentricity")
        bx.legend()
        save_figure(fig, out / "kepler.png")


if __name__ == "__main__":
    main()
