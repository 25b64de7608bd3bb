"""Imitation from observations with an MPC layer: cartpole swing-up (the Differentiable
Implicit Layers paper, section 3.2, Table 2, Figure 3, Algorithm 2).

An expert swings a cartpole up by random-shooting MPC (horizon 10, 1000 particles) on the
true system; we see only its states, never its controls. Two students learn from them:

- **MPC (ours)**: a neural dynamics model h, fitted to (x, u, x') triplets with x from the
  expert's states, u uniform in the force bounds and x' from querying the true system, and
  a learned goal cost ||position(x) - goal||^2 (position = (cart x, cos th, sin th)). The
  student's policy is the first control of the MPC problem over h and that cost, solved by
  diffcontrol's ilqr layer; the goal is trained so that h, driven by that control, predicts
  the expert's next state (the gradient flows back through the MPC solution implicitly). The
  horizon grows from 1 to 10 during training, as in the paper.
- **BC**: behavioural cloning of a policy network pi(x), trained the same way (the
  predicted control is mapped to the next state through h; MSE to the expert's next state).

Both are rolled out in closed loop on the true cartpole from 50 initial states drawn as the
expert's were (low variance) and from a wider distribution (high variance), and scored by
the task's cost, summed over 40 steps.

The system is the PILCO cartpole of the paper's setup (pole 0.6 m, cart 0.5 kg, pole 0.5 kg,
friction 0.1, dt 0.1 s, force in [-10, 10] N, th = 0 hanging down), integrated by RK4; the
cost is PILCO's saturating distance of the pole's tip to the upright target,
1 - exp(-d^2 / (2 * 0.25^2)), per step.

    python examples/cartpole_from_observations.py            # 100 trajectories, 300 steps, 3 runs (~20 min)
    python examples/cartpole_from_observations.py --quick    # 24 trajectories, 30 steps, 1 run (< 1 min)
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _common import arguments, progress, pyplot, save_figure, write_table

import diffcontrol as dc

POLE, CART_MASS, POLE_MASS, FRICTION, GRAVITY = 0.6, 0.5, 0.5, 0.1, 9.82
DT, FORCE, EPISODE = 0.1, 10.0, 40
LOW_STD, HIGH_STD = 0.2, 0.5  # initial states ~ N(0, std^2 I): the expert's data (0.04 I) and the wider test
EXPERT, BC, MPC = "expert (random shooting)", "BC", "MPC, learned dynamics and goal (ours)"
SOLVER = dict(max_iter=50, tol=1e-6)  # the MPC layer's ilqr options
OBS = 5  # observation (x, x_dot, cos th, sin th, th_dot)


# ----------------------------------------------------------------------------- true system
def _derivative(s: torch.Tensor, force: torch.Tensor) -> torch.Tensor:
    """PILCO's cartpole ODE, s = (x, x_dot, th, th_dot) (..., 4), force (...,) -> ds/dt."""
    x_dot, th, th_dot = s[..., 1], s[..., 2], s[..., 3]
    sin, cos = th.sin(), th.cos()
    denom = 4 * (CART_MASS + POLE_MASS) - 3 * POLE_MASS * cos ** 2
    x_acc = (2 * POLE_MASS * POLE * th_dot ** 2 * sin + 3 * POLE_MASS * GRAVITY * sin * cos
             + 4 * force - 4 * FRICTION * x_dot) / denom
    th_acc = (-3 * POLE_MASS * POLE * th_dot ** 2 * sin * cos - 6 * (CART_MASS + POLE_MASS) * GRAVITY * sin
              - 6 * (force - FRICTION * x_dot) * cos) / (POLE * denom)
    return torch.stack([x_dot, x_acc, th_dot, th_acc], -1)


def true_step(s: torch.Tensor, u: torch.Tensor, substeps: int = 2) -> torch.Tensor:
    """One 0.1 s step of the true system (RK4, zero-order hold): s (..., 4), u (..., 1)."""
    force, h = u[..., 0].clamp(-FORCE, FORCE), DT / substeps
    for _ in range(substeps):
        k1 = _derivative(s, force)
        k2 = _derivative(s + h / 2 * k1, force)
        k3 = _derivative(s + h / 2 * k2, force)
        k4 = _derivative(s + h * k3, force)
        s = s + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return s


def task_cost(s: torch.Tensor) -> torch.Tensor:
    """PILCO's saturating cost of the pole's tip (x + l sin th, -l cos th) against the upright
    target (0, l): 1 - exp(-d^2 / (2 * 0.25^2)), s (..., 4) -> (...)."""
    d2 = (s[..., 0] + POLE * s[..., 2].sin()) ** 2 + (POLE + POLE * s[..., 2].cos()) ** 2
    return 1 - torch.exp(-d2 / (2 * 0.25 ** 2))


def observe(s: torch.Tensor) -> torch.Tensor:
    """What the students see: (x, x_dot, cos th, sin th, th_dot), (..., 4) -> (..., 5)."""
    return torch.stack([s[..., 0], s[..., 1], s[..., 2].cos(), s[..., 2].sin(), s[..., 3]], -1)


def random_shooting_expert(particles: int, horizon: int = 10, seed: int = 0):
    """The expert: at each step, the first control of the best of ``particles`` uniformly random
    control sequences, scored by the task cost on the true system. state (B, 4) -> u (B, 1)."""
    gen = torch.Generator().manual_seed(seed)

    def act(s: torch.Tensor) -> torch.Tensor:
        b = s.shape[0]
        plans = (2 * torch.rand(b, particles, horizon, 1, generator=gen, dtype=s.dtype) - 1) * FORCE
        z, total = s[:, None].expand(b, particles, 4), 0.0
        for k in range(horizon):
            z = true_step(z, plans[:, :, k])
            total = total + task_cost(z)
        return plans[torch.arange(b), total.argmin(1), 0]

    return act


def rollout(act, s0: torch.Tensor) -> torch.Tensor:
    """Closed loop on the true system for EPISODE steps: s0 (B, 4) -> states (B, EPISODE + 1, 4)."""
    states = [s0]
    for _ in range(EPISODE):
        states.append(true_step(states[-1], act(states[-1])))
    return torch.stack(states, 1)


# ----------------------------------------------------------------------------- students
class NeuralDynamics(torch.nn.Module):
    """The students' model of the next observation, h(x, u) = x + MLP([x; u]). ``forward`` is the
    increment, z = [x; u] (..., 6) -> (..., 5), as the MPC problem's dc.Function calls it;
    ``predict`` is h. Inputs are scaled to order one; nothing of the physics is built in."""

    def __init__(self, width: int = 128):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(OBS + 1, width), torch.nn.Tanh(),
                                       torch.nn.Linear(width, width), torch.nn.Tanh(), torch.nn.Linear(width, OBS))
        self.register_buffer("scale", torch.tensor([1.0, 0.2, 1.0, 1.0, 0.1, 1 / FORCE]))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z * self.scale)

    def predict(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """h(x, u): x (..., 5), u (..., 1) -> the next observation (..., 5)."""
        return x + self(torch.cat([x, u], -1))


def fit_dynamics(model: NeuralDynamics, states: torch.Tensor, steps: int, seed: int) -> float:
    """Algorithm 2's train_h: x from the expert's states, u ~ U(-F, F), x' by querying the true
    system; Adam on the next-observation MSE. Returns the MSE of the last 50 steps."""
    gen = torch.Generator().manual_seed(seed)
    flat = states[:, :-1].reshape(-1, 4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    recent = []
    for _ in progress(range(steps), "dynamics"):
        s = flat[torch.randint(0, flat.shape[0], (256,), generator=gen)]
        u = (2 * torch.rand(256, 1, generator=gen, dtype=s.dtype) - 1) * FORCE
        x, x_next = observe(s), observe(true_step(s, u))
        loss = ((model.predict(x, u) - x_next) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        recent = (recent + [loss.item()])[-50:]
    return float(np.mean(recent))


def goal_mpc(dynamics: dc.Function, horizon: int):
    """The student's MPC problem: min sum_t ||position(x_t) - goal||^2 + 1e-3 u_t^2 over the
    learned dynamics, force in [-F, F]; parameters ``goal`` (3,) and ``x0`` (5,)."""
    x, u = dc.State(OBS, name="x"), dc.Control(1, name="u")
    goal, x0 = dc.Parameter(3, name="goal"), dc.Parameter(OBS, name="x0")
    position = dc.stack([x[0], x[2], x[3]])  # cart position, cos th, sin th
    return dc.ControlProblem(
        dynamics=x.next == x + dynamics(dc.concat([x, u])),
        cost=dc.sum_squares(position - goal) + 1e-3 * dc.sum_squares(u),
        terminal_cost=dc.sum_squares(position - goal), horizon=horizon, initial_state=x0,
        constraints=[-FORCE <= u, u <= FORCE])


def train_goal(model: NeuralDynamics, expert_obs: torch.Tensor, horizon: int, steps: int, seed: int):
    """Algorithm 2's train_c: sample expert transitions (x, x'), solve the MPC from x, drive h
    with its first control and step the goal on the MSE to x'. The horizon grows from 1 to
    ``horizon`` over the first half of training. Returns the goal, the final horizon's layer,
    the loss per step and counts of the solves that hit the iteration cap and of the steps where
    some example's gradient fell back to Gauss-Newton (no strict local minimum)."""
    gen = torch.Generator().manual_seed(seed)
    goal = torch.zeros(3, dtype=expert_obs.dtype, requires_grad=True)  # uninformed: no preferred pose
    opt = torch.optim.Adam([goal], lr=5e-2)
    f = dc.Function(model, OBS)
    layers, losses = {}, []
    health = {"solves": 0, "unconverged": 0, "fallback steps": 0}
    n_traj, n_steps = expert_obs.shape[0], expert_obs.shape[1] - 1
    for step in progress(range(steps), "goal (MPC layer)"):
        h = min(horizon, 1 + (2 * horizon * step) // steps)
        if h not in layers:
            layers[h] = goal_mpc(f, h).compile(**SOLVER).to_torch()
        i = torch.randint(0, n_traj, (32,), generator=gen)
        k = torch.randint(0, n_steps, (32,), generator=gen)
        x, x_next = expert_obs[i, k], expert_obs[i, k + 1]
        with warnings.catch_warnings(record=True) as caught:  # counted and reported, not printed
            warnings.simplefilter("always")
            _, u, info = layers[h](goal=goal, x0=x, return_info=True)
            loss = ((model.predict(x, u[:, 0]) - x_next) ** 2).mean()
            opt.zero_grad()
            loss.backward()
        opt.step()
        losses.append(loss.item())
        health["solves"] += u.shape[0]
        health["unconverged"] += int((~info.converged).sum())
        health["fallback steps"] += any(issubclass(w.category, dc.GradientFallbackWarning) for w in caught)
    return goal.detach(), layers[horizon], losses, health


def mpc_policy(layer, goal: torch.Tensor):
    """The MPC student in closed loop (receding horizon, warm-started): state (B, 4) -> u (B, 1).
    Solves that stop at the iteration cap are not reported: the episode's cost says how well
    the controller does."""
    act = dc.MPCPolicy(layer, goal=goal)

    def act_on_state(s: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dc.NotConvergedWarning)
            return act(observe(s))

    return act_on_state


def behavioural_cloning(model: NeuralDynamics, expert_obs: torch.Tensor, steps: int, seed: int):
    """BC from observations: pi(x) = F tanh(MLP(x)), trained so that h(x, pi(x)) predicts the
    expert's next observation (h frozen). Returns the policy on true states (B, 4) -> (B, 1)
    and the loss per step."""
    torch.manual_seed(seed)
    policy = torch.nn.Sequential(torch.nn.Linear(OBS, 128), torch.nn.Tanh(), torch.nn.Linear(128, 128),
                                 torch.nn.Tanh(), torch.nn.Linear(128, 1)).to(expert_obs.dtype)
    opt = torch.optim.Adam(policy.parameters(), lr=1e-3)
    x, x_next = expert_obs[:, :-1].reshape(-1, OBS), expert_obs[:, 1:].reshape(-1, OBS)
    losses = []
    for _ in progress(range(steps), "BC"):
        i = torch.randint(0, x.shape[0], (256,))
        u = FORCE * torch.tanh(policy(x[i] * model.scale[:OBS]))
        loss = ((model.predict(x[i], u) - x_next[i]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())

    def act(s: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            o = observe(s)
            return FORCE * torch.tanh(policy(o * model.scale[:OBS]))

    return act, losses


# ----------------------------------------------------------------------------- experiment
def one_run(run: int, sizes: dict) -> dict:
    """Data, students and closed-loop scores of one run (seeded by ``run``). Returns each
    controller's mean episode cost on the low- and high-variance test states, the students'
    training losses, and test trajectories for the figure."""
    gen = torch.Generator().manual_seed(run)
    torch.manual_seed(run)
    expert = random_shooting_expert(sizes["particles"], seed=run)
    demos = rollout(expert, LOW_STD * torch.randn(sizes["trajectories"], 4, generator=gen, dtype=torch.float64))
    expert_obs = observe(demos)

    model = NeuralDynamics().double()
    dynamics_mse = fit_dynamics(model, demos, sizes["dynamics_steps"], seed=run)
    for p in model.parameters():  # the goal's and BC's steps train only their own parameters
        p.requires_grad_(False)
    started = time.perf_counter()
    goal, layer, losses, health = train_goal(model, expert_obs, sizes["horizon"], sizes["goal_steps"], seed=run)
    health["seconds"] = time.perf_counter() - started
    bc, bc_losses = behavioural_cloning(model, expert_obs, sizes["bc_steps"], run)
    controllers = {EXPERT: expert, BC: bc, MPC: None}
    scores, trajectories = {}, {}
    for setting, std in (("low", LOW_STD), ("high", HIGH_STD)):
        s0 = std * torch.randn(sizes["tests"], 4, generator=gen, dtype=torch.float64)
        for name, act in controllers.items():
            states = rollout(act or mpc_policy(layer, goal), s0)  # a fresh MPC warm start per setting
            scores[name, setting] = float(task_cost(states[:, 1:]).sum(1).mean())
            trajectories[name, setting] = states
    print(f"\nrun {run}: goal trained in {health['seconds']:.0f} s; "
          + ", ".join(f"{name} {setting} {v:.1f}" for (name, setting), v in scores.items()))
    return {"scores": scores, "losses": {MPC: losses, BC: bc_losses}, "goal": goal, "dynamics_mse": dynamics_mse,
            "trajectories": trajectories, "demos": demos, "health": health}


def mean_and_error(values: list[float], fmt: str = ".1f") -> str:
    """'mean ± standard error' over runs (just the mean for one run)."""
    if len(values) == 1:
        return f"{values[0]:{fmt}}"
    return f"{np.mean(values):{fmt}} ± {np.std(values, ddof=1) / math.sqrt(len(values)):{fmt}}"


def training_loss(results: list[dict], name: str) -> str:
    """A student's next-observation MSE: first step -> mean of the last 10 steps."""
    if name not in results[0]["losses"]:
        return "-"
    return (mean_and_error([r["losses"][name][0] for r in results], ".2e") + " -> "
            + mean_and_error([float(np.mean(r["losses"][name][-10:])) for r in results], ".2e"))


def main() -> None:
    args = arguments(__doc__)
    sizes = (dict(trajectories=24, particles=300, dynamics_steps=800, goal_steps=30, bc_steps=400, tests=16,
                  horizon=6, runs=1) if args.quick else
             dict(trajectories=100, particles=1000, dynamics_steps=3000, goal_steps=300, bc_steps=3000, tests=50,
                  horizon=10, runs=3))
    torch.set_default_dtype(torch.float64)
    results = [one_run(run, sizes) for run in progress(range(sizes["runs"]), "runs")]
    paper = {EXPERT: ("9.2 ± 0.0", "9.3 ± 0.0"), BC: ("14.6 ± 0.6", "18.4 ± 1.4"), MPC: ("13.7 ± 0.4", "14.7 ± 1.9")}
    rows = [[name, mean_and_error([r["scores"][name, "low"] for r in results]),
             mean_and_error([r["scores"][name, "high"] for r in results]), *paper[name],
             training_loss(results, name)] for name in (EXPERT, BC, MPC)]
    health = {k: sum(r["health"][k] for r in results) for k in results[0]["health"]}
    goals = ", ".join("(" + ", ".join(f"{v:.2f}" for v in r["goal"].tolist()) + ")" for r in results)
    out = Path(args.out)
    write_table(out / "cartpole_from_observations.md",
                ["controller", f"episode cost, low variance N(0, {LOW_STD ** 2:g} I)",
                 f"episode cost, high variance N(0, {HIGH_STD ** 2:g} I)", "paper (low)", "paper (high)",
                 "training loss (first step -> last 10 steps)"], rows,
                f"Cartpole swing-up imitated from observations: {sizes['trajectories']} expert trajectories of "
                f"{EPISODE} steps, {sizes['tests']} test initial states per setting, {sizes['runs']} run(s) "
                f"(mean ± standard error over runs); MPC horizon {sizes['horizon']}; "
                f"learned goals (x, cos th, sin th): {goals} (upright: (0, -1, 0)); "
                f"dynamics MSE {np.mean([r['dynamics_mse'] for r in results]):.1e}; "
                f"goal training: {health['unconverged']} of {health['solves']} MPC solves at the iteration cap, "
                f"{health['fallback steps']} of {sizes['goal_steps'] * sizes['runs']} steps with a Gauss-Newton "
                f"fallback gradient for some example")
    plt = pyplot()
    if plt:
        first = results[0]
        fig, axes = plt.subplots(1, 4, figsize=(16, 3.5))
        panels = [("expert's demonstrations (low variance)", first["demos"]),
                  ("BC, high variance", first["trajectories"][BC, "high"]),
                  ("MPC (ours), high variance", first["trajectories"][MPC, "high"])]
        for ax, (title, states) in zip(axes, panels):
            t = DT * np.arange(states.shape[1])
            ax.plot(t, -states[:, :, 2].cos().T.numpy(), lw=0.7, alpha=0.6)  # continuous, unlike th mod 2 pi
            ax.axhline(1.0, color="k", ls="--", lw=1)
            ax.set(title=title, xlabel="time (s)", ylabel="pole height -cos th (upright: 1)")
        for r in results:
            axes[3].semilogy(r["losses"][MPC], lw=0.8)
        axes[3].set(title="MPC goal training loss (MSE)", xlabel="step")
        save_figure(fig, out / "cartpole_from_observations.png")


if __name__ == "__main__":
    main()
