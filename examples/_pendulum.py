"""What the pendulum examples share: the pendulum's transition in torch, the imitation task,
the sysid learner and rollouts of controllers in gymnasium's Pendulum-v1."""

from __future__ import annotations

import numpy as np
import torch
from _common import progress
from _imitation import Task, fit_transitions

import diffcontrol as dc
from diffcontrol.demo import TRUE, initial_states

DT = 0.05


def pendulum_step(x: torch.Tensor, u: torch.Tensor, g, m, l) -> torch.Tensor:
    """dc.models.pendulum's transition in torch, x (..., 3), u (..., 1) -> (..., 3); an
    independent transcription used by sysid's regression on the expert's transitions."""
    th, dth = torch.atan2(x[..., 1], x[..., 0]), x[..., 2]
    new_dth = dth + DT * (3.0 * g / (2.0 * l) * x[..., 1] + 3.0 * u[..., 0] / (m * l ** 2))
    new_th = th + DT * new_dth
    return torch.stack([new_th.cos(), new_th.sin(), new_dth], -1)


def transition_loss(data: dict, physical: dict) -> float:
    """Mean squared next-state error of the model ``physical`` on ``data``'s expert transitions."""
    with torch.no_grad():
        predicted = _step(data["x"][:, :-1], data["u"], physical)
        return float(((predicted - data["x"][:, 1:]) ** 2).mean())


def sysid(train: dict, steps: int, seed: int, log_every: int | None = None) -> list[dict]:
    """Fit g, m, l to the expert's transitions (x_t, u_t) -> x_(t+1) (from the same perturbed
    start as the demo's mpc.dx). Returns the parameters after the first step, every
    ``log_every``-th step and the last, as the demo's mpc.dx logs (the last entry: the fit)."""
    history = fit_transitions(_step, TRUE, train, steps, seed, log_every=log_every)
    return [physical for _, physical in history]


def _step(x: torch.Tensor, u: torch.Tensor, physical: dict) -> torch.Tensor:
    return pendulum_step(x, u, physical["g"], physical["m"], physical["l"])


# The learners' start: log g, m, l and log w perturbed by 0.2 N(0, 1). From the cartpole's 0.4
# every pendulum learner's start is worse than not acting (it swings some pendulums up the
# other way than the expert) and mpc.cost.dx settles on that do-nothing hedge; the paper does
# not give its perturbation (examples/README.md has the measurements).
START_SPREAD = 0.2


def pendulum_task(horizon: int) -> Task:
    """The pendulum imitation task: dc.models.pendulum with the true g, m, l."""
    model = dc.models.pendulum(horizon=horizon)
    return Task("pendulum", model, model.problem.compile(max_iter=300).to_torch(), dict(TRUE), _step, initial_states,
                ("cos th", "sin th", "th_dot", "u"), START_SPREAD)


def gym_returns(controllers: dict, episodes: int, steps: int) -> dict | None:
    """Each controller's mean and standard deviation of the episode return over ``episodes``
    runs of gymnasium's Pendulum-v1 (the same seeds for every controller), ``steps`` steps
    each; None where gymnasium is not installed. Pendulum-v1's dynamics are the model's (g 10,
    m 1, l 1, dt 0.05, torque in [-2, 2]) plus a speed clip at 8; its reward is
    -(th^2 + 0.1 th_dot^2 + 0.001 u^2)."""
    try:
        import gymnasium
    except ImportError:
        print("gymnasium is not installed (pip install gymnasium): no Pendulum-v1 rollouts")
        return None
    results = {}
    for name, make in controllers.items():
        envs = [gymnasium.make("Pendulum-v1") for _ in range(episodes)]
        obs = torch.tensor(np.stack([env.reset(seed=i)[0] for i, env in enumerate(envs)]), dtype=torch.float64)
        act, total = make(), np.zeros(episodes)
        for _ in progress(range(steps), f"Pendulum-v1, {name}"):
            u = act(obs).clamp(-2.0, 2.0).numpy()
            stepped = [env.step(u[i].astype(np.float32)) for i, env in enumerate(envs)]
            total += [s[1] for s in stepped]
            obs = torch.tensor(np.stack([s[0] for s in stepped]), dtype=torch.float64)
        results[name] = (float(total.mean()), float(total.std()))
    return results
