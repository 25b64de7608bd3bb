"""The ilqr backend against independent references: central finite differences of converged
solves (float64), the lqr backend on linear dynamics, unrolled autodiff, and mpc.pytorch."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from zoo import lq_problem, lq_values, rel_err

import diffcontrol as dc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import mpc_pytorch_reference  # noqa: E402
from common import initial_states  # noqa: E402

TIGHT = {"tol": 1e-11, "max_iter": 400}


def _values(model: dc.models.ModelProblem, x0: torch.Tensor) -> dict:
    return {**{k: torch.as_tensor(v, dtype=torch.float64) for k, v in model.defaults().items()}, "x0": x0}


def _loss_fn(T: int, n: int, m: int, batch: int, seed: int = 7):
    g = torch.Generator().manual_seed(seed)
    wx = torch.randn(batch, T + 1, n, generator=g, dtype=torch.float64)
    wu = torch.randn(batch, T, m, generator=g, dtype=torch.float64)
    return lambda x, u: (x * wx).sum() + (u * wu).sum()


def _central_differences(solve, values: dict, names: list[str], eps: float = 1e-6) -> dict:
    """d loss / d values[name] by central differences of full solves."""
    grads = {}
    for name in names:
        flat = torch.zeros(values[name].numel(), dtype=torch.float64)
        for i in range(flat.numel()):
            plus = {k: v.clone() for k, v in values.items()}
            minus = {k: v.clone() for k, v in values.items()}
            plus[name].view(-1)[i] += eps
            minus[name].view(-1)[i] -= eps
            with torch.no_grad():
                flat[i] = (solve(plus) - solve(minus)) / (2 * eps)
        grads[name] = flat.view_as(values[name])
    return grads


def _autograd(layer, loss, values: dict, names: list[str]) -> dict:
    leaves = {k: v.clone().requires_grad_(k in names) for k, v in values.items()}
    x, u = layer(**leaves)
    loss(x, u).backward()
    return {k: leaves[k].grad for k in names}


def _assert_off_the_boundary(layer, values, bound: float):
    """Finite differences are valid only where a small perturbation keeps the active set:
    free controls strictly inside the box, clamped ones with a clearly nonzero gradient."""
    _, u, info = layer(**values, return_info=True)
    assert bool(info.converged.all())
    at_bound = (u.abs() - bound).abs() < 1e-9
    inside = u.abs() < bound - 1e-3
    assert bool((at_bound | inside).all()), "a control sits next to its bound: FD would straddle a kink"
    return int(at_bound.sum())


@pytest.mark.parametrize("bound", [2.0, 100.0], ids=["active-bounds", "inactive-bounds"])
def test_pendulum_gradients_match_finite_differences(bound):
    T, B = 10, 2
    pend = dc.models.pendulum(horizon=T, max_torque=bound)
    layer = pend.problem.compile(**TIGHT).to_torch()
    values = _values(pend, initial_states("pendulum", B, seed=1))
    clamped = _assert_off_the_boundary(layer, values, bound)
    assert (clamped > 0) == (bound == 2.0)
    loss = _loss_fn(T, 3, 1, B)
    names = ["g", "m", "l", "x0", "q"]
    fd = _central_differences(lambda v: loss(*layer(**v)), values, names)
    exact = _autograd(layer, loss, values, names)
    for name in names:
        assert rel_err(exact[name], fd[name]) < 1e-6, name
    # the Gauss-Newton gradient (mpc.pytorch's) is measurably off; ours is not
    gn = pend.problem.compile(backward="gauss_newton", **TIGHT).to_torch()
    approx = _autograd(gn, loss, values, ["l"])
    assert rel_err(approx["l"], fd["l"]) > 1e-3


def _damped_windy_step(x, u, g, m, l, d, b, dt=0.05):
    """The non-realizable pendulum's transition, transcribed independently of dc.models."""
    th, dth = torch.atan2(x[..., 1], x[..., 0]), x[..., 2]
    new_dth = dth + dt * (1.5 * g / l * torch.sin(th + b) + 3.0 * u[..., 0] / (m * l * l) - d * dth)
    new_th = th + dt * new_dth
    return torch.stack([new_th.cos(), new_th.sin(), new_dth], -1)


def test_damped_windy_pendulum_dynamics_and_gradients():
    """dc.models.pendulum(damping_and_wind=True): its trajectories follow the transcribed
    transition, d = b = 0 is the plain pendulum, and the gradients in d and b are the central
    differences of converged solves."""
    T, B = 8, 2
    pend = dc.models.pendulum(horizon=T, max_torque=100.0, damping_and_wind=True)
    layer = pend.problem.compile(**TIGHT).to_torch()
    values = {**_values(pend, initial_states("pendulum", B, seed=4)), "d": torch.tensor(0.7, dtype=torch.float64),
              "b": torch.tensor(0.25, dtype=torch.float64)}
    with torch.no_grad():
        x, u = layer(**values)
    p = {k: values[k] for k in ("g", "m", "l", "d", "b")}
    torch.testing.assert_close(x[:, 1:], _damped_windy_step(x[:, :-1], u, **p), rtol=0, atol=1e-12)
    plain = dc.models.pendulum(horizon=T, max_torque=100.0).problem.compile(**TIGHT).to_torch()
    calm = {**values, "d": torch.tensor(0.0, dtype=torch.float64), "b": torch.tensor(0.0, dtype=torch.float64)}
    with torch.no_grad():
        torch.testing.assert_close(layer(**calm)[1], plain(**{k: v for k, v in calm.items() if k not in "db"})[1])
    loss = _loss_fn(T, 3, 1, B)
    names = ["d", "b", "g"]
    fd = _central_differences(lambda v: loss(*layer(**v)), values, names)
    exact = _autograd(layer, loss, values, names)
    for name in names:
        assert rel_err(exact[name], fd[name]) < 1e-6, name


def test_cartpole_gradients_match_finite_differences():
    T, B = 10, 2
    cart = dc.models.cartpole(horizon=T, force_mag=5.0)
    layer = cart.problem.compile(**TIGHT).to_torch()
    values = _values(cart, initial_states("cartpole", B, seed=3))
    _assert_off_the_boundary(layer, values, 5.0)
    loss = _loss_fn(T, 5, 1, B)
    names = ["gravity", "masscart", "masspole", "length", "x0"]
    fd = _central_differences(lambda v: loss(*layer(**v)), values, names)
    exact = _autograd(layer, loss, values, names)
    for name in names:
        assert rel_err(exact[name], fd[name]) < 1e-6, name


def _neural_problem(T: int, bound: float | None):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()
    f = dc.Function(net, 2, name="mlp")
    x, u = dc.State(2, name="x"), dc.Control(1, name="u")
    x0 = dc.Parameter(2, name="x0")
    cons = [-bound <= u, u <= bound] if bound is not None else []
    prob = dc.ControlProblem(dynamics=x.next == x + 0.1 * f(dc.concat([x, u])),
                             cost=dc.sum_squares(x) + 0.1 * dc.sum_squares(u),
                             terminal_cost=dc.sum_squares(x), horizon=T, initial_state=x0, constraints=cons)
    return prob, net


@pytest.mark.parametrize("bound", [None, 0.5], ids=["unconstrained", "box"])
def test_neural_dynamics_weight_gradients_match_finite_differences(bound):
    T, B = 8, 2
    prob, net = _neural_problem(T, bound)
    layer = prob.compile(**TIGHT).to_torch()
    x0 = torch.tensor([[1.0, -0.5], [-0.8, 0.9]], dtype=torch.float64)
    if bound is not None:
        _assert_off_the_boundary(layer, {"x0": x0}, bound)
    loss = _loss_fn(T, 2, 1, B)
    layer.zero_grad()
    loss(*layer(x0=x0)).backward()
    weight = net[0].weight
    exact = weight.grad.clone()
    fd = torch.zeros_like(weight)
    eps = 1e-6
    for idx in [(0, 0), (3, 2), (7, 1)]:
        with torch.no_grad():
            weight[idx] += eps
            plus = loss(*layer(x0=x0))
            weight[idx] -= 2 * eps
            minus = loss(*layer(x0=x0))
            weight[idx] += eps
        fd[idx] = (plus - minus) / (2 * eps)
        assert abs(float(exact[idx] - fd[idx])) < 1e-6 * (1 + abs(float(fd[idx]))), idx


def test_implicit_and_unroll_agree_at_convergence():
    T, B = 10, 3
    pend = dc.models.pendulum(horizon=T)
    values = _values(pend, initial_states("pendulum", B, seed=2))
    loss = _loss_fn(T, 3, 1, B)
    names = ["g", "m", "l", "x0"]
    implicit = _autograd(pend.problem.compile(**TIGHT).to_torch(), loss, values, names)
    unroll = _autograd(pend.problem.compile(backward="unroll", **TIGHT).to_torch(), loss, values, names)
    for name in names:
        assert rel_err(implicit[name], unroll[name]) < 1e-6, name


def test_linear_dynamics_on_ilqr_match_the_lqr_backend():
    lq = lq_problem(3, 2, 6, lo=-0.4, hi=0.4)
    values = lq_values(3, 2, 3, seed=5, scale_x0=2.0)
    ref = lq.problem.compile(backend="lqr").to_torch()
    ilqr = lq.problem.compile(backend="ilqr", tol=1e-12, max_iter=200).to_torch()
    assert ilqr.compiled.backend == "ilqr"
    names = sorted(values)
    loss = _loss_fn(6, 3, 2, 3)
    x_ref, u_ref = ref(**values)
    x, u = ilqr(**values)
    assert rel_err(u, u_ref) < 1e-8 and rel_err(x, x_ref) < 1e-8
    g_ref, g = _autograd(ref, loss, values, names), _autograd(ilqr, loss, values, names)
    for name in names:
        assert rel_err(g[name], g_ref[name]) < 1e-6, name


def test_batched_equals_stack_of_unbatched():
    T = 10
    pend = dc.models.pendulum(horizon=T)
    layer = pend.problem.compile(**TIGHT).to_torch()
    values = _values(pend, initial_states("pendulum", 3, seed=4))
    x, u = layer(**values)
    for b in range(3):
        xb, ub = layer(**{**values, "x0": values["x0"][b]})
        assert xb.shape == (T + 1, 3) and ub.shape == (T, 1)
        torch.testing.assert_close(ub, u[b], rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(xb, x[b], rtol=1e-9, atol=1e-10)


def test_an_example_iterates_as_alone_while_others_take_newton_steps():
    """Each example's iterates are its own: while some examples of the batch sweep with the
    Lagrangian's Hessian (near their solution), the others keep their Levenberg-Marquardt
    regularisation. (Example 7 of these starts needs it: it once lost it in this batch, stalled
    after 30 iterations at cost 56.10 where alone it converges in 54 to 55.31.)"""
    T = 50
    pend = dc.models.pendulum(horizon=T)
    layer = pend.problem.compile().to_torch()
    values = _values(pend, initial_states("pendulum", 256, seed=0)[:16])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dc.NotConvergedWarning)  # two slow examples of the batch
        x, u, info = layer(**values, return_info=True)
    xb, ub, info_b = layer(**{**values, "x0": values["x0"][7]}, return_info=True)
    assert bool(info_b.converged) and bool(info.converged[7])
    assert int(info.iterations[7]) == int(info_b.iterations)
    torch.testing.assert_close(u[7], ub, rtol=1e-7, atol=1e-8)


def test_float32_agrees_with_float64():
    x, u, k = dc.State(2), dc.Control(1), dc.Parameter(name="k")
    prob = dc.ControlProblem(dynamics=x.next == x + 0.1 * dc.stack([x[1], -k * dc.sin(x[0]) + u[0]]),
                             cost=dc.sum_squares(x) + 0.1 * dc.sum_squares(u), terminal_cost=dc.sum_squares(x),
                             horizon=10, initial_state=np.array([2.0, 0.0]), constraints=[-1 <= u, u <= 1])
    layer = prob.compile().to_torch()
    _, u64 = layer(k=torch.tensor([1.0, 2.0], dtype=torch.float64))
    _, u32 = layer(k=torch.tensor([1.0, 2.0]))
    assert u32.dtype == torch.float32
    assert rel_err(u32.double(), u64) < 1e-4


def test_warm_start_at_the_solution_takes_no_iteration():
    pend = dc.models.pendulum(horizon=10)
    layer = pend.problem.compile(**TIGHT).to_torch()
    values = _values(pend, initial_states("pendulum", 2, seed=6))
    _, u, info = layer(**values, return_info=True)
    assert bool((info.iterations > 0).all())
    _, u2, info2 = layer(**values, u_init=u, return_info=True)
    assert info2.iterations.tolist() == [0, 0]
    torch.testing.assert_close(u2, u)


def test_nonconvergence_warns_with_count_or_raises_and_never_zeroes_gradients():
    pend = dc.models.pendulum(horizon=10)
    th = torch.tensor([0.1, 3.0, -2.9], dtype=torch.float64)  # near the top, one iteration is far from a minimum
    values = _values(pend, torch.stack([th.cos(), th.sin(), torch.zeros_like(th)], -1))
    layer = pend.problem.compile(max_iter=1).to_torch()
    leaves = {k: v.clone().requires_grad_() for k, v in values.items()}
    with pytest.warns(dc.NotConvergedWarning, match=r"of 3 examples did not converge \(largest residual"):
        x, u, info = layer(**leaves, return_info=True)
    assert not bool(info.converged.all())
    with pytest.warns(dc.GradientFallbackWarning, match="examples got the Gauss-Newton gradient"):
        (x.sum() + u.sum()).backward()
    unconverged = ~info.converged
    assert bool((leaves["x0"].grad[unconverged].abs().sum(-1) > 0).all())  # mpc.pytorch's issue #46
    strict = pend.problem.compile(max_iter=1, on_nonconvergence="raise").to_torch()
    with pytest.raises(dc.SolverError, match="did not converge"):
        strict(**values)


def test_newton_tail_reaches_the_gauss_newton_solution_in_fewer_iterations():
    """hessian='newton' changes the path, not the fixed point: the same solutions as classic
    Gauss-Newton iLQR, and where GN crawls (linear convergence) far fewer iterations."""
    cart = dc.models.cartpole(horizon=20)
    values = _values(cart, initial_states("cartpole", 16)[:8])  # states that need no long crawl
    _, u_newton, newton = cart.problem.compile().to_torch()(**values, return_info=True)
    _, u_gn, gn = cart.problem.compile(hessian="gauss_newton", max_iter=300).to_torch()(**values, return_info=True)
    assert bool(newton.converged.all()) and bool(gn.converged.all())
    assert rel_err(u_newton, u_gn) < 1e-6  # both stop at tol = sqrt(eps) on the scaled gradient
    assert int(newton.iterations.sum()) < 0.6 * int(gn.iterations.sum())
    assert bool((newton.iterations <= gn.iterations).all())


def _pendulum_shooting_cost(x0: torch.Tensor, u: torch.Tensor, q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """The default pendulum's total cost as a function of its controls (T,), written out
    independently of the DSL: mpc.pytorch's PendulumDx (g = 10, m = l = 1, dt = 0.05)."""
    x, total = x0, 0.0
    for ut in u:
        tau = torch.cat([x, ut[None]])
        total = total + 0.5 * (q * tau ** 2).sum() + p @ tau
        th = torch.atan2(x[1], x[0])
        dth = x[2] + 0.05 * (15.0 * x[1] + 3.0 * ut)
        th = th + 0.05 * dth
        x = torch.stack([torch.cos(th), torch.sin(th), dth])
    return total + 0.5 * (q[:3] * x ** 2).sum() + p[:3] @ x


def test_newton_sweeps_the_reduced_problem_when_a_clamped_control_has_negative_curvature():
    """A swing-up from hanging down whose first torque ends at its bound, with negative
    curvature along it: the full Hessian of the cost in u is indefinite, the reduced one (free
    controls) positive definite. Newton must hold the clamped control (a zero-width box) and
    sweep the reduced problem; judging the full Hessian left this start on Gauss-Newton,
    crawling linearly (98 iterations). Same solution as Gauss-Newton in far fewer iterations."""
    pend = dc.models.pendulum(horizon=10)
    x0 = torch.tensor([[-0.9999656567500407, 0.00828766073508227, 0.2504479561562858]], dtype=torch.float64)
    values = _values(pend, x0)
    _, u, info = pend.problem.compile().to_torch()(**values, return_info=True)
    _, u_gn, gn = pend.problem.compile(hessian="gauss_newton", max_iter=300).to_torch()(**values, return_info=True)
    assert bool(info.converged.all()) and bool(gn.converged.all())
    assert rel_err(u, u_gn) < 1e-5
    # the premise, from an independent single-shooting cost: u_0 clamped, H indefinite, reduced H > 0
    flat = u[0, :, 0].detach()
    H = torch.autograd.functional.hessian(
        lambda v: _pendulum_shooting_cost(x0[0], v, values["q"], values["p"]), flat)
    free = flat.abs() < 2.0 - 1e-9
    assert not bool(free[0])
    assert float(torch.linalg.eigvalsh(H)[0]) < 0 < float(torch.linalg.eigvalsh(H[free][:, free])[0])
    assert int(info.iterations.sum()) < 0.6 * int(gn.iterations.sum())


def test_longer_line_search_steps_reach_the_same_solutions_in_fewer_iterations():
    """ls_expand=1 (a longer step than the full one also tried, doubled while it keeps winning;
    the round's lowest cost wins) changes the
    path, not the fixed point: on pendulum swing-ups, the solutions of ls_expand=0 (largest
    acceptable step of 1, 1/2, ...) in fewer iterations, and never more for any example."""
    pend = dc.models.pendulum(horizon=20)
    values = _values(pend, initial_states("pendulum", 16))
    _, u_long, long = pend.problem.compile(ls_expand=1).to_torch()(**values, return_info=True)
    _, u_full, full = pend.problem.compile(ls_expand=0).to_torch()(**values, return_info=True)
    assert bool(long.converged.all()) and bool(full.converged.all())
    assert rel_err(u_long, u_full) < 1e-6  # both stop at tol = sqrt(eps) on the scaled gradient
    assert int(long.iterations.sum()) < 0.85 * int(full.iterations.sum())
    assert bool((long.iterations <= full.iterations).all())


def test_options_are_validated():
    pend = dc.models.pendulum(horizon=5)
    with pytest.raises(dc.BackendError, match="backward='adjoint' is not offered by 'ilqr'; choose one of "
                                              "'implicit', 'gauss_newton', 'unroll'"):
        pend.problem.compile(backward="adjoint")
    with pytest.raises(dc.BackendError, match="ls_decay must lie in \\(0, 1\\)"):
        pend.problem.compile(ls_decay=1.5)
    with pytest.raises(dc.BackendError, match="unknown option 'lqr_iter' for backend 'ilqr'"):
        pend.problem.compile(lqr_iter=5)
    with pytest.raises(dc.BackendError, match="hessian must be 'newton' or 'gauss_newton', got 'exact'"):
        pend.problem.compile(hessian="exact")
    with pytest.raises(dc.BackendError, match="newton_switch must be nonnegative, got -1"):
        pend.problem.compile(newton_switch=-1)
    with pytest.raises(dc.BackendError, match="ls_expand must be a nonnegative int, got 0.5"):
        pend.problem.compile(ls_expand=0.5)


def test_explain_names_ilqr_its_derivatives_bounds_and_options():
    pend = dc.models.pendulum(horizon=20)
    text = pend.problem.compile(max_iter=30).explain()
    assert "Backend: ilqr" in text
    assert "dynamics: smooth" in text and "'lqr' needs dynamics affine in (x, u)" in text
    assert "derivatives" in text and "autodiff" in text
    assert "-2 <= u" in text and "max_iter = 30" in text and "backward = 'implicit'" in text


@pytest.mark.skipif(not mpc_pytorch_reference.available(), reason="mpc.pytorch (mpc==0.0.6) not installed")
@pytest.mark.parametrize("name", ["pendulum", "cartpole"])
def test_same_or_lower_cost_than_mpc_pytorch(name):
    T, B = 10, 4
    model = getattr(dc.models, name)(horizon=T)
    x0 = initial_states(name, B, seed=8)
    values = _values(model, x0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dc.NotConvergedWarning)
        x, u = model.problem.compile(max_iter=200).to_torch()(**values)
    xm, um, _, _ = mpc_pytorch_reference.solve(name, values, x0, T, lqr_iter=200)
    q, p = values["q"], values["p"]

    def cost(x, u):  # written from the model's definition, independent of both solvers
        n = x.shape[-1]
        tau = torch.cat([x[:, :-1], u], -1)
        stage = 0.5 * (q * tau ** 2).sum(-1) + (p * tau).sum(-1)
        xT = x[:, -1]
        return stage.sum(-1) + 0.5 * (q[:n] * xT ** 2).sum(-1) + (p[:n] * xT).sum(-1)

    ours, theirs = cost(x, u), cost(xm.detach(), um.detach())
    assert bool((ours <= theirs + 1e-6 * (1 + theirs.abs())).all()), (ours, theirs)
