"""Control problems shipped for users: the pendulum and cartpole of the Differentiable MPC
paper, written in the DSL with learnable physical and cost parameters.

The equations and default costs are mpc.pytorch's ``env_dx`` models (Amos et al.
2018): the state carries (cos th, sin th) instead of th; the stage cost is
1/2 tau^T diag(q) tau + p^T tau over tau = [x; u], with q = [goal weights;
control penalty] and p = [-sqrt(goal weights) * goal state; 0]. Its state part is
also the terminal cost, so ``horizon=T`` here is mpc.pytorch's horizon T + 1
(which has T states x_0..x_{T-1} and a last control that moves nothing).
The control clamp inside mpc.pytorch's dynamics is the box constraint here.

Example::

    pend = dc.models.pendulum(horizon=20)
    layer = pend.problem.compile().to_torch()
    x, u = layer(**pend.defaults(), x0=x0)       # learnable: g, m, l, q, p, x0
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from diffcontrol.dsl import constructors as dc_atoms
from diffcontrol.dsl.leaves import Control, Parameter, State
from diffcontrol.dsl.problems import ControlProblem


@dataclass(frozen=True)
class ModelProblem:
    """A shipped problem: the ControlProblem, its parameters by name, and their default values."""

    problem: ControlProblem
    parameters: dict[str, Parameter]
    default_values: dict[str, np.ndarray] = field(repr=False)

    def defaults(self, **overrides: Any) -> dict[str, Any]:
        """The default value of every parameter but x0, updated with ``overrides`` (e.g. to pass
        torch tensors that require grad)."""
        values: dict[str, Any] = {k: v.copy() for k, v in self.default_values.items()}
        values.update(overrides)
        return values


def _quadratic_cost(x: State, u: Control, goal_state: np.ndarray, goal_weights: np.ndarray,
                    ctrl_penalty: float) -> tuple[Any, Any, dict]:
    """(stage cost, terminal cost, default q and p) of mpc.pytorch's ``get_true_obj``."""
    n, m = x.shape[0], u.shape[0]
    q = Parameter(n + m, name="q")
    p = Parameter(n + m, name="p")
    tau = dc_atoms.concat([x, u])
    stage = 0.5 * dc_atoms.sum(q * tau ** 2) + p @ tau
    terminal = 0.5 * dc_atoms.sum(q[:n] * x ** 2) + p[:n] @ x
    defaults = {"q": np.concatenate([goal_weights, ctrl_penalty * np.ones(m)]),
                "p": np.concatenate([-np.sqrt(goal_weights) * goal_state, np.zeros(m)])}
    return stage, terminal, defaults


def pendulum(horizon: int = 20, dt: float = 0.05, max_torque: float | None = 2.0,
             damping_and_wind: bool = False) -> ModelProblem:
    """The pendulum of mpc.pytorch (``PendulumDx``, simple): state (cos th, sin th, th_dot),
    torque u in [-max_torque, max_torque] (None: unbounded); learnable gravity ``g``, mass ``m``, length ``l``
    (defaults 10, 1, 1), cost weights ``q`` (4,), ``p`` (4,) and initial state ``x0`` (3,).

    ``damping_and_wind=True`` adds the terms of the Differentiable MPC paper's non-realizable
    expert (section 5.4): a viscous damping ``d`` (a torque -d th_dot) and a steady wind, a
    constant force on the mass that tilts its effective gravity by the angle ``b``
    (sin th becomes sin(th + b)); both default to 0. (mpc.pytorch's non-simple pendulum
    damps the angle instead, -d th, which is a spring rather than a damper.)"""
    x, u = State(3, name="x"), Control(1, name="u")
    g, m, l = Parameter(name="g"), Parameter(name="m"), Parameter(name="l")
    x0 = Parameter(3, name="x0")
    cos_th, sin_th, dth = x[0], x[1], x[2]
    th = dc_atoms.atan2(sin_th, cos_th)
    if damping_and_wind:
        d, b = Parameter(name="d"), Parameter(name="b")
        new_dth = dth + dt * (3.0 * g / (2.0 * l) * dc_atoms.sin(th + b) + 3.0 * u[0] / (m * l ** 2) - d * dth)
    else:
        new_dth = dth + dt * (3.0 * g / (2.0 * l) * sin_th + 3.0 * u[0] / (m * l ** 2))
    new_th = th + dt * new_dth
    stage, terminal, cost_defaults = _quadratic_cost(
        x, u, goal_state=np.array([1.0, 0.0, 0.0]), goal_weights=np.array([1.0, 1.0, 0.1]), ctrl_penalty=1e-3)
    problem = ControlProblem(
        dynamics=x.next == dc_atoms.stack([dc_atoms.cos(new_th), dc_atoms.sin(new_th), new_dth]),
        cost=stage, terminal_cost=terminal, horizon=horizon, initial_state=x0,
        constraints=[] if max_torque is None else [-max_torque <= u, u <= max_torque])
    params = {q.name: q for q in problem.parameters()}
    defaults = {"g": np.array(10.0), "m": np.array(1.0), "l": np.array(1.0), **cost_defaults}
    if damping_and_wind:
        defaults.update(d=np.array(0.0), b=np.array(0.0))
    return ModelProblem(problem, params, defaults)


def cartpole(horizon: int = 20, dt: float = 0.05, force_mag: float = 100.0) -> ModelProblem:
    """The cartpole of mpc.pytorch (``CartpoleDx``): state (x, x_dot, cos th, sin th, th_dot),
    force u in [-force_mag, force_mag]; learnable ``gravity``, ``masscart``, ``masspole``,
    ``length`` (defaults 9.8, 1, 0.1, 0.5), cost weights ``q`` (6,), ``p`` (6,) and ``x0`` (5,)."""
    s, u = State(5, name="x"), Control(1, name="u")
    gravity, masscart = Parameter(name="gravity"), Parameter(name="masscart")
    masspole, length = Parameter(name="masspole"), Parameter(name="length")
    x0 = Parameter(5, name="x0")
    pos, vel, cos_th, sin_th, dth = s[0], s[1], s[2], s[3], s[4]
    total_mass = masspole + masscart
    polemass_length = masspole * length
    th = dc_atoms.atan2(sin_th, cos_th)
    cart_in = (u[0] + polemass_length * dth ** 2 * sin_th) / total_mass
    th_acc = (gravity * sin_th - cos_th * cart_in) / (length * (4.0 / 3.0 - masspole * cos_th ** 2 / total_mass))
    x_acc = cart_in - polemass_length * th_acc * cos_th / total_mass
    new_th = th + dt * dth
    nxt = dc_atoms.stack([pos + dt * vel, vel + dt * x_acc, dc_atoms.cos(new_th), dc_atoms.sin(new_th),
                          dth + dt * th_acc])
    stage, terminal, cost_defaults = _quadratic_cost(
        s, u, goal_state=np.array([0.0, 0.0, 1.0, 0.0, 0.0]),
        goal_weights=np.array([0.1, 0.1, 1.0, 1.0, 0.1]), ctrl_penalty=1e-3)
    problem = ControlProblem(dynamics=s.next == nxt, cost=stage, terminal_cost=terminal, horizon=horizon,
                             initial_state=x0, constraints=[-force_mag <= u, u <= force_mag])
    params = {q.name: q for q in problem.parameters()}
    defaults = {"gravity": np.array(9.8), "masscart": np.array(1.0), "masspole": np.array(0.1),
                "length": np.array(0.5), **cost_defaults}
    return ModelProblem(problem, params, defaults)
