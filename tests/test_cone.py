"""The cone backend against independent references: cvxpy solved directly with Clarabel at
tight tolerance (written out per time step, not through our lowering), finite differences of
that direct solve, closed forms, and the lqr backend on the same LQ problem."""

from __future__ import annotations

import warnings

import cvxpy as cp
import numpy as np
import pytest
import torch

import diffcontrol as dc
from tests.zoo import lq_problem, lq_values, rel_err

TIGHT = dict(solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10, max_iter=500)


def fd_gradient(solve, values: dict[str, np.ndarray], weights: list[np.ndarray], h: float = 1e-5) -> dict:
    """Central differences of sum_i <weights_i, solve(values)_i> with respect to every value."""
    def loss(vals):
        return sum(float(np.sum(w * s)) for w, s in zip(weights, solve(vals)))

    grads = {}
    for name, v in values.items():
        g = np.zeros_like(v)
        for idx in np.ndindex(v.shape):
            plus, minus = dict(values), dict(values)
            plus[name], minus[name] = v.copy(), v.copy()
            plus[name][idx] += h
            minus[name][idx] -= h
            g[idx] = (loss(plus) - loss(minus)) / (2 * h)
        grads[name] = g
    return grads


def layer_gradient(layer, values: dict[str, np.ndarray], weights: list[np.ndarray]):
    inputs = {k: torch.tensor(v, requires_grad=True) for k, v in values.items()}
    outs = layer(**inputs)
    loss = sum((torch.tensor(w) * o).sum() for w, o in zip(weights, outs))
    grads = torch.autograd.grad(loss, list(inputs.values()))
    return [o.detach().numpy() for o in outs], dict(zip(inputs, (g.numpy() for g in grads)))


def check_against_reference(prob, reference, values, seed=0, sol_tol=1e-6, grad_tol=1e-5):
    """Solution against the direct solve; gradients against its finite differences."""
    compiled = prob.compile()
    assert compiled.backend == "cone"
    ref = reference(values)
    rng = np.random.default_rng(seed)
    weights = [rng.standard_normal(r.shape) for r in ref]
    sols, grads = layer_gradient(compiled.to_torch(), values, weights)
    for s, r in zip(sols, ref):
        assert np.abs(s - r).max() <= sol_tol * (1 + np.abs(r).max())
    fd = fd_gradient(reference, values, weights)
    for name in values:
        assert rel_err(torch.tensor(grads[name]), torch.tensor(fd[name])) < grad_tol, name


# ---- nonnegative least squares ---------------------------------------------------------------


def _nnls():
    x = dc.Variable(4, name="x")
    A, b = dc.Parameter((6, 4), name="A"), dc.Parameter(6, name="b")
    return dc.Problem(dc.Minimize(dc.sum_squares(A @ x - b)), [x >= 0])


def _nnls_direct(v):
    x = cp.Variable(4)
    cp.Problem(cp.Minimize(cp.sum_squares(v["A"] @ x - v["b"])), [x >= 0]).solve(**TIGHT)
    return [x.value]


def _nnls_values(seed=0):
    rng = np.random.default_rng(seed)
    return {"A": rng.standard_normal((6, 4)), "b": rng.standard_normal(6)}


def test_nnls_matches_direct_cvxpy_and_finite_differences():
    values = _nnls_values()
    assert (_nnls_direct(values)[0] < 1e-8).any()  # some bound active: a real NNLS case
    check_against_reference(_nnls(), _nnls_direct, values)


def test_nnls_batched_equals_unbatched_and_broadcasts():
    layer = _nnls().compile().to_torch()
    vals = [_nnls_values(s) for s in range(3)]
    A = torch.tensor(np.stack([v["A"] for v in vals]))
    (xb,) = layer(A=A, b=torch.tensor(vals[0]["b"]))  # b broadcasts
    assert xb.shape == (3, 4)
    for i, v in enumerate(vals):
        (xi,) = layer(A=A[i], b=torch.tensor(vals[0]["b"]))
        assert xi.shape == (4,)
        assert torch.allclose(xb[i], xi, atol=1e-9)
        ref = _nnls_direct({"A": v["A"], "b": vals[0]["b"]})[0]
        assert np.abs(xi.numpy() - ref).max() < 1e-7


# ---- a box-constrained LQ problem with a state constraint ---------------------------------------


def _lq_state_constrained(T=4):
    x, u = dc.State(2, name="x"), dc.Control(1, name="u")
    A, B, x0 = dc.Parameter((2, 2), name="A"), dc.Parameter((2, 1), name="B"), dc.Parameter(2, name="x0")
    return dc.ControlProblem(dynamics=x.next == A @ x + B @ u, cost=dc.sum_squares(x) + 0.1 * dc.sum_squares(u),
                             terminal_cost=dc.sum_squares(x), horizon=T, initial_state=x0,
                             constraints=[x[0] >= -0.09, -0.5 <= u, u <= 0.5])


def _lq_state_direct(v, T=4):
    X, U = cp.Variable((T + 1, 2)), cp.Variable((T, 1))
    cons = [X[0] == v["x0"]]
    cost = 0
    for t in range(T):
        cons += [X[t + 1] == v["A"] @ X[t] + v["B"] @ U[t], X[t + 1, 0] >= -0.09, U[t] >= -0.5, U[t] <= 0.5]
        cost += cp.sum_squares(X[t]) + 0.1 * cp.sum_squares(U[t])
    cp.Problem(cp.Minimize(cost + cp.sum_squares(X[T])), cons).solve(**TIGHT)
    return [X.value, U.value]


def _lq_state_values():
    return {"A": np.array([[1.0, 0.2], [0.0, 1.0]]), "B": np.array([[0.05], [1.0]]), "x0": np.array([0.5, -1.6])}


def test_lq_with_state_constraint_goes_to_cone_and_explain_says_why():
    prob = _lq_state_constrained()
    text = prob.explain()
    assert "Backend: cone" in text
    assert "lqr: 'lqr' needs no constraints other than box bounds on the controls" in text
    assert "state constraint: -0.09 <= x[0]" in text and "ilqr: fits, but leaves it to 'cone'" in text
    ref = _lq_state_direct(_lq_state_values())
    assert np.isclose(ref[0][1:, 0].min(), -0.09, atol=1e-7)  # the state constraint is active
    assert np.isclose(np.abs(ref[1]).max(), 0.5, atol=1e-7)  # and so is the box


def test_lq_with_state_constraint_matches_direct_cvxpy_and_finite_differences():
    check_against_reference(_lq_state_constrained(), _lq_state_direct, _lq_state_values())


def test_without_the_state_constraint_it_stays_lqr_unless_cone_is_forced():
    prob = lq_problem(3, 2, 5, lo=-0.5, hi=0.5).problem
    assert prob.compile().backend == "lqr"
    assert prob.compile(backend="cone").backend == "cone"


@pytest.mark.parametrize("batch", [None, 3])
def test_lqr_and_cone_agree_on_the_same_lq_problem(batch):
    prob = lq_problem(3, 2, 5, lo=-0.5, hi=0.5).problem
    values = lq_values(3, 2, batch, seed=6 if batch is None else 3, scale_x0=1.0)
    results = {}
    for backend in ("lqr", "cone"):
        inputs = {k: v.clone().requires_grad_() for k, v in values.items()}
        x, u = prob.compile(backend=backend).to_torch()(**inputs)
        loss = (u * torch.linspace(-1, 1, u.numel()).reshape(u.shape)).sum() + (x ** 2).sum()
        results[backend] = (x, u, torch.autograd.grad(loss, list(inputs.values())))
    (xl, ul, gl), (xc, uc, gc) = results["lqr"], results["cone"]
    active = (ul.abs() - 0.5).abs() < 1e-9
    assert active.any() and not active.all()  # some bounds active, some not
    assert (ul - uc).abs().max() < 1e-6 and (xl - xc).abs().max() < 1e-6
    for a, b in zip(gc, gl):
        assert rel_err(a, b) < 1e-5


# ---- a norm constraint (SOCP): projection onto a ball, in closed form -----------------------------


def test_projection_onto_a_ball_matches_the_closed_form():
    x, p, r = dc.Variable(3, name="x"), dc.Parameter(3, name="p"), dc.Parameter(name="r", nonneg=True)
    prob = dc.Problem(dc.Minimize(dc.sum_squares(x - p)), [dc.norm2(x) <= r])
    layer = prob.compile().to_torch()
    pv = torch.tensor([[1.0, 2.0, -2.0], [0.1, 0.2, -0.1]], dtype=torch.float64, requires_grad=True)
    rv = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    (xs,) = layer(p=pv, r=rv)
    norm = pv.detach().norm(dim=1, keepdim=True)
    expected = pv.detach() * torch.clamp(rv.detach() / norm, max=1.0)
    assert (xs - expected).abs().max() < 1e-7
    w = torch.tensor([0.3, -1.0, 0.5], dtype=torch.float64)
    gp, gr = torch.autograd.grad((xs[0] * w).sum(), [pv, rv])
    p0, n0, r0 = pv.detach()[0], norm[0], rv.detach()
    jac = r0 / n0 * (torch.eye(3, dtype=torch.float64) - torch.outer(p0, p0) / n0 ** 2)  # outside the ball
    assert rel_err(gp[0], jac @ w) < 1e-5 and gp[1].abs().max() < 1e-6  # inside: x = p, not batch 0's loss
    assert rel_err(gr, (p0 / n0) @ w) < 1e-5


# ---- a generic QP with equality and inequality constraints --------------------------------------


def _qp():
    x = dc.Variable(4, name="x")
    P, q = dc.Parameter((4, 4), name="P"), dc.Parameter(4, name="q")
    A, b = dc.Parameter((1, 4), name="A"), dc.Parameter(1, name="b")
    G, h = dc.Parameter((3, 4), name="G"), dc.Parameter(3, name="h")
    prob = dc.Problem(dc.Minimize(0.5 * dc.quad_form(x, P) + q @ x), [A @ x == b, G @ x <= h])
    return prob


def _qp_direct(v):
    x = cp.Variable(4)
    P = 0.5 * (v["P"] + v["P"].T)
    cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, P) + v["q"] @ x),
               [v["A"] @ x == v["b"], v["G"] @ x <= v["h"]]).solve(**TIGHT)
    return [x.value]


def test_generic_qp_with_equality_and_inequality_matches_direct_cvxpy_and_finite_differences():
    rng = np.random.default_rng(3)
    M = rng.standard_normal((4, 4))
    values = {"P": M @ M.T + np.eye(4), "q": rng.standard_normal(4), "A": rng.standard_normal((1, 4)),
              "b": rng.standard_normal(1), "G": rng.standard_normal((3, 4)), "h": np.array([-0.5, -0.5, 5.0])}
    x = _qp_direct(values)[0]
    slack = values["h"] - values["G"] @ x
    assert slack.min() < 1e-8 and slack.max() > 1e-3  # one inequality active, one not
    check_against_reference(_qp(), _qp_direct, values)


# ---- control problems with nonsmooth stage terms, vectorised over the horizon ---------------------


def test_norm_cost_and_mixed_constraint_over_the_horizon_match_a_per_step_cvxpy_model():
    T = 3
    x, u = dc.State(2, name="x"), dc.Control(2, name="u")
    A, x0, c = dc.Parameter((2, 2), name="A"), dc.Parameter(2, name="x0"), dc.Parameter(2, name="c")
    prob = dc.ControlProblem(dynamics=x.next == A @ x + u, cost=dc.norm2(u) + dc.sum_squares(x - c) + dc.abs(u[1]),
                             horizon=T, initial_state=x0, constraints=[x[0] + u[0] <= 1.0, dc.sum(u) >= -1])

    def direct(v):
        X, U = cp.Variable((T + 1, 2)), cp.Variable((T, 2))
        cons, cost = [X[0] == v["x0"]], 0
        for t in range(T):
            cons += [X[t + 1] == v["A"] @ X[t] + U[t], X[t, 0] + U[t, 0] <= 1.0, cp.sum(U[t]) >= -1]
            cost += cp.norm(U[t], 2) + cp.sum_squares(X[t] - v["c"]) + cp.abs(U[t, 1])
        cp.Problem(cp.Minimize(cost), cons).solve(**TIGHT)
        return [X.value, U.value]

    values = {"A": np.array([[0.9, 0.1], [0.0, 1.1]]), "x0": np.array([1.5, -0.5]), "c": np.array([0.3, 2.0])}
    check_against_reference(prob, direct, values, sol_tol=1e-6, grad_tol=1e-4)


# ---- failures, options, explain ----------------------------------------------------------------


def test_an_infeasible_example_is_reported_per_example_and_never_silent():
    x, lo = dc.Variable(2, name="x"), dc.Parameter(name="lo")
    prob = dc.Problem(dc.Minimize(dc.sum_squares(x)), [x >= lo, dc.sum(x) <= 1.0])
    layer = prob.compile().to_torch()
    lo_t = torch.tensor([0.1, 2.0, -1.0], dtype=torch.float64)  # the second is infeasible
    with pytest.warns(dc.NotConvergedWarning, match="1 of 3 examples did not converge.*infeasible"):
        xs, info = layer(lo=lo_t, return_info=True)
    assert info.converged.tolist() == [True, False, True]
    assert info.status[1] is dc.Status.INFEASIBLE
    assert torch.isnan(xs[1]).all()
    assert torch.allclose(xs[0], torch.tensor([0.1, 0.1], dtype=torch.float64), atol=1e-8)
    assert torch.allclose(xs[2], torch.zeros(2, dtype=torch.float64), atol=1e-8)
    strict = prob.compile(on_nonconvergence="raise").to_torch()
    with pytest.raises(dc.SolverError, match="infeasible"):
        strict(lo=lo_t)


def test_options_are_validated_and_solvers_agree():
    prob = _nnls()
    with pytest.raises(dc.BackendError, match="solver must be one of 'SCS', 'Clarabel'"):
        prob.compile(solver="ECOS")
    with pytest.raises(dc.BackendError, match="derivative must be one of"):
        prob.compile(derivative="exact")
    with pytest.raises(dc.BackendError, match="backward='unroll' is not offered by 'cone'"):
        prob.compile(backward="unroll")
    with pytest.raises(dc.BackendError, match="unknown option 'eps_abs' for backend 'cone'"):
        prob.compile(eps_abs=1e-3)
    values = {k: torch.tensor(v) for k, v in _nnls_values(1).items()}
    (a,) = prob.compile().to_torch()(**values)
    (b,) = prob.compile(solver="Clarabel", derivative="lsmr").to_torch()(**values)
    assert (a - b).abs().max() < 1e-4  # Clarabel's solutions are good to about 1e-5 here


def test_float32_inputs_give_float32_results_and_forward_only_solves_without_grad():
    layer = _nnls().compile().to_torch()
    values = _nnls_values(2)
    (x64,) = layer(**{k: torch.tensor(v) for k, v in values.items()})
    with torch.no_grad():
        (x32,) = layer(**{k: torch.tensor(v, dtype=torch.float32) for k, v in values.items()})
    assert x32.dtype == torch.float32 and not x32.requires_grad
    assert (x32.double() - x64).abs().max() < 1e-5


def test_parameter_matrix_of_quad_form_is_factorised_per_call_and_differentiated():
    x, P, q = dc.Variable(3, name="x"), dc.Parameter((3, 3), name="P"), dc.Parameter(3, name="q")
    prob = dc.Problem(dc.Minimize(dc.quad_form(x, P) + q @ x), [x <= 0.2])

    def direct(v):
        xv = cp.Variable(3)
        cp.Problem(cp.Minimize(cp.quad_form(xv, 0.5 * (v["P"] + v["P"].T)) + v["q"] @ xv), [xv <= 0.2]).solve(**TIGHT)
        return [xv.value]

    rng = np.random.default_rng(5)
    M = rng.standard_normal((3, 3))
    check_against_reference(prob, direct, {"P": M @ M.T + np.eye(3), "q": rng.standard_normal(3)})
    assert "psd_factor(P)" in prob.explain()


def test_warm_start_is_refused_with_the_reason():
    layer = _nnls().compile().to_torch()
    values = {k: torch.tensor(v) for k, v in _nnls_values().items()}
    with pytest.raises(dc.InputError, match="backend 'cone' takes no warm start"):
        layer(**values, y_init=(torch.zeros(4),))
    with pytest.raises(dc.InputError, match="u_init= warm-starts control problems"):
        layer(**values, u_init=torch.zeros(4))


def test_explain_shows_the_cvxpy_problem_cone_sizes_solver_and_parameter_map():
    x, p = dc.Variable(2, name="x"), dc.Parameter(2, name="p")
    h = dc.Parameter(name="h", nonneg=True)
    text = dc.Problem(dc.Minimize(dc.sum_squares(x) / h - p @ x), [dc.norm2(x) <= 1]).explain()
    assert "Backend: cone" in text and "cvxpy problem:" in text and "minimize" in text
    assert "second-order cones" in text and "size N =" in text
    assert "p = p  shape (2,)" in text and "= 1 / (h)" in text
    assert "solver = 'SCS'" in text and "eps = 1e-09" in text


def test_nonconvex_problems_never_go_to_cone():
    x, p = dc.Variable(2, name="x"), dc.Parameter(2, name="p")
    bad_constraint = dc.Problem(dc.Minimize(dc.sum_squares(x - p)), [dc.sum_squares(x) >= 1])
    with pytest.raises(dc.BackendError, match=r"'cone' needs a convex problem .*the constraint "
                                              r"1 <= sum_squares\(x\) is not convex"):
        bad_constraint.compile(backend="cone")
    concave_cost = dc.Problem(dc.Minimize(-dc.sum_squares(x - p)), [x <= 1])
    with pytest.raises(dc.BackendError, match=r"the objective -sum_squares\(x - p\) is not convex"):
        concave_cost.compile(backend="cone")


def test_cvxpy_refusal_names_the_dsl_term():
    x, p, q = dc.Variable(2, name="x"), dc.Parameter(name="p"), dc.Parameter(2, name="q")
    # p * (q @ x) is DCP but not DPP (a parameter times a parameter-affine product)
    prob = dc.Problem(dc.Minimize(dc.sum_squares(x) + p * (q @ x)), [x >= -1])
    with pytest.raises(dc.ModelError, match=r"the objective is convex \(DCP\) but not DPP: a parameter "
                                            r"multiplies an expression that depends on parameters"):
        prob.compile(backend="cone")


@pytest.mark.filterwarnings("error::UserWarning")
def test_a_call_emits_no_warning_from_the_solver_stack():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # except NumPy's about torch's __array__ in cvxpylayers' own conversions, which the cone
        # module ignores by a filter at import; a call no longer swaps the process's warning
        # machinery to hide it (that swallowed other threads' warnings: test_no_silent_failures)
        warnings.filterwarnings("ignore", message="__array__ implementation doesn't accept a copy keyword",
                                category=DeprecationWarning)
        _nnls().compile().to_torch()(**{k: torch.tensor(v) for k, v in _nnls_values().items()})


def test_the_derivative_mode_is_stated_in_explain_and_the_lsmr_switch_warns():
    """derivative='auto' switches to diffcp's iterative lsmr above dense_max_size: explain()
    names the mode chosen and why, and a call that differentiates under that switch warns
    (GradientFallbackWarning); chosen explicitly it does not. The gradient stays close to the
    analytic one: y = clip(c, -1, 1) per entry, so d sum(y) / dc = 2 inside the box."""
    y, c = dc.Variable(2, name="y"), dc.Parameter(name="c")
    prob = dc.Problem(dc.Minimize(dc.sum_squares(y - c)), [y >= -1, y <= 1])
    assert "gradients: diffcp's dense derivative (N <= dense_max_size = 1000): exact" in prob.compile().explain()
    switched = prob.compile(backend="cone", dense_max_size=2)
    assert "gradients: diffcp's lsmr derivative (N > dense_max_size = 2): approximate" in switched.explain()
    c_value = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    with pytest.warns(dc.GradientFallbackWarning, match="derivative='dense'"):
        (sol,) = switched.to_torch()(c=c_value)
    sol.sum().backward()
    assert abs(float(c_value.grad) - 2.0) < 1e-4
    with warnings.catch_warnings():
        warnings.simplefilter("error", dc.GradientFallbackWarning)
        prob.compile(backend="cone", derivative="lsmr").to_torch()(c=c_value)[0].sum().backward()
