"""iLQR on nonconvex costs (regularised sweeps): a unicycle passing an obstacle penalty, against
scipy's L-BFGS-B on the same shooting problem, and its implicit gradients against central
differences of re-solves."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

import diffcontrol as dc

T, DT = 25, 0.1
GOAL = np.array([2.0, 0.0])


def _problem():
    x, u = dc.State(3, name="x"), dc.Control(2, name="u")
    c = dc.Parameter(2, name="c")  # the obstacle's centre
    dynamics = x.next == dc.stack([x[0] + DT * u[0] * dc.cos(x[2]), x[1] + DT * u[0] * dc.sin(x[2]),
                                   x[2] + DT * u[1]])
    obstacle = 2.0 * dc.exp(-dc.sum_squares(x[:2] - c) / 0.1)  # concave near its centre
    return dc.ControlProblem(dynamics=dynamics, cost=0.05 * dc.sum_squares(u) + obstacle,
                             terminal_cost=10 * dc.sum_squares(x[:2] - GOAL), horizon=T,
                             initial_state=np.zeros(3))


def _shooting_cost(U: np.ndarray, c: np.ndarray) -> float:
    U = U.reshape(T, 2)
    X, J = np.zeros(3), 0.0
    for t in range(T):
        J += 0.05 * (U[t] ** 2).sum() + 2.0 * np.exp(-((X[:2] - c) ** 2).sum() / 0.1)
        X = np.array([X[0] + DT * U[t, 0] * np.cos(X[2]), X[1] + DT * U[t, 0] * np.sin(X[2]), X[2] + DT * U[t, 1]])
    return J + 10 * ((X[:2] - GOAL) ** 2).sum()


def test_an_obstacle_penalty_no_longer_stops_ilqr_and_it_finds_the_lbfgs_minimum():
    c = np.array([1.0, 0.05])
    layer = _problem().compile(max_iter=300).to_torch()
    xs, us, info = layer(c=torch.tensor(c), return_info=True)
    assert bool(info.converged)
    ours = _shooting_cost(us.numpy(), c)
    reference = minimize(_shooting_cost, np.zeros(2 * T), args=(c,), method="L-BFGS-B",
                         options={"maxiter": 5000, "maxfun": 10 ** 6, "ftol": 1e-15, "gtol": 1e-10})
    assert ours <= reference.fun + 1e-7
    np.testing.assert_allclose(us.numpy().ravel(), reference.x, atol=2e-3)


def test_implicit_gradients_at_a_nonconvex_cost_match_central_differences():
    layer = _problem().compile(max_iter=300, tol=1e-11).to_torch()
    c0 = np.array([1.0, 0.05])
    c = torch.tensor(c0, requires_grad=True)
    _, us = layer(c=c)
    W = np.random.default_rng(1).standard_normal((T, 2))
    (us * torch.tensor(W)).sum().backward()
    eps = 1e-5
    fd = []
    for e in np.eye(2):
        plus = layer(c=torch.tensor(c0 + eps * e))[1].numpy()
        minus = layer(c=torch.tensor(c0 - eps * e))[1].numpy()
        fd.append(((plus - minus) * W).sum() / (2 * eps))
    np.testing.assert_allclose(c.grad.numpy(), fd, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_batched_obstacles_converge_each_like_alone(dtype):
    layer = _problem().compile(max_iter=300).to_torch()
    centres = torch.tensor([[1.0, 0.05], [1.0, -0.05], [0.8, 0.2]], dtype=dtype)
    _, us, info = layer(c=centres, return_info=True)
    assert info.converged.all()
    for b in range(3):
        _, ub = layer(c=centres[b])
        np.testing.assert_allclose(us[b].numpy(), ub.numpy(), atol=1e-6 if dtype == torch.float64 else 1e-3)


def _pendulum_shooting_cost(u: torch.Tensor, x0: torch.Tensor, v: dict, dt: float = 0.05) -> torch.Tensor:
    """dc.models.pendulum's total cost as a function of the controls (T,), written out from
    its equations (mpc.pytorch's PendulumDx): an independent single-shooting reference."""
    q, p = v["q"], v["p"]
    x, total = x0, torch.zeros((), dtype=u.dtype)
    for t in range(u.shape[0]):
        tau = torch.cat([x, u[t:t + 1]])
        total = total + (0.5 * q * tau ** 2).sum() + (p * tau).sum()
        th = torch.atan2(x[1], x[0])
        dth = x[2] + dt * (3 * v["g"] / (2 * v["l"]) * x[1] + 3 * u[t] / (v["m"] * v["l"] ** 2))
        th = th + dt * dth
        x = torch.stack([torch.cos(th), torch.sin(th), dth])
    return total + (0.5 * q[:3] * x ** 2).sum() + (p[:3] * x).sum()


def test_a_saddle_is_flagged_per_example_and_a_minimum_is_not():
    """Hanging at rest with zero torque is stationary (by symmetry) but not a minimum: either
    push lowers the cost. ilqr stops there at once; the forward must say so for that example
    (Status.SADDLE_POINT and a SaddlePointWarning) and not for its batch-mate at a minimum.
    Reference: the Hessian of the single-shooting cost on the free controls, by autograd."""
    T = 20
    pend = dc.models.pendulum(horizon=T)
    v = {k: torch.as_tensor(val, dtype=torch.float64) for k, val in pend.defaults().items()}
    x0 = torch.tensor([[-1.0, 0.0, 0.0], [np.cos(0.2), np.sin(0.2), 0.0]], dtype=torch.float64)
    layer = pend.problem.compile().to_torch()
    with pytest.warns(dc.SaddlePointWarning, match="1 of 2 examples"):
        _, u, info = layer(**v, x0=x0, return_info=True)
    assert bool(info.converged.all())
    assert info.status == [dc.Status.SADDLE_POINT, dc.Status.CONVERGED]
    for b, minimum in ((0, False), (1, True)):
        H = torch.autograd.functional.hessian(lambda w, b=b: _pendulum_shooting_cost(w, x0[b], v), u[b, :, 0])
        free = (u[b, :, 0].abs() < 2.0 - 1e-6).nonzero().flatten()
        assert len(free) >= T // 2
        smallest = float(torch.linalg.eigvalsh(H[free][:, free]).min())
        assert (smallest > 0) == minimum, (b, smallest)
