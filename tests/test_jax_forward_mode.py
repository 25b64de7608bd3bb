"""Forward mode through the JAX layer: ``jax.jvp`` / ``jax.jacfwd`` on every implicit backend
against central differences of the solve itself and against reverse mode (``jax.jacrev``);
under ``jit`` and ``vmap``; a non-finite example's tangents NaN; a second derivative a clear
``BackendError``, never a silently partial one."""

from __future__ import annotations

import numpy as np
import pytest

import diffcontrol as dc
from tests.zoo import lq_problem, lq_values

jax = pytest.importorskip("jax")
jnp = jax.numpy
jax.config.update("jax_enable_x64", True)

TIGHT = {"tol": 1e-11, "max_iter": 400}


def _central_jvp(fn, value, direction, eps=1e-6):
    """(fn(value + eps d) - fn(value - eps d)) / 2 eps: the directional derivative, independently."""
    return (np.asarray(fn(value + eps * direction)) - np.asarray(fn(value - eps * direction))) / (2 * eps)


def _lq_case(lo, hi, batch):
    lq = lq_problem(3, 2, 6, lo, hi)
    values = {k: jnp.asarray(v.numpy()) for k, v in lq_values(3, 2, batch, seed=3, scale_x0=3.0).items()}
    return lq.problem.compile(backend="lqr", **TIGHT).to_jax(), values


def _goal_case():
    x, u = dc.State(2, name="x"), dc.Control(1, name="u")
    A, goal, x0 = dc.Parameter((2, 2), name="A"), dc.Parameter(2, name="goal"), dc.Parameter(2, name="x0")
    prob = dc.ControlProblem(dynamics=x.next == A @ x + np.array([[0.0], [1.0]]) @ u,
                             cost=dc.sum_squares(x) + dc.sum_squares(u), horizon=5, initial_state=x0,
                             terminal_constraints=[x == goal])
    values = {"A": jnp.array([[1.0, 0.1], [0.0, 1.0]]), "goal": jnp.array([0.5, 0.0]), "x0": jnp.array([1.0, -1.0])}
    return prob.compile(**TIGHT).to_jax(), values


def _time_varying_case():
    x, u = dc.State(2, name="x"), dc.Control(1, name="u")
    r, x0 = dc.Parameter(2, name="r", time_varying=True), dc.Parameter(2, name="x0")
    prob = dc.ControlProblem(dynamics=x.next == np.array([[1.0, 0.1], [0.0, 1.0]]) @ x + np.array([[0.0], [0.1]]) @ u,
                             cost=dc.sum_squares(x - r) + 0.1 * dc.sum_squares(u), horizon=5, initial_state=x0,
                             constraints=[-1 <= u, u <= 1])
    t = np.linspace(0, 1, 6)
    values = {"r": jnp.asarray(np.stack([np.sin(3 * t), np.cos(3 * t)], 1)), "x0": jnp.array([0.0, 0.0])}
    return prob.compile(**TIGHT).to_jax(), values


def _pendulum_case():
    model = dc.models.pendulum(horizon=8)
    rng = np.random.default_rng(1)
    th = rng.uniform(-1, 1, 2)
    values = {k: jnp.asarray(np.asarray(v)) for k, v in model.defaults().items()}
    values["x0"] = jnp.asarray(np.stack([np.cos(th), np.sin(th), rng.uniform(-1, 1, 2)], 1))
    return model.problem.compile(**TIGHT).to_jax(), values


def _ift_case():
    y, p = dc.Variable(3, name="y"), dc.Parameter(3, name="p")
    K = np.array([[1.0, 0.2, 0.0], [0.0, 1.0, -0.3], [0.1, 0.0, 1.0]])
    prob = dc.Problem(dc.Minimize(dc.sum_squares(y - p) + 0.3 * dc.sum(dc.exp(K @ y))))
    compiled = prob.compile(backend="ift_cg", tol=1e-12)
    return compiled.to_jax(), {"p": jnp.array([0.5, -1.0, 2.0])}


CASES = {
    "lqr": lambda: _lq_case(None, None, None),
    "lqr box, batched": lambda: _lq_case(-0.5, 0.5, 2),
    "lqr terminal constraint": _goal_case,
    "lqr time-varying reference, box": _time_varying_case,
    "ilqr pendulum, batched": _pendulum_case,
    "ift_cg": _ift_case,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_jvp_matches_central_differences_and_reverse_mode(case):
    solve, values = CASES[case]()
    names = sorted(values)
    rng = np.random.default_rng(0)
    directions = {k: jnp.asarray(rng.normal(size=np.shape(v))) for k, v in values.items()}

    def outputs(*args):
        return jnp.concatenate([o.reshape(-1) for o in solve(**dict(zip(names, args)))])

    primals = tuple(values[k] for k in names)
    tangents = tuple(directions[k] for k in names)
    _, jvp = jax.jit(lambda p, t: jax.jvp(outputs, p, t))(primals, tangents)
    # independent: central differences of the solve along the same direction
    fd = _central_jvp(lambda s: outputs(*(p + s * t for p, t in zip(primals, tangents))), 0.0, 1.0)
    assert np.abs(np.asarray(jvp) - fd).max() < 1e-5 * (1 + np.abs(fd).max()), case
    # reverse mode is the transpose of the same map: <J t, c> == <t, J^T c>
    c = jnp.asarray(rng.normal(size=jvp.shape))
    _, pullback = jax.vjp(outputs, *primals)
    cotangents = pullback(c)
    lhs = float(jnp.vdot(jvp, c))
    rhs = float(sum(jnp.vdot(a, b) for a, b in zip(tangents, cotangents)))
    assert abs(lhs - rhs) < 1e-9 * (1 + abs(lhs)), case


def test_jacfwd_equals_jacrev_per_example_with_a_shared_parameter():
    solve, values = _lq_case(-0.5, 0.5, 2)
    shared = {**values, "A": values["A"][0]}  # one A for both examples

    def u_of(A):
        return solve(**{**shared, "A": A})[1]

    forward, reverse = jax.jacfwd(u_of)(shared["A"]), jax.jacrev(u_of)(shared["A"])
    assert forward.shape == (2, 6, 2, 3, 3)
    assert np.abs(np.asarray(forward) - np.asarray(reverse)).max() < 1e-10
    # each example's block is its own: example 1's controls against A, solved alone
    alone = jax.jacfwd(lambda A: solve(**{k: v[1] if v.ndim == 3 or k in ("x0", "d", "q", "r") else v
                                          for k, v in {**shared, "A": A}.items()})[1])(shared["A"])
    assert np.abs(np.asarray(forward[1]) - np.asarray(alone)).max() < 1e-10


def test_vmap_of_jvp_equals_a_loop():
    solve, values = _goal_case()

    def tangent_of(direction):
        return jax.jvp(lambda g: solve(**{**values, "goal": g})[1], (values["goal"],), (direction,))[1]

    directions = jnp.eye(2)
    batched = jax.vmap(tangent_of)(directions)
    for i in range(2):
        assert np.abs(np.asarray(batched[i]) - np.asarray(tangent_of(directions[i]))).max() < 1e-12


def test_a_non_finite_example_has_nan_tangents_the_other_exact():
    x, u = dc.State(1, name="x"), dc.Control(1, name="u")
    x0, w = dc.Parameter(1, name="x0"), dc.Parameter(1, name="w")
    prob = dc.ControlProblem(dynamics=x.next == x + u, cost=dc.sum_squares(x) + w @ dc.square(u),
                             horizon=3, initial_state=x0)
    solve = prob.compile(backend="lqr").to_jax()
    x0s, ws = jnp.array([[1.0], [1.0]]), jnp.array([[1.0], [-1.0]])  # example 1: not convex in u

    def u_of(x0):
        return solve(x0=x0, w=ws)[1]

    with pytest.warns(dc.NotConvergedWarning):
        tangent = jax.jit(lambda v: jax.jvp(u_of, (x0s,), (v,))[1])(jnp.ones_like(x0s))
    assert np.isnan(np.asarray(tangent[1])).all()
    good = prob.compile(backend="lqr").to_jax()
    expected = jax.jvp(lambda v: good(x0=v, w=ws[:1])[1], (x0s[:1],), (jnp.ones((1, 1)),))[1]
    assert np.abs(np.asarray(tangent[0]) - np.asarray(expected[0])).max() < 1e-12


@pytest.mark.parametrize("second", ["hessian", "grad of grad"])
def test_a_second_derivative_is_a_clear_error(second):
    solve, values = _goal_case()

    def loss(g):
        return solve(**{**values, "goal": g})[1].sum() ** 2

    with pytest.raises(dc.BackendError, match="second derivatives"):
        if second == "hessian":
            jax.hessian(loss)(values["goal"])
        else:
            jax.grad(lambda g: jax.grad(loss)(g).sum())(values["goal"])


def test_forward_mode_on_the_cone_backend_is_a_clear_error():
    pytest.importorskip("cvxpylayers")
    y, p = dc.Variable(2, name="y"), dc.Parameter(2, name="p")
    solve = dc.Problem(dc.Minimize(dc.sum_squares(y - p)), [y >= 0]).compile(backend="cone").to_jax()
    with pytest.raises(dc.BackendError, match="reverse mode only"):
        jax.jvp(lambda v: solve(p=v)[0], (jnp.array([1.0, -1.0]),), (jnp.array([1.0, 1.0]),))
    # reverse mode works: d/dp sum(max(p, 0)) = [1, 0]
    grad = jax.grad(lambda v: solve(p=v)[0].sum())(jnp.array([1.0, -1.0]))
    assert np.abs(np.asarray(grad) - [1.0, 0.0]).max() < 1e-4
