"""``to_torch(variables=...)`` / ``to_jax(variables=...)``: the layer returns the decision
variables asked for, in that order (cvxpy users write ``X, U = layer(...)`` expecting the
order they declared, where the default is the order of first appearance)."""

from __future__ import annotations

import pytest
import torch

import diffcontrol as dc


def _problem():
    """min |U - p|^2 + |X - 2U|^2: U = p, X = 2p (U appears first, so the default order is (U, X))."""
    X, U = dc.Variable(3, name="X"), dc.Variable(3, name="U")
    p = dc.Parameter(3, name="p")
    return dc.Problem(dc.Minimize(dc.sum_squares(U - p) + dc.sum_squares(X - 2 * U))), X, U


def test_declared_order_and_names_and_subsets():
    prob, X, U = _problem()
    assert [v.name for v in prob.variables()] == ["U", "X"]
    p = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
    Xs, Us = prob.compile().to_torch(variables=[X, U])(p=p)
    torch.testing.assert_close(Us, p.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(Xs, 2 * p.detach(), rtol=1e-6, atol=1e-7)
    (Xs.sum() + 3 * Us.sum()).backward()  # d/dp = 2 + 3
    torch.testing.assert_close(p.grad, torch.full((3,), 5.0, dtype=torch.float64), rtol=1e-6, atol=1e-7)
    (only,) = prob.compile().to_torch(variables=["X"])(p=p.detach())
    torch.testing.assert_close(only, 2 * p.detach(), rtol=1e-6, atol=1e-7)


def test_a_warm_start_follows_the_layers_order():
    prob, X, U = _problem()
    layer = prob.compile().to_torch(variables=[X, U])
    p = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    Xs, Us, info = layer(p=p, y_init=(2 * p, p), return_info=True)
    assert int(info.iterations) == 0  # started at the solution (swapped, it takes a Newton step)
    torch.testing.assert_close(Xs, 2 * p)
    with pytest.raises(dc.InputError, match="warm-starts every variable"):
        prob.compile().to_torch(variables=[X])(p=p, y_init=(2 * p,))


def test_control_problems_return_u_before_x_on_request():
    x, u = dc.State(2, name="x"), dc.Control(1, name="u")
    prob = dc.ControlProblem(dynamics=x.next == x + u, cost=dc.sum_squares(x) + dc.sum_squares(u), horizon=3,
                             initial_state=[1.0, -1.0])
    us, xs = prob.compile().to_torch(variables=[u, x])()
    x_ref, u_ref = prob.compile().to_torch()()
    assert us.shape == (3, 1) and xs.shape == (4, 2)
    torch.testing.assert_close(us, u_ref)
    torch.testing.assert_close(xs, x_ref)


def test_bad_variables_are_named():
    prob, X, U = _problem()
    compiled = prob.compile()
    with pytest.raises(dc.ModelError, match=r"not a decision variable of this problem \(its results: U, X\)"):
        compiled.to_torch(variables=[dc.Variable(3, name="Z")])
    with pytest.raises(dc.ModelError, match="lists X twice"):
        compiled.to_torch(variables=[X, "X"])
    with pytest.raises(dc.ModelError, match="takes a list"):
        compiled.to_torch(variables="X")


def test_jax_layer_returns_the_same_order():
    jnp = pytest.importorskip("jax.numpy")
    prob, X, U = _problem()
    Xs, Us = prob.compile().to_jax(variables=[X, U])(p=jnp.array([1.0, -2.0, 0.5]))
    assert float(abs(Xs - 2 * jnp.array([1.0, -2.0, 0.5])).max()) < 1e-5
    assert float(abs(Us - jnp.array([1.0, -2.0, 0.5])).max()) < 1e-5
