"""Path and terminal constraints of a nonlinear ControlProblem as augmented-Lagrangian terms.

The ilqr backend meets general constraints (smooth equalities and inequalities in x
and u, at every stage and at x_T) by an augmented-Lagrangian outer loop around its
unconstrained solve (as ALTRO does; :mod:`diffcontrol.backends.augmented`). Here the
constraints become rows and the rows become cost terms the iLQR model evaluates like
any other:

- stage rows c_t (k_s,) = c(x_t, u_t, p_t), each constraint flattened: those with a
  control bind at t = 0..T-1, those on the state alone at t = 1..T-1 here and at T in
  the terminal rows (x_0 is data, not a decision);
- terminal rows c_T (k_T,) = c(x_T, p_T): the state-only path constraints at x_T, then
  the ``terminal_constraints``;

each ``<=`` row means c <= 0, each ``==`` row c = 0. With multipliers lam and penalty
rho, the term of an inequality row is (max(0, lam + rho c)^2 - lam^2) / (2 rho), of
an equality row lam c + rho c^2 / 2 (Bertsekas 1982; Nocedal & Wright, eq. 17.65):
C^1, with the gradient max(0, lam + rho c) grad c, the updated multiplier's.

The multipliers, the penalty and the per-stage row weights (0 where a row does not
bind) enter as hidden parameters, so the model's rollouts, Hessians and the implicit
backward's KKT pieces evaluate them by the same code as the user's parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffcontrol.compilers.analysis import expression_facts
from diffcontrol.dsl import constructors as dc
from diffcontrol.dsl.constraints import Constraint, Equality
from diffcontrol.dsl.expression import Expression
from diffcontrol.dsl.leaves import Constant, Parameter
from diffcontrol.dsl.problems import ControlProblem


@dataclass(frozen=True)
class Rows:
    """One set of constraint rows: their values c (k,) as one expression, which rows are
    equalities, the constraint each row comes from (for explain and errors)."""

    values: Expression
    equality: np.ndarray
    sources: tuple[Constraint, ...]

    @property
    def size(self) -> int:
        return int(self.equality.size)


@dataclass(frozen=True)
class PathConstraints:
    """The stage rows (binding from stage ``first_stage``: 0 with a control, 1 on the state
    alone), the terminal rows, and the hidden parameters of their augmented-Lagrangian terms:
    ``multipliers`` (time-varying, (k_s,)), ``weights`` (time-varying (k_s,): 1 where a row
    binds), ``terminal_multipliers`` and ``terminal_weights`` (k_T,), ``penalty`` rho and
    ``half_inverse`` 1 / (2 rho)."""

    stage: Rows | None
    terminal: Rows | None
    first_stage: np.ndarray
    multipliers: Parameter
    weights: Parameter
    terminal_multipliers: Parameter
    terminal_weights: Parameter
    penalty: Parameter
    half_inverse: Parameter
    #: the general path constraints, as declared
    general: tuple[Constraint, ...] = ()

    @property
    def hidden(self) -> tuple[Parameter, ...]:
        return (self.multipliers, self.weights, self.terminal_multipliers, self.terminal_weights, self.penalty,
                self.half_inverse)

    @property
    def time_varying(self) -> set[str]:
        return {self.multipliers.name, self.weights.name}

    def stage_term(self) -> Expression | None:
        """The stage rows' augmented-Lagrangian term (a scalar), or None without stage rows."""
        if self.stage is None:
            return None
        return _term(self.stage, self.multipliers, self.penalty, self.half_inverse, self.weights)

    def terminal_term(self) -> Expression | None:
        if self.terminal is None:
            return None
        return _term(self.terminal, self.terminal_multipliers, self.penalty, self.half_inverse, self.terminal_weights)

    def stage_weights(self, T: int) -> np.ndarray:
        """(T+1, k_s): 1 where a stage row binds (row T unused: the terminal rows cover x_T)."""
        t = np.arange(T + 1)[:, None]
        return ((t >= self.first_stage[None]) & (t < T)).astype(float)


def _term(rows: Rows, lam: Parameter, rho: Parameter, half_inverse: Parameter,
          weights: Parameter) -> Expression:
    c = rows.values
    ineq = Constant((~rows.equality).astype(float))
    eq = Constant(rows.equality.astype(float))
    shifted = lam + rho * c
    per_row = (dc.multiply(ineq, dc.square(dc.pos(shifted)) - dc.square(lam)) * half_inverse
               + dc.multiply(eq, dc.multiply(lam, c) + 0.5 * rho * dc.square(c)))
    return dc.sum(dc.multiply(weights, per_row))


def _flat(expr: Expression) -> Expression:
    return expr if expr.ndim <= 1 else dc.reshape(expr, (int(np.prod(expr.shape)),), order="C")


def _rows(constraints: list[Constraint]) -> Rows | None:
    if not constraints:
        return None
    pieces, equality, sources = [], [], []
    for c in constraints:
        size = _size(c)
        pieces.append(_flat(c.expr))
        equality += [isinstance(c, Equality)] * size
        sources += [c] * size
    return Rows(dc.concat(pieces), np.array(equality, dtype=bool), tuple(sources))


def path_constraints(problem: ControlProblem, general: list[Constraint]) -> PathConstraints:
    """The rows of the ``general`` (non-box) path constraints and of all terminal constraints."""
    u = problem.control
    with_control = [c for c in general if id(u) in _uses(c)]
    state_only = [c for c in general if id(u) not in _uses(c)]
    stage = _rows(with_control + state_only)
    first = np.array([0] * sum(_size(c) for c in with_control) + [1] * sum(_size(c) for c in state_only))
    terminal = _rows(state_only + list(problem.terminal_constraints))
    ks = stage.size if stage is not None else 0
    kT = terminal.size if terminal is not None else 0
    return PathConstraints(
        stage, terminal, first,
        multipliers=Parameter(max(ks, 1), name="_path_multipliers", time_varying=True),
        weights=Parameter(max(ks, 1), name="_path_weights", time_varying=True),
        terminal_multipliers=Parameter(max(kT, 1), name="_terminal_multipliers"),
        terminal_weights=Parameter(max(kT, 1), name="_terminal_weights"),
        penalty=Parameter((), name="_path_penalty", nonneg=True),
        half_inverse=Parameter((), name="_path_half_inverse", nonneg=True),
        general=tuple(general),
    )


def _uses(c: Constraint) -> set:
    return expression_facts(c.lhs).uses | expression_facts(c.rhs).uses


def _size(c: Constraint) -> int:
    return int(np.prod(c.shape)) if c.shape else 1
