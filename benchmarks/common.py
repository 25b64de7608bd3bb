"""What the benchmarks share: the timing protocol, writing a results page, and the
pendulum / cartpole initial states (also used by tests/test_ilqr.py)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import diffcontrol as dc


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def repeats_within(fn: Callable[[], object], budget: float, least: int, most: int) -> int:
    """How many calls of ``fn`` fit in ``budget`` seconds (timed after a warm-up call), clamped
    to [least, most]: millisecond calls then get enough runs that a burst of load on a shared
    machine moves their median little."""
    fn()
    start = time.perf_counter()
    fn()
    return max(least, min(most, int(budget / max(time.perf_counter() - start, 1e-9))))


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


def model_cost(vals: dict, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The cost of ``dc.models.pendulum`` / ``cartpole`` (values ``vals`` with q, p) of x (B, T+1, n),
    u (B, T, m), written from their definition: (B,)."""
    q, p = vals["q"], vals["p"]
    n = x.shape[-1]
    tau = torch.cat([x[:, :-1], u], -1)
    xT = x[:, -1]
    return ((0.5 * q * tau ** 2 + p * tau).sum((-1, -2)) + (0.5 * q[:n] * xT ** 2 + p[:n] * xT).sum(-1))


def lqr_box_case(batch: int, n: int = 12, m: int = 4, horizon: int = 50) -> tuple[dc.ControlProblem, dict]:
    """An LQR with a control box [-1, 1] (x+ = A x + B u, cost |x|^2 + 0.1 |u|^2, terminal
    |x|^2) and NumPy values for a batch: random stable A (spectral radius <= 1), B, x0."""
    x, u = dc.State(n), dc.Control(m)
    A, B, x0 = dc.Parameter((n, n), name="A"), dc.Parameter((n, m), name="B"), dc.Parameter(n, name="x0")
    prob = dc.ControlProblem(dynamics=x.next == A @ x + B @ u, cost=dc.sum_squares(x) + 0.1 * dc.sum_squares(u),
                             terminal_cost=dc.sum_squares(x), horizon=horizon, initial_state=x0,
                             constraints=[-1 <= u, u <= 1])
    rng = np.random.default_rng(0)
    Av = np.eye(n) + 0.1 * rng.normal(size=(batch, n, n))
    Av /= np.maximum(np.abs(np.linalg.eigvals(Av)).max(-1), 1.0)[:, None, None]  # stable over the horizon
    return prob, {"A": Av, "B": rng.normal(size=(batch, n, m)), "x0": 3 * rng.normal(size=(batch, n))}
