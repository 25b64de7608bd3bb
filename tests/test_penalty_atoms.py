"""Penalty atoms and reductions (pos, maximum, huber, softplus, max, norm1, ...) against
independent references: cvxpy's values and DCP verdicts for the same atoms, cvxpy solves of
the same problems, scipy minimisers, and central finite differences that re-solve."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch
from scipy.optimize import minimize

import diffcontrol as dc
from diffcontrol.compilers.analysis import expression_facts
from diffcontrol.dsl.expression import AFFINE, CONCAVE, CONSTANT, CONVEX
from diffcontrol.emitters.torch_ops import TorchFramework
from diffcontrol.programs.evaluate import evaluate

RNG = np.random.default_rng(0)
A = RNG.normal(size=(3, 4))
V = RNG.normal(size=4)

# (ours, cvxpy's) on constants: cvxpy is the reference for each atom's meaning
VALUE_CASES = [
    (lambda m: dc.pos(m), lambda m: cp.pos(m)),
    (lambda m: dc.softplus(m), lambda m: cp.logistic(m)),
    (lambda m: dc.logistic(2 * m), lambda m: cp.logistic(2 * m)),
    (lambda m: dc.huber(m), lambda m: cp.huber(m)),
    (lambda m: dc.huber(m, 0.3), lambda m: cp.huber(m, 0.3)),
    (lambda m: dc.maximum(m, 0.2, -m), lambda m: cp.maximum(m, 0.2, -m)),
    (lambda m: dc.minimum(m, V), lambda m: cp.minimum(m, V)),
    (lambda m: dc.max(m), lambda m: cp.max(m)),
    (lambda m: dc.max(m, axis=1), lambda m: cp.max(m, axis=1)),
    (lambda m: dc.min(m, axis=0), lambda m: cp.min(m, axis=0)),
    (lambda m: dc.logsumexp(m), lambda m: cp.log_sum_exp(m)),
    (lambda m: dc.log_sum_exp(m, axis=0), lambda m: cp.log_sum_exp(m, axis=0)),
    (lambda m: dc.norm1(m), lambda m: cp.norm1(cp.vec(m, order="F"))),
    (lambda m: dc.norm_inf(m), lambda m: cp.norm_inf(cp.vec(m, order="F"))),
    (lambda m: dc.norm(m[0], "inf"), lambda m: cp.norm(m[0], "inf")),
    (lambda m: dc.mean(m, axis=1), lambda m: cp.mean(m, axis=1)),
    (lambda m: dc.multiply(m, V), lambda m: cp.multiply(m, V)),
    (lambda m: dc.reshape(m, (6, 2)), lambda m: cp.reshape(m, (6, 2), order="F")),
    (lambda m: dc.reshape(m, (2, 6), order="C"), lambda m: cp.reshape(m, (2, 6), order="C")),
    (lambda m: dc.hstack([m, m[:, :2]]), lambda m: cp.hstack([m, m[:, :2]])),
    (lambda m: dc.hstack([m[0], m[1]]), lambda m: cp.hstack([m[0], m[1]])),
    (lambda m: dc.vstack([m, V]), lambda m: cp.vstack([m, V])),
    (lambda m: dc.diag(m[0]), lambda m: cp.diag(m[0])),
    (lambda m: dc.diag(m[:, :3]), lambda m: cp.diag(m[:, :3])),
]


@pytest.mark.parametrize("ours, theirs", VALUE_CASES, ids=[str(i) for i in range(len(VALUE_CASES))])
def test_values_match_cvxpy(ours, theirs):
    m = dc.Parameter((3, 4), name="m")
    (out,) = evaluate([ours(m)], {id(m): torch.as_tensor(A)}, TorchFramework, torch.zeros((), dtype=torch.float64))
    np.testing.assert_allclose(out.numpy(), np.asarray(theirs(cp.Constant(A)).value), rtol=1e-10, atol=1e-12)


def test_values_under_jax_match_torch():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    from diffcontrol.emitters.jax_ops import JaxFramework

    m = dc.Parameter((3, 4), name="m")
    exprs = [ours(m) for ours, _ in VALUE_CASES]
    t = evaluate(exprs, {id(m): torch.as_tensor(A)}, TorchFramework, torch.zeros((), dtype=torch.float64))
    j = evaluate(exprs, {id(m): jax.numpy.asarray(A)}, JaxFramework, jax.numpy.zeros(()))
    for a, b in zip(t, j):
        np.testing.assert_allclose(np.asarray(b), a.numpy(), rtol=1e-12, atol=1e-12)


# (ours, cvxpy's) of a variable: cvxpy's DCP verdict is the reference
CURVATURE_CASES = [
    (lambda x: dc.pos(x - 1), lambda x: cp.pos(x - 1)),
    (lambda x: -dc.pos(x), lambda x: -cp.pos(x)),
    (lambda x: dc.pos(dc.square(x)), lambda x: cp.pos(cp.square(x))),
    (lambda x: dc.pos(dc.sqrt(x)), lambda x: cp.pos(cp.sqrt(x))),
    (lambda x: dc.softplus(dc.exp(x)), lambda x: cp.logistic(cp.exp(x))),
    (lambda x: dc.huber(x), lambda x: cp.huber(x)),
    (lambda x: dc.huber(dc.square(x)), lambda x: cp.huber(cp.square(x))),
    (lambda x: dc.maximum(dc.square(x), x), lambda x: cp.maximum(cp.square(x), x)),
    (lambda x: dc.maximum(dc.sqrt(x), x), lambda x: cp.maximum(cp.sqrt(x), x)),
    (lambda x: dc.minimum(dc.sqrt(x), 2 * x), lambda x: cp.minimum(cp.sqrt(x), 2 * x)),
    (lambda x: dc.max(dc.square(x)), lambda x: cp.max(cp.square(x))),
    (lambda x: dc.min(dc.log(x)), lambda x: cp.min(cp.log(x))),
    (lambda x: dc.min(dc.square(x)), lambda x: cp.min(cp.square(x))),
    (lambda x: dc.logsumexp(3 * x), lambda x: cp.log_sum_exp(3 * x)),
    (lambda x: dc.norm1(x - 1), lambda x: cp.norm1(x - 1)),
    (lambda x: dc.norm_inf(dc.square(x)), lambda x: cp.norm_inf(cp.square(x))),
    (lambda x: dc.reshape(dc.square(x), (1, 3)), lambda x: cp.reshape(cp.square(x), (1, 3), order="F")),
]


@pytest.mark.parametrize("ours, theirs", CURVATURE_CASES, ids=[str(i) for i in range(len(CURVATURE_CASES))])
def test_dcp_verdicts_match_cvxpy(ours, theirs):
    x = dc.Variable(3, name="x")
    curvature = expression_facts(ours(x)).curvature
    reference = theirs(cp.Variable(3))
    assert (curvature in (CONVEX, AFFINE, CONSTANT)) == reference.is_convex()
    assert (curvature in (CONCAVE, AFFINE, CONSTANT)) == reference.is_concave()


def _solve_cvxpy(p):
    y = cp.Variable(3)
    cost = (cp.sum_squares(y - p) + 0.5 * cp.norm1(y) + cp.pos(y[0] - 0.3) + 0.2 * cp.max(y)
            + cp.huber(y[1], 0.4) + cp.logistic(y[2]) + 0.1 * cp.log_sum_exp(y))
    cp.Problem(cp.Minimize(cost), [cp.maximum(y[0], y[1]) <= 0.8, cp.norm_inf(y) <= 1.5]).solve(
        solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    return y.value


def test_cone_solve_with_penalty_atoms_matches_cvxpy_and_finite_differences():
    y, p = dc.Variable(3, name="y"), dc.Parameter(3, name="p")
    cost = (dc.sum_squares(y - p) + 0.5 * dc.norm1(y) + dc.pos(y[0] - 0.3) + 0.2 * dc.max(y)
            + dc.huber(y[1], 0.4) + dc.softplus(y[2]) + 0.1 * dc.logsumexp(y))
    prob = dc.Problem(dc.Minimize(cost), [dc.maximum(y[0], y[1]) <= 0.8, dc.norm_inf(y) <= 1.5])
    compiled = prob.compile()
    assert compiled.backend == "cone"
    layer = compiled.to_torch()
    p0 = np.array([1.2, -0.7, 0.4])
    pt = torch.tensor(p0, requires_grad=True)
    (ys,) = layer(p=pt)
    np.testing.assert_allclose(ys.detach().numpy(), _solve_cvxpy(p0), atol=1e-5)
    w = np.array([0.3, -1.0, 0.7])  # gradient of w . y*(p), against central differences
    (ys * torch.as_tensor(w)).sum().backward()
    eps = 1e-3  # the reference solves to about 1e-8: a smaller step measures their noise
    fd = [(w @ _solve_cvxpy(p0 + eps * e) - w @ _solve_cvxpy(p0 - eps * e)) / (2 * eps) for e in np.eye(3)]
    np.testing.assert_allclose(pt.grad.numpy(), fd, atol=2e-3)


def test_control_problem_atoms_over_the_horizon_match_cvxpy_per_stage():
    """The cone lowering writes stage atoms once for all T stages (time as a trailing axis):
    compare with cvxpy written out stage by stage."""
    T, n, m = 6, 2, 2
    x, u = dc.State(n, name="x"), dc.Control(m, name="u")
    x0 = dc.Parameter(n, name="x0")
    Ad = np.array([[1.0, 0.1], [0.0, 1.0]])
    Bd = np.array([[0.0, 0.1], [0.1, 0.05]])
    prob = dc.ControlProblem(
        dynamics=x.next == Ad @ x + Bd @ u,
        cost=dc.sum(dc.huber(x, 0.5)) + 2.0 * dc.pos(x[0] - 0.5) + 0.1 * dc.sum_squares(u) + 0.05 * dc.norm1(u),
        terminal_cost=dc.logsumexp(dc.hstack([x, -x])),
        horizon=T, initial_state=x0,
        constraints=[dc.norm_inf(u) <= 1.0, dc.max(x) <= 2.5])
    compiled = prob.compile()
    assert compiled.backend == "cone"
    xs, us = compiled.to_torch()(x0=torch.tensor([2.0, -1.0]))

    X, U = cp.Variable((T + 1, n)), cp.Variable((T, m))
    cost, cons = 0, [X[0] == np.array([2.0, -1.0])]
    for t in range(T):
        cost += cp.sum(cp.huber(X[t], 0.5)) + 2.0 * cp.pos(X[t, 0] - 0.5) + 0.1 * cp.sum_squares(U[t]) \
            + 0.05 * cp.norm1(U[t])
        cons += [X[t + 1] == Ad @ X[t] + Bd @ U[t], cp.norm_inf(U[t]) <= 1.0, cp.max(X[t + 1]) <= 2.5]
    cost += cp.log_sum_exp(cp.hstack([X[T], -X[T]]))
    cp.Problem(cp.Minimize(cost), cons).solve()
    np.testing.assert_allclose(us.detach().numpy(), U.value, atol=1e-4)
    np.testing.assert_allclose(xs.detach().numpy(), X.value, atol=1e-4)


def test_smooth_atoms_on_ift_cg_match_scipy_and_finite_differences():
    y, p = dc.Variable(2, name="y"), dc.Parameter(2, name="p")
    prob = dc.Problem(dc.Minimize(dc.sum(dc.huber(y - p, 0.5)) + dc.softplus(y[0] * y[1])
                                  + 0.3 * dc.logsumexp(dc.stack([y[0], -y[1], y[0] + y[1]]))
                                  + 0.2 * dc.sum_squares(dc.cos(y))))
    compiled = prob.compile(backend="ift_cg", tol=1e-12)
    layer = compiled.to_torch()

    def reference(pv):
        def f(v):
            r = np.abs(v - pv)
            hub = np.where(r <= 0.5, r ** 2, r - 0.25).sum()
            lse = np.log(np.exp([v[0], -v[1], v[0] + v[1]]).sum())
            return hub + np.logaddexp(0, v[0] * v[1]) + 0.3 * lse + 0.2 * (np.cos(v) ** 2).sum()
        return minimize(f, pv, method="BFGS", options={"gtol": 1e-11}).x

    p0 = np.array([1.5, -0.2])
    pt = torch.tensor(p0, requires_grad=True)
    (ys,) = layer(p=pt)
    np.testing.assert_allclose(ys.detach().numpy(), reference(p0), atol=1e-6)
    ys.sum().backward()
    eps = 1e-3  # every residual of the solution stays on one piece of the Huber function
    fd = [(reference(p0 + eps * e).sum() - reference(p0 - eps * e).sum()) / (2 * eps) for e in np.eye(2)]
    np.testing.assert_allclose(pt.grad.numpy(), fd, atol=1e-4)


@pytest.mark.parametrize("atom, alternative", [
    (lambda e: dc.pos(e), "softplus"),
    (lambda e: dc.maximum(e, 0.0), "logsumexp"),
    (lambda e: dc.norm1(e), "huber"),
    (lambda e: dc.abs(e), "huber"),
    (lambda e: dc.max(e), "logsumexp"),
])
def test_smooth_backends_refuse_nonsmooth_atoms_naming_the_alternative(atom, alternative):
    x, u = dc.State(1, name="x"), dc.Control(1, name="u")
    control = dc.ControlProblem(dynamics=x.next == x + dc.sin(u), cost=dc.sum_squares(u) + dc.sum(atom(x - 1.0)),
                                horizon=5, initial_state=np.zeros(1))
    with pytest.raises(dc.BackendError, match=alternative):
        control.compile(backend="ilqr")
    y = dc.Variable(2, name="y")
    generic = dc.Problem(dc.Minimize(dc.sum(dc.cos(y)) + dc.sum(atom(y))))
    with pytest.raises(dc.BackendError, match=alternative):
        generic.compile(backend="ift_cg")


def test_atom_arguments_are_checked():
    x = dc.Variable(3, name="x")
    with pytest.raises(dc.ModelError, match="positive number M"):
        dc.huber(x, -1.0)
    with pytest.raises(dc.ModelError, match="do not broadcast"):
        dc.maximum(x, np.ones(2))
    with pytest.raises(dc.ModelError, match="size 3"):
        dc.reshape(x, (2, 2))
    with pytest.raises(dc.ModelError, match="out of range"):
        dc.max(x, axis=1)
    with pytest.raises(dc.ModelError, match="one width"):
        dc.vstack([x, np.ones(2)])
    with pytest.raises(dc.ModelError, match="p = 1, 2"):
        dc.norm(x, 3)


@pytest.mark.parametrize("name, suggestion", [("relu", "dc.pos"), ("huberr", "dc.huber"),
                                              ("norml1", "dc.norm1"), ("clip", "dc.maximum")])
def test_a_missing_atom_name_points_to_the_closest(name, suggestion):
    with pytest.raises(AttributeError, match=suggestion):
        getattr(dc, name)
