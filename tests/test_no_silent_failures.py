"""Paths that once gave a silently wrong value or gradient, each now correct or loud (issue
27, and the silent broadcast of issue 25), checked against independent references."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest
import torch

import diffcontrol as dc

# ---- ift_cg: the backward's linear solve checks its own residual -----------------------------


def _ill_conditioned(n: int = 300):
    """min_y 1/2 y^T H y - p^T y, H = Q diag(logspace(0, 7)) Q^T: well posed, condition 1e7;
    dy*/dp = H^-1, so the gradient of w^T y* is H^-1 w (a dense NumPy solve)."""
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    H = (Q * np.logspace(0, 7, n)) @ Q.T
    H = 0.5 * (H + H.T)
    y, p = dc.Variable(n, name="y"), dc.Parameter(n, name="p")
    prob = dc.Problem(dc.Minimize(0.5 * dc.quad_form(y, H) - p @ y))
    return prob, H, rng.standard_normal(n), rng.standard_normal(n)


def _gradient(layer, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    p_t = torch.tensor(p, requires_grad=True)
    (y,) = layer(p=p_t, y_init=(torch.tensor(np.zeros_like(p)),))
    (y @ torch.tensor(w)).backward()
    return p_t.grad.numpy()


def test_ift_cg_backward_that_misses_its_tolerance_falls_back_to_the_dense_solve():
    prob, H, p, w = _ill_conditioned()
    # forward by Newton (exact); the backward's CG cannot reach cg_tol in 50 iterations at condition 1e7
    layer = prob.compile(cg_max_iter=50).to_torch()
    got = _gradient(layer, p, w)
    want = np.linalg.solve(H, w)
    assert np.linalg.norm(got - want) <= 1e-6 * np.linalg.norm(want)


def test_ift_cg_backward_that_misses_its_tolerance_is_named_never_silent():
    prob, H, p, w = _ill_conditioned()
    layer = prob.compile(cg_max_iter=50, dense_fallback_max_size=0).to_torch()
    with pytest.warns(dc.NotConvergedWarning, match=r"linear solve .* missed its tolerance for examples \[0\]"
                                                    r".*cg_max_iter=50.*dense_fallback_max_size=0"):
        _gradient(layer, p, w)
    strict = prob.compile(cg_max_iter=50, dense_fallback_max_size=0, on_nonconvergence="raise").to_torch()
    with pytest.raises(dc.SolverError, match="Raise cg_max_iter"):
        _gradient(strict, p, w)


# ---- double backward raises on every backend instead of dropping the second-order term --------


def _lq(box: bool = False):
    x, u = dc.State(2, name="x"), dc.Control(1, name="u")
    x0 = dc.Parameter(2, name="x0")
    prob = dc.ControlProblem(dynamics=x.next == np.array([[1.0, 0.1], [0.0, 1.0]]) @ x + np.array([[0.0], [0.1]]) @ u,
                             cost=dc.sum_squares(x) + dc.sum_squares(u), horizon=4, initial_state=x0,
                             constraints=[-0.5 <= u, u <= 0.5] if box else [])
    return prob, {"x0": np.array([1.0, -0.5])}


def _control_problem():
    x, u = dc.State(2, name="x"), dc.Control(1, name="u")
    x0 = dc.Parameter(2, name="x0")
    return dc.ControlProblem(dynamics=x.next == x + 0.1 * dc.stack([x[1], -dc.sin(x[0]) + u[0]]),
                             cost=dc.sum_squares(x) + dc.sum_squares(u), horizon=4, initial_state=x0)


@pytest.mark.parametrize("backend", ["lqr", "ilqr", "ift_cg", "cone"])
def test_double_backward_raises(backend):
    if backend in ("lqr", "cone"):
        prob, values = _lq()
        name = "x0"
    elif backend == "ilqr":
        prob, values, name = _control_problem(), {"x0": np.array([0.3, -0.2])}, "x0"
    else:
        y, p = dc.Variable(2, name="y"), dc.Parameter(2, name="p")
        prob, values, name = dc.Problem(dc.Minimize(dc.sum_squares(y - p) + dc.sum(dc.exp(y)))), \
            {"p": np.array([0.1, 0.2])}, "p"
    layer = prob.compile(backend=backend).to_torch()
    inputs = {k: torch.tensor(v) for k, v in values.items()}
    inputs[name].requires_grad_(True)
    out = layer(**inputs)[0]
    (g,) = torch.autograd.grad(out.square().sum(), inputs[name], create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        g.sum().backward()


# ---- the cone backend: other threads' warnings, infeasible examples' gradients -----------------


def test_a_cone_solve_never_swallows_another_threads_warnings():
    x, lo = dc.Variable(2, name="x"), dc.Parameter(name="lo")
    layer = dc.Problem(dc.Minimize(dc.sum_squares(x)), [x >= lo]).compile(backend="cone").to_torch()
    seen: list[str] = []
    stop = threading.Event()

    def solving():
        while not stop.is_set():
            layer(lo=torch.tensor(0.3, dtype=torch.float64))

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        previous = warnings.showwarning
        warnings.showwarning = lambda message, *args, **kw: seen.append(str(message))
        try:
            worker = threading.Thread(target=solving)
            worker.start()
            for i in range(40):
                warnings.warn(f"warning {i} from the main thread", UserWarning, stacklevel=1)
                threading.Event().wait(0.002)
            stop.set()
            worker.join()
        finally:
            warnings.showwarning = previous
    assert [s for s in seen if "from the main thread" in s] == [f"warning {i} from the main thread" for i in range(40)]


def test_an_infeasible_cone_example_gets_a_nan_gradient_not_a_silent_zero():
    x, lo = dc.Variable(2, name="x"), dc.Parameter(name="lo")
    prob = dc.Problem(dc.Minimize(dc.sum_squares(x)), [x >= lo, dc.sum(x) <= 1.0])
    layer = prob.compile().to_torch()
    lo_t = torch.tensor([0.1, 2.0, -1.0], dtype=torch.float64, requires_grad=True)  # the second is infeasible
    with pytest.warns(dc.NotConvergedWarning):
        xs, info = layer(lo=lo_t, return_info=True)
    with pytest.raises(dc.SolverError, match=r"parameter 'lo'.*examples \[1\]"):
        xs.sum().backward()
    # the documented recipe: mask the loss with info.converged; the others' gradients are exact
    lo_t.grad = None
    with pytest.warns(dc.NotConvergedWarning):
        xs, info = layer(lo=lo_t, return_info=True)
    xs[info.converged].sum().backward()
    np.testing.assert_allclose(lo_t.grad.numpy(), [2.0, 0.0, 0.0], atol=1e-6)  # x* = (lo, lo) where lo > 0


# ---- a plain parameter broadcasting the state over time is refused -----------------------------


def test_a_reference_sequence_as_a_plain_parameter_raises_naming_time_varying():
    T, n = 5, 2
    x, u = dc.State(n, name="x"), dc.Control(1, name="u")
    r = dc.Parameter((T + 1, n), name="r")
    with pytest.raises(dc.ModelError, match=r"cost: .* broadcasts x of shape \(2,\) against the parameter r of "
                                            r"shape \(6, 2\).*time_varying=True"):
        dc.ControlProblem(dynamics=x.next == x + u, cost=dc.sum_squares(x - r) + dc.sum_squares(u),
                          horizon=T, initial_state=np.zeros(n))
    with pytest.raises(dc.ModelError, match="constraints: .* the parameter r"):
        dc.ControlProblem(dynamics=x.next == x + u, cost=dc.sum_squares(x) + dc.sum_squares(u),
                          horizon=T, initial_state=np.zeros(n), constraints=[x <= r])
    A = dc.Parameter((T, n, n), name="A")
    with pytest.raises(dc.ModelError):  # A_t stacked over time in a plain parameter
        dc.ControlProblem(dynamics=x.next == A @ x + u, cost=dc.sum_squares(x) + dc.sum_squares(u),
                          horizon=T, initial_state=np.zeros(n))


# ---- layers pickle, deep-copy and save/load on every backend, with the same results ------------


@pytest.mark.parametrize("backend", ["lqr", "ilqr", "ift_cg", "cone"])
def test_layers_save_load_pickle_and_deepcopy(backend, tmp_path):
    import copy
    import pickle

    if backend in ("lqr", "cone"):
        prob, values = _lq(box=True)
    elif backend == "ilqr":
        prob, values = _control_problem(), {"x0": np.array([0.3, -0.2])}
    else:
        y, p = dc.Variable(2, name="y"), dc.Parameter(2, name="p")
        prob, values = dc.Problem(dc.Minimize(dc.sum_squares(y - p) + dc.sum(dc.exp(y)))), {"p": np.array([0.1, 0.2])}
    model = torch.nn.ModuleDict({"layer": prob.compile(backend=backend, on_nonconvergence="raise").to_torch()})
    inputs = {k: torch.tensor(v) for k, v in values.items()}
    want = model["layer"](**inputs)
    path = tmp_path / "model.pt"
    path.write_bytes(b"an earlier checkpoint")
    torch.save(model, path)
    copies = [torch.load(path, weights_only=False), copy.deepcopy(model), pickle.loads(pickle.dumps(model))]
    for other in copies:
        compiled = other["layer"].compiled
        assert compiled.backend == backend and compiled.options["on_nonconvergence"] == "raise"
        for got, ref in zip(other["layer"](**inputs), want):
            torch.testing.assert_close(got, ref, atol=1e-9, rtol=1e-9)


def test_ift_cg_refuses_a_start_outside_the_objectives_domain_and_solves_from_inside_it():
    y, p = dc.Variable(2, name="y"), dc.Parameter(2, name="p", nonneg=True)
    layer = dc.Problem(dc.Minimize(dc.sum(p * y) - dc.sum(dc.log(y)))).compile().to_torch()
    p_t = torch.tensor([[1.0, 2.0], [0.5, 4.0]], dtype=torch.float64)
    with pytest.raises(dc.SolverError, match=r"NaN or Inf at the starting point for examples \[0, 1\].*y_init="):
        layer(p=p_t)
    (y_star,) = layer(p=p_t, y_init=(torch.ones(2, 2, dtype=torch.float64),))
    torch.testing.assert_close(y_star, 1 / p_t)  # the closed form: p - 1/y = 0


class _FrozenUnderNoGrad(torch.nn.Module):
    """A pretrained model wrapped the common way, which hides it from autograd."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)

    def forward(self, x, u):
        with torch.no_grad():
            return x + 0.1 * torch.tanh(self.lin(torch.cat([x, u])))


def test_a_function_under_no_grad_is_named_not_taken_as_constant():
    """It would look constant to the solver (zero derivatives in x and u): the solve would stop
    at its start and report convergence. The layer refuses it, naming the function and the fix."""
    fn = dc.Function(_FrozenUnderNoGrad(), 2, name="frozen")
    x, u = dc.State(2, name="x"), dc.Control(1, name="u")
    prob = dc.ControlProblem(dynamics=x.next == fn(x, u), cost=dc.sum_squares(x - 1.0) + dc.sum_squares(u),
                             horizon=4, initial_state=np.zeros(2))
    with pytest.raises(dc.ModelError, match=r"dc.Function frozen.*torch.no_grad\(\).*requires_grad_\(False\)"):
        prob.compile().to_torch()
    # freezing the weights the right way keeps the solve exact, and the layer takes it
    module = _FrozenUnderNoGrad()
    with torch.no_grad():  # fixed weights (the module's own initialisation is random per process)
        module.lin.weight.copy_(torch.tensor([[0.5, 0.2, 1.0], [0.1, -0.3, 0.8]]))
        module.lin.bias.zero_()
    module.forward = lambda x, u: x + 0.1 * torch.tanh(module.lin(torch.cat([x, u])))
    module.requires_grad_(False)
    ok = dc.Function(module, 2, name="frozen_right")
    layer = dc.ControlProblem(dynamics=x.next == ok(x, u), cost=dc.sum_squares(x - 1.0) + dc.sum_squares(u),
                              horizon=4, initial_state=np.zeros(2)).compile().to_torch()
    _, us, info = layer(return_info=True)
    assert bool(info.converged) and int(info.iterations) > 0 and us.abs().max() > 0.1
