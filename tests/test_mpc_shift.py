"""dc.shift, the receding-horizon warm start: against NumPy slicing written out, for torch,
NumPy and JAX arrays, batched and not, and its argument checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import diffcontrol as dc


def _expected(a: np.ndarray, steps: int, axis: int) -> np.ndarray:
    moved = np.moveaxis(a, axis, 0)
    out = np.concatenate([moved[steps:], np.repeat(moved[-1:], min(steps, len(moved)), 0)])[:len(moved)]
    return np.moveaxis(out, 0, axis)


@pytest.mark.parametrize("steps", [0, 1, 3, 7])
@pytest.mark.parametrize("axis", [0, 1, -2])
def test_shift_matches_slicing_for_torch_and_numpy(steps, axis):
    a = np.random.default_rng(0).standard_normal((4, 5, 2))
    expected = _expected(a, steps, axis)
    np.testing.assert_array_equal(dc.shift(a, steps, axis=axis), expected)
    out = dc.shift(torch.tensor(a), steps, axis=axis)
    assert isinstance(out, torch.Tensor)
    np.testing.assert_array_equal(out.numpy(), expected)


def test_shift_keeps_gradients_and_jax_arrays():
    u = torch.arange(6.0, requires_grad=True)
    dc.shift(u).sum().backward()
    assert u.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 2.0]  # the last stage counts twice
    jnp = pytest.importorskip("jax.numpy")
    np.testing.assert_array_equal(np.asarray(dc.shift(jnp.arange(4.0))), [1.0, 2.0, 3.0, 3.0])


def test_shift_a_warm_start_into_the_next_solve():
    x, u = dc.State(1, name="x"), dc.Control(1, name="u")
    layer = dc.ControlProblem(dynamics=x.next == x + u, cost=dc.sum_squares(x) + dc.sum_squares(u), horizon=4,
                              initial_state=dc.Parameter(1, name="x0"), constraints=[-0.3 <= u, u <= 0.3]
                              ).compile().to_torch()
    _, plan = layer(x0=torch.tensor([2.0], dtype=torch.float64))
    _, cold = layer(x0=torch.tensor([1.7], dtype=torch.float64))
    _, warm = layer(x0=torch.tensor([1.7], dtype=torch.float64), u_init=dc.shift(plan))
    np.testing.assert_allclose(warm.numpy(), cold.numpy(), atol=1e-12)


def test_shift_checks_its_arguments():
    with pytest.raises(dc.InputError, match="nonnegative int"):
        dc.shift(np.zeros(3), -1)
    with pytest.raises(dc.InputError, match="out of range"):
        dc.shift(np.zeros(3), axis=1)
    with pytest.raises(dc.InputError, match="time axis"):
        dc.shift([1.0, 2.0])
