"""The ift_cg backend against closed forms (Kepler's equation, quadratics, a separable
nonconvex objective), finite differences of the forward solve (backward Euler with an MLP),
and its own dense oracle."""

from __future__ import annotations

import pytest
import torch

import diffcontrol as dc
from tests.zoo import rel_err


@pytest.fixture(autouse=True)
def float64_by_default():
    """These tests build tensors with torch's default dtype: float64 here, restored after."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _kepler():
    E, e, M = dc.Variable(name="E"), dc.Parameter(name="e"), dc.Parameter(name="M")
    return dc.Problem(dc.Minimize(dc.square(E - e * dc.sin(E) - M)))


@pytest.mark.parametrize("batched", [False, True])
def test_kepler_gradients_match_the_closed_forms(batched):
    compiled = _kepler().compile()
    assert compiled.backend == "ift_cg"
    e = torch.tensor([0.1, 0.5, 0.9] if batched else 0.6, requires_grad=True)
    M = torch.tensor([0.3, 1.0, 2.5] if batched else 1.2, requires_grad=True)
    (E,) = compiled.to_torch()(e=e, M=M)
    assert E.shape == e.shape
    Ed, ed = E.detach(), e.detach()
    assert (Ed - ed * torch.sin(Ed) - M.detach()).abs().max() < 1e-9  # Kepler's equation holds
    ge, gM = torch.autograd.grad(E.sum(), [e, M])
    assert torch.allclose(ge, torch.sin(Ed) / (1 - ed * torch.cos(Ed)), rtol=1e-7, atol=1e-10)
    assert torch.allclose(gM, 1 / (1 - ed * torch.cos(Ed)), rtol=1e-7, atol=1e-10)


def test_implicit_and_unrolled_newton_agree_on_kepler():
    e = torch.tensor([0.2, 0.7], requires_grad=True)
    M = torch.tensor([0.5, 2.0], requires_grad=True)
    grads = []
    for backward in ("implicit", "unroll"):
        (E,) = _kepler().compile(backward=backward).to_torch()(e=e, M=M)
        grads.append(torch.autograd.grad((E ** 2).sum(), [e, M]))
    for a, b in zip(*grads):
        assert rel_err(a, b) < 1e-7


def _quadratic(n):
    y, P, q = dc.Variable(n, name="y"), dc.Parameter((n, n), name="P"), dc.Parameter(n, name="q")
    return dc.Problem(dc.Minimize(0.5 * dc.quad_form(y, P) - q @ y))


def _spd(n, batch, seed):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(*batch, n, n, generator=g)
    P = A @ A.mT / n + torch.eye(n) + 0.1 * torch.randn(*batch, n, n, generator=g)
    return P, torch.randn(*batch, n, generator=g)


@pytest.mark.parametrize("linear_solver", ["cg", "cg_normal", "dense"])
def test_strongly_convex_quadratic_matches_the_closed_form(linear_solver):
    P, q = _spd(6, (3,), seed=0)
    P.requires_grad_(), q.requires_grad_()
    (y,) = _quadratic(6).compile(linear_solver=linear_solver).to_torch()(P=P, q=q)
    S = 0.5 * (P + P.mT)
    y_ref = torch.linalg.solve(S, q[..., None])[..., 0]  # grad = S y - q = 0
    assert (y - y_ref).abs().max() < 1e-9
    w = torch.linspace(-1, 1, 6)
    got = torch.autograd.grad((y * w).sum(), [P, q])
    want = torch.autograd.grad((y_ref * w).sum(), [P, q])
    for a, b in zip(got, want):
        assert rel_err(a, b) < 1e-8


def test_cg_and_dense_agree_and_batched_equals_unbatched():
    P, q = _spd(5, (4,), seed=1)
    results = {}
    for solver in ("cg", "dense"):
        layer = _quadratic(5).compile(linear_solver=solver).to_torch()
        Pv, qv = P.clone().requires_grad_(), q.clone().requires_grad_()
        (y,) = layer(P=Pv, q=qv)
        results[solver] = (y, torch.autograd.grad((y ** 3).sum(), [Pv, qv]))
        for i in range(4):
            Pi, qi = P[i].clone().requires_grad_(), q[i].clone().requires_grad_()
            (yi,) = layer(P=Pi, q=qi)
            gi = torch.autograd.grad((yi ** 3).sum(), [Pi, qi])
            assert torch.allclose(yi, y[i].detach(), atol=1e-12)
            assert all(rel_err(a, b[i]) < 1e-9 for a, b in zip(gi, results[solver][1]))
    for a, b in zip(results["cg"][1], results["dense"][1]):
        assert rel_err(a, b) < 1e-9


def test_backward_euler_step_of_a_neural_ode_matches_finite_differences():
    torch.manual_seed(0)
    n = 3
    mlp = torch.nn.Sequential(torch.nn.Linear(n, 16), torch.nn.Tanh(), torch.nn.Linear(16, n)).double()
    f = dc.Function(mlp, n, name="mlp")
    y, x, h = dc.Variable(n, name="y"), dc.Parameter(n, name="x"), dc.Parameter(name="h")
    step = dc.Problem(dc.Minimize(dc.sum_squares(y - x - h * f(y))))
    compiled = step.compile()
    text = compiled.explain()
    assert "Backend: ift_cg" in text and "opaque dc.Functions (mlp)" in text and "n = 3" in text
    layer = compiled.to_torch()
    assert any(p is mlp[0].weight for p in layer.parameters())  # the MLP trains through the layer
    xs = torch.randn(2, n)
    hv = torch.tensor(0.1)
    xs.requires_grad_(), hv.requires_grad_()
    (ys,) = layer(x=xs, h=hv, y_init=(xs.detach(),))
    residual = ys - xs - hv * mlp(ys)
    assert residual.abs().max() < 1e-8  # the implicit Euler equation holds
    w = torch.randn(2, n)
    gx, gh, gW = torch.autograd.grad((ys * w).sum(), [xs, hv, mlp[0].weight])

    def loss(xv, hv_, W):
        with torch.no_grad():
            old = mlp[0].weight.clone()
            mlp[0].weight.copy_(W)
            (out,) = layer(x=xv, h=hv_, y_init=(xv,))
            mlp[0].weight.copy_(old)
        return float((out * w).sum())

    def fd(fn, v, eps=1e-6):
        g = torch.zeros_like(v)
        for idx in range(v.numel()):
            d = torch.zeros_like(v).view(-1)
            d[idx] = eps
            g.view(-1)[idx] = (fn(v + d.view_as(v)) - fn(v - d.view_as(v))) / (2 * eps)
        return g

    X, H, W = xs.detach(), hv.detach(), mlp[0].weight.detach().clone()
    assert rel_err(gx, fd(lambda v: loss(v, H, W), X)) < 1e-6
    assert rel_err(gh, fd(lambda v: loss(X, v, W), H)) < 1e-6
    assert rel_err(gW, fd(lambda v: loss(X, H, v), W)) < 1e-6


def test_a_thousand_variable_nonconvex_objective_by_lbfgs_matches_the_closed_form():
    n, a = 1000, 2.0  # f'' = 1 - a cos(y) changes sign: nonconvex, many local minima
    y, p = dc.Variable(n, name="y"), dc.Parameter(n, name="p")
    prob = dc.Problem(dc.Minimize(0.5 * dc.sum_squares(y - p) + a * dc.sum(dc.cos(y))))
    compiled = prob.compile()
    assert "L-BFGS" in compiled.explain()
    pv = torch.linspace(-3, 3, n, requires_grad=True)
    (ys, info) = compiled.to_torch()(p=pv, y_init=(pv.detach(),), return_info=True)
    assert bool(info.converged)
    yd = ys.detach()
    curvature = 1 - a * torch.cos(yd)
    assert (curvature > 0).all()  # a local minimum: the IFT applies
    w = torch.sin(torch.arange(n, dtype=torch.float64))
    (gp,) = torch.autograd.grad((ys * w).sum(), [pv])
    assert rel_err(gp, w / curvature) < 1e-6  # y - p - a sin y = 0  =>  dy/dp = 1 / (1 - a cos y)


def test_a_user_solver_is_a_black_box_and_its_point_is_checked():
    P, q = _spd(4, (), seed=2)
    S = 0.5 * (P + P.T)
    calls = []

    def exact(fun, y0):
        calls.append(fun(y0).shape)
        return torch.linalg.solve(S, q).expand(y0.shape[0], 4)

    (y,) = _quadratic(4).compile(solver=exact).to_torch()(P=P, q=q)
    assert calls == [(1,)] and torch.allclose(y, torch.linalg.solve(S, q))
    with pytest.warns(dc.NotConvergedWarning, match="1 of 1 examples did not converge"):
        _quadratic(4).compile(solver=lambda fun, y0: y0 + 1.0).to_torch()(P=P, q=q)


def test_a_non_stationary_point_warns_or_raises_before_any_gradient():
    e, M = torch.tensor(0.9), torch.tensor(2.5)
    with pytest.warns(dc.NotConvergedWarning, match="did not converge"):
        (E, info) = _kepler().compile(max_iter=1).to_torch()(e=e, M=M, return_info=True)
    assert not bool(info.converged) and float(info.residual) > 1e-8
    with pytest.raises(dc.SolverError, match="did not converge"):
        _kepler().compile(max_iter=1, on_nonconvergence="raise").to_torch()(e=e, M=M)


def test_options_are_validated():
    prob = _kepler()
    with pytest.raises(dc.BackendError, match="linear_solver must be one of 'cg', 'cg_normal', 'dense'"):
        prob.compile(linear_solver="lu")
    with pytest.raises(dc.BackendError, match="solver must be 'auto', 'newton', 'lbfgs' or a callable"):
        prob.compile(solver="adam")
    with pytest.raises(dc.BackendError, match="tikhonov must be nonnegative"):
        prob.compile(tikhonov=-1.0)
    with pytest.raises(dc.BackendError, match="a user's solver is a black box"):
        prob.compile(solver=lambda f, y: y, backward="unroll")
    with pytest.raises(dc.InputError, match="y_init must be a tuple of 1 arrays"):
        prob.compile().to_torch()(e=0.1, M=0.2, y_init=(torch.zeros(()), torch.zeros(())))
