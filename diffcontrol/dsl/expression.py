"""The expression base class: shapes, operators and the guards of the DSL's syntax.

An expression is an immutable tree. Each node knows its ``shape`` (fixed at
construction, where shape errors raise) and states *local* facts about itself
(polynomial degree, curvature, sign, smoothness) as functions of its
arguments' facts; :mod:`diffcontrol.compilers.analysis` composes them once.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from diffcontrol.errors import ModelError

Shape = tuple[int, ...]

#: Curvatures, from most to least specific (cvxpy's DCP vocabulary).
CONSTANT, AFFINE, CONVEX, CONCAVE, UNKNOWN = "constant", "affine", "convex", "concave", "unknown"
#: Signs.
NONNEG, NONPOS, ANY_SIGN = "nonneg", "nonpos", "unknown"


def as_shape(shape: Any) -> Shape:
    """Normalise an int or a tuple of ints into a shape tuple."""
    dims = (shape,) if _is_int(shape) else shape
    if not isinstance(dims, (tuple, list)) or not all(_is_int(d) for d in dims):
        raise ModelError(f"a shape must be an int or a tuple of ints, got {shape!r}")
    if any(d < 1 for d in dims):
        raise ModelError(f"every dimension of a shape must be positive, got {tuple(dims)}")
    return tuple(int(d) for d in dims)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


class Expression:
    """A node of the expression tree.

    Subclasses set ``args`` and ``shape`` and override the fact methods.
    ``degree``/``curvature``/``sign`` receive the facts of ``args`` in order.
    """

    # NumPy must defer to our reflected operators (``ndarray @ expr``), or it
    # would broadcast an object array of expressions.
    __array_ufunc__ = None
    __array_priority__ = 100

    args: tuple[Expression, ...] = ()
    shape: Shape = ()
    #: True when the atom is smooth (C^2) wherever it is defined.
    smooth: bool = True
    #: For a nonsmooth atom: the smooth expression (or constraint) to write instead.
    smooth_alternative: str = ""

    # ---- facts, stated locally -------------------------------------------------
    def degree(self, arg_degrees: list[int | None]) -> int | None:
        """Polynomial degree in the decision variables, or None when not polynomial."""
        return 0 if all(d == 0 for d in arg_degrees) else None

    def curvature(self, arg_curvatures: list[str], arg_signs: list[str]) -> str:
        return CONSTANT if all(c == CONSTANT for c in arg_curvatures) else UNKNOWN

    def sign(self, arg_signs: list[str]) -> str:
        return ANY_SIGN

    # ---- evaluation and rendering ---------------------------------------------
    def evaluate(self, xp: Any, values: list[Any]) -> Any:
        """The value of this node given its arguments' values, with array module ``xp``.

        Every value has one leading batch axis (the batch's size, or 1 for a value shared
        by the whole batch); the result has it too (see :mod:`diffcontrol.dsl.atoms`).
        """
        raise NotImplementedError

    def render(self, arg_strs: list[str]) -> str:
        raise NotImplementedError

    def __str__(self) -> str:
        return self.render([str(a) for a in self.args])

    def __repr__(self) -> str:
        return f"Expression({self}, shape={self.shape})"

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=int))

    # Identity hashing: ``==`` builds a constraint, so equality cannot define hashing.
    __hash__ = object.__hash__

    def __bool__(self) -> bool:
        raise ModelError(
            f"the truth value of the expression {self} is undefined; "
            "expressions are symbolic, compare them only inside constraints"
        )

    def __len__(self) -> int:
        if not self.shape:
            raise ModelError(f"len() of the scalar expression {self}")
        return self.shape[0]

    def __iter__(self):
        raise ModelError(
            f"expression {self} cannot be iterated; index it (x[0]) or use dc.sum / dc.stack"
        )

    # ---- operators -----------------------------------------------------------
    def __add__(self, other):
        return _atoms.Add(self, as_expression(other))

    def __radd__(self, other):
        return _atoms.Add(as_expression(other), self)

    def __sub__(self, other):
        return _atoms.Add(self, _atoms.Neg(as_expression(other)))

    def __rsub__(self, other):
        return _atoms.Add(as_expression(other), _atoms.Neg(self))

    def __neg__(self):
        return _atoms.Neg(self)

    def __pos__(self):
        return self

    def __mul__(self, other):
        return _atoms.Multiply(self, as_expression(other))

    def __rmul__(self, other):
        return _atoms.Multiply(as_expression(other), self)

    def __truediv__(self, other):
        return _atoms.Divide(self, as_expression(other))

    def __rtruediv__(self, other):
        return _atoms.Divide(as_expression(other), self)

    def __pow__(self, power):
        return _atoms.Power(self, power)

    def __matmul__(self, other):
        return _atoms.MatMul(self, as_expression(other))

    def __rmatmul__(self, other):
        return _atoms.MatMul(as_expression(other), self)

    def __getitem__(self, index):
        return _atoms.Index(self, index)

    @property
    def T(self):
        return _atoms.Transpose(self)

    # Comparisons build constraints; Python swaps sides for reflected ones.
    def __le__(self, other):
        return _constraints.Inequality(self, as_expression(other))

    def __ge__(self, other):
        return _constraints.Inequality(as_expression(other), self)

    def __eq__(self, other):  # type: ignore[override]
        return _constraints.Equality(self, as_expression(other))

    def __lt__(self, other):
        raise ModelError(f"strict inequalities are not supported ({self} < ...); use <=")

    def __gt__(self, other):
        raise ModelError(f"strict inequalities are not supported ({self} > ...); use >=")


def as_expression(value: Any) -> Expression:
    """Wrap Python numbers and NumPy arrays as constants; pass expressions through."""
    if isinstance(value, Expression):
        return value
    if _is_framework_tensor(value):
        raise ModelError(
            "a torch/JAX tensor cannot be a constant of the model; declare a dc.Parameter "
            "and pass the tensor when calling the layer"
        )
    try:
        array = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise ModelError(f"cannot use {value!r} ({type(value).__name__}) in an expression") from None
    return _leaves.Constant(array)


def _is_framework_tensor(value: Any) -> bool:
    module = type(value).__module__
    return module.startswith("torch") or module.startswith("jax")


def broadcast_shape(a: Expression, b: Expression, op: str) -> Shape:
    """NumPy broadcasting of two operand shapes, with both shapes in the error."""
    try:
        return tuple(np.broadcast_shapes(a.shape, b.shape))
    except ValueError:
        raise ModelError(
            f"shapes {a.shape} and {b.shape} do not match for '{op}' in ({a}) {op} ({b})"
        ) from None


from diffcontrol.dsl import atoms as _atoms  # noqa: E402  (operators need the atoms)
from diffcontrol.dsl import constraints as _constraints  # noqa: E402
from diffcontrol.dsl import leaves as _leaves  # noqa: E402
