"""What the benchmarks share: the timing protocol, writing a results page, and the
pendulum / cartpole initial states (also used by tests/test_ilqr.py)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def write_results(out: str, lines: list[str]) -> None:
    """Write a results page (markdown lines) to ``out``, creating its folder."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


def initial_states(name: str, batch: int, seed: int = 0) -> torch.Tensor:
    """Initial states (batch, n) of ``dc.models.<name>``, float64: the pendulum at a uniform
    angle in [-pi, pi) and speed in [-1, 1); the cartpole at an angle in [-pi/2, pi/2) and
    position, velocity, angular speed in [-0.5, 0.5)."""
    g = torch.Generator().manual_seed(seed)
    if name == "pendulum":
        th = (torch.rand(batch, generator=g, dtype=torch.float64) * 2 - 1) * torch.pi
        dth = torch.rand(batch, generator=g, dtype=torch.float64) * 2 - 1
        return torch.stack([th.cos(), th.sin(), dth], -1)
    th = (torch.rand(batch, generator=g, dtype=torch.float64) * 2 - 1) * 0.5 * torch.pi
    pos, vel, dth = (torch.rand(3, batch, generator=g, dtype=torch.float64) * 2 - 1) * 0.5
    return torch.stack([pos, vel, th.cos(), th.sin(), dth], -1)
