"""The JAX layer (jit-compiled) vs the torch layer on the same problems, in one process.

Problems: the pendulum of ``dc.models.pendulum`` (ilqr, horizon 20, torque box [-2, 2])
and an LQR with n=12, m=4, T=50 and a control box [-1, 1] (lqr backend). Batch 1, 64,
1024; forward + backward (the gradient of sum(x) + sum(u) w.r.t. every parameter);
float64 on CPU; medians of repeated runs after a warm-up. JAX's compile time (the first
call of the jitted forward + backward) is reported on its own; the torch layer needs none.
The last column checks that both layers give the same gradients: per parameter the largest
difference relative to the largest entry of the torch gradient, the worst parameter.

    python benchmarks/jax_vs_torch.py                 # writes benchmarks/results/jax_vs_torch.md
    python benchmarks/jax_vs_torch.py --quick         # batch 1 and 64, fewer repeats
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch

import diffcontrol as dc

jax.config.update("jax_enable_x64", True)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import initial_states, lqr_box_case, timed, write_results  # noqa: E402


def pendulum_case(batch: int):
    model = dc.models.pendulum(horizon=20)
    values = {**{k: np.asarray(v, dtype=float) for k, v in model.defaults().items()},
              "x0": initial_states("pendulum", batch, seed=0).numpy()}
    return model.problem, values


def torch_step(layer, values: dict):
    def run():
        leaves = {k: torch.as_tensor(v).requires_grad_(True) for k, v in values.items()}
        x, u = layer(**leaves)
        (x.sum() + u.sum()).backward()
        return {k: leaves[k].grad for k in values}

    return run


def jax_step(solve, values: dict):
    arrays = {k: jnp.asarray(v) for k, v in values.items()}

    @jax.jit
    def grads(v):
        def loss(v):
            x, u = solve(**v)
            return x.sum() + u.sum()

        return jax.grad(loss)(v)

    def run():
        return jax.block_until_ready(grads(arrays))

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/jax_vs_torch.md")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    batches = (1, 64) if args.quick else (1, 64, 1024)
    lines = ["# JAX layer (jit) vs torch layer, forward + backward",
             "",
             f"float64, CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), "
             f"torch {torch.__version__}, jax {jax.__version__}. Times are medians after a warm-up; "
             "JAX compile = the first call of the jitted forward + backward (once per shape).",
             "",
             "| problem | backend | batch | torch (ms) | JAX jit (ms) | torch / JAX | JAX compile (s) | "
             "max rel. grad difference |",
             "|---|---|---|---|---|---|---|---|"]
    for name, case in (("pendulum, T=20", pendulum_case), ("LQR n=12 m=4 T=50, box", lqr_box_case)):
        for batch in batches:
            problem, values = case(batch)
            compiled = problem.compile()
            repeats = 3 if (args.quick or batch >= 1024) else 7
            t_run, j_run = torch_step(compiled.to_torch(), values), jax_step(compiled.to_jax(), values)
            start = time.perf_counter()
            j_grads = j_run()
            compile_s = time.perf_counter() - start
            t_grads = t_run()
            # relative to each gradient's size: the summed parameters' gradients grow with the batch
            diff = max(float(np.abs(np.asarray(j_grads[k]) - t_grads[k].numpy()).max()
                             / max(float(np.abs(t_grads[k].numpy()).max()), 1e-300)) for k in values)
            t_time, j_time = timed(t_run, repeats), timed(j_run, repeats)
            lines.append(f"| {name} | {compiled.backend} | {batch} | {1e3 * t_time:.1f} | {1e3 * j_time:.1f} | "
                         f"{t_time / j_time:.2f}x | {compile_s:.1f} | {diff:.1e} |")
            print(lines[-1], flush=True)
    write_results(args.out, lines)


if __name__ == "__main__":
    main()
