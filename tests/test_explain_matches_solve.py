"""explain() prints the LQR data the solve computes, atom by atom: each line is checked against
the data derived by hand (analytic Jacobians and Hessians), and where parameters feed a term,
against the solve's own arrays at a parameter value. A term explain() calls 0 is 0 in the solve."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import diffcontrol as dc
from diffcontrol.emitters.torch_ops import TorchFramework

x, u = dc.State(2, name="x"), dc.Control(1, name="u")
A, q, Q = dc.Parameter((2, 2), name="A"), dc.Parameter(2, name="q"), dc.Parameter((2, 2), name="Q")
M = np.array([[1.0, 2.0], [0.0, 3.0]])
QUAD = dc.sum_squares(x) + dc.sum_squares(u)


def _line(problem, start: str) -> str:
    (line,) = [ln for ln in problem.compile(backend="lqr").explain().splitlines() if ln.strip().startswith(start)]
    return line


# (dynamics, cost, the dynamics line's F and f, the stage cost line's C and c), all by hand
CASES = {
    "add, matmul by a constant": (M @ x + np.array([[1.0], [0.0]]) @ u, QUAD,
                                  "F = [[[1, 2], [0, 3]], [[1], [0]]], f = 0", "C = blockdiag(2*I, 2*I), c = 0"),
    "neg and an offset": (-x + u[0] + 1.0, QUAD, "F = [-I, [[1], [1]]], f = [1, 1]", "c = 0"),
    "multiply and divide by constants": (0.5 * x + u / 4, QUAD, "F = [0.5*I, [[0.25], [0.25]]], f = 0", "c = 0"),
    "index and stack": (dc.stack([x[1], x[0] + 2 * u[0]]), QUAD, "F = [[[0, 1], [1, 0]], [[0], [2]]], f = 0",
                        "c = 0"),
    "concat": (dc.concat([x[:1] + u, 3 * x[1:]]), QUAD, "F = [[[1, 0], [0, 3]], [[1], [0]]], f = 0", "c = 0"),
    "sum": (x + dc.sum(x) + u, QUAD, "F = [[[2, 1], [1, 2]], [[1], [1]]], f = 0", "c = 0"),
    "sum_squares of an affine term": (x + u, dc.sum_squares(x + u[0]) + dc.sum_squares(u),
                                      "F = [I, [[1], [1]]], f = 0", "C = [[2*I, [[2], [2]]], [[[2, 2]], 6*I]], c = 0"),
    "square, power and a reference": (x + u, dc.sum(dc.square(x - 1.0)) + (u[0] - 2.0) ** 2,
                                      "F = [I, [[1], [1]]], f = 0", "C = blockdiag(2*I, 2*I), c = [-2, -2, -4]"),
    "quad_form with a constant matrix": (x + u, dc.quad_form(x, M @ M.T) + 0.1 * dc.sum_squares(u),
                                         "f = 0", "C = blockdiag([[10, 12], [12, 18]], 0.2*I), c = 0"),
    "a linear term": (x + u, QUAD + np.array([1.0, -1.0]) @ x, "f = 0", "C = blockdiag(2*I, 2*I), c = [1, -1, 0]"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_lowered_data_are_the_hand_derived_ones(case):
    dynamics, cost, dynamics_text, cost_text = CASES[case]
    prob = dc.ControlProblem(dynamics=x.next == dynamics, cost=cost, horizon=3, initial_state=np.ones(2))
    assert dynamics_text in _line(prob, "dynamics    x_(t+1)"), case
    assert cost_text in _line(prob, "stage cost  1/2"), case


def _data(problem, **values):
    program = problem.compile(backend="lqr").program
    like = torch.zeros(1, dtype=torch.float64)
    return program.data(TorchFramework, {k: torch.as_tensor(v)[None] for k, v in values.items()}, like)


def test_a_parameter_linear_term_is_not_called_zero():
    """q @ x vanishes at x = 0 but its gradient, the solve's c, is q: explain says so."""
    prob = dc.ControlProblem(dynamics=x.next == A @ x + u[0], cost=QUAD + q @ x, horizon=3, initial_state=np.ones(2))
    line = _line(prob, "stage cost  1/2")
    assert "c = 0" not in line and "gradient of the stage cost at 0" in line
    c = _data(prob, A=np.eye(2), q=np.array([0.3, -0.7]))["c"]
    assert np.allclose(c[0, :2].numpy(), [0.3, -0.7])


def test_parameter_hessians_are_the_solves():
    """quad_form(x, Q) with a parameter Q: explain's (Q + Q.T) is the solve's C block."""
    prob = dc.ControlProblem(dynamics=x.next == A @ x + u[0], cost=dc.quad_form(x, Q) + 0.1 * dc.sum_squares(u),
                             horizon=3, initial_state=np.ones(2))
    assert "C = blockdiag(Q + Q.T, 0.2*I), c = 0" in _line(prob, "stage cost  1/2")
    Qv = np.array([[2.0, 1.0], [0.0, 3.0]])
    C = _data(prob, A=np.eye(2), Q=Qv)["C"][0].numpy()
    assert np.allclose(C[:2, :2], Qv + Qv.T) and np.allclose(C[2:, 2:], 0.2) and not C[:2, 2:].any()


w, r = dc.Parameter(name="w", nonneg=True), dc.Parameter(2, name="r", time_varying=True)
HESSIAN_COSTS = {
    "reference": dc.sum_squares(x - r) + 0.1 * dc.sum_squares(u),
    "parameter matrix and weight": dc.quad_form(x, Q) + w * dc.sum_squares(u) - dc.sum_squares(A @ x) / 4,
    "cross terms": dc.sum_squares(A @ x + u[0] - r) + dc.square(x[0] - u[0]) + (u[0] + 1.0) ** 2,
}


@pytest.mark.parametrize("case", sorted(HESSIAN_COSTS))
def test_the_solves_hessian_expressions_equal_autodiff(case):
    """C (and c) as the lqr program builds them from the Hessian rules equal torch's own Hessian
    and gradient of the cost, evaluated directly, at every stage."""
    from diffcontrol.programs.evaluate import evaluate

    cost = HESSIAN_COSTS[case]
    prob = dc.ControlProblem(dynamics=x.next == x + u[0], cost=cost, horizon=3, initial_state=np.ones(2))
    program = prob.compile(backend="lqr").program
    assert program.hessian is not None
    rng = np.random.default_rng(0)
    values = {"A": rng.normal(size=(2, 2)), "Q": rng.normal(size=(2, 2)), "w": 0.7, "r": rng.normal(size=(4, 2))}
    values = {p.name: values[p.name] for p in program.parameters}
    data = _data(prob, **values)
    for t in range(3):
        env = {id(p): torch.as_tensor(values[p.name][t] if p.time_varying else values[p.name], dtype=torch.float64)
               for p in program.parameters}

        def f(tau, env=env):
            return evaluate([cost], {**env, id(x): tau[:2], id(u): tau[2:]}, TorchFramework, tau)[0]

        zero = torch.zeros(3, dtype=torch.float64)
        C = data["C"][0] if data["C"].ndim == 3 else data["C"][0, t]
        c = data["c"][0] if data["c"].ndim == 2 else data["c"][0, t]
        assert torch.allclose(C, torch.autograd.functional.hessian(f, zero), atol=1e-12), case
        assert torch.allclose(c, torch.autograd.functional.jacobian(f, zero), atol=1e-12), case


def test_a_moving_reference_leaves_one_hessian_for_all_stages():
    prob = dc.ControlProblem(dynamics=x.next == x + u[0], cost=HESSIAN_COSTS["reference"], horizon=3,
                             initial_state=np.ones(2))
    data = _data(prob, r=np.zeros((4, 2)))
    assert data["C"].shape == (1, 3, 3) and data["c"].shape == (1, 3, 3)  # C once; c per stage


def test_explain_claims_nothing_where_the_probe_fails(monkeypatch):
    """Where the data cannot be evaluated at a random parameter draw, explain() still reports,
    and calls no term 0 (it cannot know)."""
    import diffcontrol.compilers.lower_lqr as lower_lqr

    def fail(program, seed):
        raise FloatingPointError("a bad draw")

    monkeypatch.setattr(lower_lqr, "_probe", fail)
    prob = dc.ControlProblem(dynamics=x.next == A @ x + u[0], cost=QUAD, horizon=3, initial_state=np.ones(2))
    assert "c = gradient of the stage cost at 0" in _line(prob, "stage cost  1/2")
    assert "C = blockdiag(2*I, 2*I)" in _line(prob, "stage cost  1/2")  # the rules' expressions still render
