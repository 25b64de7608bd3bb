"""Terminal constraints (x_T == goal and friends): the lqr backend against a dense KKT solve
in NumPy (no box) and cvxpy + Clarabel (with a box), gradients against central differences
of re-solves, per-example infeasibility, batched = unbatched, JAX = torch, the cone backend,
and the declaration errors."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch

import diffcontrol as dc

T, n, m = 10, 4, 2
DT = 0.2  # a planar double integrator: state (p1, p2, v1, v2), control (a1, a2)
A_NP = np.block([[np.eye(2), DT * np.eye(2)], [np.zeros((2, 2)), np.eye(2)]]) \
    + 0.02 * np.random.default_rng(3).standard_normal((4, 4))
B_NP = np.vstack([0.5 * DT ** 2 * np.eye(2), DT * np.eye(2)])
GOAL = np.array([0.6, -0.4, 0.0, 0.1])
X0 = np.array([0.5, 0.3, -0.2, 0.0])


def _problem(umax: float | None = None, time_varying_goal: bool = False, backend_goal=None):
    x, u = dc.State(n, name="x"), dc.Control(m, name="u")
    A = dc.Parameter((n, n), name="A")
    x0 = dc.Parameter(n, name="x0")
    goal = dc.Parameter(n, name="goal", time_varying=time_varying_goal)
    box = [] if umax is None else [-umax <= u, u <= umax]
    terminal = [x == goal] if backend_goal is None else backend_goal(x, goal)
    return dc.ControlProblem(dynamics=x.next == A @ x + B_NP @ u,
                             cost=dc.sum_squares(x) + 0.1 * dc.sum_squares(u), horizon=T, initial_state=x0,
                             constraints=box, terminal_constraints=terminal)


def _dense_kkt(A: np.ndarray, x0: np.ndarray, goal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The equality-constrained QP over z = (x_1..x_T, u_0..u_{T-1}) solved by one dense KKT solve."""
    nx, nu = T * n, T * m
    H = np.zeros((nx + nu, nx + nu))
    H[:nx, :nx] = 2 * np.eye(nx)
    H[:nx, :nx][-n:, -n:] = 0.0          # no cost on x_T (the stage cost covers x_0..x_{T-1})
    H[nx:, nx:] = 0.2 * np.eye(nu)
    h = np.zeros(nx + nu)
    h[:n] = 0.0
    rows, rhs = [], []
    for t in range(T):                   # x_{t+1} - A x_t - B u_t = 0
        row = np.zeros((n, nx + nu))
        row[:, t * n:(t + 1) * n] = np.eye(n)
        if t > 0:
            row[:, (t - 1) * n:t * n] = -A
        row[:, nx + t * m:nx + (t + 1) * m] = -B_NP
        rows.append(row)
        rhs.append(A @ x0 if t == 0 else np.zeros(n))
    goal_row = np.zeros((n, nx + nu))
    goal_row[:, (T - 1) * n:T * n] = np.eye(n)
    E, e = np.vstack(rows + [goal_row]), np.concatenate(rhs + [goal])
    # the stage cost sums x_0..x_{T-1}; x_0 is fixed, so the x-blocks are x_1..x_{T-1}
    K = np.block([[H, E.T], [E, np.zeros((E.shape[0], E.shape[0]))]])
    z = np.linalg.solve(K, np.concatenate([-h, e]))[:nx + nu]
    xs = np.vstack([x0, z[:nx].reshape(T, n)])
    return xs, z[nx:].reshape(T, m)


def _cvxpy(A: np.ndarray, x0: np.ndarray, goal: np.ndarray, umax: float | None):
    X, U = cp.Variable((T + 1, n)), cp.Variable((T, m))
    cons = [X[0] == x0, X[T] == goal] + [X[t + 1] == A @ X[t] + B_NP @ U[t] for t in range(T)]
    if umax is not None:
        cons.append(cp.abs(U) <= umax)
    problem = cp.Problem(cp.Minimize(sum(cp.sum_squares(X[t]) + 0.1 * cp.sum_squares(U[t]) for t in range(T))),
                         cons)
    problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11)
    return X.value, U.value


def test_goal_without_a_box_matches_a_dense_kkt_solve():
    xs, us = _problem().compile().to_torch()(A=torch.tensor(A_NP), x0=torch.tensor(X0), goal=torch.tensor(GOAL))
    X, U = _dense_kkt(A_NP, X0, GOAL)
    np.testing.assert_allclose(us.numpy(), U, atol=1e-9)
    np.testing.assert_allclose(xs.numpy(), X, atol=1e-9)
    np.testing.assert_allclose(xs[-1].numpy(), GOAL, atol=1e-10)


@pytest.mark.parametrize("condense", [True, False])
@pytest.mark.parametrize("umax", [None, 0.8])
def test_goal_solution_and_gradients_match_cvxpy_and_finite_differences(umax, condense):
    layer = _problem(umax).compile(condense=condense).to_torch()
    A, x0, goal = (torch.tensor(a, requires_grad=True) for a in (A_NP, X0, GOAL))
    xs, us, info = layer(A=A, x0=x0, goal=goal, return_info=True)
    assert bool(info.converged)
    X, U = _cvxpy(A_NP, X0, GOAL, umax)
    if umax is not None:
        assert np.isclose(np.abs(U).max(), umax)  # the box is active
    np.testing.assert_allclose(us.detach().numpy(), U, atol=1e-6)
    W = np.random.default_rng(0).standard_normal((T, m))
    (us * torch.tensor(W)).sum().backward()
    eps = 1e-5

    def central(f, base):
        grads = np.zeros(base.size)
        for i in range(base.size):
            e = np.zeros(base.size)
            e[i] = eps
            grads[i] = ((f(base + e.reshape(base.shape))[1] * W).sum()
                        - (f(base - e.reshape(base.shape))[1] * W).sum()) / (2 * eps)
        return grads.reshape(base.shape)

    close = {"rtol": 1e-5, "atol": 1e-4}  # the references solve to about 1e-10
    np.testing.assert_allclose(goal.grad.numpy(), central(lambda g: _cvxpy(A_NP, X0, g, umax), GOAL), **close)
    np.testing.assert_allclose(x0.grad.numpy(), central(lambda v: _cvxpy(A_NP, v, GOAL, umax), X0), **close)
    np.testing.assert_allclose(A.grad.numpy(), central(lambda a: _cvxpy(a, X0, GOAL, umax), A_NP), **close)


def test_a_box_and_a_goal_that_need_many_multiplier_steps_still_match_cvxpy():
    """Most controls at the box: the multipliers' piecewise-affine map has many kinks."""
    layer = _problem(0.8).compile().to_torch()
    goals = np.stack([GOAL, 1.5 * GOAL, np.array([0.2, 0.5, 0.1, -0.1])])  # the second: out of reach
    with pytest.warns(dc.NotConvergedWarning, match="1 of 3"):
        xs, us, info = layer(A=torch.tensor(A_NP), x0=torch.tensor(X0), goal=torch.tensor(goals), return_info=True)
    for b, goal in enumerate(goals):
        X, U = _cvxpy(A_NP, X0, goal, 0.8)
        if U is None:
            assert info.status[b] is dc.Status.GOAL_NOT_MET
        else:
            assert bool(info.converged[b])
            np.testing.assert_allclose(us[b].numpy(), U, atol=1e-6)


def test_an_unreachable_goal_is_reported_per_example_with_nan_gradients():
    """A batch of goals, one of which the box forbids: that example is INFEASIBLE (with a
    warning) and its gradient NaN; the others converge and match their own solves."""
    layer = _problem(0.8).compile().to_torch()
    goals = torch.tensor(np.stack([GOAL, 5 * GOAL, 0.5 * GOAL]), requires_grad=True)
    with pytest.warns(dc.NotConvergedWarning, match="terminal equality was not met.*goal can be reached"):
        xs, us, info = layer(A=torch.tensor(A_NP), x0=torch.tensor(X0), goal=goals, return_info=True)
    assert info.converged.tolist() == [True, False, True]
    assert info.status[1] is dc.Status.GOAL_NOT_MET
    with pytest.raises(dc.SolverError, match=r"examples \[1\].*GOAL_NOT_MET"):
        us.sum().backward(retain_graph=True)  # its gradient is NaN: the layer refuses to pass it on
    goals.grad = None
    us[[0, 2]].sum().backward()  # leaving it out of the loss, the others' gradients flow
    assert torch.isfinite(goals.grad).all() and (goals.grad[1] == 0).all()
    for b in (0, 2):  # batched equals one at a time
        xb, ub = layer(A=torch.tensor(A_NP), x0=torch.tensor(X0), goal=goals[b].detach())
        np.testing.assert_allclose(us[b].detach().numpy(), ub.numpy(), atol=1e-10)


def test_an_uncontrollable_goal_is_infeasible_not_a_silent_answer():
    x, u = dc.State(2, name="x"), dc.Control(1, name="u")
    prob = dc.ControlProblem(dynamics=x.next == np.diag([1.0, 0.5]) @ x + np.array([[1.0], [0.0]]) @ u,
                             cost=dc.sum_squares(u), horizon=5, initial_state=np.array([0.0, 1.0]),
                             terminal_constraints=[x == np.array([1.0, 1.0])])  # x[1] decays on its own
    with pytest.raises(dc.SolverError, match="terminal equality was not met"):
        prob.compile(on_nonconvergence="raise").to_torch()()


def test_time_varying_goal_reads_its_last_row_and_float32_agrees():
    layer = _problem(time_varying_goal=True).compile().to_torch()
    rows = np.vstack([np.zeros((T, n)), GOAL])     # (T+1, n): only g_T matters
    xs, us = layer(A=torch.tensor(A_NP), x0=torch.tensor(X0), goal=torch.tensor(rows))
    X, U = _dense_kkt(A_NP, X0, GOAL)
    np.testing.assert_allclose(us.numpy(), U, atol=1e-9)
    with pytest.raises(dc.InputError, match=r"shape \(11, 4\).*terminal term"):
        layer(A=torch.tensor(A_NP), x0=torch.tensor(X0), goal=torch.tensor(rows[:T]))
    x32, u32 = layer(A=torch.tensor(A_NP, dtype=torch.float32), x0=torch.tensor(X0, dtype=torch.float32),
                     goal=torch.tensor(rows, dtype=torch.float32))
    assert u32.dtype == torch.float32
    np.testing.assert_allclose(u32.numpy(), U, atol=2e-3)


def test_jax_layer_matches_torch_under_jit_and_grad():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    compiled = _problem(0.8).compile()
    layer_t, layer_j = compiled.to_torch(), compiled.to_jax()
    goal = torch.tensor(GOAL, requires_grad=True)
    _, us = layer_t(A=torch.tensor(A_NP), x0=torch.tensor(X0), goal=goal)
    us.sum().backward()

    def loss(g):
        return layer_j(A=jnp.asarray(A_NP), x0=jnp.asarray(X0), goal=g)[1].sum()

    value, grad = jax.jit(jax.value_and_grad(loss))(jnp.asarray(GOAL))
    np.testing.assert_allclose(float(value), float(us.sum().detach()), atol=1e-9)
    np.testing.assert_allclose(np.asarray(grad), goal.grad.numpy(), atol=1e-7)


def test_cone_takes_terminal_inequalities_and_matches_cvxpy():
    prob = _problem(0.8, backend_goal=lambda x, goal: [x[0] >= goal[0], dc.norm_inf(x[1:] - goal[1:]) <= 0.05])
    compiled = prob.compile()
    assert compiled.backend == "cone"
    assert "terminal constraints" in compiled.explain()
    xs, us = compiled.to_torch()(A=torch.tensor(A_NP), x0=torch.tensor(X0), goal=torch.tensor(GOAL))
    X, U = cp.Variable((T + 1, n)), cp.Variable((T, m))
    cons = [X[0] == X0, X[T, 0] >= GOAL[0], cp.norm_inf(X[T, 1:] - GOAL[1:]) <= 0.05, cp.abs(U) <= 0.8]
    cons += [X[t + 1] == A_NP @ X[t] + B_NP @ U[t] for t in range(T)]
    cp.Problem(cp.Minimize(sum(cp.sum_squares(X[t]) + 0.1 * cp.sum_squares(U[t]) for t in range(T))), cons).solve()
    np.testing.assert_allclose(us.numpy(), U.value, atol=1e-4)


def test_goal_on_lqr_equals_goal_on_cone():
    lqr = _problem(0.8).compile(backend="lqr").to_torch()
    cone = _problem(0.8).compile(backend="cone").to_torch()
    values = {"A": torch.tensor(A_NP), "x0": torch.tensor(X0), "goal": torch.tensor(GOAL)}
    np.testing.assert_allclose(lqr(**values)[1].numpy(), cone(**values)[1].numpy(), atol=1e-5)


def _pendulum_to_a_goal(umax=None):
    x, u = dc.State(2, name="x"), dc.Control(1, name="u")
    goal = dc.Parameter(2, name="goal")
    return dc.ControlProblem(
        dynamics=x.next == dc.stack([x[0] + 0.1 * x[1], x[1] + 0.1 * (-9.8 * dc.sin(x[0]) + u[0])]),
        cost=0.1 * dc.sum_squares(u) + 0.01 * dc.sum_squares(x), horizon=20, initial_state=np.zeros(2),
        constraints=[] if umax is None else [-umax <= u, u <= umax], terminal_constraints=[x == goal])


def _pendulum_slsqp(goal, umax, start):
    from scipy.optimize import minimize

    def rollout(U):
        X, J = np.zeros(2), 0.0
        for t in range(20):
            J += 0.1 * U[t] ** 2 + 0.01 * (X ** 2).sum()
            X = np.array([X[0] + 0.1 * X[1], X[1] + 0.1 * (-9.8 * np.sin(X[0]) + U[t])])
        return J, X

    bounds = None if umax is None else [(-umax, umax)] * 20
    return minimize(lambda U: rollout(U)[0], start, method="SLSQP", bounds=bounds,
                    constraints=[{"type": "eq", "fun": lambda U: rollout(U)[1] - goal}],
                    options={"ftol": 1e-14, "maxiter": 1000}).x


@pytest.mark.parametrize("umax", [None, 1.8])
def test_ilqr_meets_a_goal_on_nonlinear_dynamics_with_exact_gradients(umax):
    """A pendulum driven to a goal state exactly: against SLSQP with the equality written out;
    gradients w.r.t. the goal against central differences of re-solves; JAX = torch."""
    compiled = _pendulum_to_a_goal(umax).compile(tol=1e-10)
    assert compiled.backend == "ilqr"
    assert "terminal equalities  x == goal at x_T: met exactly" in compiled.explain()
    layer = compiled.to_torch()
    g0 = np.array([1.0, 0.0])
    goal = torch.tensor(g0, requires_grad=True)
    xs, us, info = layer(goal=goal, return_info=True)
    assert bool(info.converged)
    np.testing.assert_allclose(xs[-1].detach().numpy(), g0, atol=1e-9)
    reference = _pendulum_slsqp(g0, umax, 0.9 * us.detach().numpy()[:, 0])
    np.testing.assert_allclose(us.detach().numpy()[:, 0], reference, atol=1e-5)
    if umax is not None:
        assert (us.detach().abs() >= umax - 1e-9).any()  # the box is active
    us.sum().backward()
    eps = 1e-5
    fd = [(layer(goal=torch.tensor(g0 + eps * e))[1].sum() - layer(goal=torch.tensor(g0 - eps * e))[1].sum()).item()
          / (2 * eps) for e in np.eye(2)]
    np.testing.assert_allclose(goal.grad.numpy(), fd, rtol=1e-5, atol=1e-7)
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    grad = jax.grad(lambda g: compiled.to_jax()(goal=g)[1].sum())(jax.numpy.asarray(g0))
    np.testing.assert_allclose(np.asarray(grad), goal.grad.numpy(), rtol=1e-7, atol=1e-9)


def test_terminal_constraint_declaration_errors():
    x, u = dc.State(2, name="x"), dc.Control(1, name="u")
    kw = {"dynamics": x.next == x + u, "cost": dc.sum_squares(u), "horizon": 3, "initial_state": np.zeros(2)}
    with pytest.raises(dc.ModelError, match="uses the control"):
        dc.ControlProblem(**kw, terminal_constraints=[x[0] + u[0] == 1])
    with pytest.raises(dc.ModelError, match="does not use the state"):
        dc.ControlProblem(**kw, terminal_constraints=[dc.Parameter(name="p") <= 1])
    with pytest.raises(dc.ModelError, match="terminal_constraints must"):
        dc.ControlProblem(**kw, terminal_constraints=["x == 1"])
    with pytest.raises(dc.ModelError, match="x.next"):
        dc.ControlProblem(**kw, terminal_constraints=[x.next == 1])


def test_sensitivities_one_row_at_a_time_equal_the_tiled_batch(monkeypatch):
    """Large batches compute d x_T / d nu one constraint row per VJP instead of one tiled VJP."""
    import diffcontrol.backends.terminal as terminal

    layer = _problem(0.8).compile().to_torch()
    goals = torch.tensor(np.stack([GOAL, 0.5 * GOAL]), requires_grad=True)
    _, tiled = layer(A=torch.tensor(A_NP), x0=torch.tensor(X0), goal=goals)
    tiled.sum().backward()
    grad_tiled = goals.grad.clone()
    monkeypatch.setattr(terminal, "TILE_MAX_ROWS", 0)
    goals.grad = None
    _, rows = layer(A=torch.tensor(A_NP), x0=torch.tensor(X0), goal=goals)
    rows.sum().backward()
    np.testing.assert_allclose(rows.detach().numpy(), tiled.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(goals.grad.numpy(), grad_tiled.numpy(), atol=1e-10)
