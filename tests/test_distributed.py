"""DistributedDataParallel (gloo, 2 processes on this machine) through an ilqr layer whose
dynamics hold a torch network: the all-reduced gradients equal a single process's gradients
on the whole batch, for the network's weights and for the matrices passed as parameters."""

from __future__ import annotations

import os
import sys

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import diffcontrol as dc

BATCH, WORLD = 8, 2


class _Learner(torch.nn.Module):
    """x+ = A x + B u + 0.1 net(x): A, B go in as dc.Parameters, net inside a dc.Function."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()
        x, u = dc.State(2, name="x"), dc.Control(1, name="u")
        A, B, x0 = dc.Parameter((2, 2), name="A"), dc.Parameter((2, 1), name="B"), dc.Parameter(2, name="x0")
        residual = dc.Function(net, (2,), name="net")
        prob = dc.ControlProblem(dynamics=x.next == A @ x + B @ u + 0.1 * residual(x),
                                 cost=dc.sum_squares(x) + dc.sum_squares(u), horizon=6, initial_state=x0,
                                 constraints=[-1 <= u, u <= 1])
        self.layer = prob.compile(tol=1e-12, max_iter=200).to_torch()
        self.A = torch.nn.Parameter(torch.tensor([[1.0, 0.1], [0.0, 1.0]], dtype=torch.float64))
        self.B = torch.nn.Parameter(torch.tensor([[0.0], [0.2]], dtype=torch.float64))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        return self.layer(A=self.A, B=self.B, x0=x0)[1]


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return (torch.randn(BATCH, 2, generator=g, dtype=torch.float64) * 2,
            torch.randn(BATCH, 6, 1, generator=g, dtype=torch.float64).clamp(-1, 1))


def _gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def _worker(rank: int, rendezvous: str, out: str) -> None:
    torch.set_num_threads(1)
    # a file rendezvous: no TCP port to pick, so no race with other processes for a free one
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=WORLD)
    try:
        model = _Learner()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        x0, target = _data()
        shard = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        ((ddp(x0[shard]) - target[shard]) ** 2).mean().backward()
        grads = _gradients(model)
        torch.optim.SGD(ddp.parameters(), lr=0.1).step()
        params = {name: p.detach().clone() for name, p in model.named_parameters()}
        torch.save({"grads": grads, "params": params}, f"{out}.{rank}")
        dist.barrier()  # every result is saved
    except BaseException:
        dist.destroy_process_group()
        raise
    # gloo's teardown, in destroy_process_group or at the interpreter's exit, now and then aborts
    # one process (SIGABRT, "terminate called without an active exception", seen in CI) after
    # all the work is done and saved: leave without it
    sys.stdout.flush()  # os._exit flushes nothing
    sys.stderr.flush()
    os._exit(0)


def test_ddp_gradients_equal_the_single_process_gradients_on_the_whole_batch(tmp_path):
    out = str(tmp_path / "result")
    mp.spawn(_worker, args=(str(tmp_path / "rendezvous"), out), nprocs=WORLD)
    ranks = [torch.load(f"{out}.{r}") for r in range(WORLD)]

    model = _Learner()
    x0, target = _data()
    ((model(x0) - target) ** 2).mean().backward()
    single = _gradients(model)
    assert set(single) == {"A", "B", "layer.functions.0.0.weight", "layer.functions.0.0.bias",
                           "layer.functions.0.2.weight", "layer.functions.0.2.bias"}
    for name, want in single.items():
        assert float(want.abs().max()) > 0, name
        for r in ranks:
            np.testing.assert_allclose(r["grads"][name].numpy(), want.numpy(), rtol=1e-7, atol=1e-10, err_msg=name)
    # one optimiser step later every process holds the same parameters
    for name in single:
        torch.testing.assert_close(ranks[0]["params"][name], ranks[1]["params"][name], rtol=0, atol=0)
