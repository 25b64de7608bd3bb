"""The exceptions and warnings diffcontrol raises, and the status codes of a solve.

Every message names the offending term and the way out; tests assert them.
"""

from __future__ import annotations

import enum


class DiffControlError(Exception):
    """Base class of every error diffcontrol raises."""


class ModelError(DiffControlError, ValueError):
    """The problem as declared is invalid (shapes, structure, misuse of the DSL)."""


class BackendError(DiffControlError, ValueError):
    """A backend cannot take the problem, or was given options it does not know."""


class InputError(DiffControlError, ValueError):
    """A layer was called with bad inputs (names, shapes, batch sizes, dtypes, devices)."""


class SolverError(DiffControlError, RuntimeError):
    """A solve could not be carried out or its result cannot be trusted."""


class NotConvergedWarning(UserWarning):
    """A solver stopped before its tolerance; gradients rest on an unreached fixed point."""


class SaddlePointWarning(UserWarning):
    """Some examples converged to a stationary point that is not a local minimum: the Hessian
    of the Lagrangian is not positive definite on their free controls there (a saddle, or a
    maximum); ``info.status`` marks them ``Status.SADDLE_POINT``."""


class GradientFallbackWarning(UserWarning):
    """Some examples' exact implicit gradient could not be formed (the Hessian of the
    Lagrangian is not positive definite on the free controls there: an unconverged point or
    a saddle); those examples got the Gauss-Newton gradient instead."""


class Status(enum.Enum):
    """Per-example outcome of a solve; the value is the user-facing message."""

    CONVERGED = "converged"
    MAX_ITER = "stopped at max_iter before reaching tol"
    LINE_SEARCH_FAILED = "the line search found no decrease; the iterate may be off the optimum"
    INACCURATE = "the solver reported an inaccurate solution"
    INFEASIBLE = "the problem is infeasible for these parameters (the solver's verdict)"
    UNBOUNDED = "the problem is unbounded below for these parameters (the solver's verdict)"
    SOLVER_FAILED = "the solver failed (numerical trouble); the outputs are NaN"
    INFEASIBLE_SOLUTION = "the returned solution violates the constraints by more than tol"
    GOAL_NOT_MET = ("a terminal equality was not met: the goal is out of reach (an uncontrollable direction, "
                    "or a box too tight), or its multipliers need more than 4 * max_iter steps")
    SADDLE_POINT = ("converged to a stationary point that is not a local minimum (the Hessian of the Lagrangian "
                    "is not positive definite on the free controls: a saddle or a maximum); its gradient is "
                    "the Gauss-Newton one")
    NON_FINITE = ("NaN or Inf in the solution (a function left its domain or overflowed, a matrix that must be "
                  "positive definite was not, or a NaN input under jax.jit); the outputs and the gradient are NaN")

    @property
    def code(self) -> int:
        """The integer by which an array of statuses (a JAX layer's ``info.status``) names it."""
        return _STATUSES.index(self)

    @staticmethod
    def from_code(code: int) -> Status:
        """The status an integer code names: ``[dc.Status.from_code(c) for c in info.status]``."""
        return _STATUSES[int(code)]


_STATUSES = tuple(Status)  # in declaration order: the codes


def listed(rows: list[int], most: int = 10) -> str:
    """Batch elements for a message: the first ``most`` of ``rows``, then "..." if there are more."""
    return ", ".join(map(str, rows[:most])) + (", ..." if len(rows) > most else "")
