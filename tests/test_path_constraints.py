"""General path and terminal constraints on the ilqr backend (augmented Lagrangian forward,
exact implicit backward with the active rows as equalities).

References: cvxpy + Clarabel at tight tolerances (solutions) and central differences of
its re-solves (gradients) on linear problems forced onto ilqr; scipy SLSQP (solutions)
and central differences of re-solves (gradients) on nonlinear ones."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

import diffcontrol as dc

cp = pytest.importorskip("cvxpy")

T_LQ = 12
W_X = np.arange(T_LQ + 1.0)[:, None] * 0.1 + 1  # a loss that weights every state differently


def _lq(T=T_LQ, terminal=()):
    x, u = dc.State(2, name="x"), dc.Control(1, name="u")
    A, B, x0 = dc.Parameter((2, 2), name="A"), dc.Parameter((2, 1), name="B"), dc.Parameter(2, name="x0")
    lo = dc.Parameter((), name="lo")
    return dc.ControlProblem(
        dynamics=x.next == A @ x + B @ u, cost=dc.sum_squares(x) + 0.1 * dc.sum_squares(u),
        terminal_cost=dc.sum_squares(x), horizon=T, initial_state=x0,
        constraints=[x[0] >= lo, x[1] + 0.5 * u[0] <= 0.1, -0.5 <= u, u <= 0.5],
        terminal_constraints=list(terminal(x)) if terminal else [])


def _lq_values():
    return {"A": np.array([[1.0, 0.2], [0.0, 1.0]]), "B": np.array([[0.05], [1.0]]),
            "x0": np.array([0.5, -1.6]), "lo": -0.09}


def _lq_cvxpy(v, T=T_LQ, goal=None):
    X, U = cp.Variable((T + 1, 2)), cp.Variable((T, 1))
    cons, cost = [X[0] == v["x0"]], 0
    for t in range(T):
        cons += [X[t + 1] == v["A"] @ X[t] + v["B"] @ U[t], X[t + 1, 0] >= v["lo"],
                 X[t, 1] + 0.5 * U[t, 0] <= 0.1, U[t] >= -0.5, U[t] <= 0.5]
        cost += cp.sum_squares(X[t]) + 0.1 * cp.sum_squares(U[t])
    if goal is not None:
        cons.append(X[T, 1] <= goal)
    cp.Problem(cp.Minimize(cost + cp.sum_squares(X[T])), cons).solve(
        solver="CLARABEL", tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    return X.value, U.value


def _loss_np(X, U):
    return float((X * W_X).sum() + (U ** 2).sum())


def _central(f, values, key, h=1e-6):
    base = np.array(values[key], dtype=float)
    grad = np.zeros(base.size)
    for i in range(base.size):
        out = []
        for s in (1, -1):
            a = base.reshape(-1).copy()
            a[i] += s * h
            out.append(f({**values, key: a.reshape(base.shape)}))
        grad[i] = (out[0] - out[1]) / (2 * h)
    return grad.reshape(base.shape)


def _solve_torch(layer, values, dtype=torch.float64):
    inputs = {k: torch.tensor(v, dtype=dtype, requires_grad=True) for k, v in values.items()}
    x, u, info = layer(**inputs, return_info=True)
    ((x * torch.tensor(W_X, dtype=dtype)).sum() + (u ** 2).sum()).backward()
    return x.detach().numpy(), u.detach().numpy(), info, {k: v.grad.numpy() for k, v in inputs.items()}


def test_convex_problem_with_state_constraints_prefers_cone_and_explains_why():
    prob = _lq()
    assert prob.compile().backend == "cone"
    text = prob.explain()
    assert "ilqr: fits, but leaves it to 'cone': a convex problem with constraints beyond the control box" in text
    compiled = prob.compile(backend="ilqr")
    text = compiled.explain()
    assert "x[1] + 0.5 * u[0] <= 0.1   (inequality, 1 row(s) per stage, binds at t = 0..11)" in text
    assert "-0.09" not in text and "lo <= x[0]   (inequality, 1 row(s) per stage, binds at x_1..x_12)" in text


def test_lq_with_state_and_mixed_constraints_matches_cvxpy_and_its_finite_differences():
    values = _lq_values()
    layer = _lq().compile(backend="ilqr", constraint_tol=1e-10).to_torch()
    x, u, info, grads = _solve_torch(layer, values)
    assert info.status == dc.Status.CONVERGED
    X, U = _lq_cvxpy(values)
    assert np.abs(x - X).max() < 1e-7 and np.abs(u - U).max() < 1e-7
    assert X[1:, 0].min() < -0.09 + 1e-8  # the state constraint is active
    assert (X[:-1, 1] + 0.5 * U[:, 0]).max() > 0.1 - 1e-8  # and the mixed one
    assert np.isclose(np.abs(U).max(), 0.5, atol=1e-8)  # and the box
    for key in ("lo", "x0", "A", "B"):
        ref = _central(lambda v: _loss_np(*_lq_cvxpy(v)), values, key)
        assert np.abs(grads[key] - ref).max() <= 1e-5 * (1 + np.abs(ref).max()), key


def test_terminal_inequality_with_path_constraints_matches_cvxpy():
    values = _lq_values()
    layer = _lq(terminal=lambda x: [x[1] <= -0.05]).compile(backend="ilqr", constraint_tol=1e-10).to_torch()
    x, u, info, grads = _solve_torch(layer, values)
    X, U = _lq_cvxpy(values, goal=-0.05)
    assert np.isclose(X[-1, 1], -0.05, atol=1e-8)  # the terminal inequality is active
    assert np.abs(x - X).max() < 1e-7
    ref = _central(lambda v: _loss_np(*_lq_cvxpy(v, goal=-0.05)), values, "x0")
    assert np.abs(grads["x0"] - ref).max() <= 1e-5 * (1 + np.abs(ref).max())


def test_batched_equals_one_at_a_time_and_float32_runs():
    prob = _lq()
    layer = prob.compile(backend="ilqr").to_torch()
    x0s = torch.tensor([[0.5, -1.6], [0.2, -0.4], [0.1, 0.2]], dtype=torch.float64)
    fixed = {k: torch.tensor(v, dtype=torch.float64) for k, v in _lq_values().items() if k != "x0"}
    xb, ub = layer(x0=x0s, **fixed)
    for i in range(3):
        xi, ui = layer(x0=x0s[i], **fixed)
        assert torch.allclose(xb[i], xi, atol=1e-9) and torch.allclose(ub[i], ui, atol=1e-9)
    x32, u32, info = layer(x0=x0s.float(), **{k: v.float() for k, v in fixed.items()}, return_info=True)
    assert all(s == dc.Status.CONVERGED for s in info.status)
    assert torch.allclose(x32.double(), xb, atol=5e-3)


# ---- nonlinear: a pendulum with a speed limit ------------------------------------------------


DT, T_P = 0.1, 25


def _t(value, requires_grad=False):
    return torch.tensor(value, dtype=torch.float64, requires_grad=requires_grad)


def _pendulum(extra=(), terminal=(), vmax_time_varying=False):
    x, u = dc.State(2, name="x"), dc.Control(1, name="u")
    vmax = dc.Parameter((), name="vmax", time_varying=vmax_time_varying)
    g = dc.Parameter((), name="g")
    f = dc.stack([x[0] + DT * x[1], x[1] + DT * (-g * dc.sin(x[0]) + u[0])])
    goal = np.array([np.pi, 0.0])
    return dc.ControlProblem(
        dynamics=x.next == f, cost=dc.sum_squares(x - goal) + 0.01 * dc.sum_squares(u),
        terminal_cost=10 * dc.sum_squares(x - goal), horizon=T_P, initial_state=np.zeros(2),
        constraints=[x[1] <= vmax, -vmax <= x[1], -5 <= u, u <= 5, *extra(x, u)] if extra else
        [x[1] <= vmax, -vmax <= x[1], -5 <= u, u <= 5],
        terminal_constraints=list(terminal(x)) if terminal else [])


def _pendulum_np(U, g):
    X = [np.zeros(2)]
    for t in range(T_P):
        th, om = X[-1]
        X.append(np.array([th + DT * om, om + DT * (-g * np.sin(th) + U[t])]))
    return np.array(X)


def _pendulum_slsqp(vmax, g, U0, extra_ineq=None, extra_eq=None):
    goal = np.array([np.pi, 0.0])

    def cost(U):
        X = _pendulum_np(U, g)
        return ((X[:-1] - goal) ** 2).sum() + 0.01 * (U ** 2).sum() + 10 * ((X[-1] - goal) ** 2).sum()

    def speed(U):
        om = _pendulum_np(U, g)[1:, 1]
        return np.concatenate([vmax - om, vmax + om] + ([extra_ineq(U)] if extra_ineq else []))

    cons = [{"type": "ineq", "fun": speed}] + ([{"type": "eq", "fun": extra_eq}] if extra_eq else [])
    r = minimize(cost, U0, method="SLSQP", bounds=[(-5, 5)] * T_P, constraints=cons,
                 options={"ftol": 1e-15, "maxiter": 2000})
    return r.x


def _pendulum_loss(U, g):
    X = _pendulum_np(U, g)
    return X.sum() + U.sum()


@pytest.mark.parametrize("vmax", [1.1, 1.2])
def test_pendulum_speed_limit_matches_slsqp_and_its_finite_differences(vmax):
    layer = _pendulum().compile(constraint_tol=1e-10).to_torch()
    v, g = _t(vmax, requires_grad=True), _t(10.0, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing degenerate here: no warning
        x, u, info = layer(vmax=v, g=g, return_info=True)
        (x.sum() + u.sum()).backward()
    assert info.status == dc.Status.CONVERGED
    assert x[1:, 1].abs().max() <= vmax + 1e-9 and x[1:, 1].abs().max() >= vmax - 1e-9  # active
    U = _pendulum_slsqp(vmax, 10.0, u.detach().numpy()[:, 0])
    assert np.abs(U - u.detach().numpy()[:, 0]).max() < 1e-5

    def resolve(vm, gg):
        with torch.no_grad():
            xs, us = layer(vmax=_t(vm), g=_t(gg))
        return float(xs.sum() + us.sum())

    h = 1e-5
    fd_v = (resolve(vmax + h, 10.0) - resolve(vmax - h, 10.0)) / (2 * h)
    fd_g = (resolve(vmax, 10.0 + h) - resolve(vmax, 10.0 - h)) / (2 * h)
    assert abs(v.grad.item() - fd_v) <= 1e-4 * (1 + abs(fd_v))
    assert abs(g.grad.item() - fd_g) <= 1e-4 * (1 + abs(fd_g))
    # the finite differences rest on our forward, checked against SLSQP above; check one
    # against SLSQP's re-solves too (less precise: its own tolerance)
    ref = (_pendulum_loss(_pendulum_slsqp(vmax + 1e-3, 10.0, U), 10.0)
           - _pendulum_loss(_pendulum_slsqp(vmax - 1e-3, 10.0, U), 10.0)) / 2e-3
    assert abs(v.grad.item() - ref) <= 2e-2 * (1 + abs(ref))


def test_mixed_nonlinear_constraint_and_nonlinear_terminal_equality():
    # a torque-speed limit u + 2 x1 <= 6 (mixed) and a goal on a circle (nonlinear equality)
    prob = _pendulum(extra=lambda x, u: [u[0] + 2 * x[1] <= 6],
                     terminal=lambda x: [dc.sin(x[0]) == 0.3])
    layer = prob.compile(constraint_tol=1e-10).to_torch()
    x, u, info = layer(vmax=_t(1.5), g=_t(10.0), return_info=True)
    assert info.status == dc.Status.CONVERGED
    assert abs(np.sin(x[-1, 0].item()) - 0.3) < 1e-9

    def mixed(U):
        X = _pendulum_np(U, 10.0)
        return 6 - U - 2 * X[:-1, 1]

    U = _pendulum_slsqp(1.5, 10.0, u.numpy()[:, 0], extra_ineq=mixed,
                        extra_eq=lambda U: np.array([np.sin(_pendulum_np(U, 10.0)[-1, 0]) - 0.3]))
    assert np.abs(U - u.numpy()[:, 0]).max() < 1e-5


def test_time_varying_speed_limit_and_jax_equals_torch():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    prob = _pendulum(vmax_time_varying=True)
    vm = 1.1 + 0.01 * np.arange(T_P + 1.0)
    tl = prob.compile(constraint_tol=1e-10).to_torch()
    v = _t(vm, requires_grad=True)
    x, u = tl(vmax=v, g=_t(10.0))
    (x.sum() + u.sum()).backward()
    assert (x[1:, 1].abs() <= v[1:] + 1e-9).all()
    assert ((v[1:] - x[1:, 1].abs()) < 1e-8).any()  # binds somewhere
    jl = prob.compile(constraint_tol=1e-10).to_jax()

    def loss(vv):
        xs, us = jl(vmax=vv, g=10.0)
        return xs.sum() + us.sum()

    jv = jax.numpy.asarray(vm)
    assert np.abs(np.asarray(jl(vmax=jv, g=10.0)[0]) - x.detach().numpy()).max() < 1e-8
    # (jitted only: eager jax.grad equals jit elsewhere, tests/test_jax.py; each costs a compile)
    assert np.abs(np.asarray(jax.jit(jax.grad(loss))(jv)) - v.grad.numpy()).max() < 1e-6


def test_unreachable_constraint_is_reported_not_returned_as_solved():
    # x_T = pi with |omega| <= 0.05: out of reach in 2.5 s
    prob = _pendulum(terminal=lambda x: [x[0] == np.pi])
    layer = prob.compile(outer_max_iter=6).to_torch()
    with pytest.warns(dc.NotConvergedWarning, match="violates the constraints"):
        x, u, info = layer(vmax=_t(0.05), g=_t(10.0), return_info=True)
    assert info.status == dc.Status.INFEASIBLE_SOLUTION and not info.converged
    with pytest.raises(dc.SolverError):
        prob.compile(outer_max_iter=6, on_nonconvergence="raise").to_torch()(vmax=_t(0.05),
                                                                              g=_t(10.0))


def test_weakly_active_constraint_warns_that_the_gradient_is_one_sided():
    # found by search: at vmax = 1, T = 30 the lower speed limit touches zero at one stage with
    # a zero multiplier; the gradient is then the one-sided one (checked by a forward difference)
    global T_P
    saved_T, T_P = T_P, 30
    try:
        layer = _pendulum().compile(constraint_tol=1e-11).to_torch()
    finally:
        T_P = saved_T
    v = _t(1.0, requires_grad=True)
    x, u = layer(vmax=v, g=_t(10.0))
    with pytest.warns(dc.GradientFallbackWarning, match="weakly active constraints"):
        (x.sum() + u.sum()).backward()
    with torch.no_grad():
        base = float(x.sum() + u.sum())
        xs, us = layer(vmax=_t(1.0 + 1e-4), g=_t(10.0))
    assert abs(v.grad.item() - (float(xs.sum() + us.sum()) - base) / 1e-4) < 1e-2


def test_nonsmooth_constraint_is_refused_naming_the_smooth_form():
    x, u = dc.State(2, name="x"), dc.Control(1, name="u")
    prob = dc.ControlProblem(dynamics=x.next == dc.stack([x[0] + 0.1 * dc.sin(x[1]), x[1] + u[0]]),
                             cost=dc.sum_squares(x) + dc.sum_squares(u), horizon=5, initial_state=np.ones(2),
                             constraints=[dc.abs(x[1]) <= 1])
    with pytest.raises(dc.BackendError, match=r"nonsmooth constraint: abs\(x\[1\]\) <= 1 \(abs\(x\[1\]\) is not "
                                              r"smooth"):
        prob.compile()
    assert "write them with smooth atoms" in prob.explain()


def test_an_infeasible_example_is_flagged_and_leaves_the_others_gradients_alone():
    values = _lq_values()
    x0s = torch.tensor([[0.5, -1.6], [0.3, -1.6]], dtype=torch.float64, requires_grad=True)
    # cvxpy's verdict on the second start: no trajectory keeps x[0] >= -0.09
    X, U = cp.Variable((T_LQ + 1, 2)), cp.Variable((T_LQ, 1))
    cons = [X[0] == x0s[1].detach().numpy()]
    for t in range(T_LQ):
        cons += [X[t + 1] == values["A"] @ X[t] + values["B"] @ U[t], X[t + 1, 0] >= values["lo"],
                 X[t, 1] + 0.5 * U[t, 0] <= 0.1, U[t] >= -0.5, U[t] <= 0.5]
    problem = cp.Problem(cp.Minimize(0), cons)
    problem.solve(solver="CLARABEL")
    assert problem.status == "infeasible"
    layer = _lq().compile(backend="ilqr").to_torch()
    fixed = {k: torch.tensor(v, dtype=torch.float64) for k, v in values.items() if k != "x0"}
    with pytest.warns(dc.NotConvergedWarning, match="1 of 2 examples"):
        x, u, info = layer(x0=x0s, **fixed, return_info=True)
    assert info.status == [dc.Status.CONVERGED, dc.Status.INFEASIBLE_SOLUTION]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dc.GradientFallbackWarning)
        (x[0].sum() + u[0].sum()).backward()  # the failed example is not used: no NaN, no error
    one = x0s[:1].detach().clone().requires_grad_()
    x1, u1 = layer(x0=one, **fixed)
    (x1.sum() + u1.sum()).backward()
    assert torch.allclose(x0s.grad[0], one.grad[0], atol=1e-9) and (x0s.grad[1] == 0).all()


def test_linearly_dependent_active_constraints_give_loud_nan_gradients():
    x, u = dc.State(2, name="x"), dc.Control(1, name="u")
    lo = dc.Parameter((), name="lo")
    prob = dc.ControlProblem(
        dynamics=x.next == np.array([[1.0, 0.2], [0.0, 1.0]]) @ x + np.array([[0.05], [1.0]]) @ u,
        cost=dc.sum_squares(x) + 0.1 * dc.sum_squares(u), terminal_cost=dc.sum_squares(x), horizon=8,
        initial_state=np.array([0.5, -1.6]), constraints=[x[0] >= lo, 2 * x[0] >= 2 * lo])  # the same row twice
    layer = prob.compile(backend="ilqr").to_torch()
    v = _t(0.2, requires_grad=True)
    xs, us, info = layer(lo=v, return_info=True)
    assert bool(info.converged) and abs(xs[1:, 0].min().item() - 0.2) < 1e-8  # active
    # no unique multipliers: the backward says so, and the layer's guard refuses the NaN gradient
    with pytest.warns(dc.GradientFallbackWarning, match="linearly dependent active constraints"), \
            pytest.raises(dc.SolverError, match="contains NaN"):
        (xs.sum() + us.sum()).backward()


def test_a_constrained_layer_pickles_and_deep_copies():
    import copy
    import pickle

    layer = _lq().compile(backend="ilqr").to_torch()
    values = {k: torch.tensor(v, dtype=torch.float64) for k, v in _lq_values().items()}
    x = layer(**values)[0]
    for other in (pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer)):
        assert torch.equal(other(**values)[0], x)
