"""Non-realizable pendulum imitation (the Differentiable MPC paper, section 5.4, Figure 5).

The expert MPC runs on a pendulum with viscous damping d and a steady wind that tilts its
effective gravity by the angle b (``dc.models.pendulum(damping_and_wind=True)``). The
learners' model has neither term, so no (g, m, l) reproduces the expert:

- **sysid** fits (g, m, l) to the expert's state transitions (x_t, u_t) -> x_(t+1);
- **mpc.dx** learns (g, m, l) from the expert's controls only, through the ilqr layer.

Both are scored on held-out initial states by the imitation loss (squared control error of
the learner's MPC against the expert's) and by the transition loss (next-state error of
their model on the expert's transitions). The paper's finding: sysid is slightly better at
the transitions but mpc.dx, which optimises what is asked of it, imitates better.

    python examples/pendulum_nonrealizable.py            # horizon 20, 64 trajectories, 200 steps (~8 min)
    python examples/pendulum_nonrealizable.py --quick    # horizon 10, 32 trajectories, 30 steps (< 1 min)
"""

from __future__ import annotations

from pathlib import Path

import torch
from _common import arguments, pyplot, save_figure, write_table
from _imitation import imitation_loss
from _pendulum import sysid, transition_loss

import diffcontrol as dc
from diffcontrol.demo import TRUE, expert_data, train_mpc_dx

DAMPING, WIND = 1.0, 0.3  # the expert's d (1/s) and b (rad)


def main() -> None:
    args = arguments(__doc__)
    horizon, size, tests, steps, log_every = (10, 32, 32, 30, 10) if args.quick else (20, 64, 64, 200, 20)
    expert = dc.models.pendulum(horizon=horizon, damping_and_wind=True)
    expert_layer = expert.problem.compile(max_iter=300).to_torch()
    train = expert_data(expert, expert_layer, size, seed=0, d=DAMPING, b=WIND)
    test = expert_data(expert, expert_layer, tests, seed=1000, d=DAMPING, b=WIND)

    learner = dc.models.pendulum(horizon=horizon)
    print(learner.problem.explain(), "\n")
    layer = learner.problem.compile(max_iter=300).to_torch()
    mpc_dx = train_mpc_dx(layer, train, test, steps, batch=16, seed=0, log_every=log_every, progress=True)
    histories = {"sysid": sysid(train, steps, seed=0, log_every=log_every),
                 "mpc.dx": [{k: torch.tensor(mpc_dx[k][i], dtype=torch.float64) for k in TRUE}
                            for i in range(len(mpc_dx["iteration"]))]}
    iterations = mpc_dx["iteration"]
    curves = {name: {"transition": [transition_loss(test, p) for p in history]} for name, history in histories.items()}
    curves["mpc.dx"]["imitation"] = mpc_dx["test_loss"]  # train_mpc_dx scored the same test set as it went
    curves["sysid"]["imitation"] = [imitation_loss(layer, test, {**p, **test["cost"]})
                                    for p in histories["sysid"]]

    rows = []
    for name, history in histories.items():
        final = history[-1]
        rows.append([name, f"{curves[name]['imitation'][0]:.3e}", f"{curves[name]['imitation'][-1]:.3e}",
                     f"{curves[name]['transition'][-1]:.3e}",
                     ", ".join(f"{k} {float(final[k]):.3f}" for k in TRUE)])
    out = Path(args.out)
    write_table(out / "pendulum_nonrealizable.md",
                ["method", "test imitation loss (after step 1)", "test imitation loss (end)",
                 "test transition loss (end)", "learned (g, m, l)"], rows,
                f"Non-realizable pendulum (expert damping d = {DAMPING}, wind b = {WIND} rad): horizon {horizon}, "
                f"{size} expert trajectories, {steps} steps")
    plt = pyplot()
    if plt:
        fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.5))
        for name in histories:
            ax.semilogy(iterations, curves[name]["imitation"], "o-", label=name)
            bx.semilogy(iterations, curves[name]["transition"], "o-", label=name)
        ax.set(xlabel="step", title="test imitation loss")
        bx.set(xlabel="step", title="test transition (next-state) loss")
        ax.legend()
        save_figure(fig, out / "pendulum_nonrealizable.png")


if __name__ == "__main__":
    main()
