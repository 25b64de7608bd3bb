"""Jacobians of affine expressions as expressions, against torch autodiff of the expression."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import diffcontrol as dc
from diffcontrol.compilers.rules import jacobian_expression
from diffcontrol.emitters.torch_ops import TorchFramework
from diffcontrol.programs.evaluate import evaluate

n, m = 3, 2
x, u = dc.State(n), dc.Control(m)
A, B = dc.Parameter((n, n), name="A"), dc.Parameter((n, m), name="B")
s, w = dc.Parameter(name="s"), dc.Parameter(n, name="w")
rng = np.random.default_rng(0)
VALUES = {A: rng.normal(size=(n, n)), B: rng.normal(size=(n, m)), s: np.array(0.7), w: rng.normal(size=n)}

CASES = [
    A @ x + B @ u,
    x + 0.1 * (A @ x - B @ u) / 2.0,
    s * x + w * u[0] - x[::-1],
    dc.stack([x[0] + u[1], s * x[2], dc.sum(x) - u[0]]),
    dc.concat([x[:2] + B[:2] @ u, w[2] * u[1] + 1.0]),
    (x @ A.T) + np.ones(n),
    -(A @ (A @ x + B @ u)) + w,
]


def _value(expr, env):
    like = torch.zeros((), dtype=torch.float64)
    return evaluate([expr], {id(k): torch.as_tensor(v, dtype=torch.float64) for k, v in env.items()},
                    TorchFramework, like)[0]


@pytest.mark.parametrize("expr", CASES, ids=str)
def test_jacobian_expressions_match_autodiff(expr):
    point = {x: rng.normal(size=n), u: rng.normal(size=m)}
    for var in (x, u):
        J = jacobian_expression(expr, var)
        assert J is not None and J.shape == (n, var.shape[0])

        def f(z, var=var):
            return _value(expr, {**VALUES, **point, var: z})

        reference = torch.autograd.functional.jacobian(f, torch.as_tensor(point[var], dtype=torch.float64))
        np.testing.assert_allclose(_value(J, VALUES).numpy(), reference.numpy(), rtol=1e-12, atol=1e-12)


def test_unsupported_constructs_fall_back():
    assert jacobian_expression(dc.sin(x) + u[0], x) is None
