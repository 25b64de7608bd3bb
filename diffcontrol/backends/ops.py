"""The array operations a backend needs beyond the shared array-module names.

Backends import no framework (ARCHITECTURE.md, principle 7): they use ``ops.xp``
(``torch`` or ``jax.numpy``) through the names both share, and these few
methods where the frameworks differ. Each emitter provides one implementation.
"""

from __future__ import annotations

from typing import Any, Protocol


class Ops(Protocol):
    xp: Any

    def cholesky(self, A: Any, strict: bool = True) -> Any:
        """Lower Cholesky factor of a batch of SPD matrices. A matrix that is not PD raises
        SolverError, or with ``strict=False`` gets a factor of NaNs."""

    def cho_solve(self, L: Any, b: Any) -> Any:
        """Solve (L L^T) x = b for a batch of vectors b (..., m) or matrices b (..., m, k)."""

    def eye_like(self, A: Any) -> Any:
        """The identity of A's last two dimensions, A's dtype and device."""

    def eps(self, A: Any) -> float:
        """Machine epsilon of A's dtype."""

    def zeros(self, shape: tuple[int, ...], like: Any) -> Any:
        """Zeros of ``shape`` with the dtype and device of ``like``."""
