"""Constraints built by comparing expressions: ``lhs <= rhs`` and ``lhs == rhs``."""

from __future__ import annotations

from diffcontrol.dsl.expression import Expression, broadcast_shape
from diffcontrol.errors import ModelError


class Constraint:
    """``lhs op rhs``; ``expr`` is ``lhs - rhs`` (``<= 0`` or ``== 0``)."""

    op = ""

    def __init__(self, lhs: Expression, rhs: Expression):
        self.lhs, self.rhs = lhs, rhs
        self.shape = broadcast_shape(lhs, rhs, self.op)

    @property
    def expr(self) -> Expression:
        return self.lhs - self.rhs

    def __bool__(self) -> bool:
        raise ModelError(
            f"the constraint {self} was used as a truth value; chained comparisons such as "
            "'lo <= u <= hi' are not supported: write two constraints, [lo <= u, u <= hi]"
        )

    def __str__(self) -> str:
        return f"{self.lhs} {self.op} {self.rhs}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self})"


class Inequality(Constraint):
    """``lhs <= rhs`` elementwise."""

    op = "<="


class Equality(Constraint):
    """``lhs == rhs`` elementwise (also the form of the dynamics ``x.next == f(x, u)``)."""

    op = "=="
