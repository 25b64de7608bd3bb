"""How explain() renders the LQR data: matrices as 0, I, k*I or their entries, and the
expressions the solve evaluates (the dynamics' Jacobians, the costs' Hessian blocks of
:mod:`~diffcontrol.compilers.rules`) with their parameter-free parts folded to the values
the solve computes, so that what explain() prints is what the solve uses."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffcontrol.dsl.expression import Expression
from diffcontrol.dsl.leaves import Constant, Leaf, Parameter
from diffcontrol.dsl.traverse import walk
from diffcontrol.programs.evaluate import evaluate


@dataclass(frozen=True)
class Sym:
    """``scale * text``, where text is a matrix expression ("I", "A", "A @ B")."""

    text: str
    scale: float = 1.0

    def __str__(self) -> str:
        if self.scale == 1.0:
            return self.text
        if self.scale == -1.0:
            return f"-{self.text}"
        return f"{self.scale:g}*{self.text}"

    def times(self, factor: float) -> Sym:
        return Sym(self.text, self.scale * factor)


def render_block_matrix(blocks: dict[tuple[int, int], str], k: int) -> str:
    """blockdiag(...) when off-diagonal blocks vanish, else [[..., ...], [..., ...]]."""
    if all(i == j for i, j in blocks):
        return f"blockdiag({', '.join(str(blocks.get((i, i), '0')) for i in range(k))})"
    rows = ["[" + ", ".join(str(blocks.get((i, j), "0")) for j in range(k)) + "]" for i in range(k)]
    return "[" + ", ".join(rows) + "]"


class _NumPy:
    """The evaluator's framework on NumPy, for the parameter-free parts of an expression."""

    name = "numpy"
    xp = np
    caches_arrays = False

    @staticmethod
    def constant(value, like):
        return np.asarray(value, dtype=float)


def render_constant(value: np.ndarray) -> str:
    """A matrix as explain() shows it: 0, I or k*I where it is one, else its entries."""
    value = np.asarray(value, dtype=float)
    if not value.any():
        return "0"
    if value.ndim == 2 and value.shape[0] == value.shape[1]:
        k = value[0, 0]
        if np.array_equal(value, k * np.eye(value.shape[0])):
            return str(Sym("I", float(k)))
    text = np.array2string(value, separator=", ", formatter={"float_kind": lambda v: f"{v:g}"})
    return " ".join(text.split())


def render_folded(expr: Expression) -> str:
    """``expr`` as text, each parameter-free sub-expression shown by its value (as the solve
    evaluates it): the rendering of an expression the solve itself evaluates, such as the
    dynamics' Jacobians of :func:`~diffcontrol.compilers.rules.jacobian_expression`."""
    text: dict[int, str] = {}
    free: dict[int, bool] = {}
    for node in walk([expr]):
        free[id(node)] = not isinstance(node, Parameter) and all(free[id(a)] for a in node.args)
        if free[id(node)] and not (isinstance(node, Leaf) and not isinstance(node, Constant)):
            text[id(node)] = render_constant(evaluate([node], {}, _NumPy, None)[0])
        elif isinstance(node, Leaf):
            text[id(node)] = str(node)
        else:
            text[id(node)] = node.render([text[id(a)] for a in node.args])
    return text[id(expr)]
