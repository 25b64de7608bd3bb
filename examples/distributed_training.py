"""Data-parallel training through an MPC layer with torch.distributed (DistributedDataParallel).

The demo's task (pendulum mpc.dx: learn gravity, mass and length from an expert's controls)
split over processes: each process solves its shard of every batch with the ilqr layer, and
DDP all-reduces (averages) the gradients of the learnable physics before each optimiser
step, so every process holds the same model. The layer is an ordinary ``torch.nn.Module``
(a compiled problem keeps no per-call state), so nothing diffcontrol-specific is needed.

    python examples/distributed_training.py --quick         # spawns 2 CPU processes (gloo)
    torchrun --nproc_per_node=2 examples/distributed_training.py --quick   # the same, by torchrun

On GPUs (one process per GPU, NCCL), on one node or several:

    torchrun --nproc_per_node=8 examples/distributed_training.py --backend nccl
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \\
        examples/distributed_training.py --backend nccl

Each process then moves its model and shard to ``cuda:LOCAL_RANK``; the layer solves on the
device of its inputs.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _common import write_table
from torch.nn.parallel import DistributedDataParallel

import diffcontrol as dc
from diffcontrol.demo import TRUE, expert_data


class LearnedPendulumMPC(torch.nn.Module):
    """The learner: the MPC layer with learnable log g, log m, log l (they stay positive)."""

    def __init__(self, layer: torch.nn.Module, cost: dict, start: dict):
        super().__init__()
        self.layer, self.cost = layer, cost
        self.log_physics = torch.nn.Parameter(torch.tensor([math.log(start[k]) for k in TRUE], dtype=torch.float64))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        g, m, length = self.log_physics.exp()
        _, u = self.layer(g=g, m=m, l=length, **self.cost, x0=x0)
        return u


def train(rank: int, world: int, args: argparse.Namespace) -> None:
    """One process: rank of world; batches are split into world equal shards."""
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))  # the processes share the cores
    device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', rank)}") if args.backend == "nccl" else None
    model_problem = dc.models.pendulum(horizon=10)
    layer = model_problem.problem.compile(max_iter=300).to_torch()
    data = expert_data(model_problem, layer, 64, seed=0)  # every process makes the same data
    if rank == 0:
        print(layer.compiled.explain().split("\n\n")[2], "\n")  # the backend chosen, and why
    start = {"g": 7.0, "m": 1.4, "l": 1.3}
    model = LearnedPendulumMPC(layer, data["cost"], start)
    if device is not None:
        model, data = model.to(device), {k: v.to(device) if torch.is_tensor(v) else v for k, v in data.items()}
    ddp = DistributedDataParallel(model)
    opt = torch.optim.RMSprop(ddp.parameters(), lr=3e-2, alpha=0.5)
    gen = torch.Generator().manual_seed(1)  # the same batches on every process
    steps, batch = (30, 16) if args.quick else (200, 32)
    shard = batch // world
    rows, started = [], time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, 64, (batch,), generator=gen)[rank * shard:(rank + 1) * shard]
        loss = ((ddp(data["x0"][idx]) - data["u"][idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()  # DDP averages the gradient over the processes here
        opt.step()
        if rank == 0 and (step % max(steps // 6, 1) == 0 or step == steps - 1):
            g, m, length = model.log_physics.detach().exp().tolist()
            rows.append([step, f"{loss.item():.3e}", f"{g:.3f}", f"{m:.3f}", f"{length:.3f}"])
            print(f"step {step:4d}  shard loss {loss.item():.3e}  g {g:.3f}  m {m:.3f}  l {length:.3f}", flush=True)
    # every process holds the same parameters: check it, loudly
    gathered = [torch.zeros_like(model.log_physics) for _ in range(world)]
    dist.all_gather(gathered, model.log_physics.detach())
    spread = max(float((p - gathered[0]).abs().max()) for p in gathered)
    if rank == 0:
        write_table(Path(args.out) / "distributed_training.md", ["step", "shard loss (rank 0)", "g", "m", "l"], rows,
                    f"DDP over {world} processes ({args.backend}): pendulum mpc.dx, truth g=10, m=1, l=1; "
                    f"largest parameter difference between processes {spread:.1e}; "
                    f"{time.perf_counter() - started:.1f} s")
    if spread > 0:
        raise RuntimeError(f"processes disagree on the parameters by {spread}")
    # no process leaves before all are done: one that tears its gloo pairs down while rank 0 is
    # still writing the table can abort rank 0 (SIGABRT in a gloo thread, seen once in CI)
    dist.barrier()


def _process(rank: int, world: int, rendezvous: str, args: argparse.Namespace) -> None:
    """A process started by mp.spawn: join the group (through the file ``rendezvous``: unlike a
    TCP port picked in advance, no other process can take it first), train, leave."""
    dist.init_process_group(args.backend, init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        train(rank, world, args)
    except BaseException:
        dist.destroy_process_group()
        raise
    # gloo's teardown, in destroy_process_group or at the interpreter's exit, now and then aborts
    # one process (SIGABRT, "terminate called without an active exception", seen in CI) after
    # train's closing barrier, when all is done and written: a spawned process leaves without it
    sys.stdout.flush()  # os._exit flushes nothing
    sys.stderr.flush()
    os._exit(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30 steps of batch 16 (about a minute on 2 cores)")
    parser.add_argument("--out", default="examples_output", help="folder for the table")
    parser.add_argument("--nproc", type=int, default=2, help="processes to spawn when not run by torchrun")
    parser.add_argument("--backend", default="gloo", choices=["gloo", "nccl"])
    args = parser.parse_args()
    if "RANK" in os.environ:  # launched by torchrun: it set the rendezvous variables
        dist.init_process_group(args.backend)
        try:
            train(dist.get_rank(), dist.get_world_size(), args)
        finally:
            dist.destroy_process_group()
    else:
        with tempfile.TemporaryDirectory() as folder:
            mp.spawn(_process, args=(args.nproc, os.path.join(folder, "rendezvous"), args), nprocs=args.nproc)


if __name__ == "__main__":
    main()
