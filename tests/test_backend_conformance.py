"""Every backend in the registry passes the same checks (as jaxopt's common_test.py):
its solution against an independent reference (scipy on the same problem written out
directly), its gradient against central finite differences of re-solves, batched equal to
unbatched, float32 equal to float64 to float32's accuracy, and the Info record's fields.

A backend added to the registry without a case here fails ``test_every_backend_has_a_case``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import scipy.optimize
import torch

import diffcontrol as dc
from diffcontrol.backends.registry import BACKENDS

T, DT = 6, 0.2
A_NP = np.array([[1.0, DT], [0.0, 1.0]])
B_NP = np.array([[0.0], [DT]])


@dataclass
class Case:
    problem: Any                           # the declared problem
    params: dict[str, np.ndarray]          # one example's parameter values
    batch: dict[str, np.ndarray]           # a batch of them (B = 3)
    reference: Callable[[dict], np.ndarray]  # the minimiser, stacked like `flat`, from scipy
    flat: Callable[[tuple], torch.Tensor]  # the layer's outputs as one vector per example
    options: dict
    grad_tol: float = 1e-5


def _rollout(x0: np.ndarray, u: np.ndarray, step: Callable) -> np.ndarray:
    xs = [x0]
    for t in range(T):
        xs.append(step(xs[-1], u[t]))
    return np.array(xs)


def _shooting(x0: np.ndarray, step: Callable, stage: Callable, bounds: list | None) -> np.ndarray:
    """u* of the control problem by single shooting with scipy's L-BFGS-B: (x_1..x_T, u) flattened."""
    def cost(u_flat):
        u = u_flat.reshape(T, 1)
        xs = _rollout(x0, u, step)
        return sum(stage(xs[t], u[t]) for t in range(T)) + float(xs[T] @ xs[T])

    res = scipy.optimize.minimize(cost, np.zeros(T), method="L-BFGS-B", bounds=bounds,
                                  options={"ftol": 1e-15, "gtol": 1e-11, "maxiter": 10_000})
    u = res.x.reshape(T, 1)
    return np.concatenate([_rollout(x0, u, step)[1:].ravel(), u.ravel()])


def _control_flat(outputs: tuple) -> torch.Tensor:
    x, u = outputs
    return torch.cat([x[..., 1:, :].flatten(-2), u.flatten(-2)], -1)


def _lq_problem():
    x, u = dc.State(2, name="x"), dc.Control(1, name="u")
    x0, q = dc.Parameter(2, name="x0"), dc.Parameter(name="q", nonneg=True)
    return dc.ControlProblem(dynamics=x.next == A_NP @ x + B_NP @ u,
                             cost=q * dc.sum_squares(x) + 0.1 * dc.sum_squares(u),
                             terminal_cost=dc.sum_squares(x), horizon=T, initial_state=x0,
                             constraints=[-0.6 <= u, u <= 0.6])


def _lq_reference(p: dict) -> np.ndarray:
    return _shooting(p["x0"], lambda x, u: A_NP @ x + B_NP @ u,
                     lambda x, u: float(p["q"]) * float(x @ x) + 0.1 * float(u @ u), [(-0.6, 0.6)] * T)


def _lq_case(backend: str) -> Case:
    return Case(_lq_problem(), {"x0": np.array([1.0, 0.5]), "q": np.array(1.3)},
                {"x0": np.array([[1.0, 0.5], [-0.4, 0.2], [0.3, -0.9]]), "q": np.array(1.3)},
                _lq_reference, _control_flat,
                {},
                grad_tol=2e-4 if backend == "cone" else 1e-5)


def _pendulum_case() -> Case:
    x, u = dc.State(2, name="x"), dc.Control(1, name="u")
    x0, g = dc.Parameter(2, name="x0"), dc.Parameter(name="g")
    prob = dc.ControlProblem(dynamics=x.next == x + DT * dc.stack([x[1], -g * dc.sin(x[0]) + u[0]]),
                             cost=dc.sum_squares(x) + 0.1 * dc.sum_squares(u),
                             terminal_cost=dc.sum_squares(x), horizon=T, initial_state=x0,
                             constraints=[-1.5 <= u, u <= 1.5])

    def reference(p):
        def step(x, u):
            return x + DT * np.array([x[1], -float(p["g"]) * np.sin(x[0]) + u[0]])
        return _shooting(p["x0"], step, lambda x, u: float(x @ x) + 0.1 * float(u @ u), [(-1.5, 1.5)] * T)

    return Case(prob, {"x0": np.array([0.8, -0.3]), "g": np.array(2.0)},
                {"x0": np.array([[0.8, -0.3], [-0.5, 0.4], [0.2, 0.9]]), "g": np.array(2.0)},
                reference, _control_flat, {})


def _generic_case() -> Case:
    y, p = dc.Variable(3, name="y"), dc.Parameter(3, name="p")
    prob = dc.Problem(dc.Minimize(dc.sum_squares(y - p) + 0.5 * dc.sum(dc.exp(y))))

    def reference(v):
        res = scipy.optimize.minimize(lambda z: float((z - v["p"]) @ (z - v["p"]) + 0.5 * np.exp(z).sum()),
                                      np.zeros(3), jac=lambda z: 2 * (z - v["p"]) + 0.5 * np.exp(z),
                                      method="BFGS", options={"gtol": 1e-12})
        return res.x

    return Case(prob, {"p": np.array([0.3, -1.0, 1.2])},
                {"p": np.array([[0.3, -1.0, 1.2], [0.0, 0.5, -0.5], [2.0, 1.0, 0.1]])},
                reference, lambda outputs: outputs[0], {})


CASES = {"lqr": lambda: _lq_case("lqr"), "ilqr": _pendulum_case, "ift_cg": _generic_case,
         "cone": lambda: _lq_case("cone")}


def test_every_backend_has_a_case():
    assert {b.name for b in BACKENDS} == set(CASES)


def _solve(case: Case, backend: str, params: dict, dtype=torch.float64, **call):
    layer = case.problem.compile(backend=backend, **case.options).to_torch()
    args = {k: torch.as_tensor(v, dtype=dtype) for k, v in params.items()}
    return layer, args, layer(**args, **call)


@pytest.mark.parametrize("backend", list(CASES))
def test_solution_matches_an_independent_reference(backend):
    case = CASES[backend]()
    *_, outputs = _solve(case, backend, case.params)
    got = case.flat(outputs).numpy()
    np.testing.assert_allclose(got, case.reference(case.params), atol=2e-5)


@pytest.mark.parametrize("backend", list(CASES))
def test_gradients_match_central_differences(backend):
    case = CASES[backend]()
    name = next(iter(case.params))  # the first parameter (x0 or p)
    weights = torch.linspace(-1.0, 1.0, case.flat(_solve(case, backend, case.params)[2]).numel(),
                             dtype=torch.float64)

    def loss(value: np.ndarray) -> float:
        *_, outputs = _solve(case, backend, {**case.params, name: value})
        return float((case.flat(outputs) * weights).sum())

    layer, args, _ = _solve(case, backend, case.params)
    args[name].requires_grad_(True)
    (case.flat(layer(**args)) * weights).sum().backward()
    h = 1e-5
    fd = np.array([(loss(case.params[name] + h * e) - loss(case.params[name] - h * e)) / (2 * h)
                   for e in np.eye(case.params[name].size)])
    np.testing.assert_allclose(args[name].grad.numpy(), fd, atol=case.grad_tol, rtol=case.grad_tol)


@pytest.mark.parametrize("backend", list(CASES))
def test_batched_equals_unbatched(backend):
    case = CASES[backend]()
    *_, batched = _solve(case, backend, case.batch)
    name = next(k for k, v in case.batch.items() if v.ndim > case.params[k].ndim)
    for i in range(case.batch[name].shape[0]):
        *_, single = _solve(case, backend, {**case.batch, name: case.batch[name][i]})
        torch.testing.assert_close(case.flat(batched)[i], case.flat(single), atol=1e-7, rtol=1e-7)


@pytest.mark.parametrize("backend", list(CASES))
def test_float32_agrees_with_float64(backend):
    case = CASES[backend]()
    *_, out64 = _solve(case, backend, case.params)
    *_, out32 = _solve(case, backend, case.params, dtype=torch.float32)
    assert case.flat(out32).dtype == torch.float32
    torch.testing.assert_close(case.flat(out32).double(), case.flat(out64), atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("backend", list(CASES))
def test_info_fields(backend):
    case = CASES[backend]()
    *_, (*outputs, info) = _solve(case, backend, case.batch, return_info=True)
    B = case.flat(tuple(outputs)).shape[0]
    assert info.converged.shape == (B,) and info.converged.dtype == torch.bool and bool(info.converged.all())
    assert info.iterations.shape == (B,) and info.residual.shape == (B,)
    assert info.status == [dc.Status.CONVERGED] * B
    assert info["converged"] is info.converged  # the mapping view of the same record
