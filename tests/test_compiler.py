"""Analysis, selection and explain(): the facts with their reasons, the decision, the errors."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import diffcontrol as dc
from diffcontrol.compilers.analysis import analyse
from diffcontrol.facts import ConstraintKind, Form


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
    assert re.search(r"dynamics +affine", text) and "affine in (x, u): A @ x + B @ u" in text
    assert re.search(r"stage cost +quadratic, convex", text)
    assert "box on controls: -1 <= u, u <= 1" in text
    assert "cone: fits, but 'lqr' comes first" in text
    assert "ift_cg: 'ift_cg' takes generic problems, this is a control problem" in text
    assert "F = [A, B], f = 0" in text
    assert "C = blockdiag(2*I, 0.2*I), c = 0" in text and "C_T = 2*I" in text
    assert "x_0 = x0   (from x0)" in text


def test_analysis_facts():
    form = analyse(_readme_problem())
    assert form.value("dynamics") is Form.AFFINE
    assert form.value("constraints") == {ConstraintKind.BOX}
    assert str(form.value("constraints")) == "box on controls"
    assert [b.lower for b in form.box_bounds] == [True, False]
    nonlinear = analyse(_readme_problem(dynamics=lambda x, u: dc.stack([dc.sin(x[0]), x[1], x[2], u[0]])))
    assert nonlinear.value("dynamics") is Form.SMOOTH
    assert "sin(x[0]) in the dynamics is not affine" in nonlinear.facts["dynamics"].reason
    assert str(nonlinear.facts["dynamics"].culprit) == "sin(x[0])"  # the offending term, as a value
    opaque = analyse(_readme_problem(dynamics=lambda x, u: dc.Function(np.tanh, 4, name="f")(x)))
    assert opaque.value("dynamics") is Form.OPAQUE
    state = analyse(_readme_problem(constraints=lambda x, u: [x[0] <= 0.3, -1 <= u]))
    assert state.value("constraints") == {ConstraintKind.BOX, ConstraintKind.STATE}
    assert str(state.value("constraints")) == "box on controls, state constraint"
    general = analyse(_readme_problem(constraints=lambda x, u: [u[0] + u[1] <= 1]))
    assert general.value("constraints") == {ConstraintKind.CONTROL_INEQUALITY}
    quartic = analyse(_readme_problem(cost=lambda x, u: dc.sum_squares(x) ** 2 + dc.sum_squares(u)))
    assert quartic.value("stage cost") is Form.SMOOTH


def test_parameter_scaled_cost_is_quadratic_with_convexity_checked_at_solve_time():
    q = dc.Parameter(name="q")
    form = analyse(_readme_problem(cost=lambda x, u: q * dc.sum_squares(x) + dc.sum_squares(u)))
    assert form.value("stage cost") is Form.QUADRATIC
    q_pos = dc.Parameter(name="q", nonneg=True)
    form = analyse(_readme_problem(cost=lambda x, u: q_pos * dc.sum_squares(x) + dc.sum_squares(u)))
    assert form.value("stage cost") is Form.QUADRATIC_CONVEX


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


def test_explain_prints_the_dynamics_jacobian_the_solve_evaluates():
    """F's control block for A @ x + u[0] * 1.0 is a column of ones (u[0] broadcast to both
    rows), as the solve's own data F has it, not the identity's first row."""
    from diffcontrol.emitters.torch_ops import TorchFramework

    x, u = dc.State(2, name="x"), dc.Control(1, name="u")
    A = dc.Parameter((2, 2), name="A")
    prob = dc.ControlProblem(dynamics=x.next == A @ x + u[0] * 1.0, cost=dc.sum_squares(x) + dc.sum_squares(u),
                             horizon=3, initial_state=np.ones(2))
    compiled = prob.compile()
    assert "F = [A, [[1], [1]]], f = 0" in compiled.explain()
    like = torch.zeros(1, dtype=torch.float64)
    F = compiled.program.data(TorchFramework, {"A": torch.eye(2, dtype=torch.float64)[None]}, like)["F"]
    assert torch.equal(F[0, :, 2:], torch.ones(2, 1, dtype=torch.float64))
    stacked = dc.ControlProblem(dynamics=x.next == 0.5 * x + dc.stack([u[0], 2 * u[0]]),
                                cost=dc.sum_squares(x) + dc.sum_squares(u), horizon=3, initial_state=np.ones(2))
    assert "F = [0.5*I, [[1], [2]]]" in stacked.explain()
