"""The array operations a backend needs beyond the shared array-module names.

Backends import no framework (ARCHITECTURE.md, principle 7): they use ``ops.xp``
(``torch`` or ``jax.numpy``) through the names both share, and these few
methods where the frameworks differ. Each emitter provides one implementation.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from diffcontrol.errors import SolverError, listed

_NOT_PD = ("a matrix that must be positive definite is not (the control block Q_uu = C_uu + F_u^T V F_u "
           "of some stage, or a box QP's free block, or the Hessian of a generic objective): the cost "
           "must be convex and strictly convex in u (in the variables); add e.g. "
           "1e-6 * dc.sum_squares(u) to the cost")
_NON_FINITE = ("NaN or Inf appeared during the solve: the dynamics, the cost or their derivatives "
               "(a dc.Function among them, or an operation outside its domain such as sqrt, log or a "
               "division by zero) evaluated to a non-finite value at an iterate the solver reached; "
               "check the functions' domains and the scale of the inputs, or warm-start nearer a solution")


def cholesky_failure(nonfinite: bool, failed: Any = None) -> SolverError:
    """The error of a failed Cholesky factorisation: NaN/Inf in the matrix (a function that
    left its domain) is a different failure from a matrix that is finite but not PD.
    ``failed``: a NumPy-convertible bool array (B, ...) of the failed factorisations, whose
    examples the message names."""
    where = ""
    if failed is not None and np.ndim(failed) >= 1:
        rows = np.asarray(failed).reshape(np.shape(failed)[0], -1).any(-1).nonzero()[0].tolist()
        where = f" [in {len(rows)} of {np.shape(failed)[0]} examples: batch elements {listed(rows)}]"
    return SolverError((_NON_FINITE if nonfinite else _NOT_PD) + where)


class Ops(Protocol):
    name: str  # "torch" or "jax": which layer of a host solver (cvxpylayers) to use
    xp: Any

    def loop(self, cond: Any, body: Any, state: Any, max_iter: int) -> Any:
        """``while cond(state) and fewer than max_iter steps: state = body(state)``; ``state``
        a pytree of arrays whose shapes and dtypes ``body`` keeps, ``cond`` a scalar bool array.
        (A Python loop for torch, ``lax.while_loop`` for JAX, so solves trace under jit.)"""

    def batch_loop(self, body: Any, state: Any, shared: Any, settled: Any, max_iter: int) -> tuple[Any, Any, Any]:
        """A loop whose examples finish at different iterations: ``state, ok = body(state,
        shared)`` advances every example of ``state`` (a pytree of batch-first arrays (B, ...))
        given ``shared`` (likewise, read-only); an example stops, its state kept, from the
        call that reports it ``ok`` (B,) on, or from the start where ``settled`` (B,) says
        so. Runs until every example has stopped or after ``max_iter`` calls. ``body`` must be
        idempotent on a stopped example (a further call gives the same state and ok again):
        an implementation may keep computing it. Returns the state, the calls each example
        took (B,) int, and which stopped (B,) bool. (torch: the examples still running are
        gathered into a smaller batch once at least half of a large batch has stopped, so the
        body then sees fewer rows; JAX: one ``loop`` over the whole batch.)"""

    def scan(self, step: Any, carry: Any, stages: dict, reverse: bool = False) -> tuple[Any, tuple]:
        """The loop over time: ``carry, y_t = step(carry, stage_t)`` for t = 0..T-1 (T-1..0 with
        ``reverse``), ``stage_t`` the slice ``[:, t]`` of every array of ``stages`` (each
        (B, T, ...)), ``y_t`` a tuple of arrays. Returns the last carry and the y stacked along
        axis 1. (A Python loop for torch, ``lax.scan`` for JAX: one traced stage, whatever T.)"""

    def cond(self, pred: Any, true_fn: Any, false_fn: Any) -> Any:
        """``true_fn()`` if the scalar bool array ``pred`` else ``false_fn()``; both return
        the same structure."""

    def known_any(self, a: Any) -> bool | None:
        """Whether any entry of ``a`` is true, or None where that is not known while the code
        runs (a traced array under jax.jit): the caller then takes the general path."""

    def cholesky(self, A: Any, strict: bool = True) -> Any:
        """Lower Cholesky factor of a batch of SPD matrices. A matrix that is not PD raises
        SolverError, or with ``strict=False`` gets a factor of NaNs."""

    def cho_solve(self, L: Any, b: Any) -> Any:
        """Solve (L L^T) x = b for a batch of vectors b (..., m) or matrices b (..., m, k)."""

    def tri_solve(self, L: Any, b: Any, transpose: bool = False) -> Any:
        """Solve L z = b (L^T z = b with ``transpose``), L (..., m, m) lower triangular, for a
        batch of vectors b (..., m) or matrices b (..., m, k)."""

    def matmul_add(self, C: Any, A: Any, B: Any, alpha: float = 1.0) -> Any:
        """C + alpha A @ B for batches of matrices A (..., p, q), B (..., q, r), C (..., p, r)
        (one fused call in torch: a Riccati stage is a few of these on small matrices)."""

    def eye_like(self, A: Any) -> Any:
        """The identity of A's last two dimensions, A's dtype and device."""

    def eps(self, A: Any) -> float:
        """Machine epsilon of A's dtype."""

    def zeros(self, shape: tuple[int, ...], like: Any) -> Any:
        """Zeros of ``shape`` with the dtype and device of ``like``."""

    def lbfgs(self, fun: Any, y0: Any, max_iter: int, tol: float) -> tuple[Any, Any]:
        """Minimise sum_b fun(y)_b (y (B, n)) with the framework's L-BFGS from y0; returns
        y and the iterations (B,)."""

    def needs_grad(self, arrays: Any) -> bool:
        """Whether the framework will want gradients of a computation on ``arrays``."""

    def poison_gradient(self, outputs: tuple, failed: Any, anchor: Any) -> tuple:
        """``outputs`` (each (B, ...)) unchanged, except that the backward sends NaN into
        ``anchor`` (B,), an array computed from the parameters, for each example that is
        ``failed`` (B,) and whose outputs receive a nonzero cotangent: a failed example's NaN
        outputs depend on no parameter, so its gradient would be a silent zero; a loss that
        masks the example out (zero cotangent) keeps the others' gradients exact."""

    def to_numpy(self, a: Any) -> Any:
        """A host NumPy copy of a (no gradient)."""

    def as_float64_cpu(self, a: Any) -> Any:
        """a in float64 on the host, for host solvers; gradients follow the conversion."""

    def cast_like(self, a: Any, like: Any) -> Any:
        """a in the dtype and on the device of ``like``; gradients follow the conversion."""

    def full_like(self, a: Any, value: float) -> Any:
        """An array of a's shape, dtype and device filled with ``value``."""

    def as_array(self, value: Any, like: Any) -> Any:
        """A NumPy value as an array on ``like``'s device, keeping its dtype."""
