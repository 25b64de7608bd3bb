"""``dc.Parameter.pytree``: a network's weights as one parameter whose value is a pytree. Each
result is compared with the same problem declared with one parameter per leaf (no pytree
machinery), in JAX and in torch; wrong structures and shapes are InputErrors naming it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import diffcontrol as dc

jax = pytest.importorskip("jax")
jnp = jax.numpy
jax.config.update("jax_enable_x64", True)

RNG = np.random.default_rng(0)
W1, W2 = 0.5 * RNG.normal(size=(4, 3)), 0.5 * RNG.normal(size=(2, 4))
X0 = np.array([1.0, -0.5])


def _problem(dynamics_of, *parameters):
    x, u = dc.State(2, name="x"), dc.Control(1, name="u")
    x0 = dc.Parameter(2, name="x0")
    return dc.ControlProblem(dynamics=x.next == x + 0.1 * dynamics_of(*parameters, dc.concat([x, u])),
                             cost=dc.sum_squares(x) + 0.1 * dc.sum_squares(u), terminal_cost=dc.sum_squares(x),
                             horizon=5, initial_state=x0)


def _pytree_problem(example, tanh):
    W = dc.Parameter.pytree(example, name="W")
    f = dc.Function(lambda w, z: w["W2"] @ tanh(w["W1"] @ z), 2, name="mlp")
    return _problem(lambda W, z: f(W, z), W)


def _per_leaf_problem(tanh):
    P1, P2 = dc.Parameter((4, 3), name="W1"), dc.Parameter((2, 4), name="W2")
    f = dc.Function(lambda a, b, z: b @ tanh(a @ z), 2, name="mlp")
    return _problem(lambda a, b, z: f(a, b, z), P1, P2)


def test_parameter_shape_is_the_number_of_entries():
    W = dc.Parameter.pytree({"W1": W1, "W2": W2}, name="W")
    assert W.shape == (W1.size + W2.size,)


def test_jax_gradient_is_a_pytree_equal_to_the_per_leaf_problems():
    weights = {"W1": jnp.asarray(W1), "W2": jnp.asarray(W2)}
    tree = _pytree_problem(weights, jnp.tanh).compile().to_jax()
    leaf = _per_leaf_problem(jnp.tanh).compile().to_jax()

    def loss_tree(w):
        return jnp.sum(tree(W=w, x0=jnp.asarray(X0))[1] ** 2)

    def loss_leaf(a, b):
        return jnp.sum(leaf(W1=a, W2=b, x0=jnp.asarray(X0))[1] ** 2)

    g = jax.grad(loss_tree)(weights)
    g1, g2 = jax.grad(loss_leaf, argnums=(0, 1))(weights["W1"], weights["W2"])
    assert set(g) == {"W1", "W2"} and g["W1"].shape == (4, 3)
    assert np.abs(np.asarray(g["W1"]) - np.asarray(g1)).max() < 1e-12
    assert np.abs(np.asarray(g["W2"]) - np.asarray(g2)).max() < 1e-12
    # forward mode too
    direction = jax.tree_util.tree_map(jnp.ones_like, weights)
    _, jvp = jax.jvp(loss_tree, (weights,), (direction,))
    assert abs(float(jvp) - float(np.sum(g1) + np.sum(g2))) < 1e-10
    # the flat form (the leaves raveled in tree order, as jax.flatten_util.ravel_pytree does)
    flat = jnp.concatenate([weights["W1"].reshape(-1), weights["W2"].reshape(-1)])
    assert np.abs(np.asarray(tree(W=flat, x0=jnp.asarray(X0))[1]) -
                  np.asarray(leaf(W1=weights["W1"], W2=weights["W2"], x0=jnp.asarray(X0))[1])).max() < 1e-12


def test_batched_leaves_are_one_example_each():
    weights = {"W1": jnp.asarray(W1), "W2": jnp.asarray(W2)}
    tree = _pytree_problem(weights, jnp.tanh).compile().to_jax()
    leaf = _per_leaf_problem(jnp.tanh).compile().to_jax()
    scales = (1.0, 0.5, 1.5)
    batched = {k: jnp.stack([s * v for s in scales]) for k, v in weights.items()}
    us = tree(W=batched, x0=jnp.asarray(X0))[1]
    assert us.shape == (3, 5, 1)
    for i, s in enumerate(scales):
        alone = leaf(W1=s * weights["W1"], W2=s * weights["W2"], x0=jnp.asarray(X0))[1]
        assert np.abs(np.asarray(us[i]) - np.asarray(alone)).max() < 1e-10


def test_torch_layer_takes_a_dict_of_tensors():
    example = {"W1": torch.as_tensor(W1), "W2": torch.as_tensor(W2)}
    tree = _pytree_problem(example, torch.tanh).compile().to_torch()
    leaf = _per_leaf_problem(torch.tanh).compile().to_torch()
    weights = {k: v.clone().requires_grad_() for k, v in example.items()}
    (tree(W=weights, x0=torch.as_tensor(X0))[1] ** 2).sum().backward()
    a, b = (v.clone().requires_grad_() for v in example.values())
    (leaf(W1=a, W2=b, x0=torch.as_tensor(X0))[1] ** 2).sum().backward()
    assert torch.allclose(weights["W1"].grad, a.grad, atol=1e-12, rtol=0)
    assert torch.allclose(weights["W2"].grad, b.grad, atol=1e-12, rtol=0)


@pytest.mark.parametrize("value, words", [
    ({"W1": W1}, "structure"),
    ({"W1": W1, "W2": W2.T}, "leaf 1 of parameter 'W' has shape"),
    ({"W1": W1, "W2": np.stack([W2, W2])}, "disagree on the batch dimension"),
])
def test_a_wrong_pytree_is_an_input_error_naming_the_parameter(value, words):
    solve = _pytree_problem({"W1": W1, "W2": W2}, jnp.tanh).compile().to_jax()
    with pytest.raises(dc.InputError, match=words):
        solve(W=value, x0=X0)
