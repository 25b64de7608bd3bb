"""Failure modes inside a training loop: examples that do not converge are named, counted and
leave the other examples' gradients alone; NaN never reaches a parameter silently."""

from __future__ import annotations

import warnings

import pytest
import torch
from zoo import lq_problem, lq_values

import diffcontrol as dc


def _pendulum_batch() -> tuple[dc.models.ModelProblem, dict]:
    """Six pendulum starts; with max_iter=4 the two near the top (theta = 3.0, -2.9) do not
    converge and the four near the bottom do."""
    pend = dc.models.pendulum(horizon=10)
    th = torch.tensor([0.1, -0.2, 3.0, 0.3, -2.9, 0.05], dtype=torch.float64)
    x0 = torch.stack([th.cos(), th.sin(), torch.zeros_like(th)], -1)
    values = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in pend.defaults().items()}
    return pend, {**values, "x0": x0}


def _x0_gradients(layer, values: dict, weights: torch.Tensor) -> tuple[torch.Tensor, object]:
    x0 = values["x0"].clone().requires_grad_(True)
    x, u, info = layer(**{**values, "x0": x0}, return_info=True)
    (u[..., 0] * weights).sum().backward()
    return x0.grad, info


def test_unconverged_examples_are_named_counted_and_leave_the_others_gradients_alone():
    pend, values = _pendulum_batch()
    weights = torch.linspace(-1.0, 1.0, 10, dtype=torch.float64).expand(6, 10)
    layer = pend.problem.compile(max_iter=4).to_torch()
    with pytest.warns(dc.NotConvergedWarning, match=r"^2 of 6 examples did not converge .*max_iter"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dc.GradientFallbackWarning)
            grads, info = _x0_gradients(layer, values, weights)
    assert info.converged.tolist() == [True, True, False, True, False, True]
    assert [s is dc.Status.MAX_ITER for s in info.status] == [False, False, True, False, True, False]
    assert torch.isfinite(grads).all()

    # reference: the converged examples alone, solved to a tight tolerance
    ok = info.converged
    alone = pend.problem.compile(max_iter=200, tol=1e-12).to_torch()
    ref, ref_info = _x0_gradients(alone, {**values, "x0": values["x0"][ok]}, weights[ok])
    assert bool(ref_info.converged.all())
    torch.testing.assert_close(grads[ok], ref, rtol=1e-6, atol=1e-8)


def test_a_nan_batch_is_refused_before_the_solve_and_the_parameters_stay_finite():
    """A data loader hands over one batch with a NaN initial state: the call raises before
    any solve, the step is skipped, and training goes on with finite parameters."""
    lq = lq_problem(3, 2, 5, -1.0, 1.0)
    layer = lq.problem.compile().to_torch()
    truth = lq_values(3, 2, 16, seed=0, scale_x0=2.0)
    _, u_expert = layer(**truth)
    B_hat = (truth["B"] + 0.3).clone().requires_grad_(True)
    opt = torch.optim.Adam([B_hat], lr=0.02)
    losses, refused = [], []
    for step in range(30):
        x0 = truth["x0"].clone()
        if step == 10:
            x0[3, 1] = float("nan")
        opt.zero_grad()
        try:
            _, u = layer(**{**truth, "B": B_hat, "x0": x0})
        except dc.SolverError as err:
            refused.append((step, str(err)))
            continue
        loss = ((u - u_expert) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert [s for s, _ in refused] == [10] and "input 'x0' contains NaN or Inf" in refused[0][1]
    assert torch.isfinite(B_hat).all() and losses[-1] < 0.2 * losses[0]


def test_training_with_unconverged_examples_keeps_parameters_finite_and_learns():
    """Most steps leave some examples unconverged (max_iter=4); their gradients are the
    implicit (or Gauss-Newton) gradients at the point reached, finite, and learning proceeds."""
    pend, values = _pendulum_batch()
    layer = pend.problem.compile(max_iter=4).to_torch()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, u_expert = layer(**values)
        log_l = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)  # truth: log 1 = 0
        opt = torch.optim.Adam([log_l], lr=0.03)
        first, unconverged_steps = None, 0
        for _ in range(15):
            opt.zero_grad()
            _, u, info = layer(**{**values, "l": log_l.exp()}, return_info=True)
            unconverged_steps += not bool(info.converged.all())
            loss = ((u - u_expert) ** 2).mean()
            loss.backward()
            assert torch.isfinite(log_l.grad)
            opt.step()
            first = loss.item() if first is None else first
    assert unconverged_steps >= 10
    assert torch.isfinite(log_l) and loss.item() < 0.5 * first and abs(log_l.item()) < 0.4
