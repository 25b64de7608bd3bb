"""Property-based tests (hypothesis): random expression trees have NumPy's shapes and values;
random LQ problems solved by lqr agree with cone (cvxpy); random smooth problems' implicit
gradients agree with central finite differences whenever the solve converged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import diffcontrol as dc
from diffcontrol.emitters.torch_ops import TorchFramework
from diffcontrol.programs.evaluate import evaluate

SHAPES = [(), (1,), (2,), (3,), (2, 3), (3, 2), (1, 3), (3, 3), (2, 1)]
# derandomize: CI sees the same examples on every run (a failure is reproducible, never flaky)
SOLVES = settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def _evaluate(expr, env: dict) -> np.ndarray:
    like = torch.zeros((), dtype=torch.float64)
    env = {id(k): torch.as_tensor(v, dtype=torch.float64) for k, v in env.items()}
    return evaluate([expr], env, TorchFramework, like)[0].numpy()


# ---- expression trees ------------------------------------------------------------------------


class _Tree:
    """Builds a DSL expression and its NumPy value side by side from hypothesis draws."""

    def __init__(self, draw):
        self.draw, self.env = draw, {}

    def leaf(self, shape):
        value = self.draw(st.lists(st.floats(-2, 2), min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
        value = np.array(value, dtype=float).reshape(shape)
        if self.draw(st.booleans()):
            return value, value  # a constant
        p = dc.Parameter(shape) if shape else dc.Parameter()
        self.env[p] = value
        return p, value

    def build(self, shape, depth):
        """An expression of exactly ``shape``."""
        kinds = ["leaf"] if depth == 0 else ["leaf", "unary", "binary", "matmul", "reduce", "index", "transpose"]
        kind = self.draw(st.sampled_from(kinds))
        if kind == "unary":
            e, v = self.build(shape, depth - 1)
            name = self.draw(st.sampled_from(["sin", "tanh", "neg", "square"]))
            if name == "neg":
                return -e, -v
            return getattr(dc, name)(e), {"sin": np.sin, "tanh": np.tanh, "square": np.square}[name](v)
        if kind == "binary":
            # the other operand is a scalar, the same shape, or a trailing part of it
            other = self.draw(st.sampled_from([(), shape, shape[1:]]))
            (a, va), (b, vb) = self.build(shape, depth - 1), self.build(other, depth - 1)
            if self.draw(st.booleans()):
                (a, va), (b, vb) = (b, vb), (a, va)
            op = self.draw(st.sampled_from(["+", "-", "*"]))
            f = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}[op]
            return f(a, b), f(va, vb)
        if kind == "matmul" and len(shape) >= 1:
            k = self.draw(st.integers(1, 3))
            left, right = (shape[0], k), (k,) if len(shape) == 1 else (k, shape[1])
            (a, va), (b, vb) = self.build(left, depth - 1), self.build(right, depth - 1)
            return a @ b, va @ vb
        if kind == "reduce" and shape == ():
            inner = self.draw(st.sampled_from([(2,), (2, 3)]))
            e, v = self.build(inner, depth - 1)
            if self.draw(st.booleans()):
                return dc.sum(e), np.sum(v)
            return dc.sum_squares(e), np.sum(v ** 2)
        if kind == "index" and len(shape) <= 1:
            bigger = (*shape, 3) if shape else (3,)
            e, v = self.build(bigger if len(shape) == 0 else (3, *shape), depth - 1)
            i = self.draw(st.integers(0, 2))
            return e[i], v[i]
        if kind == "transpose" and len(shape) == 2:
            e, v = self.build(shape[::-1], depth - 1)
            return e.T, v.T
        return self.leaf(shape)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.data(), st.sampled_from(SHAPES), st.integers(0, 4))
def test_random_expression_trees_have_numpys_shape_and_value(data, shape, depth):
    tree = _Tree(data.draw)
    expr, expected = tree.build(shape, depth)
    if not isinstance(expr, dc.Expression):
        return  # the tree folded into a constant
    assert expr.shape == np.shape(expected), str(expr)
    np.testing.assert_allclose(_evaluate(expr, tree.env), expected, rtol=1e-10, atol=1e-12, err_msg=str(expr))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.sampled_from(SHAPES), st.sampled_from(SHAPES), st.sampled_from(["+", "*", "@"]))
def test_binary_shapes_follow_numpy_or_raise_a_model_error(a, b, op):
    left, right = dc.Parameter(a) if a else dc.Parameter(), dc.Parameter(b) if b else dc.Parameter()
    f = {"+": lambda x, y: x + y, "*": lambda x, y: x * y, "@": lambda x, y: x @ y}[op]
    try:
        expected = f(np.zeros(a), np.zeros(b)).shape
    except ValueError:
        try:
            f(left, right)
        except dc.ModelError as err:
            assert str(a) in str(err) and str(b) in str(err)  # both shapes named
            return
        raise AssertionError(f"{a} {op} {b} should be refused") from None
    assert f(left, right).shape == expected


# ---- random LQ problems: lqr vs cone ----------------------------------------------------------


@SOLVES
@given(n=st.integers(1, 3), m=st.integers(1, 2), T=st.integers(1, 5), bound=st.sampled_from([None, 0.3, 1.0]),
       seed=st.integers(0, 2**16))
def test_random_lq_problems_lqr_agrees_with_cone(n, m, T, bound, seed):
    rng = np.random.default_rng(seed)
    x, u = dc.State(n), dc.Control(m)
    A, B, x0 = dc.Parameter((n, n), name="A"), dc.Parameter((n, m), name="B"), dc.Parameter(n, name="x0")
    q = rng.uniform(0.1, 2.0, size=n)
    constraints = [] if bound is None else [-bound <= u, u <= bound]
    prob = dc.ControlProblem(dynamics=x.next == A @ x + B @ u,
                             cost=dc.sum_squares(np.sqrt(q) * x) + 0.5 * dc.sum_squares(u),
                             terminal_cost=dc.sum_squares(x), horizon=T, initial_state=x0,
                             constraints=constraints)
    values = {"A": np.eye(n) + 0.3 * rng.normal(size=(n, n)), "B": rng.normal(size=(n, m)),
              "x0": 2 * rng.normal(size=n)}
    values = {k: torch.as_tensor(v) for k, v in values.items()}
    x_l, u_l = prob.compile(backend="lqr", tol=1e-12).to_torch()(**values)
    x_c, u_c = prob.compile(backend="cone").to_torch()(**values)
    scale = 1 + float(u_l.abs().max())
    np.testing.assert_allclose(u_l.numpy(), u_c.numpy(), atol=2e-5 * scale)
    np.testing.assert_allclose(x_l.numpy(), x_c.numpy(), atol=2e-5 * (1 + float(x_l.abs().max())))


# ---- random smooth problems: implicit gradients vs finite differences --------------------------


@pytest.mark.filterwarnings("ignore::diffcontrol.errors.NotConvergedWarning")  # assume(converged) instead
@SOLVES
@given(n=st.integers(1, 4), k=st.integers(1, 3), curvature=st.floats(0.5, 3.0), wiggle=st.floats(0.0, 0.4),
       seed=st.integers(0, 2**16))
def test_random_smooth_problems_implicit_gradients_match_finite_differences(n, k, curvature, wiggle, seed):
    """min_y curvature/2 |y|^2 + wiggle * sum(sin(W y + P theta)) - c^T y  (strongly convex when
    wiggle |W|^2 < curvature, otherwise possibly only locally): compared wherever it converged."""
    rng = np.random.default_rng(seed)
    y, theta = dc.Variable(n, name="y"), dc.Parameter(k, name="theta")
    W, P, c = rng.normal(size=(n, n)) / np.sqrt(n), rng.normal(size=(n, k)), rng.normal(size=n)
    objective = curvature / 2 * dc.sum_squares(y) + wiggle * dc.sum(dc.sin(W @ y + P @ theta)) - c @ y
    layer = dc.Problem(dc.Minimize(objective)).compile(tol=1e-12).to_torch()
    th = torch.as_tensor(rng.normal(size=(2, k)), dtype=torch.float64)
    weights = torch.as_tensor(rng.normal(size=(2, n)), dtype=torch.float64)
    leaf = th.clone().requires_grad_(True)
    ys, info = layer(theta=leaf, return_info=True)
    assume(bool(info.converged.all()))
    (ys * weights).sum().backward()
    eps = 1e-6
    fd = torch.zeros_like(th)
    for b in range(2):
        for j in range(k):
            plus, minus = th.clone(), th.clone()
            plus[b, j] += eps
            minus[b, j] -= eps
            (y_plus, info_plus), (y_minus, info_minus) = (layer(theta=plus, return_info=True),
                                                          layer(theta=minus, return_info=True))
            assume(bool(info_plus.converged.all() & info_minus.converged.all()))
            fd[b, j] = ((y_plus - y_minus) * weights).sum() / (2 * eps)
    np.testing.assert_allclose(leaf.grad.numpy(), fd.numpy(), rtol=1e-5, atol=1e-7)
