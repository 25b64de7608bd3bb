"""Atoms: every operator and function of the DSL, each stating its local facts.

An atom says how its shape, polynomial degree, curvature and sign follow from
its arguments'; it never looks further down the tree. Evaluation uses the
array module it is handed (``torch``, ``jax.numpy`` or NumPy) through the names
they share, on values with one leading batch axis (of the batch's size, or 1 for
values shared by every example): the evaluator runs a whole batch in one pass,
and a single point is a batch of one.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from diffcontrol.dsl.expression import (
    AFFINE,
    ANY_SIGN,
    CONCAVE,
    CONSTANT,
    CONVEX,
    NONNEG,
    NONPOS,
    UNKNOWN,
    Expression,
    as_expression,
    broadcast_shape,
)
from diffcontrol.errors import ModelError

_FLIP = {CONVEX: CONCAVE, CONCAVE: CONVEX}


def _add_curvatures(curvatures: Sequence[str]) -> str:
    """Curvature of a sum (DCP): convex + concave is unknown."""
    kinds = {c for c in curvatures if c != CONSTANT}
    if not kinds:
        return CONSTANT
    if kinds <= {AFFINE}:
        return AFFINE
    if kinds <= {AFFINE, CONVEX}:
        return CONVEX
    if kinds <= {AFFINE, CONCAVE}:
        return CONCAVE
    return UNKNOWN


def _add_signs(signs: Sequence[str]) -> str:
    if all(s == NONNEG for s in signs):
        return NONNEG
    if all(s == NONPOS for s in signs):
        return NONPOS
    return ANY_SIGN


def _scale_curvature(curvature: str, sign: str) -> str:
    """Curvature of (constant of ``sign``) * (expression of ``curvature``)."""
    if curvature in (CONSTANT, AFFINE):
        return curvature
    if sign == NONNEG:
        return curvature
    if sign == NONPOS:
        return _FLIP.get(curvature, UNKNOWN)
    return UNKNOWN


def _multiply_signs(a: str, b: str) -> str:
    if ANY_SIGN in (a, b):
        return ANY_SIGN
    return NONNEG if a == b else NONPOS


def _sum_degrees(degrees: Sequence[int | None]) -> int | None:
    return None if any(d is None for d in degrees) else sum(degrees)


def _max_degree(degrees: Sequence[int | None]) -> int | None:
    return None if any(d is None for d in degrees) else max(degrees, default=0)


# ---- batched evaluation: every value is (b, *shape), b the batch size or 1 ----------------


def _with_event_ndim(v: Any, shape: tuple[int, ...], ndim: int) -> Any:
    """v (b, *shape) with unit axes after the batch axis so its event part has ``ndim``
    axes: NumPy's right-aligned broadcasting of the event shapes, the batch axis kept first."""
    extra = ndim - len(shape)
    return v if extra == 0 else v.reshape((v.shape[0],) + (1,) * extra + tuple(shape))


def _aligned(node: Expression, values: list[Any]) -> list[Any]:
    """The arguments' values of an elementwise ``node``, ready to broadcast against each other."""
    return [_with_event_ndim(v, a.shape, len(node.shape)) for a, v in zip(node.args, values)]


def _sum_event(v: Any, shape: tuple[int, ...]) -> Any:
    """The sum over the event axes of v (b, *shape): (b,)."""
    return v.sum(tuple(range(1, len(shape) + 1))) if shape else v


def broadcast_batch(xp: Any, values: list[Any]) -> list[Any]:
    """The values broadcast to one batch size (for joining along an event axis)."""
    b = max(v.shape[0] for v in values)
    return [v if v.shape[0] == b else xp.broadcast_to(v, (b,) + tuple(v.shape[1:])) for v in values]


class Add(Expression):
    def __init__(self, a: Expression, b: Expression):
        self.args = (a, b)
        self.shape = broadcast_shape(a, b, "+")

    degree = staticmethod(_max_degree)

    def curvature(self, arg_curvatures, arg_signs):
        return _add_curvatures(arg_curvatures)

    def sign(self, arg_signs):
        return _add_signs(arg_signs)

    def evaluate(self, xp, values):
        a, b = _aligned(self, values)
        return a + b

    def render(self, s):
        return f"{s[0]} - {s[1][1:]}" if isinstance(self.args[1], Neg) else f"{s[0]} + {s[1]}"


class Neg(Expression):
    def __init__(self, a: Expression):
        self.args = (a,)
        self.shape = a.shape

    degree = staticmethod(_max_degree)

    def curvature(self, arg_curvatures, arg_signs):
        return _FLIP.get(arg_curvatures[0], arg_curvatures[0])

    def sign(self, arg_signs):
        return {NONNEG: NONPOS, NONPOS: NONNEG}.get(arg_signs[0], ANY_SIGN)

    def evaluate(self, xp, values):
        return -values[0]

    def render(self, s):
        return f"-{_paren(self.args[0], s[0])}"


class Multiply(Expression):
    """Elementwise product with NumPy broadcasting (a scalar times anything included)."""

    def __init__(self, a: Expression, b: Expression):
        self.args = (a, b)
        self.shape = broadcast_shape(a, b, "*")

    degree = staticmethod(_sum_degrees)

    def curvature(self, c, s):
        if c[0] == CONSTANT:
            return _scale_curvature(c[1], s[0])
        if c[1] == CONSTANT:
            return _scale_curvature(c[0], s[1])
        return UNKNOWN

    def sign(self, s):
        return _multiply_signs(*s)

    def evaluate(self, xp, values):
        a, b = _aligned(self, values)
        return a * b

    def render(self, s):
        return f"{_paren(self.args[0], s[0])} * {_paren(self.args[1], s[1])}"


class Divide(Expression):
    def __init__(self, a: Expression, b: Expression):
        self.args = (a, b)
        self.shape = broadcast_shape(a, b, "/")

    def degree(self, d):
        return d[0] if d[1] == 0 else None

    def curvature(self, c, s):
        if c[1] == CONSTANT:
            return _scale_curvature(c[0], s[1])
        return UNKNOWN

    def sign(self, s):
        return _multiply_signs(*s)

    def evaluate(self, xp, values):
        a, b = _aligned(self, values)
        return a / b

    def render(self, s):
        return f"{_paren(self.args[0], s[0])} / {_paren(self.args[1], s[1], strict=True)}"


class Power(Expression):
    """``a ** p`` for a constant number ``p``."""

    def __init__(self, a: Expression, p: Any):
        if not isinstance(p, numbers.Real) or isinstance(p, bool):
            raise ModelError(f"the exponent of {a} ** p must be a constant number, got {p!r}")
        self.args = (a,)
        self.p = float(p)
        self.shape = a.shape

    def _is_natural(self) -> bool:
        return self.p.is_integer() and self.p >= 0

    def degree(self, d):
        if d[0] == 0:
            return 0
        return None if d[0] is None or not self._is_natural() else d[0] * int(self.p)

    def curvature(self, c, s):
        if c[0] == CONSTANT or self.p == 0:
            return CONSTANT
        if self.p == 1:
            return c[0]
        if self._is_natural() and int(self.p) % 2 == 0 and c[0] == AFFINE:
            return CONVEX
        return UNKNOWN

    def sign(self, s):
        return NONNEG if self._is_natural() and int(self.p) % 2 == 0 else ANY_SIGN

    def evaluate(self, xp, values):
        return values[0] ** self.p

    def render(self, s):
        return f"{_paren(self.args[0], s[0], strict=True)} ** {self.p:g}"


class MatMul(Expression):
    def __init__(self, a: Expression, b: Expression):
        self.args = (a, b)
        if a.ndim == 0 or b.ndim == 0 or a.ndim > 2 or b.ndim > 2:
            raise ModelError(
                f"'@' needs vectors or matrices, got shapes {a.shape} and {b.shape} in ({a}) @ ({b}); "
                "use '*' for scalars"
            )
        if a.shape[-1] != b.shape[0]:
            raise ModelError(f"shapes {a.shape} and {b.shape} do not match for '@' in ({a}) @ ({b})")
        self.shape = a.shape[:-1] + b.shape[1:]

    degree = staticmethod(_sum_degrees)

    def curvature(self, c, s):
        if c[0] == CONSTANT and c[1] == CONSTANT:
            return CONSTANT
        if CONSTANT in c and AFFINE in c:
            return AFFINE
        return UNKNOWN

    def evaluate(self, xp, values):
        (a, b), (sa, sb) = values, (self.args[0].shape, self.args[1].shape)
        if len(sa) == 2 and len(sb) == 2:
            return xp.matmul(a, b)
        if len(sa) == 2:  # matrix @ vector
            return xp.matmul(a, b[..., None])[..., 0]
        if len(sb) == 2:  # vector @ matrix
            return xp.matmul(a[..., None, :], b)[..., 0, :]
        return (a * b).sum(-1)

    def render(self, s):
        return f"{_paren(self.args[0], s[0])} @ {_paren(self.args[1], s[1], strict=True)}"


class Index(Expression):
    """``a[index]`` with ints, slices and integer lists, as NumPy basic/advanced indexing."""

    def __init__(self, a: Expression, index: Any):
        if a.ndim == 0:
            raise ModelError(f"cannot index the scalar expression {a}")
        self.index = _reversed_slices_as_arrays(_freeze_index(index), a.shape)
        try:
            self.shape = np.empty(a.shape)[self.index].shape
        except (IndexError, TypeError, ValueError) as exc:
            raise ModelError(f"invalid index {index!r} for {a} of shape {a.shape}: {exc}") from None
        self.args = (a,)
        parts = _explicit_parts(self.index, a.ndim)
        self._batched_index = (slice(None),) + parts
        self._advanced = parts if any(isinstance(p, np.ndarray) for p in parts) else None

    degree = staticmethod(_max_degree)

    def curvature(self, c, s):
        return c[0]

    def sign(self, s):
        return s[0]

    def evaluate(self, xp, values):
        if self._advanced is None:  # basic indexing: the batch axis stays in front
            return values[0][self._batched_index]
        # integer arrays may move the indexed axes to the front (NumPy's rules, which torch
        # and JAX follow differently for ints): index with the batch axis last instead
        out = xp.moveaxis(values[0], 0, -1)[self._advanced]
        return xp.moveaxis(out, -1, 0)

    def render(self, s):
        return f"{_paren(self.args[0], s[0], strict=True)}[{_format_index(self.index)}]"


class Transpose(Expression):
    def __init__(self, a: Expression):
        self.args = (a,)
        self.shape = a.shape[::-1]

    degree = staticmethod(_max_degree)

    def curvature(self, c, s):
        return c[0]

    def sign(self, s):
        return s[0]

    def evaluate(self, xp, values):
        return xp.swapaxes(values[0], -1, -2) if len(self.shape) == 2 else values[0]

    def render(self, s):
        return f"{_paren(self.args[0], s[0], strict=True)}.T"


# ---- elementwise functions ----------------------------------------------------------


class Elementwise(Expression):
    """A smooth elementwise function; subclasses set ``fn`` (the array-module name)."""

    fn = ""
    #: curvature when the argument is affine (composition rules keep it simple)
    of_affine = UNKNOWN
    out_sign = ANY_SIGN

    def __init__(self, a: Any):
        a = as_expression(a)
        self.args = (a,)
        self.shape = a.shape

    def degree(self, d):
        return 0 if d[0] == 0 else None

    def curvature(self, c, s):
        if c[0] == CONSTANT:
            return CONSTANT
        return self.of_affine if c[0] == AFFINE else UNKNOWN

    def sign(self, s):
        return self.out_sign

    def evaluate(self, xp, values):
        return getattr(xp, self.fn)(values[0])

    def render(self, s):
        return f"{type(self).__name__.lower()}({s[0]})"


class Sin(Elementwise):
    fn = "sin"


class Cos(Elementwise):
    fn = "cos"


class Tan(Elementwise):
    fn = "tan"


class Tanh(Elementwise):
    fn = "tanh"


class Exp(Elementwise):
    fn, of_affine, out_sign = "exp", CONVEX, NONNEG


class Log(Elementwise):
    fn, of_affine = "log", CONCAVE


class Sqrt(Elementwise):
    fn, of_affine, out_sign = "sqrt", CONCAVE, NONNEG


class Abs(Elementwise):
    fn, of_affine, out_sign, smooth = "abs", CONVEX, NONNEG, False
    smooth_alternative = "dc.huber(x, M) for a small M, or dc.square(x)"


class Square(Elementwise):
    fn, of_affine, out_sign = "square", CONVEX, NONNEG

    def degree(self, d):
        return None if d[0] is None else 2 * d[0]


class Atan2(Expression):
    def __init__(self, y: Any, x: Any):
        y, x = as_expression(y), as_expression(x)
        self.args = (y, x)
        self.shape = broadcast_shape(y, x, "atan2")

    def evaluate(self, xp, values):
        return xp.arctan2(*_aligned(self, values))

    def render(self, s):
        return f"atan2({s[0]}, {s[1]})"


# ---- reductions and quadratic atoms --------------------------------------------------


class Sum(Expression):
    def __init__(self, a: Any, axis: int | None = None):
        a = as_expression(a)
        self.args = (a,)
        self.axis = axis
        if axis is None:
            self.shape = ()
        else:
            if not -a.ndim <= axis < a.ndim:
                raise ModelError(f"axis {axis} is out of range for {a} of shape {a.shape}")
            self.shape = a.shape[: axis % a.ndim] + a.shape[axis % a.ndim + 1 :]

    degree = staticmethod(_max_degree)

    def curvature(self, c, s):
        return c[0]

    def sign(self, s):
        return s[0]

    def evaluate(self, xp, values):
        if self.axis is None:
            return _sum_event(values[0], self.args[0].shape)
        return values[0].sum(self.axis + 1 if self.axis >= 0 else self.axis)

    def render(self, s):
        return f"sum({s[0]})" if self.axis is None else f"sum({s[0]}, axis={self.axis})"


class SumSquares(Expression):
    def __init__(self, a: Any):
        a = as_expression(a)
        self.args = (a,)
        self.shape = ()

    def degree(self, d):
        return None if d[0] is None else 2 * d[0]

    def curvature(self, c, s):
        return {CONSTANT: CONSTANT, AFFINE: CONVEX}.get(c[0], UNKNOWN)

    def sign(self, s):
        return NONNEG

    def evaluate(self, xp, values):
        return _sum_event(values[0] * values[0], self.args[0].shape)

    def render(self, s):
        return f"sum_squares({s[0]})"


class QuadForm(Expression):
    """``x^T P x`` for a vector ``x`` and a square ``P`` free of decision variables."""

    def __init__(self, x: Any, P: Any):
        x, P = as_expression(x), as_expression(P)
        if x.ndim != 1 or P.shape != (x.shape[0], x.shape[0]):
            raise ModelError(
                f"quad_form(x, P) needs x of shape (n,) and P of shape (n, n); "
                f"got {x.shape} and {P.shape} in quad_form({x}, {P})"
            )
        self.args = (x, P)
        self.shape = ()

    def degree(self, d):
        if d[1] != 0:
            return None
        return None if d[0] is None else 2 * d[0]

    def curvature(self, c, s):
        if c[1] != CONSTANT:
            return UNKNOWN
        if c[0] == CONSTANT:
            return CONSTANT
        if c[0] != AFFINE:
            return UNKNOWN
        return self._definiteness()

    def _definiteness(self) -> str:
        from diffcontrol.dsl.leaves import Constant

        P = self.args[1]
        if not isinstance(P, Constant):  # a Parameter: only its value can tell
            return UNKNOWN
        eig = np.linalg.eigvalsh(0.5 * (P.value + P.value.T))
        if eig.min() >= 0:
            return CONVEX
        return CONCAVE if eig.max() <= 0 else UNKNOWN

    def sign(self, s):
        return NONNEG if self._definiteness() == CONVEX else ANY_SIGN

    def evaluate(self, xp, values):
        x, P = values
        return (x * xp.matmul(P, x[..., None])[..., 0]).sum(-1)

    def render(self, s):
        return f"quad_form({s[0]}, {s[1]})"


class Norm2(Expression):
    smooth = False
    smooth_alternative = "dc.sum_squares(x), or dc.sqrt(dc.sum_squares(x) + eps) for a small eps > 0"

    def __init__(self, a: Any):
        a = as_expression(a)
        self.args = (a,)
        self.shape = ()

    def curvature(self, c, s):
        return {CONSTANT: CONSTANT, AFFINE: CONVEX}.get(c[0], UNKNOWN)

    def sign(self, s):
        return NONNEG

    def evaluate(self, xp, values):
        return xp.sqrt(_sum_event(values[0] * values[0], self.args[0].shape))

    def render(self, s):
        return f"norm2({s[0]})"


# ---- joining ---------------------------------------------------------------------


class Stack(Expression):
    """``stack([a, b, ...])``: same-shape pieces along a new leading axis."""

    def __init__(self, items: Sequence[Any]):
        items = _as_items(items, "stack")
        shapes = {e.shape for e in items}
        if len(shapes) != 1:
            raise ModelError(f"dc.stack needs pieces of one shape, got shapes {[e.shape for e in items]}")
        self.args = tuple(items)
        self.shape = (len(items),) + items[0].shape

    degree = staticmethod(_max_degree)

    def curvature(self, c, s):
        return _add_curvatures(c)

    def sign(self, s):
        return _add_signs(s)

    def evaluate(self, xp, values):
        return xp.stack(broadcast_batch(xp, values), 1)

    def render(self, s):
        return f"stack([{', '.join(s)}])"


class Concat(Expression):
    """``concat([x, u, ...])``: vectors (scalars count as length 1) joined end to end."""

    def __init__(self, items: Sequence[Any]):
        items = _as_items(items, "concat")
        bad = [e.shape for e in items if e.ndim > 1]
        if bad:
            raise ModelError(f"dc.concat joins vectors and scalars, got shapes {[e.shape for e in items]}")
        self.args = tuple(items)
        self.shape = (sum(max(e.size, 1) for e in items),)

    degree = staticmethod(_max_degree)

    def curvature(self, c, s):
        return _add_curvatures(c)

    def sign(self, s):
        return _add_signs(s)

    def evaluate(self, xp, values):
        pieces = [v.reshape(v.shape[0], 1) if a.ndim == 0 else v for a, v in zip(self.args, values)]
        return xp.concatenate(broadcast_batch(xp, pieces), 1)

    def render(self, s):
        return f"concat([{', '.join(s)}])"


def _as_items(items: Any, what: str) -> list[Expression]:
    if isinstance(items, Expression) or not isinstance(items, (list, tuple)):
        raise ModelError(f"dc.{what} takes a list of expressions, e.g. dc.{what}([a, b])")
    if not items:
        raise ModelError(f"dc.{what} needs at least one piece")
    return [as_expression(e) for e in items]


def _freeze_index(index: Any) -> Any:
    """Make an index hashable-ish and NumPy-compatible (lists become int arrays)."""
    if isinstance(index, Expression):
        raise ModelError("indices must be constant ints or slices, not expressions")
    if isinstance(index, tuple):
        return tuple(_freeze_index(i) for i in index)
    if isinstance(index, (list, np.ndarray)):
        return np.asarray(index, dtype=np.int64)
    return index


def _reversed_slices_as_arrays(index: Any, shape: tuple[int, ...]) -> Any:
    """torch cannot slice with a negative step: such a slice becomes the integer array it selects."""
    parts = index if isinstance(index, tuple) else (index,)
    if not any(isinstance(p, slice) and (p.step or 1) < 0 for p in parts):
        return index
    if len(parts) != 1 or len(shape) != 1:
        raise ModelError(f"a negative-step slice is supported on vectors only, got index {index!r} for shape {shape}")
    return np.ascontiguousarray(np.arange(shape[0])[parts[0]])


def _explicit_parts(index: Any, ndim: int) -> tuple:
    """The index as a tuple with its Ellipsis spelled out as slices, so it addresses the
    leading axes only (the evaluator may append the batch axis)."""
    parts = index if isinstance(index, tuple) else (index,)
    if not any(p is Ellipsis for p in parts):
        return parts
    k = parts.index(Ellipsis)
    used = sum(1 for p in parts if p is not None and p is not Ellipsis)
    return parts[:k] + (slice(None),) * (ndim - used) + parts[k + 1:]


def _format_index(index: Any) -> str:
    if isinstance(index, tuple):
        return ", ".join(_format_index(i) for i in index)
    if isinstance(index, slice):
        parts = ["" if v is None else str(v) for v in (index.start, index.stop)]
        text = ":".join(parts)
        return text + (f":{index.step}" if index.step is not None else "")
    if isinstance(index, np.ndarray):
        return str(index.tolist())
    return str(index)


def _paren(expr: Expression, text: str, strict: bool = False) -> str:
    """Parenthesise sums (and, if ``strict``, products) inside a tighter operator."""
    loose = (Add, Neg, Multiply, Divide, MatMul) if strict else (Add,)
    return f"({text})" if isinstance(expr, loose) else text
