"""The emitters' array operations (:mod:`diffcontrol.backends.ops`) that the backends build on,
against closed forms and NumPy: the batch loop (torch gathers the still-running examples of a
large batch; JAX masks) and the fused matrix product."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from zoo import lq_problem, lq_values, rel_err

from diffcontrol.emitters import torch_ops
from diffcontrol.emitters.torch_ops import TorchOps

_real_rows = torch_ops._rows  # the gather, which the tests count


def _countdown(xp):
    """A loop body whose example b stops at call targets[b]: state (count (B,), trail (B, 2))."""
    def body(state, shared):
        count, trail = state
        running = count < shared["target"]
        count = xp.where(running, count + 1, count)
        trail = xp.where(running[:, None], trail + shared["step"], trail)
        return (count, trail), count >= shared["target"]
    return body


def _countdown_inputs(batch):
    rng = np.random.default_rng(0)
    target = rng.integers(1, 9, size=batch)
    step = rng.normal(size=(batch, 2))
    settled = target == 3  # some examples are settled from the start (and then take no call)
    return target, step, settled


@pytest.mark.parametrize("batch", [8, 100])  # 100: compacted (>= _COMPACT_MIN_ROWS rows)
def test_torch_batch_loop_stops_each_example_at_its_own_call(batch, monkeypatch):
    gathers = []
    monkeypatch.setattr(torch_ops, "_rows", lambda tree, index: gathers.append(1) or _real_rows(tree, index))
    target, step, settled = _countdown_inputs(batch)
    state = (torch.zeros(batch, dtype=torch.long), torch.zeros(batch, 2, dtype=torch.float64))
    shared = {"target": torch.as_tensor(target), "step": torch.as_tensor(step)}
    (count, trail), iterations, done = TorchOps.batch_loop(_countdown(torch), state, shared,
                                                           torch.as_tensor(settled), max_iter=6)
    expect = np.where(settled, 0, np.minimum(target, 6))  # the closed form; max_iter cuts at 6
    assert (count.numpy() == expect).all()
    assert np.allclose(trail.numpy(), expect[:, None] * step)
    assert (iterations.numpy() == expect).all()
    assert (done.numpy() == (settled | (target <= 6))).all()
    # the settled examples leave at the start (two gathers: state and shared); a large batch
    # is gathered again once half of it has stopped
    assert (len(gathers) > 2) == (batch >= torch_ops._COMPACT_MIN_ROWS)


def test_jax_batch_loop_agrees_with_torch():
    jnp = pytest.importorskip("jax.numpy")
    from diffcontrol.emitters.jax_ops import JaxOps

    target, step, settled = _countdown_inputs(100)
    state = (jnp.zeros(100, dtype=jnp.int32), jnp.zeros((100, 2)))
    (count, trail), iterations, done = JaxOps.batch_loop(
        _countdown(jnp), state, {"target": jnp.asarray(target), "step": jnp.asarray(step)},
        jnp.asarray(settled), 6)
    expect = np.where(settled, 0, np.minimum(target, 6))
    assert (np.asarray(count) == expect).all() and (np.asarray(iterations) == expect).all()
    assert np.allclose(np.asarray(trail), expect[:, None] * step, atol=1e-6)
    assert (np.asarray(done) == (settled | (target <= 6))).all()


@pytest.mark.parametrize("shapes", [((5, 3, 4), (5, 3, 2), (5, 2, 4)),      # torch: one baddbmm
                                    ((5, 3, 4), (1, 3, 2), (5, 2, 4)),      # broadcast: the plain form
                                    ((2, 5, 3, 4), (2, 5, 3, 2), (2, 5, 2, 4))])
@pytest.mark.parametrize("alpha", [1.0, -1.0])
def test_matmul_add_matches_numpy(shapes, alpha):
    rng = np.random.default_rng(1)
    C, A, B = (rng.normal(size=s) for s in shapes)
    expect = C + alpha * A @ B
    got = TorchOps.matmul_add(*(torch.as_tensor(a) for a in (C, A, B)), alpha=alpha)
    assert np.allclose(got.numpy(), expect, rtol=1e-13, atol=1e-13)
    jnp = pytest.importorskip("jax.numpy")
    from diffcontrol.emitters.jax_ops import JaxOps

    got = JaxOps.matmul_add(*(jnp.asarray(a) for a in (C, A, B)), alpha=alpha)
    assert np.allclose(np.asarray(got), expect, rtol=1e-5, atol=1e-5)  # (JAX's default float32)


@pytest.mark.parametrize("condense", [False, True], ids=["riccati", "condensed"])
def test_box_lqr_in_a_compacted_batch_equals_each_example_alone(condense, monkeypatch):
    """A batch large enough that the active-set method gathers its unsettled examples: every
    solution and gradient as when that example is solved alone."""
    gathers = []
    monkeypatch.setattr(torch_ops, "_rows", lambda tree, index: gathers.append(1) or _real_rows(tree, index))
    n, m, T, batch = 3, 2, 6, 72
    layer = lq_problem(n, m, T, -0.5, 0.5).problem.compile(condense=condense).to_torch()
    v = lq_values(n, m, None, seed=21)
    v["x0"] = lq_values(n, m, batch, seed=22, scale_x0=3.0)["x0"]
    x0 = v["x0"].clone().requires_grad_(True)
    xb, ub, info = layer(**dict(v, x0=x0), return_info=True)
    (gb,) = torch.autograd.grad(ub.sum(), x0)
    assert len(set(info.iterations.tolist())) > 1 and gathers  # the examples settled apart, gathered
    for i in range(batch):
        xi0 = v["x0"][i].clone().requires_grad_(True)
        xi, ui = layer(**dict(v, x0=xi0))
        (gi,) = torch.autograd.grad(ui.sum(), xi0)
        assert rel_err(xb[i].detach(), xi.detach()) < 1e-10 and rel_err(ub[i].detach(), ui.detach()) < 1e-10
        assert rel_err(gb[i], gi) < 1e-8
