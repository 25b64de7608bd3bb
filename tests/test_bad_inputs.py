"""The bad-input battery: every way a user can hand the library something it cannot solve
gets an error of the documented type whose message says what went wrong.

Cases tested beside the feature they guard (one test each, not repeated here):
unknown / missing names, wrong shapes, mismatched batches, NaN / Inf inputs, float16, mixed
devices, an empty control box (tests/test_torch_layer.py); a non-PSD control cost on lqr
(tests/test_lqr.py); a nonconvex problem forced onto cone, an infeasible convex problem
(tests/test_cone.py); a non-positive horizon, a dc.Function of the wrong shape at evaluation
(tests/test_dsl.py); JAX's versions (tests/test_jax.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import diffcontrol as dc


def _scalar_control_problem(dynamics_fn=None, cost_sign: float = 1.0, x0=(1.0, 1.0)):
    x, u = dc.State(2, name="x"), dc.Control(1, name="u")
    dynamics = x.next == (x + u if dynamics_fn is None else dynamics_fn(x, u))
    cost = dc.sum_squares(x) + cost_sign * dc.sum_squares(u)
    return dc.ControlProblem(dynamics=dynamics, cost=cost, horizon=3, initial_state=np.array(x0))


@pytest.mark.parametrize("horizon", [0, -2, 2.5, True, "3"])
def test_horizon_that_is_not_a_positive_int(horizon):
    x, u = dc.State(2), dc.Control(1)
    with pytest.raises(dc.ModelError, match=f"horizon must be a positive int, got {horizon!r}"):
        dc.ControlProblem(dynamics=x.next == x + u, cost=dc.sum_squares(u), horizon=horizon,
                          initial_state=np.zeros(2))


def test_constant_concave_control_cost_forced_onto_lqr_fails_at_the_solve():
    """The Riccati recursion checks Q_uu per stage (per-stage convexity of C is stronger than
    what LQR needs, so it is not checked at compile time)."""
    layer = _scalar_control_problem(cost_sign=-1.0).compile(backend="lqr").to_torch()
    with pytest.raises(dc.SolverError, match=r"must be positive definite is not.*1e-6 \* dc.sum_squares\(u\)"):
        layer()


def test_affine_objective_without_constraints_is_unbounded_at_compile_time():
    y = dc.Variable(2, name="y")
    p = dc.Parameter(2, name="p")
    with pytest.raises(dc.ModelError, match=r"the objective p @ y is affine in the variables and there are no "
                                            r"constraints, so it has no minimiser"):
        dc.Problem(dc.Minimize(p @ y)).compile()


def test_unbounded_example_of_a_convex_problem_is_reported_per_example():
    y, a = dc.Variable(2, name="y"), dc.Parameter(name="a")
    layer = dc.Problem(dc.Minimize(a * dc.sum(y)), [y <= 1]).compile().to_torch()
    with pytest.warns(dc.NotConvergedWarning, match=r"1 of 2 examples did not converge.*unbounded below"):
        ys, info = layer(a=torch.tensor([-1.0, 1.0], dtype=torch.float64), return_info=True)
    assert info.status[1] is dc.Status.UNBOUNDED and info.converged.tolist() == [True, False]
    assert torch.allclose(ys[0], torch.ones(2, dtype=torch.float64), atol=1e-7) and torch.isnan(ys[1]).all()


def test_unbounded_direction_of_a_smooth_problem_stops_at_max_iter_and_says_so():
    y, a = dc.Variable(2, name="y"), dc.Parameter(name="a")
    layer = dc.Problem(dc.Minimize(a * dc.sum(y) + dc.sum_squares(y[0]))).compile(max_iter=20).to_torch()
    with pytest.warns(dc.NotConvergedWarning, match="1 of 1 examples did not converge .*max_iter"):
        _, info = layer(a=1.0, return_info=True)
    assert info.status is dc.Status.MAX_ITER and info.iterations.dtype == torch.int64


def test_function_returning_the_wrong_shape_fails_at_the_first_call_naming_it():
    wrong = dc.Function(lambda x, u: torch.cat([x, u]), (2,), name="concat")
    layer = _scalar_control_problem(lambda x, u: wrong(x, u)).compile().to_torch()
    with pytest.raises(dc.ModelError, match=r"dc.Function concat declared shape \(2,\) but returned shape \(3,\)"):
        layer()


def test_function_non_finite_at_the_start_is_a_solver_error_about_nan_not_convexity():
    def pole(x, u):  # x[0] = 1 at the start: a division by zero
        return torch.stack([x[0] + u[0], x[1] / (x[0] - 1.0)])

    layer = _scalar_control_problem(lambda x, u: dc.Function(pole, (2,), name="pole")(x, u)).compile().to_torch()
    with pytest.raises(dc.SolverError, match=r"NaN or Inf appeared during the solve.*dc.Function.*domains"):
        layer()


def test_function_leaving_its_domain_mid_solve_never_yields_nan_outputs():
    """A function that is NaN beyond |u| > 0.5: iLQR's first step lands there, the line search
    rejects the NaN cost and backtracks; the optimum lies outside the domain, so the solve stops
    with finite outputs inside it and says it did not converge."""
    def cliff(x, u):
        return torch.where(u.abs() > 0.5, torch.nan, x + u)

    x, u = dc.State(1, name="x"), dc.Control(1, name="u")
    fn = dc.Function(cliff, (1,), name="cliff")
    prob = dc.ControlProblem(dynamics=x.next == fn(x, u), cost=dc.sum_squares(x) + dc.sum_squares(u),
                             horizon=3, initial_state=np.array([3.0]))
    with pytest.warns(dc.NotConvergedWarning, match="1 of 1 examples did not converge.*line search found no decrease"):
        xs, us, info = prob.compile().to_torch()(return_info=True)
    assert info.status is dc.Status.LINE_SEARCH_FAILED
    assert torch.isfinite(xs).all() and bool((us.abs() <= 0.5).all()) and float(us[0, 0]) < -0.4


def test_non_finite_gradient_never_reaches_a_parameter():
    """sqrt's derivative at 0 makes the true gradient infinite: backward raises, naming the
    parameter and the example, and leaves .grad untouched."""
    y, a = dc.Variable(1, name="y"), dc.Parameter(name="a")
    layer = dc.Problem(dc.Minimize(dc.sum_squares(y - 1) + dc.sum(y) * dc.sqrt(a))).compile().to_torch()
    a_t = torch.tensor([1.0, 0.0, 4.0], dtype=torch.float64, requires_grad=True)
    (ys,) = layer(a=a_t)
    assert torch.allclose(ys[:, 0], 1 - a_t.detach().sqrt() / 2)
    with pytest.raises(dc.SolverError, match=r"gradient reaching parameter 'a' .* NaN or Inf \(examples \[1\]\)"):
        ys.sum().backward()
    assert a_t.grad is None


def test_non_finite_second_derivative_at_the_solution_is_refused_in_backward():
    """|u a|^1.5 has a finite first but an infinite second derivative at u = 0, where this
    problem's solution lies: the implicit gradient would be NaN."""
    x, u = dc.State(1, name="x"), dc.Control(1, name="u")
    a = dc.Parameter(name="a")
    rough = dc.Function(lambda x, u, a: x + u + torch.abs(u * a) ** 1.5, (1,), name="rough")
    prob = dc.ControlProblem(dynamics=x.next == rough(x, u, a), cost=dc.sum_squares(x) + dc.sum_squares(u),
                             horizon=3, initial_state=np.zeros(1))
    a_t = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    _, us = prob.compile().to_torch()(a=a_t)
    assert torch.equal(us, torch.zeros_like(us))
    with pytest.raises(dc.SolverError, match="gradient reaching parameter 'a'"), \
            pytest.warns(dc.GradientFallbackWarning):
        us.sum().backward()
    assert a_t.grad is None


def test_python_objects_that_are_not_numbers_are_an_input_error():
    x, u = dc.State(2), dc.Control(1)
    p = dc.Parameter(name="p")
    layer = dc.ControlProblem(dynamics=x.next == x + p * u, cost=dc.sum_squares(x) + dc.sum_squares(u),
                              horizon=2, initial_state=np.ones(2)).compile().to_torch()
    with pytest.raises(dc.InputError, match="cannot convert .* \\(str\\) to a tensor"):
        layer(p="fast")
    with pytest.raises(dc.InputError, match="dtype torch.complex64; diffcontrol solves in float32 or float64"):
        layer(p=torch.tensor(1 + 1j))
    with pytest.raises(TypeError):
        layer(torch.ones(()))  # parameters go by name only


# ---- issue 27's list of raw or unhelpful errors, each now typed and named ------------------------


def _weighted_layer(backend: str = "lqr", **options):
    x, u = dc.State(2), dc.Control(1)
    x0, q = dc.Parameter(2, name="x0"), dc.Parameter(name="q")
    prob = dc.ControlProblem(dynamics=x.next == x + u, cost=q * dc.sum_squares(x) + dc.sum_squares(u),
                             horizon=5, initial_state=x0)
    return prob.compile(backend=backend, **options).to_torch()


def test_numpy_float16_none_and_ragged_inputs_are_input_errors_naming_the_parameter():
    layer = _weighted_layer()
    with pytest.raises(dc.InputError, match="'x0' has dtype numpy.float16; diffcontrol solves in float32 or float64"):
        layer(x0=np.ones(2, dtype=np.float16), q=1.0)
    with pytest.raises(dc.InputError, match="parameter 'x0' is None"):
        layer(x0=None, q=1.0)
    with pytest.raises(dc.InputError, match=r"cannot convert 'x0' \(list\) to a tensor \(a ragged nested list"):
        layer(x0=[[1.0, 2.0], [1.0]], q=1.0)


@pytest.mark.parametrize("name", ["self", "u_init", "y_init", "return_info"])
def test_a_parameter_named_like_a_call_keyword_is_refused(name):
    x, u = dc.State(2), dc.Control(1)
    with pytest.raises(dc.ModelError, match=f"may not be named '{name}'"):
        dc.ControlProblem(dynamics=x.next == x + dc.Parameter(name=name) * u, cost=dc.sum_squares(u), horizon=2,
                          initial_state=[1.0, 0.0])


def test_one_bad_example_of_a_batch_is_named_lqr_indefinite_and_ilqr_overflow():
    layer = _weighted_layer()
    with pytest.raises(dc.SolverError, match=r"positive definite.*\[in 1 of 3 examples: batch elements 1\]"):
        layer(x0=torch.ones(3, 2), q=torch.tensor([1.0, -5.0, 1.0]))
    x, u = dc.State(1), dc.Control(1)
    x0 = dc.Parameter(1, name="x0")
    overflowing = dc.ControlProblem(dynamics=x.next == x + 0.5 * dc.exp(3 * x) + u,
                                    cost=dc.sum_squares(x) + 0.1 * dc.sum_squares(u), horizon=10, initial_state=x0)
    with pytest.raises(dc.SolverError, match=r"NaN or Inf.*batch elements 1\b"):
        overflowing.compile(backend="ilqr").to_torch()(x0=torch.tensor([[-1.0], [3.0], [-0.5]]))


def _function_layer(fn, name: str):
    x, u = dc.State(2), dc.Control(1)
    f = dc.Function(fn, shape=(2,), name=name)
    x0 = dc.Parameter(2, name="x0")
    prob = dc.ControlProblem(dynamics=x.next == f(x) + u, cost=dc.sum_squares(x) + dc.sum_squares(u), horizon=3,
                             initial_state=x0)
    return prob.compile(backend="ilqr").to_torch()


def test_a_function_returning_numpy_is_a_model_error_naming_it():
    layer = _function_layer(lambda a: a.detach().numpy() * 0.5, "halve_np")
    with pytest.raises(dc.ModelError, match="dc.Function halve_np returned a numpy.ndarray"):
        layer(x0=torch.ones(2, dtype=torch.float64))


def test_a_function_in_another_dtype_than_the_layer_is_a_model_error_naming_it_and_the_fix():
    linear = torch.nn.Linear(2, 2).float()
    layer = _function_layer(linear, "lin32")
    with pytest.raises(dc.ModelError, match=r"Function lin32 raised RuntimeError.*dtype torch.float64.*module.double"):
        layer(x0=torch.ones(2, dtype=torch.float64))
    xs, _ = layer(x0=torch.ones(2, dtype=torch.float32))  # in the weights' dtype it solves
    with torch.no_grad():
        assert torch.allclose(xs[1], linear(xs[0]) + _[0], atol=1e-5)


def test_a_function_that_cannot_be_vmapped_is_named_with_the_reason():
    def branching(a):
        return a * 0.5 if bool(a.sum() > 0) else a * 0.25  # a Python branch on a value

    layer = _function_layer(branching, "branching")
    with pytest.raises(dc.ModelError, match=r"dc.Function branching raised .* on a batch of 2 examples \(vmapped\)"
                                            r".*must not branch in Python on values"):
        layer(x0=torch.ones(2, 2, dtype=torch.float64))
    # alone too: its derivatives are taken with vmap (torch.func.jacrev)
    with pytest.raises(dc.ModelError, match=r"dc.Function branching raised .*must not branch in Python on values"):
        layer(x0=torch.ones(2, dtype=torch.float64))


def test_torch_func_transforms_over_the_layer_are_refused_with_what_works_instead():
    layer = _weighted_layer()
    x0 = torch.ones(2, dtype=torch.float64)
    with pytest.raises(dc.BackendError, match="torch.func transforms"):
        torch.func.grad(lambda a: layer(x0=a, q=1.0)[1].sum())(x0)
    with pytest.raises(dc.BackendError, match="torch.func transforms"):
        torch.func.vmap(lambda a: layer(x0=a, q=1.0)[1])(torch.ones(3, 2, dtype=torch.float64))
    # what the message offers works: the Jacobian of u_0 in x0 is the LQR gain, -K_0 (Riccati, P_5 = 0)
    jac = torch.autograd.functional.jacobian(lambda a: layer(x0=a, q=1.0)[1][0], x0)
    b, P = np.ones((2, 1)), np.zeros((2, 2))
    for _ in range(5):
        K = np.linalg.solve(np.eye(1) + b.T @ P @ b, b.T @ P)
        P = np.eye(2) + P - P @ b @ K
    assert np.abs(jac.numpy() + K).max() < 1e-10


def test_nonconvergence_is_attributed_to_the_users_line_and_raise_mode_gives_no_stale_advice():
    x, u = dc.State(2), dc.Control(1)
    prob = dc.ControlProblem(dynamics=x.next == x + 0.1 * dc.sin(x) + u, cost=dc.sum_squares(x) + dc.sum_squares(u),
                             horizon=5, initial_state=[1.0, 0.0])
    with pytest.warns(dc.NotConvergedWarning) as record:
        prob.compile(backend="ilqr", max_iter=1).to_torch()()
    assert record[0].filename == __file__  # not a file inside torch.nn.Module
    with pytest.raises(dc.SolverError) as err:
        prob.compile(backend="ilqr", max_iter=1, on_nonconvergence="raise").to_torch()()
    assert "on_nonconvergence" not in str(err.value) and "max_iter" in str(err.value)


def test_a_negative_value_of_a_nonneg_parameter_is_refused_not_solved_as_another_problem():
    """r * |y|^2 with r declared nonneg: cone canonicalised it as convex, and r = -0.1 came back
    'unbounded' (NaN) although M = I makes the problem bounded; ift_cg solved it. Both refuse
    now; r = 0 (the boundary) solves: y = argmin |y - 1|^2 = 1."""
    pytest.importorskip("cvxpylayers")
    y = dc.Variable(3, name="y")
    M, b, r = dc.Parameter((3, 3), name="M"), dc.Parameter(3, name="b"), dc.Parameter(name="r", nonneg=True)
    prob = dc.Problem(dc.Minimize(dc.sum_squares(M @ y - b) + r * dc.sum_squares(y)))
    for backend in ("cone", "ift_cg"):
        layer = prob.compile(backend=backend).to_torch()
        with pytest.raises(dc.InputError, match="'r' is declared nonneg=True"):
            layer(M=np.eye(3), b=np.ones(3), r=torch.tensor([0.5, -0.1]))
        (y_star,) = layer(M=np.eye(3), b=np.ones(3), r=0.0)
        assert torch.allclose(y_star, torch.ones(3, dtype=y_star.dtype), atol=1e-6)


def test_quad_form_parameter_matrix_singular_solves_indefinite_is_named():
    """cone, quad_form(y, P) with P a parameter: a PSD-but-singular P (convex) raised a raw
    Cholesky error; an indefinite one too, naming nothing. min y^T P y + y_0 on the box [-1, 1]:
    P = I gives y = (-1/2, 0); P = [[1, 1], [1, 1]] gives y = (-1, 1) (y_0 + y_1 = 0 zeroes
    the quadratic; y_0 = -1 the linear term); P = diag(1, -1) is refused before any solve."""
    pytest.importorskip("cvxpylayers")
    y, P = dc.Variable(2, name="y"), dc.Parameter((2, 2), name="P")
    layer = dc.Problem(dc.Minimize(dc.quad_form(y, P) + y[0]), [y >= -1, y <= 1]).compile(backend="cone").to_torch()
    (sol,) = layer(P=np.stack([np.eye(2), np.ones((2, 2))]))
    assert torch.allclose(sol, torch.tensor([[-0.5, 0.0], [-1.0, 1.0]], dtype=sol.dtype), atol=1e-6)
    with pytest.raises(dc.SolverError, match=r"batch elements 1\).*quad_form that is not positive semidefinite"):
        layer(P=np.stack([np.eye(2), np.diag([1.0, -1.0])]))


def test_division_by_a_parameter_equal_to_zero_is_named_and_prints_nothing(capfd):
    """cone: 1 / c at c = 0 made the solver print 'could not determine problem status' and
    return NaN; now a SolverError before any solve, naming the example."""
    pytest.importorskip("cvxpylayers")
    y, c = dc.Variable(2, name="y"), dc.Parameter(name="c")
    layer = dc.Problem(dc.Minimize(dc.sum_squares(y - 1 / c)), [y >= -1, y <= 1]).compile(backend="cone").to_torch()
    with pytest.raises(dc.SolverError, match=r"1 of 2 examples \(batch elements 0\).*division by a parameter"):
        layer(c=torch.tensor([0.0, 2.0]))
    assert capfd.readouterr().out == ""
    (sol,) = layer(c=2.0)
    assert torch.allclose(sol, torch.full((2,), 0.5, dtype=sol.dtype), atol=1e-6)
