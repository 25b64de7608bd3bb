"""Scale: time per example and peak memory vs batch size, torch layer, forward + backward.

Problems: the pendulum of ``dc.models.pendulum`` at horizon 50 (ilqr, torque box [-2, 2])
and an LQR with n=12, m=4, T=50 and a control box [-1, 1] (lqr backend), batch 1 .. 4096,
float64. Each (problem, batch) runs in a fresh process so that its peak memory is its own:
on CPU the peak resident set size (ru_maxrss) minus the process's size before the first
solve; on CUDA ``torch.cuda.max_memory_allocated``. Times are medians after a warm-up.

    python benchmarks/scale.py                      # CPU; writes benchmarks/results/scale.md
    python benchmarks/scale.py --device cuda --out benchmarks/results/scale_cuda.md
    python benchmarks/scale.py --quick              # batch up to 256
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import diffcontrol as dc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import initial_states, lqr_box_case, write_results  # noqa: E402

HORIZON = 50


def pendulum_case(batch: int) -> tuple[dc.ControlProblem, dict]:
    model = dc.models.pendulum(horizon=HORIZON)
    values = {**{k: torch.as_tensor(v, dtype=torch.float64) for k, v in model.defaults().items()},
              "x0": initial_states("pendulum", batch, seed=0)}
    return model.problem, values


def lqr_case(batch: int) -> tuple[dc.ControlProblem, dict]:
    prob, values = lqr_box_case(batch, horizon=HORIZON)
    return prob, {k: torch.as_tensor(v) for k, v in values.items()}


CASES = {"pendulum": pendulum_case, "lqr": lqr_case}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure(case: str, batch: int, device: str, repeats: int) -> dict:
    """One configuration, in this process: forward + backward of sum(x) + sum(u)."""
    problem, values = CASES[case](batch)
    layer = problem.compile().to_torch()  # the default options a user gets
    values = {k: v.to(device) for k, v in values.items()}

    def run():
        leaves = {k: v.clone().requires_grad_(True) for k, v in values.items()}
        x, u, info = layer(**leaves, return_info=True)
        (x.sum() + u.sum()).backward()
        if device == "cuda":
            torch.cuda.synchronize()
        return info

    before = _rss_mb()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    info = run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() / 2**20) if device == "cuda" else _rss_mb() - before
    return {"backend": layer.compiled.backend, "seconds": float(np.median(times)), "peak_mb": peak,
            "converged": int(info.converged.sum()), "iterations": int(info.iterations.max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/scale.md")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--one", nargs=2, metavar=("CASE", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # a child process: one configuration, JSON on the last line
        batch = int(args.one[1])
        print(json.dumps(measure(args.one[0], batch, args.device, 2 if batch >= 1024 else 5)))
        return
    batches = (1, 16, 256) if args.quick else (1, 16, 256, 1024, 4096)
    where = (torch.cuda.get_device_name() if args.device == "cuda"
             else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)")
    memory = ("peak CUDA memory allocated" if args.device == "cuda"
              else "peak RSS above the process's size before solving")
    lines = ["# Scale: time per example and peak memory vs batch size (torch layer, forward + backward)",
             "",
             f"float64 on {where}, torch {torch.__version__}, horizon {HORIZON}. Each row ran in a fresh "
             f"process; memory = {memory}. Times are medians after a warm-up (of 2 runs from batch 1024 "
             "on). Default options (ilqr: max_iter=100; an example that has not converged by then is "
             "counted in the last column and reported by a NotConvergedWarning).",
             "",
             "| problem | backend | batch | forward + backward (s) | per example (ms) | peak memory (MiB) | "
             "converged | iterations (max) |",
             "|---|---|---|---|---|---|---|---|"]
    names = {"pendulum": "pendulum, T=50, torque box 2", "lqr": "LQR n=12 m=4 T=50, box 1"}
    for case in CASES:
        for batch in batches:
            cmd = [sys.executable, __file__, "--one", case, str(batch), "--device", args.device]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            r = json.loads(out)
            lines.append(f"| {names[case]} | {r['backend']} | {batch} | {r['seconds']:.3f} | "
                         f"{1e3 * r['seconds'] / batch:.2f} | {r['peak_mb']:.0f} | {r['converged']}/{batch} | "
                         f"{r['iterations']} |")
            print(lines[-1], flush=True)
    write_results(args.out, lines)


if __name__ == "__main__":
    main()
