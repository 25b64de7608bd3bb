"""The JAX layer: every backend against its torch layer and the independent references
(closed forms, finite differences of the JAX solve itself); jit equals eager, vmap equals a
Python loop, jax.grad equals finite differences; importing diffcontrol never imports JAX."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import diffcontrol as dc
from tests.zoo import lq_problem, lq_values

jax = pytest.importorskip("jax")
jnp = jax.numpy
jax.config.update("jax_enable_x64", True)

TIGHT = {"tol": 1e-11, "max_iter": 400}


def _to_jax(values: dict) -> dict:
    return {k: jnp.asarray(np.asarray(v)) for k, v in values.items()}


def _err(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.abs(a - b).max() / (1.0 + np.abs(b).max()))


def _central_differences(fn, value, indices, eps=1e-6):
    """d fn / d value[idx] by central differences, for a few entries."""
    value = np.asarray(value, dtype=float)
    out = []
    for idx in indices:
        plus, minus = value.copy(), value.copy()
        plus[idx] += eps
        minus[idx] -= eps
        out.append((float(fn(jnp.asarray(plus))) - float(fn(jnp.asarray(minus)))) / (2 * eps))
    return np.array(out)


def _torch_grad(layer, values: dict, name: str, loss) -> np.ndarray:
    leaves = {k: torch.as_tensor(v).clone().requires_grad_(k == name) for k, v in values.items()}
    loss(*layer(**leaves)).backward()
    return leaves[name].grad.numpy()


# ---- import isolation ----------------------------------------------------------------------


def test_importing_diffcontrol_never_imports_jax():
    code = "import sys, diffcontrol; assert 'jax' not in sys.modules, 'jax was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_to_jax_without_jax_says_how_to_install_it():
    code = ("import sys; sys.modules['jax'] = None\n"
            "import diffcontrol as dc\n"
            "x = dc.Variable(name='x'); p = dc.Parameter(name='p')\n"
            "c = dc.Problem(dc.Minimize(dc.square(x - p))).compile()\n"
            "try:\n    c.to_jax()\nexcept dc.BackendError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert "pip install 'diffcontrol[jax]'" in out


# ---- lqr -----------------------------------------------------------------------------------


@pytest.mark.parametrize("box", [None, (-0.5, 0.4)], ids=["unconstrained", "box"])
def test_lqr_matches_torch_solution_and_gradients(box):
    n, m, T = 3, 2, 5
    compiled = lq_problem(n, m, T, *(box or (None, None))).problem.compile()
    values = lq_values(n, m, 4, seed=1, scale_x0=2.0)
    solve = compiled.to_jax()
    x, u = solve(**_to_jax(values))
    xt, ut = compiled.to_torch()(**values)
    assert _err(x, xt) < 1e-12 and _err(u, ut) < 1e-12
    if box is not None:
        assert np.isclose(np.asarray(u), box[0]).any() and np.isclose(np.asarray(u), box[1]).any()

    w = np.random.default_rng(0).normal(size=(4, T, m))

    def loss(xx, uu):
        return (uu * w).sum() + (xx ** 2).sum()

    def torch_loss(xx, uu):
        return (uu * torch.as_tensor(w)).sum() + (xx ** 2).sum()

    grads = jax.grad(lambda v: loss(*solve(**v)))(_to_jax(values))  # every parameter at once
    for name in ("A", "B", "Q", "x0", "r"):
        gt = _torch_grad(compiled.to_torch(), values, name, torch_loss)
        assert _err(grads[name], gt) < 1e-10, name


def test_lqr_grad_matches_finite_differences_and_jit_equals_eager():
    n, m, T = 3, 2, 4
    solve = lq_problem(n, m, T, -0.6, 0.6).problem.compile().to_jax()
    vj = _to_jax(lq_values(n, m, None, seed=3))

    def loss(A):
        x, u = solve(**{**vj, "A": A})
        return (x ** 2).sum() + u.sum()

    exact = jax.grad(loss)(vj["A"])
    jitted = jax.jit(jax.grad(loss))(vj["A"])
    assert _err(jitted, exact) < 1e-12
    idx = [(0, 0), (1, 2), (2, 1)]
    fd = _central_differences(loss, vj["A"], idx)
    assert _err(np.array([exact[i] for i in idx]), fd) < 1e-6
    x_eager, u_eager = solve(**vj)
    x_jit, u_jit = jax.jit(lambda v: solve(**v))(vj)
    assert _err(u_jit, u_eager) < 1e-13 and _err(x_jit, x_eager) < 1e-13


def test_lqr_vmap_equals_a_python_loop_and_the_batch_dimension():
    n, m, T = 3, 2, 5
    solve = lq_problem(n, m, T, -0.5, 0.5).problem.compile().to_jax()
    vj = _to_jax(lq_values(n, m, None, seed=4))
    x0s = jnp.asarray(np.random.default_rng(1).normal(size=(5, n)) * 2)
    xs, us = jax.vmap(lambda x0: solve(**{**vj, "x0": x0}))(x0s)
    xb, ub = solve(**{**vj, "x0": x0s})
    for b in range(5):
        xl, ul = solve(**{**vj, "x0": x0s[b]})
        assert _err(us[b], ul) < 1e-12 and _err(xs[b], xl) < 1e-12
    assert _err(ub, us) < 1e-12
    grads = jax.vmap(jax.grad(lambda x0: solve(**{**vj, "x0": x0})[1].sum()))(x0s)
    for b in range(5):
        assert _err(grads[b], jax.grad(lambda x0: solve(**{**vj, "x0": x0})[1].sum())(x0s[b])) < 1e-12


def test_lqr_unroll_mode_agrees_with_implicit():
    n, m, T = 3, 2, 4
    problem = lq_problem(n, m, T, -0.5, 0.5).problem
    vj = _to_jax(lq_values(n, m, 2, seed=5, scale_x0=2.0))
    grads = []
    for backward in ("implicit", "unroll"):
        solve = problem.compile(backward=backward).to_jax()
        grads.append(jax.grad(lambda B, solve=solve: (solve(**{**vj, "B": B})[1] ** 2).sum())(vj["B"]))
    assert _err(grads[0], grads[1]) < 1e-8


# ---- ilqr ----------------------------------------------------------------------------------


def _pendulum(B, seed):
    model = dc.models.pendulum(horizon=10)
    rng = np.random.default_rng(seed)
    th = rng.uniform(-np.pi, np.pi, B)
    x0 = np.stack([np.cos(th), np.sin(th), rng.uniform(-1, 1, B)], 1)
    return model, {**model.defaults(), "x0": x0}


def test_ilqr_pendulum_matches_torch_and_finite_differences():
    model, values = _pendulum(3, seed=0)
    compiled = model.problem.compile(**TIGHT)
    solve = compiled.to_jax()
    vj = _to_jax(values)
    x, u, info = solve(**vj, return_info=True)
    assert bool(info.converged.all())
    xt, ut = compiled.to_torch()(**{k: torch.as_tensor(v) for k, v in values.items()})
    assert _err(u, ut) < 1e-9 and _err(x, xt) < 1e-9
    w = np.random.default_rng(1).normal(size=(3, 10, 1))

    def loss(g):
        return (solve(**{**vj, "g": g})[1] * w).sum()

    exact = jax.grad(loss)(vj["g"])
    fd = _central_differences(loss, vj["g"], [()])
    assert _err(exact, fd) < 1e-6
    gt = _torch_grad(compiled.to_torch(), values, "g", lambda xx, uu: (uu * torch.as_tensor(w)).sum())
    assert _err(exact, gt) < 1e-9
    assert _err(jax.jit(jax.grad(loss))(vj["g"]), exact) < 1e-10


def test_ilqr_vmap_equals_a_python_loop():
    model, values = _pendulum(3, seed=2)
    solve = model.problem.compile(**TIGHT).to_jax()
    vj = _to_jax(values)
    xs, us = jax.vmap(lambda x0: solve(**{**vj, "x0": x0}))(vj["x0"])
    for b in range(3):
        xl, ul = solve(**{**vj, "x0": vj["x0"][b]})
        assert _err(us[b], ul) < 1e-9 and _err(xs[b], xl) < 1e-9


def test_ilqr_with_a_jax_function_and_its_weights_as_a_parameter():
    """A JAX MLP in the dynamics, its weights one flat dc.Parameter (how a Flax / Equinox
    model's parameters enter: jax.flatten_util.ravel_pytree); gradients w.r.t. the weights
    against finite differences."""
    from jax.flatten_util import ravel_pytree

    rng = np.random.default_rng(0)
    weights = {"W1": 0.5 * rng.normal(size=(8, 3)), "b1": 0.1 * rng.normal(size=8),
               "W2": 0.5 * rng.normal(size=(2, 8))}
    flat, unravel = ravel_pytree({k: jnp.asarray(v) for k, v in weights.items()})

    def mlp(w, z):
        p = unravel(w)
        return p["W2"] @ jnp.tanh(p["W1"] @ z + p["b1"])

    x, u = dc.State(2, name="x"), dc.Control(1, name="u")
    W, x0 = dc.Parameter(flat.shape, name="W"), dc.Parameter(2, name="x0")
    f = dc.Function(mlp, 2, name="mlp")
    prob = dc.ControlProblem(dynamics=x.next == x + 0.1 * f(W, dc.concat([x, u])),
                             cost=dc.sum_squares(x) + 0.1 * dc.sum_squares(u), terminal_cost=dc.sum_squares(x),
                             horizon=6, initial_state=x0)
    solve = prob.compile(**TIGHT).to_jax()
    x0v = jnp.asarray([[1.0, -0.5], [-0.8, 0.9]])

    def loss(w):
        xs, us = solve(W=w, x0=x0v)
        return (xs[:, :, 0] ** 3).sum() + us.sum()

    exact = jax.grad(loss)(flat)
    idx = [(0,), (5,), (20,), (flat.shape[0] - 1,)]
    fd = _central_differences(loss, flat, idx)
    assert _err(np.array([exact[i] for i in idx]), fd) < 1e-6


def test_a_torch_module_in_a_jax_layer_is_refused():
    net = torch.nn.Linear(3, 2)
    x, u = dc.State(2), dc.Control(1)
    prob = dc.ControlProblem(dynamics=x.next == x + dc.Function(net, 2, name="net")(dc.concat([x, u])),
                             cost=dc.sum_squares(x) + dc.sum_squares(u), horizon=3,
                             initial_state=np.zeros(2))
    with pytest.raises(dc.BackendError, match="torch.nn.Module"):
        prob.compile().to_jax()


# ---- ift_cg --------------------------------------------------------------------------------


def _kepler():
    E, e, M = dc.Variable(name="E"), dc.Parameter(name="e"), dc.Parameter(name="M")
    return dc.Problem(dc.Minimize(dc.square(E - e * dc.sin(E) - M)))


def test_kepler_closed_forms_under_grad_jit_and_vmap():
    solve = _kepler().compile().to_jax()
    e, M = jnp.asarray([0.1, 0.5, 0.9]), jnp.asarray([0.3, 1.0, 2.5])
    (E,) = solve(e=e, M=M)
    assert float(jnp.abs(E - e * jnp.sin(E) - M).max()) < 1e-9
    de = jax.grad(lambda e: solve(e=e, M=M)[0].sum())(e)
    dM = jax.jit(jax.grad(lambda M: solve(e=e, M=M)[0].sum()))(M)
    assert _err(de, jnp.sin(E) / (1 - e * jnp.cos(E))) < 1e-9
    assert _err(dM, 1 / (1 - e * jnp.cos(E))) < 1e-9
    per_example = jax.vmap(jax.grad(lambda e, M: solve(e=e, M=M)[0], argnums=1))(e, M)
    assert _err(per_example, dM) < 1e-12


@pytest.mark.parametrize("solver,linear_solver", [("newton", "cg"), ("lbfgs", "cg"), ("newton", "dense"),
                                                  ("newton", "cg_normal")])
def test_quadratic_closed_form_for_each_forward_and_linear_solver(solver, linear_solver):
    n = 20
    rng = np.random.default_rng(0)
    P = rng.normal(size=(n, n))
    P = P @ P.T / n + np.eye(n)
    y, q = dc.Variable(n, name="y"), dc.Parameter(n, name="q")
    prob = dc.Problem(dc.Minimize(0.5 * dc.quad_form(y, P) - q @ y))
    solve = prob.compile(solver=solver, linear_solver=linear_solver, tol=1e-10).to_jax()
    qv = jnp.asarray(rng.normal(size=(3, n)))
    (ys, info) = solve(q=qv, return_info=True)
    assert bool(info.converged.all())
    assert _err(ys, np.linalg.solve(P, np.asarray(qv).T).T) < 1e-9
    w = jnp.asarray(rng.normal(size=(3, n)))
    g = jax.jit(jax.grad(lambda q: (solve(q=q)[0] * w).sum()))(qv)
    assert _err(g, np.linalg.solve(P, np.asarray(w).T).T) < 1e-8  # d(w^T P^-1 q)/dq = P^-1 w


def test_ift_cg_matches_torch_on_backward_euler_with_a_nonlinear_field():
    """y = argmin ||y - x - h tanh(K y)||^2: JAX and torch layers, gradient w.r.t. K."""
    n = 4
    y, x, K = dc.Variable(n, name="y"), dc.Parameter(n, name="x"), dc.Parameter((n, n), name="K")
    prob = dc.Problem(dc.Minimize(dc.sum_squares(y - x - 0.1 * dc.tanh(K @ y))))
    compiled = prob.compile()
    rng = np.random.default_rng(3)
    values = {"x": rng.normal(size=(2, n)), "K": rng.normal(size=(n, n))}
    (yj,) = compiled.to_jax()(**_to_jax(values))
    tl = compiled.to_torch()
    (yt,) = tl(**{k: torch.as_tensor(v) for k, v in values.items()})
    assert _err(yj, yt) < 1e-10
    gj = jax.grad(lambda K: (compiled.to_jax()(x=jnp.asarray(values["x"]), K=K)[0] ** 3).sum())(
        jnp.asarray(values["K"]))
    gt = _torch_grad(tl, values, "K", lambda yy: (yy ** 3).sum())
    assert _err(gj, gt) < 1e-9


# ---- cone ----------------------------------------------------------------------------------


def test_cone_matches_torch_eagerly_and_refuses_jit_with_a_reason():
    x, A, b = dc.Variable(3, name="x"), dc.Parameter((5, 3), name="A"), dc.Parameter(5, name="b")
    compiled = dc.Problem(dc.Minimize(dc.sum_squares(A @ x - b)), [x >= 0, x <= 2]).compile()
    assert compiled.backend == "cone"
    rng = np.random.default_rng(0)
    Av = rng.normal(size=(2, 5, 3))
    bv = np.einsum("bij,j->bi", Av, [0.5, 1.0, 3.0]) + 0.1 * rng.normal(size=(2, 5))  # x[2] hits 2
    solve = compiled.to_jax()
    (xj,) = solve(A=jnp.asarray(Av), b=jnp.asarray(bv))
    (xt,) = compiled.to_torch()(A=torch.as_tensor(Av), b=torch.as_tensor(bv))
    assert _err(xj, xt) < 1e-8
    assert np.isclose(np.asarray(xj)[:, 2], 2.0, atol=1e-6).all()
    w = rng.normal(size=(2, 3))
    gj = jax.grad(lambda b: (solve(A=jnp.asarray(Av), b=b)[0] * w).sum())(jnp.asarray(bv))
    gt = _torch_grad(compiled.to_torch(), {"A": Av, "b": bv}, "b", lambda xx: (xx * torch.as_tensor(w)).sum())
    assert _err(gj, gt) < 1e-7
    with pytest.raises(dc.BackendError, match="not under jax.jit"):
        jax.jit(lambda b: solve(A=jnp.asarray(Av), b=b))(jnp.asarray(bv))


# ---- the layer's contract ------------------------------------------------------------------


def test_info_nonconvergence_warning_and_raise():
    n, m, T = 4, 3, 8
    problem = lq_problem(n, m, T, -0.6, 0.4).problem
    vj = _to_jax(lq_values(n, m, 5, seed=2, scale_x0=2.0))
    with pytest.warns(dc.NotConvergedWarning, match=r"of 5 examples did not converge"):
        _, _, info = problem.compile(max_iter=1).to_jax()(**vj, return_info=True)
    assert not bool(info.converged.all())
    assert {dc.Status.from_code(c) for c in np.asarray(info.status)} <= set(dc.Status)
    assert dc.Status.from_code(dc.Status.MAX_ITER.code) is dc.Status.MAX_ITER
    with pytest.raises(dc.SolverError, match="did not converge"):
        problem.compile(max_iter=1, on_nonconvergence="raise").to_jax()(**vj)
    # under jit the report runs as a host callback when the values exist: the same warning, and
    # in raise mode the jitted call fails with the SolverError's message
    with pytest.warns(dc.NotConvergedWarning, match=r"of 5 examples did not converge"):
        _, _, info = jax.jit(lambda v: problem.compile(max_iter=1).to_jax()(**v, return_info=True))(vj)
        jax.block_until_ready(info)
    assert not bool(info.converged.all())
    raising = problem.compile(max_iter=1, on_nonconvergence="raise").to_jax()
    with pytest.raises(jax.errors.JaxRuntimeError, match="SolverError.*did not converge"):
        jax.block_until_ready(jax.jit(lambda v: raising(**v))(vj))


def _overflowing_ilqr():
    """x' = x + exp(3 x) / 2 + u on ilqr: from x0 = 3 the zero-control rollout overflows (Inf by
    stage 2); from x0 = -1 it is tame, a solution exists and the solve converges."""
    x, u = dc.State(1), dc.Control(1)
    x0 = dc.Parameter(1, name="x0")
    prob = dc.ControlProblem(dynamics=x.next == x + 0.5 * dc.exp(3 * x) + u,
                             cost=dc.sum_squares(x) + 0.1 * dc.sum_squares(u), horizon=10, initial_state=x0)
    return prob.compile(backend="ilqr")


def _indefinite_lqr():
    """lqr with the control weight r per example: r = -1 is not strictly convex in u (no
    minimiser), r = 1 is; the torch layer raises SolverError for the batch."""
    x, u = dc.State(2), dc.Control(1)
    x0, r = dc.Parameter(2, name="x0"), dc.Parameter(name="r")
    prob = dc.ControlProblem(dynamics=x.next == x + u, cost=dc.sum_squares(x) + r * dc.sum_squares(u),
                             horizon=5, initial_state=x0)
    return prob.compile(backend="lqr")


@pytest.mark.parametrize("case", ["overflow", "indefinite"])
def test_eager_jax_raises_for_a_non_finite_solution_as_torch_does_naming_the_example(case):
    """Finding 8: an overflowing rollout (ilqr) or an indefinite cost (lqr) made eager JAX calls
    return NaN with a warning blaming the line search, where the torch layer raises."""
    if case == "overflow":
        compiled, bad = _overflowing_ilqr(), {"x0": [[3.0], [-1.0]]}
    else:
        compiled, bad = _indefinite_lqr(), {"x0": [[1.0, 0.0], [1.0, 0.0]], "r": [-1.0, 1.0]}
    with pytest.raises(dc.SolverError):
        compiled.to_torch()(**{k: torch.tensor(v, dtype=torch.float64) for k, v in bad.items()})
    with pytest.raises(dc.SolverError, match=r"NaN or Inf in the solution of 1 of 2 examples \(batch elements 0\)"):
        compiled.to_jax()(**{k: jnp.asarray(v) for k, v in bad.items()})
    # the good example alone solves (the indefinite case: against the Riccati closed form below)
    good = {k: jnp.asarray(v)[1:] for k, v in bad.items()}
    xs, us, info = compiled.to_jax()(**good, return_info=True)
    assert bool(info.converged.all()) and bool(jnp.isfinite(xs).all())
    if case == "indefinite":  # x' = x + b u, b = (1, 1), cost sum_{t<5} |x_t|^2 + |u_t|^2: Riccati, P_5 = 0
        b, P = np.ones((2, 1)), np.zeros((2, 2))
        for _ in range(5):
            K = np.linalg.solve(np.eye(1) + b.T @ P @ b, b.T @ P)  # u_t = -K x_t
            P = np.eye(2) + P - P @ b @ K
        assert abs(float(us[0, 0, 0]) + float((K @ np.array([1.0, 0.0]))[0])) < 1e-8


def test_jitted_jax_gives_nan_outputs_and_nan_gradients_for_a_non_finite_example():
    """Finding 9: under jax.jit a NaN input gave a finite gradient, so the documented
    jnp.isfinite(grads) check passed. Now the example's outputs and gradients are NaN, its
    status NON_FINITE (with a warning from the host); the other example keeps the gradient
    finite differences give, and masking with info.converged keeps every gradient finite."""
    n, m, T = 3, 2, 4
    solve = lq_problem(n, m, T, -1.0, 1.0).problem.compile().to_jax()
    vj = _to_jax(lq_values(n, m, 2, seed=1))
    x0 = vj["x0"].at[0, 0].set(jnp.nan)

    def loss(x0, vj, masked=False):
        xs, us, info = solve(**{**vj, "x0": x0}, return_info=True)
        if masked:
            us = jnp.where(info.converged[:, None, None], us, 0.0)
        return us.sum(), info

    with pytest.warns(dc.NotConvergedWarning, match=r"NaN or Inf in the solution of 1 of 2 examples"):
        (value, info), (g_x0, g_vals) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(x0, vj)
        jax.block_until_ready(g_x0)
    assert np.isnan(float(value))
    assert [dc.Status.from_code(c) for c in np.asarray(info.status)] == [dc.Status.NON_FINITE, dc.Status.CONVERGED]
    assert np.isnan(np.asarray(g_x0[0])).all() and np.isnan(np.asarray(g_vals["A"][0])).all()
    assert np.isfinite(np.asarray(g_x0[1])).all()
    # the good example's gradient is the one finite differences give
    value_of = jax.jit(lambda a: solve(**{**vj, "x0": vj["x0"].at[1].set(a)})[1][1].sum())
    fd = _central_differences(value_of, np.asarray(vj["x0"][1]), [(0,), (1,), (2,)])
    assert np.abs(np.asarray(g_x0[1]) - fd).max() < 1e-6
    # the documented recipe: mask with info.converged, and every gradient is finite
    with pytest.warns(dc.NotConvergedWarning):
        (_, _), (g_x0, g_vals) = jax.jit(jax.value_and_grad(lambda a, v: loss(a, v, masked=True),
                                                            argnums=(0, 1), has_aux=True))(x0, vj)
        jax.block_until_ready(g_x0)
    assert all(bool(jnp.isfinite(g).all()) for g in (g_x0, *g_vals.values()))
    assert np.abs(np.asarray(g_x0[1]) - fd).max() < 1e-6


def test_bad_inputs_raise_before_any_solve():
    solve = lq_problem(3, 2, 4, -1.0, 1.0).problem.compile().to_jax()
    vj = _to_jax(lq_values(3, 2, None, seed=1))
    with pytest.raises(dc.InputError, match="unknown parameter 'Z'"):
        solve(**vj, Z=1.0)
    with pytest.raises(dc.InputError, match="'A' expects shape"):
        solve(**{**vj, "A": jnp.ones((2, 2))})
    with pytest.raises(dc.SolverError, match="NaN or Inf"):
        solve(**{**vj, "x0": jnp.asarray([np.nan, 0.0, 0.0])})
    with pytest.raises(dc.InputError, match="float32 or float64"):
        solve(**{**vj, "A": vj["A"].astype(jnp.float16)})
    with pytest.raises(dc.InputError, match="'A' has dtype bfloat16; diffcontrol solves in float32 or float64"):
        solve(**{**vj, "A": vj["A"].astype(jnp.bfloat16)})
    with pytest.raises(dc.InputError, match="'A' is a torch.Tensor: the JAX layer takes JAX or NumPy arrays"):
        solve(**{**vj, "A": torch.tensor(np.array(vj["A"]))})
    with pytest.raises(dc.InputError, match="parameter 'A' is None"):
        solve(**{**vj, "A": None})


def test_float32_agrees_with_float64():
    n, m, T = 3, 2, 5
    solve = lq_problem(n, m, T, -0.5, 0.5).problem.compile().to_jax()
    values = lq_values(n, m, 3, seed=6)
    _, u64 = solve(**_to_jax(values))
    _, u32 = solve(**{k: v.astype(jnp.float32) for k, v in _to_jax(values).items()})
    assert u32.dtype == jnp.float32 and u64.dtype == jnp.float64
    assert _err(u32, u64) < 1e-4


def test_float64_inputs_without_x64_mode_warn():
    code = ("import warnings, numpy as np, jax.numpy as jnp, diffcontrol as dc\n"
            "x = dc.Variable(name='x'); p = dc.Parameter(name='p')\n"
            "solve = dc.Problem(dc.Minimize(dc.square(x - p))).compile().to_jax()\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    (y,) = solve(p=np.float64(2.0))\n"
            "print(y.dtype, [str(m.message) for m in w])\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert "float32" in out and "jax_enable_x64" in out


def test_warm_start_under_jax():
    model, values = _pendulum(2, seed=6)
    solve = model.problem.compile(**TIGHT).to_jax()
    vj = _to_jax(values)
    _, u, info = solve(**vj, return_info=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, u2, info2 = solve(**vj, u_init=u, return_info=True)
    assert (np.asarray(info2["iterations"]) == 0).all() and _err(u2, u) < 1e-12
