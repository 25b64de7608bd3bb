"""dc.MPCPolicy: receding-horizon control from a layer, checked against cvxpy solving each
step's problem from scratch (the first control of each plan) on a closed loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import diffcontrol as dc

DT, T = 0.1, 12
A = np.array([[1.0, DT], [0.0, 1.0]])
B = np.array([[0.5 * DT ** 2], [DT]])


def _problem(x0_is_parameter=True):
    x, u = dc.State(2, name="x"), dc.Control(1, name="u")
    x0 = dc.Parameter(2, name="x0") if x0_is_parameter else np.ones(2)
    w = dc.Parameter((), name="w", nonneg=True)
    return dc.ControlProblem(dynamics=x.next == A @ x + B @ u, cost=dc.sum_squares(x) + w * dc.sum_squares(u),
                             terminal_cost=10 * dc.sum_squares(x), horizon=T, initial_state=x0,
                             constraints=[-1 <= u, u <= 1])


def _first_control_cvxpy(x0, w):
    cp = pytest.importorskip("cvxpy")
    X, U = cp.Variable((T + 1, 2)), cp.Variable((T, 1))
    cons, cost = [X[0] == x0], 0
    for t in range(T):
        cons += [X[t + 1] == A @ X[t] + B @ U[t], U[t] >= -1, U[t] <= 1]
        cost += cp.sum_squares(X[t]) + w * cp.sum_squares(U[t])
    cp.Problem(cp.Minimize(cost + 10 * cp.sum_squares(X[T])), cons).solve(
        solver="CLARABEL", tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    return U.value[0]


def test_closed_loop_matches_cvxpy_step_by_step_and_warm_starts():
    policy = dc.MPCPolicy(_problem().compile().to_torch(), w=torch.tensor(0.1, dtype=torch.float64))
    x = np.array([2.0, 0.0])
    iterations = []
    for _ in range(6):
        u = policy(x)  # NumPy in, NumPy out
        assert isinstance(u, np.ndarray) and u.shape == (1,)
        assert np.abs(u - _first_control_cvxpy(x, 0.1)).max() < 1e-6
        iterations.append(int(policy.info.iterations))
        x = A @ x + B @ u
    assert policy.plan.shape == (T, 1)
    # the first solve starts cold; the shifted plan starts the others near their solution
    assert max(iterations[1:]) <= iterations[0]


def test_vector_environments_and_partial_reset():
    policy = dc.MPCPolicy(_problem().compile().to_torch(), w=torch.tensor(0.1, dtype=torch.float64))
    obs = np.array([[2.0, 0.0], [-1.0, 0.5], [0.3, -0.2]])
    u = policy(obs)
    assert u.shape == (3, 1)
    for i in range(3):
        assert np.abs(u[i] - _first_control_cvxpy(obs[i], 0.1)).max() < 1e-6
    plan = policy.plan.clone()
    policy.reset(np.array([False, True, False]))
    assert torch.equal(policy.plan[0], plan[0]) and (policy.plan[1] == 0).all()
    policy(obs[:2])  # fewer environments: starts cold, no error
    assert policy.plan.shape == (2, T, 1)
    policy.reset()
    assert policy.plan is None
    # torch in, torch out; a new weight takes effect
    policy.update(w=torch.tensor(1.0, dtype=torch.float64))
    u_t = policy(torch.tensor(obs[0]))
    assert isinstance(u_t, torch.Tensor) and np.abs(u_t.numpy() - _first_control_cvxpy(obs[0], 1.0)).max() < 1e-6


def test_jax_layer_gives_the_same_controls():
    pytest.importorskip("jax")
    import jax

    jax.config.update("jax_enable_x64", True)
    torch_policy = dc.MPCPolicy(_problem().compile().to_torch(), w=torch.tensor(0.1, dtype=torch.float64))
    jax_policy = dc.MPCPolicy(_problem().compile().to_jax(), w=0.1)
    x = np.array([1.5, -0.5])
    for _ in range(3):
        u = torch_policy(x)
        assert np.abs(np.asarray(jax_policy(x)) - u).max() < 1e-9
        x = A @ x + B @ u


def test_bad_uses_are_named():
    with pytest.raises(dc.ModelError, match="initial_state to be a dc.Parameter"):
        dc.MPCPolicy(_problem(x0_is_parameter=False).compile().to_torch())
    layer = _problem().compile().to_torch()
    with pytest.raises(dc.InputError, match="'x0' is the observed state"):
        dc.MPCPolicy(layer, x0=torch.zeros(2))
    with pytest.raises(dc.InputError, match=r"unknown parameter\(s\) \['weight'\]; the layer takes \['w'\]"):
        dc.MPCPolicy(layer, weight=1.0)
    with pytest.raises(dc.ModelError, match="takes the layer of a ControlProblem"):
        dc.MPCPolicy(torch.nn.Linear(2, 1))
    policy = dc.MPCPolicy(layer, w=torch.tensor(0.1, dtype=torch.float64))
    with pytest.raises(dc.InputError, match=r"obs must be the state \(n,\) or a batch \(E, n\)"):
        policy([1.0, 2.0])
    policy(np.zeros((2, 2)))
    with pytest.raises(dc.InputError, match="done has 3 entries"):
        policy.reset([True, False, True])


def test_gymnasium_vector_environment():
    gymnasium = pytest.importorskip("gymnasium")
    pendulum = dc.models.pendulum(horizon=20)  # the state (cos th, sin th, th_dot) is Pendulum-v1's observation
    policy = dc.MPCPolicy(pendulum.problem.compile(max_iter=300).to_torch(), **pendulum.defaults())
    envs = gymnasium.make_vec("Pendulum-v1", num_envs=3, vectorization_mode="sync")
    obs, _ = envs.reset(seed=0)
    late, late_still = np.zeros(3), np.zeros(3)  # the reward of the last 20 of 80 steps
    for k in range(80):
        u = policy(obs)  # (3, 1) NumPy, float32 observations in
        assert isinstance(u, np.ndarray) and u.shape == (3, 1) and np.abs(u).max() <= 2.0 + 1e-9
        obs, reward, terminated, truncated, _ = envs.step(u.astype(np.float32))
        late += reward * (k >= 60)
        policy.reset(terminated | truncated)
    lazy = gymnasium.make_vec("Pendulum-v1", num_envs=3, vectorization_mode="sync")
    lazy.reset(seed=0)
    for k in range(80):
        late_still += lazy.step(np.zeros((3, 1), dtype=np.float32))[1] * (k >= 60)
    # the MPC policy has swung them up and holds them: far more reward than no torque
    assert (late > 0.5 * late_still).all() and late.max() > -1.0, (late, late_still)
