"""Analysis, selection and explain(): the facts with their reasons, the decision, the errors."""

from __future__ import annotations

import numpy as np
import pytest

import diffcontrol as dc
from diffcontrol.compilers.analysis import analyse


def _readme_problem(constraints=None, dynamics=None, cost=None):
    x, u = dc.State(4, name="x"), dc.Control(2, name="u")
    A, B, x0 = dc.Parameter((4, 4), name="A"), dc.Parameter((4, 2), name="B"), dc.Parameter(4, name="x0")
    return dc.ControlProblem(
        dynamics=x.next == (dynamics(x, u) if dynamics else A @ x + B @ u),
        cost=cost(x, u) if cost else dc.sum_squares(x) + 0.1 * dc.sum_squares(u),
        terminal_cost=dc.sum_squares(x), horizon=10, initial_state=x0,
        constraints=[-1 <= u, u <= 1] if constraints is None else constraints(x, u))


def test_explain_of_the_readme_problem_names_everything():
    text = _readme_problem().explain()
    assert "Backend: lqr" in text
    assert "dynamics        affine" in text and "affine in (x, u): A @ x + B @ u" in text
    assert "stage cost      quadratic, convex" in text
    assert "box on controls: -1 <= u, u <= 1" in text
    assert "cone: fits, but 'lqr' comes first" in text
    assert "ift_cg: 'ift_cg' takes generic problems, this is a control problem" in text
    assert "F = [A, B], f = 0" in text
    assert "C = blockdiag(2*I, 0.2*I), c = 0" in text and "C_T = 2*I" in text
    assert "x_0 = x0   (from x0)" in text


def test_analysis_facts():
    form = analyse(_readme_problem())
    assert form.value("dynamics") == "affine"
    assert form.value("constraints") == "box on controls"
    assert [b.lower for b in form.box_bounds] == [True, False]
    nonlinear = analyse(_readme_problem(dynamics=lambda x, u: dc.stack([dc.sin(x[0]), x[1], x[2], u[0]])))
    assert nonlinear.value("dynamics") == "smooth"
    assert "sin(x[0]) in the dynamics is not affine" in nonlinear.facts["dynamics"].reason
    opaque = analyse(_readme_problem(dynamics=lambda x, u: dc.Function(np.tanh, 4, name="f")(x)))
    assert opaque.value("dynamics") == "opaque"
    state = analyse(_readme_problem(constraints=lambda x, u: [x[0] <= 0.3, -1 <= u]))
    assert state.value("constraints") == "box on controls, state constraint"
    general = analyse(_readme_problem(constraints=lambda x, u: [u[0] + u[1] <= 1]))
    assert general.value("constraints") == "general inequality on controls"
    quartic = analyse(_readme_problem(cost=lambda x, u: dc.sum_squares(x) ** 2 + dc.sum_squares(u)))
    assert quartic.value("stage cost") == "smooth"


def test_parameter_scaled_cost_is_quadratic_with_convexity_checked_at_solve_time():
    q = dc.Parameter(name="q")
    form = analyse(_readme_problem(cost=lambda x, u: q * dc.sum_squares(x) + dc.sum_squares(u)))
    assert form.value("stage cost") == "quadratic, convexity unknown"
    q_pos = dc.Parameter(name="q", nonneg=True)
    form = analyse(_readme_problem(cost=lambda x, u: q_pos * dc.sum_squares(x) + dc.sum_squares(u)))
    assert form.value("stage cost") == "quadratic, convex"


def test_smooth_nonlinear_dynamics_go_to_ilqr_and_explain_says_why_not_lqr():
    prob = _readme_problem(dynamics=lambda x, u: dc.stack([dc.sin(x[0]), x[1], x[2], u[0]]))
    assert prob.compile().backend == "ilqr"
    text = prob.explain()
    assert "'lqr' needs dynamics affine in (x, u); sin(x[0]) in the dynamics" in text
    assert "'ilqr' takes smooth nonlinear dynamics" in text


def test_nonsmooth_dynamics_have_no_backend_and_say_why():
    prob = _readme_problem(dynamics=lambda x, u: dc.stack([dc.abs(x[0]), x[1], x[2], u[0]]))
    with pytest.raises(dc.BackendError, match=r"no available backend takes this problem:\n  - lqr: 'lqr' needs "
                                              r"dynamics affine in \(x, u\); abs\(x\[0\]\) in the dynamics"):
        prob.compile()
    text = prob.explain()
    assert "Backend: none" in text and "'ilqr' needs smooth dynamics" in text


def test_state_constraint_rules_out_lqr():
    prob = _readme_problem(constraints=lambda x, u: [x[0] <= 0.3, -1 <= u, u <= 1])
    with pytest.raises(dc.BackendError, match="no constraints other than box bounds on the controls; "
                                              "box on controls: .*; state constraint: x\\[0\\] <= 0.3"):
        prob.compile(backend="lqr")


def test_forcing_backends():
    prob = _readme_problem()
    assert prob.compile(backend="lqr").backend == "lqr"
    assert prob.compile(backend="cone").backend == "cone"
    with pytest.raises(dc.BackendError, match="backend='ift_cg' cannot take this problem: 'ift_cg' takes "
                                              "generic problems, this is a control problem"):
        prob.compile(backend="ift_cg")
    with pytest.raises(dc.BackendError, match="unknown backend 'qp'; choose one of 'auto', 'lqr'"):
        prob.compile(backend="qp")


def test_options_are_validated():
    prob = _readme_problem()
    with pytest.raises(dc.BackendError, match="unknown option 'iters' for backend 'lqr'; valid options: max_iter"):
        prob.compile(iters=3)
    with pytest.raises(dc.BackendError, match="backward='gauss_newton' is not offered by 'lqr'"):
        prob.compile(backward="gauss_newton")
    with pytest.raises(dc.BackendError, match="on_nonconvergence must be 'warn' or 'raise'"):
        prob.compile(on_nonconvergence="ignore")
    with pytest.raises(dc.BackendError, match="max_iter must be a positive int"):
        prob.compile(max_iter=0)
    with pytest.raises(dc.BackendError, match="tol must be positive"):
        prob.compile(tol=-1.0)


def test_generic_problems_go_to_ift_cg_or_cone_by_constraints_and_convexity():
    x, p = dc.Variable(3, name="x"), dc.Parameter(3, name="p")
    smooth = dc.Problem(dc.Minimize(dc.sum_squares(x - p)))
    assert smooth.compile().backend == "ift_cg"
    assert "cone: fits, but 'ift_cg' comes first" in smooth.explain()
    assert dc.Problem(dc.Minimize(dc.norm2(x - p))).compile().backend == "cone"  # nonsmooth convex
    assert dc.Problem(dc.Minimize(dc.sum_squares(x - p)), [x >= 0]).compile().backend == "cone"
    nonconvex = dc.Problem(dc.Minimize(dc.sum(dc.cos(x - p))), [dc.sum(x) == 1])
    with pytest.raises(dc.ModelError, match=r"the constraint sum\(x\) == 1 makes this a constrained "
                                            r"nonconvex problem .*smooth penalty"):
        nonconvex.compile()


def test_bound_of_wrong_shape_is_a_model_error():
    message = r"bound \[1, 1, 1\] of shape \(3,\) in .u\[0\] <= \[1, 1, 1\]. does not fit"
    with pytest.raises(dc.ModelError, match=message):
        _readme_problem(constraints=lambda x, u: [u[0] <= np.ones(3)]).compile()


def test_compiled_problem_is_immutable():
    compiled = _readme_problem().compile()
    with pytest.raises(AttributeError):
        compiled.options = {}
