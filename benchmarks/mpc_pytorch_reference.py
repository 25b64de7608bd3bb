"""mpc.pytorch (PyPI ``mpc==0.0.6``) on diffcontrol's shipped pendulum and cartpole, for the
benchmarks and comparison tests.

Its horizon T has states x_0..x_{T-1} and controls u_0..u_{T-1} (the last control moves
nothing), its cost sums 1/2 tau^T C tau + c^T tau over all T stages; diffcontrol's models
with ``horizon=T - 1`` and the stage cost's state part as terminal cost are the same problem
(the same optimal cost, up to the constant stage-0 state term, which both include).
"""

from __future__ import annotations

import torch


def _patch_for_current_torch() -> None:
    """mpc.pytorch 0.0.6's ``util.bdiag`` indexes with a uint8 mask, which torch >= 2 rejects
    (its backward with active bounds then fails): the same function with a boolean mask."""
    from mpc import util

    def bdiag(d: torch.Tensor) -> torch.Tensor:
        return torch.diag_embed(d)

    util.bdiag = bdiag


def available() -> bool:
    try:
        import mpc  # noqa: F401
    except ImportError:
        return False
    return True


def solve(name: str, params: dict, x0: torch.Tensor, horizon: int, *, lqr_iter: int = 100,
          eps: float | None = None, backward: bool = False, bound: float | None = None):
    """mpc.pytorch's box-DDP on the model ``name`` ("pendulum" or "cartpole") with diffcontrol's
    parameter values ``params`` (g, m, l / gravity, masscart, masspole, length, and q, p) and
    x0 (B, n); ``horizon`` is diffcontrol's; ``eps`` (its stopping threshold on the control
    step) defaults to the model's own ``mpc_eps``, ``bound`` to the model's control limit
    (also applied to its dynamics' internal clamp). Returns x (B, horizon+1, n), u (B, horizon, m),
    the cost and the ``mpc.MPC`` module; with ``backward`` the physical parameters keep
    their ``requires_grad`` (mpc.pytorch's own implicit backward)."""
    from mpc import mpc
    from mpc.env_dx import cartpole, pendulum

    _patch_for_current_torch()
    B, n = x0.shape
    T = horizon + 1
    if name == "pendulum":
        phys = torch.stack([params["g"], params["m"], params["l"]])
        dx = pendulum.PendulumDx(phys, simple=True)
        bound = 2.0 if bound is None else bound
        dx.max_torque = bound
    else:
        phys = torch.stack([params["gravity"], params["masscart"], params["masspole"], params["length"]])
        dx = cartpole.CartpoleDx(phys)
        bound = 100.0 if bound is None else bound
        dx.force_mag = bound
    q, p = params["q"], params["p"]
    N = q.shape[-1]
    m = N - n
    C = torch.diag_embed(q).expand(T, B, N, N)
    c = p.expand(T, B, N)
    lower = torch.full((T, B, m), -bound, dtype=x0.dtype)
    ctrl = mpc.MPC(n, m, T, u_lower=lower, u_upper=-lower, lqr_iter=lqr_iter, verbose=-1,
                   eps=dx.mpc_eps if eps is None else eps,
                   exit_unconverged=False, detach_unconverged=False, backprop=backward,
                   linesearch_decay=dx.linesearch_decay, max_linesearch_iter=dx.max_linesearch_iter,
                   grad_method=mpc.GradMethods.AUTO_DIFF, n_batch=B)
    x, u, cost = ctrl(x0, mpc.QuadCost(C, c), dx)
    return x.transpose(0, 1), u.transpose(0, 1)[:, :horizon], cost, ctrl
