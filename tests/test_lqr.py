"""The lqr backend against independent references: dense KKT solves (autograd), cvxpy +
Clarabel, and central finite differences; float64 unless stated."""

from __future__ import annotations

import pytest
import torch
from zoo import cvxpy_box_solve, dense_kkt_solve, lq_problem, lq_values, rel_err

import diffcontrol as dc

NAMES = ("A", "B", "d", "x0", "Q", "R", "QT", "q", "r")


def _loss_weights(T, n, m, batch=None, seed=7):
    g = torch.Generator().manual_seed(seed)
    lead = () if batch is None else (batch,)
    return (torch.randn(*lead, T + 1, n, generator=g, dtype=torch.float64),
            torch.randn(*lead, T, m, generator=g, dtype=torch.float64))


def _grads(fn, values, wx, wu):
    values = {k: v.clone().requires_grad_(True) for k, v in values.items()}
    x, u = fn(values)
    loss = (wx * x).sum() + (wu * u).sum()
    grads = torch.autograd.grad(loss, [values[k] for k in NAMES])
    return x.detach(), u.detach(), dict(zip(NAMES, grads))


def _box_active_set(v, T, lo, hi):
    """Active controls from cvxpy's duals (independent of our solver): {(t, i): bound}."""
    _, U, dual = cvxpy_box_solve(v, T, lo, hi)
    active = {}
    for t in range(T):
        for i in range(U.shape[1]):
            if abs(float(dual[t, i])) > 1e-6:
                active[(t, i)] = torch.tensor(lo if dual[t, i] > 0 else hi, dtype=torch.float64)
    return active, U, dual


@pytest.fixture(params=[False, True], ids=["riccati", "condensed"])
def condense(request):
    """Both of the backend's paths: Riccati sweeps, and the condensed dense QP of short horizons."""
    return request.param


# ---- unconstrained: exact to 1e-8 -------------------------------------------------------


@pytest.mark.parametrize("n,m,T", [(3, 2, 5), (4, 4, 12), (6, 1, 3)])
def test_unconstrained_solution_and_gradients_match_dense_kkt(n, m, T, condense):
    layer = lq_problem(n, m, T).problem.compile(condense=condense).to_torch()
    v = lq_values(n, m, None, seed=n + m + T)
    wx, wu = _loss_weights(T, n, m)
    x, u, g = _grads(lambda p: layer(**p), v, wx, wu)
    X, U, G = _grads(lambda p: dense_kkt_solve(p, T), v, wx, wu)
    assert rel_err(x, X) < 1e-8 and rel_err(u, U) < 1e-8
    for k in NAMES:
        assert rel_err(g[k], G[k]) < 1e-8, k


def test_unconstrained_gradients_match_finite_differences(condense):
    n, m, T = 3, 2, 4
    layer = lq_problem(n, m, T).problem.compile(condense=condense).to_torch()
    v = {k: t.requires_grad_(True) for k, t in lq_values(n, m, None, seed=3).items()}
    wx, wu = _loss_weights(T, n, m)

    def f(*args):
        x, u = layer(**dict(zip(NAMES, args)))
        return (wx * x).sum() + (wu * u).sum()

    assert torch.autograd.gradcheck(f, tuple(v[k] for k in NAMES), eps=1e-6, atol=1e-7, rtol=1e-6)


# ---- box-constrained: 1e-6 on solutions, 1e-5 on gradients ------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_box_solution_matches_cvxpy_clarabel(seed, condense):
    n, m, T, lo, hi = 4, 3, 8, -0.6, 0.4
    layer = lq_problem(n, m, T, lo, hi).problem.compile(condense=condense).to_torch()
    v = lq_values(n, m, None, seed=seed, scale_x0=2.0)
    x, u, info = layer(**v, return_info=True)
    X, U, dual = cvxpy_box_solve(v, T, lo, hi)
    assert bool(info.converged)
    assert (dual.abs() > 1e-6).any(), "the test needs active bounds"
    assert (dual.abs() < 1e-9).any(), "the test needs free controls"
    assert rel_err(u, U) < 1e-6 and rel_err(x, X) < 1e-6


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_box_gradients_match_reduced_kkt_with_active_set_fixed(seed, condense):
    n, m, T, lo, hi = 4, 3, 8, -0.6, 0.4
    layer = lq_problem(n, m, T, lo, hi).problem.compile(condense=condense).to_torch()
    v = lq_values(n, m, None, seed=seed, scale_x0=2.0)
    active, _, _ = _box_active_set(v, T, lo, hi)
    assert 0 < len(active) < T * m
    wx, wu = _loss_weights(T, n, m)
    _, _, g = _grads(lambda p: layer(**p), v, wx, wu)
    _, _, G = _grads(lambda p: dense_kkt_solve(p, T, active), v, wx, wu)
    for k in NAMES:
        assert rel_err(g[k], G[k]) < 1e-5, k


def test_box_gradients_match_finite_differences_including_parameter_bounds(condense):
    n, m, T = 3, 2, 6
    x, u = dc.State(n), dc.Control(m)
    A, B, x0 = dc.Parameter((n, n), name="A"), dc.Parameter((n, m), name="B"), dc.Parameter(n, name="x0")
    lo, hi = dc.Parameter(m, name="lo"), dc.Parameter(name="hi")
    prob = dc.ControlProblem(dynamics=x.next == A @ x + B @ u, cost=dc.sum_squares(x) + 0.1 * dc.sum_squares(u),
                             terminal_cost=dc.sum_squares(x), horizon=T, initial_state=x0,
                             constraints=[lo <= u, u <= hi])
    layer = prob.compile(condense=condense).to_torch()
    g = torch.Generator().manual_seed(1)
    vals = {"A": torch.eye(n, dtype=torch.float64) + 0.2 * torch.randn(n, n, generator=g, dtype=torch.float64),
            "B": torch.randn(n, m, generator=g, dtype=torch.float64),
            "x0": 2 * torch.randn(n, generator=g, dtype=torch.float64),
            "lo": torch.tensor([-0.3, -0.5], dtype=torch.float64), "hi": torch.tensor(0.35, dtype=torch.float64)}
    _, u_star, info = layer(**vals, return_info=True)
    # FD is valid only off the active-set boundary: every control strictly inside or clearly at a bound.
    gap = torch.minimum((u_star - vals["lo"]).abs(), (u_star - vals["hi"]).abs())
    assert ((gap < 1e-12) | (gap > 1e-3)).all() and (gap < 1e-12).any()
    names = list(vals)
    wx, wu = _loss_weights(T, n, m, seed=5)

    def f(*args):
        xs, us = layer(**dict(zip(names, args)))
        return (wx * xs).sum() + (wu * us).sum()

    inputs = tuple(t.clone().requires_grad_(True) for t in vals.values())
    assert torch.autograd.gradcheck(f, inputs, eps=1e-7, atol=1e-6, rtol=1e-5)


# ---- batching, dtypes, modes ------------------------------------------------------------


def test_batched_equals_stack_of_unbatched_with_broadcasting(condense):
    n, m, T, batch = 3, 2, 6, 4
    layer = lq_problem(n, m, T, -0.5, 0.5).problem.compile(condense=condense).to_torch()
    v = lq_values(n, m, None, seed=11)
    v["x0"] = lq_values(n, m, batch, seed=12, scale_x0=2.0)["x0"]  # only x0 is batched
    v["A"] = lq_values(n, m, batch, seed=13)["A"]                  # and A
    wx, wu = _loss_weights(T, n, m, batch)
    xb, ub, gb = _grads(lambda p: layer(**p), v, wx, wu)
    for i in range(batch):
        vi = dict(v, x0=v["x0"][i], A=v["A"][i])
        xi, ui, gi = _grads(lambda p: layer(**p), vi, wx[i], wu[i])
        assert rel_err(xb[i], xi) < 1e-12 and rel_err(ub[i], ui) < 1e-12
        assert rel_err(gb["x0"][i], gi["x0"]) < 1e-10 and rel_err(gb["A"][i], gi["A"]) < 1e-10
    assert xb.shape == (batch, T + 1, n) and ub.shape == (batch, T, m)
    assert gb["B"].shape == (n, m)  # an unbatched parameter gets the summed gradient


@pytest.mark.parametrize("bounds", [(None, None), (-0.5, 0.5)])
def test_float32_agrees_with_float64(bounds, condense):
    n, m, T = 4, 2, 10
    layer = lq_problem(n, m, T, *bounds).problem.compile(condense=condense).to_torch()
    v64 = lq_values(n, m, 8, seed=21)
    v32 = {k: t.float() for k, t in v64.items()}
    wx, wu = _loss_weights(T, n, m, 8)
    x64, u64, g64 = _grads(lambda p: layer(**p), v64, wx, wu)
    x32, u32, g32 = _grads(lambda p: layer(**p), v32, wx.float(), wu.float())
    assert x32.dtype == torch.float32
    assert rel_err(u32, u64) < 1e-4 and rel_err(x32, x64) < 1e-4
    for k in NAMES:
        assert rel_err(g32[k], g64[k]) < 1e-3, k


def test_unroll_agrees_with_implicit(condense):
    n, m, T, lo, hi = 3, 2, 6, -0.5, 0.5
    prob = lq_problem(n, m, T, lo, hi).problem
    v = lq_values(n, m, 3, seed=4, scale_x0=2.0)
    wx, wu = _loss_weights(T, n, m, 3)
    _, u_i, g_i = _grads(lambda p: prob.compile(condense=condense).to_torch()(**p), v, wx, wu)
    _, u_u, g_u = _grads(lambda p: prob.compile(backward="unroll", condense=condense).to_torch()(**p), v, wx, wu)
    assert rel_err(u_u, u_i) < 1e-10
    for k in NAMES:
        assert rel_err(g_u[k], g_i[k]) < 1e-6, k


def test_warm_start_reaches_the_same_solution_in_fewer_iterations(condense):
    n, m, T = 4, 3, 8
    layer = lq_problem(n, m, T, -0.6, 0.4).problem.compile(condense=condense).to_torch()
    v = lq_values(n, m, 5, seed=2, scale_x0=2.0)
    x, u, cold = layer(**v, return_info=True)
    x2, u2, warm = layer(**v, u_init=u, return_info=True)
    assert rel_err(u2, u) < 1e-10
    assert int(cold.iterations.sum()) > 5 and (warm.iterations == 0).all()


def test_nonconvergence_warns_and_raises_on_request(condense):
    n, m, T = 4, 3, 8
    prob = lq_problem(n, m, T, -0.6, 0.4).problem
    v = lq_values(n, m, 5, seed=2, scale_x0=2.0)
    with pytest.warns(dc.NotConvergedWarning, match=r"of 5 examples did not converge"):
        _, _, info = prob.compile(max_iter=1, condense=condense).to_torch()(**v, return_info=True)
    assert not bool(info.converged.all())
    with pytest.raises(dc.SolverError, match="did not converge"):
        prob.compile(max_iter=1, on_nonconvergence="raise", condense=condense).to_torch()(**v)


def test_gradients_flow_for_unconverged_examples_too(condense):
    """Never silently zero a gradient (mpc.pytorch's issue #46): unconverged examples keep theirs."""
    prob = lq_problem(4, 3, 8, -0.6, 0.4).problem
    v = {k: t.requires_grad_(True) for k, t in lq_values(4, 3, 5, seed=2, scale_x0=2.0).items()}
    with pytest.warns(dc.NotConvergedWarning):
        x, u, info = prob.compile(max_iter=1, condense=condense).to_torch()(**v, return_info=True)
    wx, wu = _loss_weights(8, 4, 3, 5)
    ((wx * x).sum() + (wu * u).sum()).backward()
    bad = ~info.converged
    assert bad.any()
    for k in ("A", "x0"):  # (Q may truly not matter when every control sits at a bound)
        g = v[k].grad[bad].flatten(1)
        assert torch.isfinite(g).all() and (g.abs().sum(-1) > 0).all(), k


def test_non_positive_definite_control_cost_raises(condense):
    x, u = dc.State(2), dc.Control(1)
    R = dc.Parameter(name="R")
    prob = dc.ControlProblem(dynamics=x.next == x + u, cost=dc.sum_squares(x) + R * dc.sum_squares(u),
                             horizon=3, initial_state=[1.0, 0.0])
    layer = prob.compile(condense=condense).to_torch()
    with pytest.raises(dc.SolverError, match="positive definite"):
        layer(R=torch.tensor(-5.0, dtype=torch.float64))


def test_autodiff_fallback_for_jacobians_agrees_with_the_symbolic_path():
    """Dynamics the symbolic Jacobian rules do not cover (a transposed vector) lower through autodiff."""
    n, m, T = 3, 2, 4
    x, u = dc.State(n), dc.Control(m)
    A, B, x0 = dc.Parameter((n, n), name="A"), dc.Parameter((n, m), name="B"), dc.Parameter(n, name="x0")
    cost = dc.sum_squares(x) + dc.sum_squares(u)
    symbolic = dc.ControlProblem(dynamics=x.next == A @ x + B @ u, cost=cost, horizon=T, initial_state=x0)
    fallback = dc.ControlProblem(dynamics=x.next == (A @ x).T + B @ u, cost=cost, horizon=T, initial_state=x0)
    assert symbolic.compile().program.jacobians is not None
    assert fallback.compile().program.jacobians is None
    v = lq_values(n, m, 2, seed=9)
    wx, wu = _loss_weights(T, n, m, 2)
    grads = []
    for prob in (symbolic, fallback):
        inputs = {k: v[k].clone().requires_grad_(True) for k in ("A", "B", "x0")}
        xs, us = prob.compile().to_torch()(**inputs)
        ((wx * xs).sum() + (wu * us).sum()).backward()
        grads.append((xs.detach(), inputs["A"].grad))
    assert rel_err(grads[1][0], grads[0][0]) < 1e-12 and rel_err(grads[1][1], grads[0][1]) < 1e-12


def test_condense_option_is_validated_and_auto_condenses_short_horizons():
    with pytest.raises(dc.BackendError, match="condense must be 'auto', True or False, got 'yes'"):
        lq_problem(3, 2, 5).problem.compile(condense="yes")
    from diffcontrol.backends.lqr import _condenses

    options = {"condense": "auto"}
    assert _condenses(options, 5, 3) and _condenses(options, 16, 4) and not _condenses(options, 50, 4)


@pytest.mark.parametrize("bound", [None, 5.0, 100.0])
def test_long_horizon_of_unstable_dynamics_matches_clarabel(bound):
    """200 stages of the cartpole linearised at upright (an unstable mode, x1.2 per step) with
    time-varying perturbations, a stiff terminal weight and a small control weight.
    Unboxed: the Riccati recursion must keep the value function symmetric (the roundoff of
    A^T V A is not, and its skew part grew with the unstable mode: before, the controls came
    back 82% off with no warning, since the KKT residual was computed from the same corrupted
    sweep). With a box |u| <= bound (5: active at the first stages; 100: never active): the
    open-loop rollout of the zero controls reaches 1e13 here, so the active-set solves must
    not linearise about it (before, both stopped at max_iter unconverged), and the states
    returned must be the solves' closed-loop ones, not an open-loop rollout of the controls,
    which amplifies their roundoff by the unstable mode."""
    cp = pytest.importorskip("cvxpy")
    T, n, m, dt = 200, 4, 1, 0.05
    g = torch.Generator().manual_seed(0)
    Ac = torch.tensor([[0, 1, 0, 0], [0, 0, -0.717, 0], [0, 0, 0, 1], [0, 0, 15.76, 0.]], dtype=torch.float64)
    Bc = torch.tensor([[0], [0.976], [0], [-1.463]], dtype=torch.float64)
    A_t = torch.eye(n, dtype=torch.float64) + dt * Ac + 0.01 * torch.randn(T, n, n, generator=g, dtype=torch.float64)
    B_t = dt * Bc + 0.001 * torch.randn(T, n, m, generator=g, dtype=torch.float64)
    x0 = torch.tensor([0.1, 0.0, 0.2, 0.0], dtype=torch.float64)
    w = torch.tensor([1.0, 0.1, 1.0, 0.1], dtype=torch.float64)
    x, u = dc.State(n), dc.Control(m)
    A = dc.Parameter((n, n), name="A", time_varying=True)
    B = dc.Parameter((n, m), name="B", time_varying=True)
    prob = dc.ControlProblem(dynamics=x.next == A @ x + B @ u,
                             cost=dt * dc.sum(w.numpy() * x ** 2) + 1e-3 * dc.sum_squares(u),
                             terminal_cost=200 * dc.sum_squares(x), horizon=T, initial_state=x0.numpy(),
                             constraints=[] if bound is None else [-bound <= u, u <= bound])
    xs, us, info = prob.compile(backend="lqr", condense=False).to_torch()(A=A_t, B=B_t, return_info=True)
    assert bool(info.converged.all()) and bool(torch.isfinite(us).all())

    X, U = cp.Variable((T + 1, n)), cp.Variable((T, m))
    cost = sum(dt * cp.sum(cp.multiply(w.numpy(), cp.square(X[t]))) + 1e-3 * cp.sum_squares(U[t]) for t in range(T))
    cons = [X[0] == x0.numpy()] + ([] if bound is None else [cp.abs(U) <= bound])
    cons += [X[t + 1] == A_t[t].numpy() @ X[t] + B_t[t].numpy() @ U[t] for t in range(T)]
    cp.Problem(cp.Minimize(cost + 200 * cp.sum_squares(X[T])), cons).solve(
        solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12, max_iter=500)
    if bound is not None:
        assert (int((abs(U.value) > bound - 1e-6).sum()) > 0) == (bound == 5.0)
    assert rel_err(us, torch.tensor(U.value)) < 1e-5
    assert rel_err(xs, torch.tensor(X.value)) < 1e-5
