"""Penalty and reduction atoms with cvxpy's meanings: pos, maximum, huber, softplus, max, norm1, ...

Each states its DCP facts (so the cone backend certifies convexity) and whether it
is smooth. Nonsmooth atoms name a smooth alternative in ``smooth_alternative``:
smooth backends (ilqr, ift_cg) refuse them and print that text, never a silently
wrong Hessian. Values are batched as in :mod:`diffcontrol.dsl.atoms`: (b, *shape).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from diffcontrol.dsl.atoms import Elementwise, _aligned, _max_degree
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
    as_shape,
)
from diffcontrol.errors import ModelError


def _monotone_curvature(c: str, of: str, increasing: bool | None) -> str:
    """DCP composition of a convex (``of`` = CONVEX) or concave scalar function with an
    argument of curvature ``c``; ``increasing`` True/False/None (neither)."""
    if c == CONSTANT:
        return CONSTANT
    if c == AFFINE:
        return of
    if increasing is None or c == UNKNOWN:
        return UNKNOWN
    same = (c == of) if increasing else (c != of)
    return of if same else UNKNOWN


# ---- elementwise ---------------------------------------------------------------------


class _Elementwise(Elementwise):
    """An elementwise atom whose monotonicity extends DCP composition beyond affine arguments."""

    increasing: bool | None = None

    def curvature(self, c, s):
        return _monotone_curvature(c[0], self.of_affine, self.increasing)


class Pos(_Elementwise):
    """max(x, 0), elementwise."""

    of_affine, increasing, out_sign, smooth = CONVEX, True, NONNEG, False
    smooth_alternative = ("dc.softplus(k * g) / k for a large k is a smooth ramp; a hard bound is "
                          "a constraint: g <= 0")

    def evaluate(self, xp, values):
        return xp.clip(values[0], 0, None)


class Softplus(_Elementwise):
    """log(1 + exp(x)), elementwise (cvxpy's ``logistic``)."""

    of_affine, increasing, out_sign = CONVEX, True, NONNEG

    def evaluate(self, xp, values):
        v = values[0]
        return xp.logaddexp(v, xp.zeros_like(v))  # stable, and twice differentiable everywhere


class Huber(_Elementwise):
    """x^2 where |x| <= M, else 2 M |x| - M^2, elementwise (cvxpy's ``huber``); C^1, with a
    piecewise constant second derivative, which smooth backends accept."""

    of_affine, out_sign = CONVEX, NONNEG

    def __init__(self, a: Any, M: float = 1.0):
        super().__init__(a)
        if not isinstance(M, numbers.Real) or not M > 0:
            raise ModelError(f"dc.huber(x, M) needs a positive number M, got {M!r}")
        self.M = float(M)

    def curvature(self, c, s):
        # increasing where its argument is nonnegative, decreasing where nonpositive (as cvxpy)
        monotone = {NONNEG: True, NONPOS: False}.get(s[0])
        return _monotone_curvature(c[0], CONVEX, monotone)

    def evaluate(self, xp, values):
        v, M = values[0], self.M
        a = xp.abs(v)
        return xp.where(a <= M, v * v, 2 * M * a - M * M)  # both branches finite: NaN-free grads

    def render(self, s):
        return f"huber({s[0]})" if self.M == 1.0 else f"huber({s[0]}, {self.M:g})"


class _Extremum(Expression):
    """maximum / minimum of several expressions, elementwise with broadcasting."""

    name, of, reduce = "", CONVEX, ""
    smooth = False

    def __init__(self, items: Sequence[Any]):
        if len(items) < 2:
            raise ModelError(f"dc.{self.name} takes at least two expressions, got {len(items)}")
        items = [as_expression(e) for e in items]
        try:
            self.shape = tuple(np.broadcast_shapes(*(e.shape for e in items)))
        except ValueError:
            raise ModelError(f"shapes {[e.shape for e in items]} do not broadcast in dc.{self.name}"
                             f"({', '.join(map(str, items))})") from None
        self.args = tuple(items)

    degree = staticmethod(lambda d: 0 if all(x == 0 for x in d) else None)

    def curvature(self, c, s):
        if all(x == CONSTANT for x in c):
            return CONSTANT
        return self.of if all(x in (CONSTANT, AFFINE, self.of) for x in c) else UNKNOWN

    def evaluate(self, xp, values):
        parts = _aligned(self, values)
        out = parts[0]
        for p in parts[1:]:
            out = getattr(xp, self.reduce)(out, p)
        return out

    def render(self, s):
        return f"{self.name}({', '.join(s)})"


class Maximum(_Extremum):
    name, of, reduce = "maximum", CONVEX, "maximum"
    smooth_alternative = ("dc.logsumexp(dc.stack([k * a, k * b])) / k for a large k is a smooth maximum; "
                          "or bound each piece with a constraint")

    def sign(self, s):
        return NONNEG if NONNEG in s else (NONPOS if all(x == NONPOS for x in s) else ANY_SIGN)


class Minimum(_Extremum):
    name, of, reduce = "minimum", CONCAVE, "minimum"
    smooth_alternative = "-dc.logsumexp(dc.stack([-k * a, -k * b])) / k for a large k is a smooth minimum"

    def sign(self, s):
        return NONPOS if NONPOS in s else (NONNEG if all(x == NONNEG for x in s) else ANY_SIGN)


# ---- reductions ------------------------------------------------------------------------


class Reduction(Expression):
    """A reduction over all entries (``axis=None``, a scalar) or along one axis: a convex or
    concave (``of``), nondecreasing function of the entries unless a subclass says otherwise."""

    name = ""
    of = CONVEX

    def __init__(self, a: Any, axis: int | None = None):
        a = as_expression(a)
        self.args = (a,)
        if axis is not None and not isinstance(axis, numbers.Integral):
            raise ModelError(f"dc.{self.name}: axis must be an int or None, got {axis!r}")
        self.axis = None if axis is None else int(axis)
        if self.axis is None:
            self.shape = ()
        else:
            if not -a.ndim <= self.axis < a.ndim:
                raise ModelError(f"axis {axis} is out of range for {a} of shape {a.shape}")
            k = self.axis % a.ndim
            self.shape = a.shape[:k] + a.shape[k + 1:]

    def degree(self, d):
        return 0 if d[0] == 0 else None

    def curvature(self, c, s):
        return _monotone_curvature(c[0], self.of, True)

    def event_axes(self) -> tuple[int, ...]:
        """The axes of the batched value (b, *shape) this reduction removes."""
        ndim = self.args[0].ndim
        return tuple(range(1, ndim + 1)) if self.axis is None else (self.axis % ndim + 1,)

    def evaluate(self, xp, values):
        v = values[0]
        if not self.args[0].shape:
            return self.reduce_scalar(xp, v)
        return self.reduce(xp, v, self.event_axes())

    def reduce_scalar(self, xp, v):
        return v

    def reduce(self, xp, v, axes):
        raise NotImplementedError

    def render(self, s):
        return f"{self.name}({s[0]})" if self.axis is None else f"{self.name}({s[0]}, axis={self.axis})"


class Max(Reduction):
    name, smooth = "max", False
    smooth_alternative = "dc.logsumexp(k * x) / k for a large k is a smooth maximum; or a constraint x <= t"

    def sign(self, s):
        return s[0]

    def reduce(self, xp, v, axes):
        return xp.amax(v, axes)


class Min(Reduction):
    name, smooth, of = "min", False, CONCAVE
    smooth_alternative = "-dc.logsumexp(-k * x) / k for a large k is a smooth minimum"

    def sign(self, s):
        return s[0]

    def reduce(self, xp, v, axes):
        return xp.amin(v, axes)


class LogSumExp(Reduction):
    """log(sum(exp(x))), evaluated stably (shifted by the max; the shift cancels exactly in
    every derivative, so autodiff stays exact)."""

    name = "logsumexp"

    def reduce(self, xp, v, axes):
        m = xp.amax(v, axes)
        kept = tuple(1 if i in axes else n for i, n in enumerate(v.shape))
        return m + xp.log(xp.exp(v - m.reshape(kept)).sum(axes))


class Norm1(Reduction):
    name, smooth = "norm1", False
    smooth_alternative = "dc.sum(dc.huber(x, M)) for a small M, or dc.sum_squares(x)"

    def curvature(self, c, s):
        # increasing in nonnegative entries, decreasing in nonpositive ones (as cvxpy)
        return _monotone_curvature(c[0], CONVEX, {NONNEG: True, NONPOS: False}.get(s[0]))

    def sign(self, s):
        return NONNEG

    def reduce_scalar(self, xp, v):
        return xp.abs(v)

    def reduce(self, xp, v, axes):
        return xp.abs(v).sum(axes)


class NormInf(Norm1):
    name = "norm_inf"
    smooth_alternative = "dc.logsumexp(k * dc.hstack([x, -x])) / k for a large k, or constraints -t <= x <= t"

    def reduce(self, xp, v, axes):
        return xp.amax(xp.abs(v), axes)


# ---- shape ------------------------------------------------------------------------------


class Reshape(Expression):
    """``x`` with a new shape of the same size, read and written in ``order`` ("F", cvxpy's
    default, column-major; or "C", row-major)."""

    def __init__(self, a: Any, shape: Any, order: str = "F"):
        a = as_expression(a)
        shape = as_shape(shape)
        if order not in ("F", "C"):
            raise ModelError(f"dc.reshape: order must be 'F' or 'C', got {order!r}")
        size = 1
        for n in shape:
            size *= n
        if size != a.size:
            raise ModelError(f"dc.reshape cannot make {a} of shape {a.shape} (size {a.size}) into "
                             f"shape {shape} (size {size})")
        self.args = (a,)
        self.shape = shape
        self.order = order

    degree = staticmethod(_max_degree)

    def curvature(self, c, s):
        return c[0]

    def sign(self, s):
        return s[0]

    def evaluate(self, xp, values):
        v = values[0]
        b = v.shape[0]
        if self.order == "C" or max(len(self.shape), self.args[0].ndim) <= 1:
            return v.reshape((b,) + tuple(self.shape))
        # column-major: reverse the axes, reshape row-major to the reversed shape, reverse back
        src = v.permute(0, *range(v.ndim - 1, 0, -1)) if hasattr(v, "permute") else \
            v.transpose((0,) + tuple(range(v.ndim - 1, 0, -1)))
        out = src.reshape((b,) + tuple(reversed(self.shape)))
        axes = (0,) + tuple(range(out.ndim - 1, 0, -1))
        return out.permute(*axes) if hasattr(out, "permute") else out.transpose(axes)

    def render(self, s):
        return f"reshape({s[0]}, {self.shape}{', order=' + repr(self.order) if self.order != 'F' else ''})"

