"""The values of the facts the analysis finds and the backends are matched against.

Facts are values, never prose: selection compares these, ``explain()`` prints them
(each member's value is its wording), and the reason and the offending expression
travel beside them in :class:`~diffcontrol.compilers.analysis.Fact`.
"""

from __future__ import annotations

from enum import Enum


class Kind(str, Enum):
    """The kinds of problem: a ControlProblem or a generic Problem."""

    CONTROL = "control"
    GENERIC = "generic"

    def __str__(self) -> str:
        return self.value


class Form(str, Enum):
    """The form of one part of a problem (dynamics, a cost, the objective, convexity)."""

    NONE = "none"
    FINITE_HORIZON = "finite horizon"
    TIME_VARYING = "finite horizon, time-varying data"
    AFFINE = "affine"
    QUADRATIC_CONVEX = "quadratic, convex"
    QUADRATIC = "quadratic, convexity unknown"
    CONVEX_SMOOTH = "convex, smooth"
    CONVEX_NONSMOOTH = "convex, nonsmooth"
    SMOOTH = "smooth"
    NONSMOOTH = "nonsmooth"
    OPAQUE = "opaque"
    CONVEX = "convex"
    NOT_CERTIFIED = "not certified"
    GENERAL = "general"

    def __str__(self) -> str:
        return self.value


class ConstraintKind(str, Enum):
    """The kind of one constraint, in the order ``explain()`` lists them."""

    BOX = "box on controls"
    CONTROL_EQUALITY = "equality on controls"
    CONTROL_INEQUALITY = "general inequality on controls"
    MIXED = "mixed state-control constraint"
    PARAMETERS_ONLY = "constraint on parameters only"
    STATE = "state constraint"
    TERMINAL_EQUALITY = "affine equality on x_T"
    TERMINAL_INEQUALITY = "inequality on x_T"
    TERMINAL_NONLINEAR = "nonlinear equality on x_T"
    NONSMOOTH = "nonsmooth constraint"
    GENERAL = "general"

    def __str__(self) -> str:
        return self.value


class ConstraintKinds(frozenset):
    """The kinds of a problem's constraints (empty: none), printed in a fixed order."""

    def __str__(self) -> str:
        if not self:
            return "none"
        # the box first, the others alphabetically (as explain() has always listed them)
        box = [ConstraintKind.BOX] if ConstraintKind.BOX in self else []
        rest = sorted((k for k in self if k is not ConstraintKind.BOX), key=lambda k: k.value)
        return ", ".join(k.value for k in box + rest)


QUADRATIC = frozenset({Form.QUADRATIC_CONVEX, Form.QUADRATIC})
SMOOTH = QUADRATIC | {Form.AFFINE, Form.SMOOTH, Form.OPAQUE}
