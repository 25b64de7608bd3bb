"""The torch layer's boundary: names, shapes, batch sizes, dtypes, devices, finiteness,
the info object, and thread safety of a shared compiled problem."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from zoo import lq_problem, lq_values, rel_err

import diffcontrol as dc


@pytest.fixture(scope="module")
def lq():
    return lq_problem(3, 2, 4, -1.0, 1.0)


@pytest.fixture()
def values():
    return lq_values(3, 2, None, seed=0)


def test_unknown_and_missing_names(lq, values):
    layer = lq.problem.compile().to_torch()
    with pytest.raises(dc.InputError, match=r"unknown parameter 'AA'; this layer takes A\(3, 3\), B\(3, 2\)"):
        layer(**values, AA=values["A"])
    del values["B"]
    with pytest.raises(dc.InputError, match=r"missing parameter 'B' of shape \(3, 2\)"):
        layer(**values)


def test_wrong_shape_and_mismatched_batches(lq, values):
    layer = lq.problem.compile().to_torch()
    with pytest.raises(dc.InputError, match=r"'A' expects shape \(3, 3\) or \(B, 3, 3\), got \(3, 4\)"):
        layer(**dict(values, A=torch.zeros(3, 4, dtype=torch.float64)))
    with pytest.raises(dc.InputError, match="must share one batch size, got A: 2, x0: 5"):
        layer(**dict(values, A=values["A"].expand(2, 3, 3), x0=values["x0"].expand(5, 3)))
    with pytest.raises(dc.InputError, match=r"'u_init' expects shape \(4, 2\)"):
        layer(**values, u_init=torch.zeros(3, 2, dtype=torch.float64))


def test_non_finite_inputs_raise_before_solving(lq, values):
    layer = lq.problem.compile().to_torch()
    values["x0"] = values["x0"].clone()
    values["x0"][1] = float("nan")
    with pytest.raises(dc.SolverError, match="input 'x0' contains NaN or Inf; no solve was attempted"):
        layer(**values)


def test_float16_and_mixed_devices_are_refused(lq, values):
    layer = lq.problem.compile().to_torch()
    with pytest.raises(dc.InputError, match="dtype torch.float16; diffcontrol solves in float32 or float64"):
        layer(**dict(values, A=values["A"].half()))
    meta = torch.zeros(3, device="meta")
    with pytest.raises(dc.InputError, match="different devices"):
        layer(**dict(values, x0=meta))


def test_numpy_and_python_inputs_are_accepted(lq, values):
    layer = lq.problem.compile().to_torch()
    x_np, u_np = layer(**{k: v.numpy() for k, v in values.items()})
    x_t, u_t = layer(**values)
    assert x_np.dtype == torch.float64 and rel_err(u_np, u_t) < 1e-12


def test_empty_box_is_a_solver_error():
    x, u = dc.State(2), dc.Control(1)
    lo, hi = dc.Parameter(name="lo"), dc.Parameter(name="hi")
    prob = dc.ControlProblem(dynamics=x.next == x + u, cost=dc.sum_squares(x) + dc.sum_squares(u), horizon=3,
                             initial_state=np.ones(2), constraints=[lo <= u, u <= hi])
    with pytest.raises(dc.SolverError, match="box on the controls is empty"):
        prob.compile().to_torch()(lo=1.0, hi=-1.0)


def test_info_shapes_batched_and_unbatched(lq, values):
    layer = lq.problem.compile().to_torch()
    *_, info = layer(**values, return_info=True)
    assert info.converged.shape == () and bool(info.converged) and info.residual.shape == ()
    batched = dict(values, x0=values["x0"].expand(3, 3))
    *_, info = layer(**batched, return_info=True)
    assert info.converged.shape == (3,) and info.iterations.shape == (3,) and len(info.status) == 3


@pytest.mark.parametrize("grad", [False, True])
def test_outputs_are_ordinary_tensors(lq, values, grad):
    """The lqr solve runs in inference mode; what the layer returns must still serve autograd
    and in-place ops (an inference tensor would refuse both)."""
    layer = lq.problem.compile().to_torch()
    A = values["A"].clone().requires_grad_(grad)
    xs, us, info = layer(**dict(values, A=A), return_info=True)
    assert not xs.is_inference() and not us.is_inference() and not info.residual.is_inference()
    scale = torch.ones((), dtype=xs.dtype, requires_grad=True)
    loss = (scale * xs * info.residual).sum() + (scale * us * info.converged).sum()
    loss.backward()  # saves xs, us and the info tensors for backward
    assert scale.grad is not None and (A.grad is not None) == grad
    xs.mul_(2.0)


def test_problem_without_parameters():
    x, u = dc.State(2), dc.Control(1)
    prob = dc.ControlProblem(dynamics=x.next == np.array([[1.0, 0.1], [0.0, 1.0]]) @ x + np.array([0.0, 0.1]) * u,
                             cost=dc.sum_squares(x) + dc.sum_squares(u), horizon=5,
                             initial_state=np.array([1.0, 0.0]))
    xs, us = prob.compile().to_torch()()
    assert xs.shape == (6, 2) and us.shape == (5, 1) and xs.dtype == torch.get_default_dtype()


def test_module_weights_inside_functions_are_registered():
    net = torch.nn.Linear(2, 2)
    x, u = dc.State(2), dc.Control(1)
    prob = dc.ControlProblem(dynamics=x.next == dc.Function(net, 2)(x) + u, cost=dc.sum_squares(u),
                             horizon=2, initial_state=np.zeros(2))
    layer = prob.compile().to_torch()
    assert layer.compiled.backend == "ilqr"
    assert {id(p) for p in layer.parameters()} == {id(p) for p in net.parameters()}


def test_one_compiled_problem_serves_threads_concurrently(lq):
    compiled = lq.problem.compile()
    layers = [compiled.to_torch(), compiled.to_torch()]
    inputs = [lq_values(3, 2, 4, seed=s, scale_x0=2.0) for s in range(6)]
    expected = [layers[0](**v)[1] for v in inputs]
    results = [None] * len(inputs)

    def work(i):
        results[i] = layers[i % 2](**inputs[i])[1]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected):
        assert rel_err(got, want) < 1e-12


def _device_cases() -> dict:
    """One problem per backend with float64 inputs (batch 4): name -> (problem, values)."""
    lq = lq_problem(4, 2, 6, -0.5, 0.5)
    pend = dc.models.pendulum(horizon=10)
    th = torch.linspace(-2.0, 2.0, 4, dtype=torch.float64)
    y, p = dc.Variable(3, name="y"), dc.Parameter(3, name="p")
    ball = dc.Problem(dc.Minimize(dc.sum_squares(y - p)), [dc.sum_squares(y) <= 1])
    smooth = dc.Problem(dc.Minimize(dc.sum_squares(y - p) + 0.3 * dc.sum(dc.sin(y))))
    points = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    return {
        "lqr": (lq.problem, lq_values(4, 2, 4, seed=1, scale_x0=2.0)),
        "ilqr": (pend.problem, {**{k: torch.as_tensor(v, dtype=torch.float64) for k, v in pend.defaults().items()},
                                "x0": torch.stack([th.cos(), th.sin(), torch.zeros_like(th)], -1)}),
        "cone": (ball, {"p": points}),
        "ift_cg": (smooth, {"p": points}),
    }


_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=_CUDA)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("backend", ["lqr", "ilqr", "cone", "ift_cg"])
def test_device_matches_cpu(backend, dtype, device):
    """Every backend solves and differentiates on the inputs' device (no CPU-only call in the
    path), and its solutions and gradients there match the CPU's. On "cpu" the comparison runs
    everywhere, so the harness itself (leaves made on the device, their .grad read) is tested
    where CI runs; on "cuda" it runs where a GPU is."""
    problem, values = _device_cases()[backend]
    layer = problem.compile().to_torch()
    assert layer.compiled.backend == backend
    tol = 1e-7 if dtype == torch.float64 else 2e-3

    def solve(where):
        # leaves created on the device: .to() of a tensor that requires grad is not a leaf
        leaves = {k: v.detach().to(device=where, dtype=dtype).clone().requires_grad_(True)
                  for k, v in values.items()}
        outputs = layer(**leaves)
        sum(o.sum() for o in outputs).backward()
        return outputs, {k: v.grad for k, v in leaves.items()}

    cpu_out, cpu_grads = solve("cpu")
    dev_out, dev_grads = solve(device)
    for got, want in zip(dev_out, cpu_out):
        assert got.device.type == device and got.dtype == dtype and rel_err(got.detach().cpu(), want.detach()) < tol
    for k, want in cpu_grads.items():
        assert want is not None and dev_grads[k] is not None, k
        assert dev_grads[k].device.type == device and rel_err(dev_grads[k].cpu(), want) < tol, k


def test_training_through_the_layer_recovers_dynamics():
    """Learn B from expert controls only (the Differentiable MPC paper's LQR imitation, small)."""
    torch.manual_seed(0)
    n, m, T = 2, 1, 5
    x, u = dc.State(n), dc.Control(m)
    A, B, x0 = dc.Parameter((n, n), name="A"), dc.Parameter((n, m), name="B"), dc.Parameter(n, name="x0")
    prob = dc.ControlProblem(dynamics=x.next == A @ x + B @ u, cost=dc.sum_squares(x) + dc.sum_squares(u),
                             horizon=T, initial_state=x0, constraints=[-1 <= u, u <= 1])
    layer = prob.compile().to_torch()
    A_true = torch.tensor([[1.0, 0.1], [0.0, 1.0]], dtype=torch.float64)
    B_true = torch.tensor([[0.0], [0.5]], dtype=torch.float64)
    x0s = torch.randn(32, n, dtype=torch.float64)
    _, u_expert = layer(A=A_true, B=B_true, x0=x0s)
    B_hat = torch.tensor([[0.3], [0.1]], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([B_hat], lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        loss = ((layer(A=A_true, B=B_hat, x0=x0s)[1] - u_expert) ** 2).mean()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 1e-6 and rel_err(B_hat.detach(), B_true) < 1e-2
