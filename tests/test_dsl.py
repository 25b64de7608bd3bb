"""The DSL: shapes by the documented rules (checked against NumPy), evaluation against
NumPy, and every documented error message."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import diffcontrol as dc
from diffcontrol.emitters.torch_ops import TorchFramework
from diffcontrol.programs.evaluate import evaluate


def _value(expr, env):
    like = torch.zeros((), dtype=torch.float64)
    env = {id(k): torch.as_tensor(v, dtype=torch.float64) for k, v in env.items()}
    return evaluate([expr], env, TorchFramework, like)[0].numpy()


def test_leaves_shapes_and_names():
    assert dc.Variable().shape == () and dc.Variable(3).shape == (3,)
    assert dc.Parameter((2, 3), name="P").shape == (2, 3)
    x, u = dc.State(4), dc.Control(2)
    assert (x.name, u.name, x.shape, u.shape) == ("x", "u", (4,), (2,))
    assert x.next.shape == (4,) and str(x.next) == "x.next"


@pytest.mark.parametrize("bad", [0, -1, (2, 0), "3", 2.5])
def test_bad_shapes_raise(bad):
    with pytest.raises(dc.ModelError, match="shape"):
        dc.Parameter(bad)


def test_bad_name_raises():
    with pytest.raises(dc.ModelError, match="identifier"):
        dc.Parameter(2, name="not a name")


def test_operators_follow_numpy_shapes_and_values():
    rng = np.random.default_rng(0)
    A, x, s = dc.Parameter((3, 4), name="A"), dc.Variable(4, name="x"), dc.Parameter(name="s")
    vals = {A: rng.normal(size=(3, 4)), x: rng.normal(size=4), s: np.array(1.7)}
    cases = [
        (A @ x, vals[A] @ vals[x]),
        (s * x + 1.0, vals[s] * vals[x] + 1.0),
        (x / s - x, vals[x] / vals[s] - vals[x]),
        ((-x) ** 2, vals[x] ** 2),
        (x[1:3], vals[x][1:3]),
        (x[[0, 2]], vals[x][[0, 2]]),
        (A[1, 2:], vals[A][1, 2:]),
        (A.T @ (A @ x), vals[A].T @ (vals[A] @ vals[x])),
        (dc.sum(A, axis=0), vals[A].sum(0)),
        (dc.sum_squares(A @ x), np.sum((vals[A] @ vals[x]) ** 2)),
        (dc.quad_form(x, np.eye(4) * 2), 2 * vals[x] @ vals[x]),
        (dc.norm2(x), np.linalg.norm(vals[x])),
        (dc.stack([x[0], s, 3.0]), np.array([vals[x][0], vals[s], 3.0])),
        (dc.concat([x, s, A[0]]), np.concatenate([vals[x], [vals[s]], vals[A][0]])),
        (dc.atan2(x[1], x[0]), np.arctan2(vals[x][1], vals[x][0])),
        (dc.exp(dc.sin(x)) + dc.cos(x) * dc.tanh(x) - dc.tan(x / 5),
         np.exp(np.sin(vals[x])) + np.cos(vals[x]) * np.tanh(vals[x]) - np.tan(vals[x] / 5)),
        (dc.log(dc.square(x) + 1) + dc.sqrt(dc.abs(x)),
         np.log(vals[x] ** 2 + 1) + np.sqrt(np.abs(vals[x]))),
    ]
    for expr, expected in cases:
        assert expr.shape == np.shape(expected), str(expr)
        np.testing.assert_allclose(_value(expr, vals), expected, rtol=1e-12, err_msg=str(expr))


def test_numpy_arrays_on_the_left_defer_to_the_dsl():
    x = dc.Variable(3)
    M = np.ones((2, 3))
    for expr in (M @ x, np.float64(2.0) * x, np.ones(3) + x):
        assert isinstance(expr, dc.Expression)
    assert (M @ x).shape == (2,)
    assert isinstance(np.ones(3) <= x, dc.Inequality)


def test_shape_errors_name_both_shapes():
    A, x = dc.Parameter((3, 4)), dc.Variable(3)
    with pytest.raises(dc.ModelError, match=r"shapes \(3, 4\) and \(3,\) do not match for '@'"):
        A @ x
    with pytest.raises(dc.ModelError, match=r"shapes \(3,\) and \(2,\) do not match for '\+'"):
        x + dc.Variable(2)
    with pytest.raises(dc.ModelError, match="use '\\*' for scalars"):
        dc.Variable() @ x
    with pytest.raises(dc.ModelError, match="invalid index"):
        x[5]
    with pytest.raises(dc.ModelError, match="quad_form"):
        dc.quad_form(x, np.eye(2))
    with pytest.raises(dc.ModelError, match="one shape"):
        dc.stack([x, dc.Variable(2)])


def test_chained_comparison_is_refused_with_the_fix():
    u = dc.Control(2)
    with pytest.raises(dc.ModelError, match=r"chained comparisons .* \[lo <= u, u <= hi\]"):
        -1 <= u <= 1  # noqa: B015


def test_expressions_have_no_truth_value_and_no_strict_inequalities():
    x = dc.Variable()
    with pytest.raises(dc.ModelError, match="truth value"):
        bool(x + 1)
    with pytest.raises(dc.ModelError, match="strict inequalities"):
        x < 1  # noqa: B015


def test_torch_tensor_as_constant_is_refused():
    with pytest.raises(dc.ModelError, match="declare a dc.Parameter"):
        dc.Variable(2) + torch.ones(2)


def test_power_needs_a_constant_exponent():
    x = dc.Variable()
    with pytest.raises(dc.ModelError, match="exponent"):
        x ** dc.Parameter()


def test_function_call_and_its_shape_check():
    f = dc.Function(lambda z: torch.tanh(z[:2]), 2, name="f")
    x = dc.Variable(3, name="x")
    expr = f(x) + 1
    assert expr.shape == (2,) and str(expr) == "f(x) + 1"
    assert np.allclose(_value(expr, {x: np.array([0.1, 0.2, 0.3])}), np.tanh([0.1, 0.2]) + 1)
    wrong = dc.Function(lambda z: z, 2, name="g")(x)
    with pytest.raises(dc.ModelError, match=r"declared shape \(2,\) but returned shape \(3,\)"):
        _value(wrong, {x: np.zeros(3)})


def test_control_problem_validation_messages():
    x, u = dc.State(2), dc.Control(1)
    ok = dict(dynamics=x.next == x + u, cost=dc.sum_squares(u), horizon=3, initial_state=np.zeros(2))
    dc.ControlProblem(**ok)
    with pytest.raises(dc.ModelError, match="x.next == f\\(x, u\\)"):
        dc.ControlProblem(**dict(ok, dynamics=x == u))
    with pytest.raises(dc.ModelError, match=r"right side must have the state's shape \(2,\)"):
        dc.ControlProblem(**dict(ok, dynamics=x.next == dc.sum(x)))
    with pytest.raises(dc.ModelError, match="cost must be a scalar"):
        dc.ControlProblem(**dict(ok, cost=x))
    with pytest.raises(dc.ModelError, match="horizon must be a positive int"):
        dc.ControlProblem(**dict(ok, horizon=0))
    with pytest.raises(dc.ModelError, match="initial_state must have the state's shape"):
        dc.ControlProblem(**dict(ok, initial_state=np.zeros(3)))
    with pytest.raises(dc.ModelError, match="terminal_cost .* uses the control"):
        dc.ControlProblem(**dict(ok, terminal_cost=dc.sum_squares(u)))
    with pytest.raises(dc.ModelError, match="x.next may appear only in the dynamics"):
        dc.ControlProblem(**dict(ok, cost=dc.sum_squares(x.next)))
    with pytest.raises(dc.ModelError, match="one control"):
        dc.ControlProblem(**dict(ok, cost=dc.sum_squares(dc.Control(1, name="v"))))
    with pytest.raises(dc.ModelError, match="dc.Variable"):
        dc.ControlProblem(**dict(ok, cost=dc.sum_squares(dc.Variable(1, name="w"))))
    with pytest.raises(dc.ModelError, match="named 'p'"):
        dc.ControlProblem(**dict(ok, cost=dc.Parameter(name="p") * dc.sum_squares(u)
                                 + dc.Parameter(name="p") * dc.sum_squares(x)))


def test_parameter_names_that_the_layer_uses_itself_are_refused():
    x, u = dc.State(2), dc.Control(1)
    with pytest.raises(dc.ModelError, match="may not be named 'u_init'"):
        dc.ControlProblem(dynamics=x.next == x + u, cost=dc.sum_squares(u), horizon=2,
                          initial_state=dc.Parameter(2, name="u_init"))


def test_generic_problem_variables_in_order_of_appearance():
    a, b = dc.Variable(2, name="a"), dc.Variable(name="b")
    prob = dc.Problem(dc.Minimize(dc.sum_squares(a) + b ** 2), [b >= 1])
    assert [v.name for v in prob.variables()] == ["a", "b"]
    with pytest.raises(dc.ModelError, match="objective must be a scalar"):
        dc.Minimize(a)
    with pytest.raises(dc.ModelError, match="belong in dc.ControlProblem"):
        dc.Problem(dc.Minimize(dc.sum_squares(dc.State(2))))


def test_problems_print_as_math_and_repr_in_one_line():
    x, u = dc.State(2, name="x"), dc.Control(1, name="u")
    r = dc.Parameter(2, name="r", time_varying=True)
    prob = dc.ControlProblem(dynamics=x.next == x + u, cost=dc.sum_squares(x - r) + dc.sum_squares(u), horizon=3,
                             initial_state=np.zeros(2), terminal_cost=dc.sum_squares(x),
                             constraints=[-1 <= u, x[0] <= 2], terminal_constraints=[x == 1])
    assert str(prob).splitlines() == [
        "minimize   sum over t = 0..2 of (sum_squares(x - r) + sum_squares(u))  +  (sum_squares(x)) at t = 3",
        "subject to x_(t+1) = x + u,  t = 0..2",
        "           x_0 = [0, 0]",
        "           -1 <= u,  t = 0..2",
        "           x[0] <= 2,  t = 1..3",
        "           x == 1,  at t = 3 (terminal)",
    ]
    assert repr(prob) == ("ControlProblem(state x in R^2, control u in R^1, horizon 3; parameters: r(2,) per stage; "
                          "2 constraints, 1 terminal)")
    y = dc.Variable(2, name="y")
    generic = dc.Problem(dc.Minimize(dc.sum_squares(y)), [y >= 1, dc.sum(y) <= 3])
    assert str(generic).splitlines() == ["minimize   sum_squares(y)", "subject to 1 <= y", "           sum(y) <= 3"]
    assert repr(generic) == "Problem(variables: y(2,); parameters: none; 2 constraints)"
