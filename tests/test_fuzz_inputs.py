"""A fuzzer over the layer call's inputs (hypothesis): shapes, dtypes, containers, NaN / Inf
positions, batch sizes, missing and unknown names, an indefinite weight, on every backend.
Each call must be correct or loud: either the outputs match an independent reference (a
dense solve in NumPy: the condensed LQ problem, or the ridge regression's normal equations)
to the dtype's precision, or it raises one of diffcontrol's typed errors (or its
NotConvergedWarning, which the test configuration turns into an error). A silent wrong value,
or a raw error from inside torch or NumPy, fails the test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import diffcontrol as dc

FUZZ = settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
LOUD = (dc.errors.DiffControlError, dc.NotConvergedWarning, dc.SaddlePointWarning)
n, m, T, k = 2, 1, 4, 3

CORRUPTIONS = [None, None, None, "nan", "inf", "-inf", "wrong shape", "batch mismatch", "missing", "unknown name",
               "float16", "complex", "string", "indefinite weight"]
CONTAINERS = ["tensor64", "tensor32", "numpy64", "numpy32", "list", "int"]


def _control_problem():
    x, u = dc.State(n), dc.Control(m)
    A, B = dc.Parameter((n, n), name="A"), dc.Parameter((n, m), name="B")
    x0, r = dc.Parameter(n, name="x0"), dc.Parameter(name="r")
    return dc.ControlProblem(dynamics=x.next == A @ x + B @ u, cost=dc.sum_squares(x) + r * dc.sum_squares(u),
                             terminal_cost=dc.sum_squares(x), horizon=T, initial_state=x0)


def _ridge_problem():
    y = dc.Variable(k, name="y")
    M, b, r = dc.Parameter((k, k), name="M"), dc.Parameter(k, name="b"), dc.Parameter(name="r", nonneg=True)
    return dc.Problem(dc.Minimize(dc.sum_squares(M @ y - b) + r * dc.sum_squares(y)))


_LAYERS: dict = {}


def _layer(backend: str):
    if backend not in _LAYERS:
        problem = _ridge_problem() if backend in ("ift_cg", "cone") else _control_problem()
        _LAYERS[backend] = problem.compile(backend=backend).to_torch()
    return _LAYERS[backend]


def _condensed(A, B) -> tuple[np.ndarray, np.ndarray]:
    """S, G with the stacked states x (T+1, n) = S x0 + G u for x_{t+1} = A x_t + B u_t."""
    S = np.vstack([np.linalg.matrix_power(A, t) for t in range(T + 1)])
    G = np.zeros(((T + 1) * n, T * m))
    for t in range(1, T + 1):
        for s in range(t):
            G[t * n:(t + 1) * n, s * m:(s + 1) * m] = np.linalg.matrix_power(A, t - 1 - s) @ B
    return S, G


def _lq_reference(A, B, x0, r) -> tuple[np.ndarray, np.ndarray]:
    """x (T+1, n), u (T, m) of min sum_{t<T} |x_t|^2 + r |u_t|^2 + |x_T|^2 by the normal
    equations of the condensed problem."""
    S, G = _condensed(A, B)
    u = np.linalg.solve(G.T @ G + r * np.eye(T * m), -G.T @ S @ x0)
    return (S @ x0 + G @ u).reshape(T + 1, n), u.reshape(T, m)


def _lq_hessian_min(A, B, r) -> float:
    """The smallest eigenvalue of the condensed problem's Hessian in u (over 2)."""
    G = _condensed(A, B)[1]
    return float(np.linalg.eigvalsh(G.T @ G + r * np.eye(T * m)).min())


def _ridge_reference(M, b, r) -> np.ndarray:
    return np.linalg.solve(M.T @ M + r * np.eye(k), M.T @ b)


def _values(rng, backend: str, batch: int | None) -> dict[str, np.ndarray]:
    lead = () if batch is None else (batch,)
    if backend in ("ift_cg", "cone"):
        return {"M": np.eye(k) + 0.3 * rng.normal(size=lead + (k, k)), "b": rng.normal(size=lead + (k,)),
                "r": rng.uniform(0.5, 2.0, size=lead)}
    return {"A": np.eye(n) + 0.2 * rng.normal(size=lead + (n, n)), "B": rng.normal(size=lead + (n, m)),
            "x0": rng.normal(size=lead + (n,)), "r": rng.uniform(0.5, 2.0, size=lead)}


def _contain(value: np.ndarray, container: str):
    return {"tensor64": lambda v: torch.tensor(v), "tensor32": lambda v: torch.tensor(v, dtype=torch.float32),
            "numpy64": lambda v: v, "numpy32": lambda v: v.astype(np.float32), "list": lambda v: v.tolist(),
            "int": lambda v: np.round(v).astype(np.int64)}[container](value)


@pytest.mark.parametrize("backend", ["lqr", "ilqr", "ift_cg", "cone"])
@FUZZ
@given(data=st.data(), batch=st.sampled_from([None, 1, 3]), corruption=st.sampled_from(CORRUPTIONS),
       container=st.sampled_from(CONTAINERS), seed=st.integers(0, 2**16))
def test_fuzzed_inputs_are_solved_correctly_or_refused_loudly(backend, data, batch, corruption, container, seed):
    if backend == "cone":
        pytest.importorskip("cvxpylayers")
    rng = np.random.default_rng(seed)
    values = _values(rng, backend, batch)
    if container == "int":  # integers: a weight of 0 would make the reference singular
        values["r"] = np.maximum(np.round(values["r"]), 1.0)
    exact = {name: np.round(v) if container == "int" else v for name, v in values.items()}
    name = data.draw(st.sampled_from(sorted(values)))
    call = {key: _contain(v, container) for key, v in values.items()}
    if corruption in ("nan", "inf", "-inf"):
        bad = np.array(values[name], dtype=float)
        bad.reshape(-1)[data.draw(st.integers(0, bad.size - 1))] = float(corruption)
        call[name] = torch.tensor(bad) if container.startswith("tensor") else bad
    elif corruption == "wrong shape":
        call[name] = np.zeros(np.shape(values[name])[:1 if batch else 0] + (5,))
    elif corruption == "batch mismatch":
        call = {key: np.stack([v] * 2) if key == name else np.stack([v] * 3) for key, v in values.items()}
    elif corruption == "missing":
        del call[name]
    elif corruption == "unknown name":
        call["Z"] = 1.0
    elif corruption == "float16":
        call[name] = np.asarray(values[name], dtype=np.float16)
    elif corruption == "complex":
        call[name] = torch.tensor(np.asarray(values[name]) + 1j)
    elif corruption == "string":
        call[name] = "fast"
    elif corruption == "indefinite weight":
        call["r"] = -5.0 * np.ones_like(np.asarray(values["r"]))

    layer = _layer(backend)
    try:
        outputs = layer(**call)
    except LOUD:
        assert corruption is not None, f"a valid call ({container}, batch {batch}) was refused"
        return
    # it returned: the call must have been valid (an indefinite weight may still give a bounded
    # problem; it is then checked against the reference like any other)
    assert corruption in (None, "indefinite weight"), f"{corruption} in {name!r} passed silently"
    dtype = outputs[0].dtype
    tol = 1e-3 if dtype == torch.float32 or container in ("tensor32", "numpy32") else 1e-6
    for e in range(batch or 1):
        example = {key: np.asarray(v if v.ndim == len(np.shape(_values(rng, backend, None)[key]))
                                   else v[e], dtype=float) for key, v in exact.items()}
        if corruption == "indefinite weight":
            example["r"] = -5.0
        if backend in ("ift_cg", "cone"):
            H = example["M"].T @ example["M"] + example["r"] * np.eye(k)
            assert np.linalg.eigvalsh(H).min() > 0, "an unbounded problem returned without a word"
            want = (_ridge_reference(example["M"], example["b"], example["r"]),)
        else:
            want = _lq_reference(example["A"], example["B"], example["x0"], example["r"])
            if corruption == "indefinite weight":  # bounded only if the condensed Hessian is PD
                assert np.isfinite(want[1]).all() and _lq_hessian_min(example["A"], example["B"], -5.0) > 0
        got = [o.detach().double().numpy() if batch is None else o[e].detach().double().numpy() for o in outputs]
        for g, w in zip(got, want):
            scale = 1.0 + np.abs(w).max()
            assert np.abs(g - w).max() <= tol * (100 if backend == "cone" else 1) * scale, (container, batch)
