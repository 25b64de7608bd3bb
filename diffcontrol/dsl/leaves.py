"""Leaves of the expression tree: decision variables, parameters and constants."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from diffcontrol.dsl.expression import (
    AFFINE,
    ANY_SIGN,
    CONSTANT,
    NONNEG,
    NONPOS,
    Expression,
    as_shape,
)
from diffcontrol.errors import ModelError

_counter = itertools.count(1)


class Leaf(Expression):
    """A named leaf. ``is_decision`` marks what an argmin optimises over."""

    is_decision = False
    _prefix = "leaf"

    def __init__(self, shape: Any = (), name: str | None = None):
        self.shape = () if shape == () else as_shape(shape)
        self.args = ()
        if name is not None and (not isinstance(name, str) or not name.isidentifier()):
            raise ModelError(f"a name must be a Python identifier, got {name!r}")
        self.name = name or f"{self._prefix}{next(_counter)}"

    def render(self, arg_strs: list[str]) -> str:
        return self.name

    def degree(self, arg_degrees):  # decision leaves are handled by the analysis
        return 0

    def curvature(self, arg_curvatures, arg_signs):
        return AFFINE if self.is_decision else CONSTANT

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.shape}, name={self.name!r})"


class Variable(Leaf):
    """A decision variable of a generic problem, ``dc.Variable(shape=(), name=None)``."""

    is_decision = True
    _prefix = "var"


class Parameter(Leaf):
    """A layer input; gradients flow to it. ``nonneg=True`` declares its sign for convexity.

    ``time_varying=True`` (in a ControlProblem): the parameter stands for p_t, as x stands for
    x_t; its value carries a time axis of length T+1 (or T where it appears in no terminal
    term) after the optional batch axis: (T+1, *shape) or (B, T+1, *shape).
    """

    _prefix = "param"

    def __init__(self, shape: Any = (), name: str | None = None, *, nonneg: bool = False,
                 time_varying: bool = False):
        super().__init__(shape, name)
        self.nonneg = bool(nonneg)
        self.time_varying = bool(time_varying)
        self.tree = None  # a ParameterTree where the value is a pytree (Parameter.pytree)

    @classmethod
    def pytree(cls, example: Any, name: str | None = None) -> Parameter:
        """A parameter whose value is a pytree shaped like ``example`` (a Flax / Equinox model's
        weights, a dict of arrays): shape (size,), size the leaves' total number of entries.

        A layer takes its value as such a pytree (each leaf of ``example``'s shape, or all with
        one leading batch dimension B) or flat, (size,) or (B, size). A ``dc.Function`` given
        the parameter as an argument receives the pytree, so ``lambda w, z: model.apply(w, z)``
        works as written; ``jax.grad`` with respect to the pytree returns one. Needs JAX.
        """
        from diffcontrol.dsl.pytree import ParameterTree

        tree = ParameterTree(example)
        parameter = cls(tree.size, name)
        parameter.tree = tree
        return parameter

    def sign(self, arg_signs):
        return NONNEG if self.nonneg else ANY_SIGN


class _StageVector(Leaf):
    """A per-stage decision vector of a control problem (the state or the control)."""

    is_decision = True

    def __init__(self, size: int, name: str | None = None):
        super().__init__(as_shape(size), name or self._prefix)
        if len(self.shape) != 1:
            kind = type(self).__name__
            raise ModelError(f"a {kind} is a vector: dc.{kind}(size) with an int size, got shape {self.shape}")


class State(_StageVector):
    """The state x_t of an optimal-control problem, ``dc.State(n)``; ``x.next`` stands for x_{t+1}."""

    _prefix = "x"

    @property
    def next(self) -> StateNext:
        return StateNext(self)


class StateNext(Expression):
    """x_{t+1}; only valid as one side of the dynamics ``x.next == f(x, u)``."""

    def __init__(self, state: State):
        self.state = state
        self.shape = state.shape
        self.args = ()

    def render(self, arg_strs):
        return f"{self.state.name}.next"

    def evaluate(self, xp, values):
        raise ModelError(f"{self} may appear only as the left side of the dynamics")


class Control(_StageVector):
    """The control u_t of an optimal-control problem, ``dc.Control(m)``."""

    _prefix = "u"


class Constant(Leaf):
    """A Python number or NumPy array inside an expression (float64 on the host)."""

    def __init__(self, value: np.ndarray):
        self.value = np.asarray(value, dtype=float)
        self.shape = tuple(self.value.shape)
        self.args = ()
        self.name = _format_constant(self.value)
        if not np.all(np.isfinite(self.value)):
            raise ModelError(f"constant {self.name} contains NaN or Inf")

    def sign(self, arg_signs):
        if np.all(self.value >= 0):
            return NONNEG
        if np.all(self.value <= 0):
            return NONPOS
        return ANY_SIGN

    def evaluate(self, xp, values):  # constants are materialised by the evaluator
        raise AssertionError("constants are evaluated by the evaluator")


def _format_constant(value: np.ndarray) -> str:
    if value.ndim == 0:
        return f"{float(value):g}"
    if value.size <= 4:
        # one line, so that a small matrix reads inline in explain()'s expressions
        text = np.array2string(value, separator=", ", formatter={"float_kind": lambda v: f"{v:g}"})
        return " ".join(text.split())
    return f"const{value.shape}"
