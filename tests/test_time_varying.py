"""Time-varying parameters (p_t) in control problems: the lqr backend against cvxpy + Clarabel
with the per-stage data written out directly, central differences of re-solves, batched =
unbatched, float32, JAX = torch, and the errors of bad declarations and values."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch

import diffcontrol as dc

T, n, m = 6, 2, 1
B_NP = np.array([[0.0], [0.2]])


def _problem(box: bool = True, tv_bound: bool = False):
    x, u = dc.State(n, name="x"), dc.Control(m, name="u")
    A = dc.Parameter((n, n), name="A", time_varying=True)
    r = dc.Parameter(n, name="r", time_varying=True)
    w = dc.Parameter(name="w", time_varying=True, nonneg=True)
    x0 = dc.Parameter(n, name="x0")
    umax = dc.Parameter(m, name="umax", time_varying=True) if tv_bound else 0.8
    return dc.ControlProblem(dynamics=x.next == A @ x + B_NP @ u,
                             cost=w * dc.sum_squares(x - r) + 0.1 * dc.sum_squares(u),
                             terminal_cost=dc.sum_squares(x - r), horizon=T, initial_state=x0,
                             constraints=[-umax <= u, u <= umax] if box else [])


def _values(seed: int = 0, tv_bound: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    v = {"A": np.eye(n) + 0.15 * rng.standard_normal((T, n, n)), "r": rng.standard_normal((T + 1, n)),
         "w": 1.0 + rng.random(T + 1), "x0": np.array([2.0, -1.0])}
    if tv_bound:
        v["umax"] = 0.5 + rng.random((T + 1, m))
    return v


def _reference(v: dict, box: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The same problem written out per stage in cvxpy, solved by Clarabel at tight tolerance."""
    X, U = cp.Variable((T + 1, n)), cp.Variable((T, m))
    umax = v.get("umax", np.full((T + 1, m), 0.8))
    cons = [X[0] == v["x0"]]
    cost = cp.sum_squares(X[T] - v["r"][T])
    for t in range(T):
        cons.append(X[t + 1] == v["A"][t] @ X[t] + B_NP @ U[t])
        if box:
            cons += [U[t] <= umax[t], -umax[t] <= U[t]]
        cost += v["w"][t] * cp.sum_squares(X[t] - v["r"][t]) + 0.1 * cp.sum_squares(U[t])
    cp.Problem(cp.Minimize(cost), cons).solve(solver=cp.CLARABEL, tol_gap_abs=1e-11, tol_gap_rel=1e-11,
                                              tol_feas=1e-11)
    return X.value, U.value


def _torch(v: dict, dtype=torch.float64) -> dict:
    return {k: torch.tensor(a, dtype=dtype) for k, a in v.items()}


@pytest.mark.parametrize("box", [False, True])
def test_solution_matches_cvxpy_with_per_stage_data(box):
    v = _values()
    xs, us = _problem(box).compile().to_torch()(**_torch(v))
    X, U = _reference(v, box)
    np.testing.assert_allclose(us.numpy(), U, atol=1e-6)
    np.testing.assert_allclose(xs.numpy(), X, atol=1e-6)
    if box:
        assert np.isclose(np.abs(U).max(), 0.8)  # the box is active somewhere


def test_per_stage_bounds_match_cvxpy():
    v = _values(tv_bound=True)
    xs, us = _problem(tv_bound=True).compile().to_torch()(**_torch(v))
    np.testing.assert_allclose(us.numpy(), _reference(v)[1], atol=1e-6)


def test_gradients_of_every_kind_of_time_varying_parameter_match_central_differences():
    layer = _problem(box=False).compile().to_torch()
    v = _values(1)
    rng = np.random.default_rng(5)
    wx, wu = rng.standard_normal((T + 1, n)), rng.standard_normal((T, m))

    def loss(values):
        xs, us = layer(**_torch(values))
        return float((xs.numpy() * wx).sum() + (us.numpy() * wu).sum())

    inputs = {k: t.requires_grad_() for k, t in _torch(v).items()}
    xs, us = layer(**inputs)
    ((xs * torch.tensor(wx)).sum() + (us * torch.tensor(wu)).sum()).backward()
    h = 1e-6
    for name in ("A", "r", "w", "x0"):
        fd = np.zeros_like(v[name])
        for idx in np.ndindex(v[name].shape):
            plus, minus = {**v, name: v[name].copy()}, {**v, name: v[name].copy()}
            plus[name][idx] += h
            minus[name][idx] -= h
            fd[idx] = (loss(plus) - loss(minus)) / (2 * h)
        np.testing.assert_allclose(inputs[name].grad.numpy(), fd, atol=1e-6, rtol=1e-6, err_msg=name)


def test_length_T_works_where_no_terminal_term_uses_it_and_other_lengths_raise():
    layer = _problem(box=False).compile().to_torch()
    v = _values()
    full = layer(**_torch(v))
    short = layer(**_torch({**v, "A": v["A"][:T]}))  # A is in no terminal term: T stages suffice
    assert v["A"].shape[0] == T
    torch.testing.assert_close(short[1], full[1])
    with pytest.raises(dc.InputError, match=r"'r' expects a time axis: shape \(7, 2\).*terminal term"):
        layer(**_torch({**v, "r": v["r"][:T]}))
    with pytest.raises(dc.InputError, match=r"'A' expects a time axis: shape \(7, 2, 2\) or \(6, 2, 2\)"):
        layer(**_torch({**v, "A": np.eye(n)}))


def test_batched_equals_unbatched_and_float32_agrees():
    layer = _problem().compile().to_torch()
    vals = [_values(s) for s in range(3)]
    batch = {k: np.stack([v[k] for v in vals]) for k in vals[0]}
    xs, us = layer(**_torch(batch))
    for i, v in enumerate(vals):
        torch.testing.assert_close(us[i], layer(**_torch(v))[1], atol=1e-10, rtol=1e-10)
    us32 = layer(**_torch(vals[0], torch.float32))[1]
    torch.testing.assert_close(us32.double(), us[0], atol=1e-4, rtol=1e-4)


def test_jax_equals_torch():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    compiled = _problem().compile()
    v = _values(2)
    xt, ut = compiled.to_torch()(**_torch(v))
    solve = jax.jit(lambda **kw: compiled.to_jax()(**kw))
    xj, uj = solve(**{k: jax.numpy.asarray(a) for k, a in v.items()})
    np.testing.assert_allclose(np.asarray(uj), ut.numpy(), atol=1e-9)
    grad = jax.grad(lambda r: compiled.to_jax()(**{**{k: jax.numpy.asarray(a) for k, a in v.items()}, "r": r})[1].sum())
    g = grad(jax.numpy.asarray(v["r"]))
    inputs = _torch(v)
    inputs["r"].requires_grad_()
    compiled.to_torch()(**inputs)[1].sum().backward()
    np.testing.assert_allclose(np.asarray(g), inputs["r"].grad.numpy(), atol=1e-9)


def test_declarations_that_give_time_varying_no_meaning_raise():
    y, p = dc.Variable(2, name="y"), dc.Parameter(2, name="p", time_varying=True)
    with pytest.raises(dc.ModelError, match="only a dc.ControlProblem"):
        dc.Problem(dc.Minimize(dc.sum_squares(y - p)))
    x, u = dc.State(2, name="x"), dc.Control(1, name="u")
    with pytest.raises(dc.ModelError, match="initial_state uses the time_varying parameter p"):
        dc.ControlProblem(dynamics=x.next == x + u[0], cost=dc.sum_squares(x) + dc.sum_squares(u), horizon=3,
                          initial_state=p)


def test_explain_marks_per_stage_data_and_other_backends_say_why_not():
    text = _problem().explain()
    assert "(from A, per stage)" in text and "(from w, r, per stage)" in text and "(from r, at stage T)" in text
    assert "cone: fits, but 'lqr' comes first" in text
    # w * sum_squares(x - r) with both w and r parameters is not DPP: cone says so, naming it
    with pytest.raises(dc.ModelError, match="cost at t = 0 is convex .DCP. but not DPP"):
        _problem().compile(backend="cone")


@pytest.mark.parametrize("box", [False, True])
def test_ilqr_takes_time_varying_data_and_matches_cvxpy(box):
    """The same linear time-varying problem forced onto ilqr (its own per-stage evaluation
    of A_t, r_t, w_t in the rollouts, Jacobians and Hessians) against cvxpy; gradients
    against lqr's, which the tests above check against central differences."""
    v = _values(2)
    X, U = _reference(v, box)
    layer = _problem(box).compile(backend="ilqr", tol=1e-10, max_iter=200).to_torch()
    values = {k: a.requires_grad_() for k, a in _torch(v).items()}
    xs, us = layer(**values)
    np.testing.assert_allclose(us.detach().numpy(), U, atol=1e-6)
    us.square().sum().backward()
    lqr_values = {k: a.detach().clone().requires_grad_() for k, a in _torch(v).items()}
    _problem(box).compile(backend="lqr").to_torch()(**lqr_values)[1].square().sum().backward()
    for k in ("A", "r", "w", "x0"):
        np.testing.assert_allclose(values[k].grad.numpy(), lqr_values[k].grad.numpy(), atol=1e-6)


def test_ilqr_tracks_a_time_varying_reference_with_nonlinear_dynamics():
    """A pendulum tracking a moving angle: against L-BFGS-B on the shooting problem, JAX = torch,
    and the gradient w.r.t. the reference rows against central differences of re-solves."""
    T_, dt = 15, 0.1
    x, u = dc.State(2, name="x"), dc.Control(1, name="u")
    ref = dc.Parameter(name="ref", time_varying=True)
    prob = dc.ControlProblem(
        dynamics=x.next == dc.stack([x[0] + dt * x[1], x[1] + dt * (-9.8 * dc.sin(x[0]) + u[0])]),
        cost=dc.square(x[0] - ref) + 0.01 * dc.sum_squares(u), terminal_cost=10 * dc.square(x[0] - ref),
        horizon=T_, initial_state=np.zeros(2), constraints=[-6 <= u, u <= 6])
    rows = 0.8 * np.sin(np.linspace(0, 2, T_ + 1))
    compiled = prob.compile(tol=1e-10, max_iter=200)
    assert compiled.backend == "ilqr"
    r = torch.tensor(rows, requires_grad=True)
    xs, us = compiled.to_torch()(ref=r)

    def shooting(U, rows):
        X, J = np.zeros(2), 0.0
        for t in range(T_):
            J += (X[0] - rows[t]) ** 2 + 0.01 * U[t] ** 2
            X = np.array([X[0] + dt * X[1], X[1] + dt * (-9.8 * np.sin(X[0]) + U[t])])
        return J + 10 * (X[0] - rows[T_]) ** 2

    from scipy.optimize import minimize

    best = minimize(shooting, np.zeros(T_), args=(rows,), method="L-BFGS-B", bounds=[(-6, 6)] * T_,
                    options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 5000})
    np.testing.assert_allclose(us.detach().numpy()[:, 0], best.x, atol=1e-4)
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    np.testing.assert_allclose(np.asarray(compiled.to_jax()(ref=rows)[1]), us.detach().numpy(), atol=1e-8)
    us.sum().backward()
    layer, eps = compiled.to_torch(), 1e-6
    for t in (0, 5, T_):
        e = np.zeros(T_ + 1)
        e[t] = eps
        fd = (layer(ref=torch.tensor(rows + e))[1].sum() - layer(ref=torch.tensor(rows - e))[1].sum()) / (2 * eps)
        np.testing.assert_allclose(r.grad[t].item(), fd.item(), rtol=1e-5, atol=1e-7)


def _dpp_problem(box: bool, goal: bool = False):
    """The problem of :func:`_problem` with the weight w fixed (w * sum_squares(x - r) with both
    w and r parameters is not DPP, so cvxpylayers could not take it), per-stage bounds, and
    optionally a goal constraint."""
    x, u = dc.State(n, name="x"), dc.Control(m, name="u")
    A = dc.Parameter((n, n), name="A", time_varying=True)
    r = dc.Parameter(n, name="r", time_varying=True)
    umax = dc.Parameter(m, name="umax", time_varying=True)
    x0 = dc.Parameter(n, name="x0")
    return dc.ControlProblem(dynamics=x.next == A @ x + B_NP @ u,
                             cost=1.5 * dc.sum_squares(x - r) + 0.1 * dc.sum_squares(u),
                             terminal_cost=dc.sum_squares(x - r), horizon=T, initial_state=x0,
                             constraints=[-umax <= u, u <= umax] if box else [],
                             terminal_constraints=[x[0] == r[0]] if goal else [])


@pytest.mark.parametrize("box", [False, True])
def test_cone_takes_time_varying_data_and_agrees_with_lqr_and_cvxpy(box):
    """cone writes the problem stage by stage (a cvxpy Parameter per stage for A_t, r_t, umax_t):
    its solution against cvxpy written out directly, its gradients against lqr's."""
    v = _values(4, tv_bound=True)
    v["w"] = np.full(T + 1, 1.5)
    X, U = _reference(v, box)
    v.pop("w")
    compiled = _dpp_problem(box).compile(backend="cone")
    assert "(time-varying: at t = 3)" in compiled.explain()
    values = {k: a.requires_grad_() for k, a in _torch(v).items() if box or k != "umax"}
    _, us = compiled.to_torch()(**values)
    np.testing.assert_allclose(us.detach().numpy(), U, atol=1e-5)
    us.square().sum().backward()
    lqr_values = {k: a.detach().clone().requires_grad_() for k, a in values.items()}
    _dpp_problem(box).compile(backend="lqr").to_torch()(**lqr_values)[1].square().sum().backward()
    for k in values:
        np.testing.assert_allclose(values[k].grad.numpy(), lqr_values[k].grad.numpy(), atol=2e-4)


def test_cone_time_varying_goal_reads_row_T_like_lqr():
    v = _values(5, tv_bound=True)
    values = {k: a for k, a in _torch(v).items() if k not in ("w", "umax")}
    _, u_cone = _dpp_problem(False, goal=True).compile(backend="cone").to_torch()(**values)
    _, u_lqr = _dpp_problem(False, goal=True).compile(backend="lqr").to_torch()(**values)
    np.testing.assert_allclose(u_cone.numpy(), u_lqr.numpy(), atol=1e-5)
