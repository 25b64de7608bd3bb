"""Evaluating expressions with a framework's arrays and autodiff (no framework imported here).

``Framework`` is what an emitter supplies: the array module, constants, and
the function transforms (vmap, jacobian, hessian, grad) through which the
framework's own autodiff owns the parameter -> data map (ARCHITECTURE.md,
principle 4).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from diffcontrol.dsl.expression import Expression
from diffcontrol.dsl.leaves import Constant, Leaf
from diffcontrol.dsl.traverse import walk


class Framework(Protocol):
    name: str
    xp: Any
    #: whether arrays computed in one call may be kept for the next (not under tracing JITs)
    caches_arrays: bool

    def constant(self, value: Any, like: Any) -> Any:
        """A NumPy value as an array of ``like``'s dtype and device."""

    def vmap(self, fn: Callable) -> Callable:
        """Vectorise ``fn`` over the leading axis of every input (pytrees of arrays)."""

    def jacobian(self, fn: Callable, argnums: int = 0) -> Callable:
        """d fn / d(argument ``argnums``), a vector-in, array-out Jacobian."""

    def hessian(self, fn: Callable, argnums: int = 0) -> Callable:
        """Hessian of a scalar ``fn`` with respect to argument ``argnums``."""

    def grad(self, fn: Callable, argnums: int = 0, has_aux: bool = False) -> Callable:
        """Gradient of a scalar ``fn`` with respect to argument ``argnums`` (with ``has_aux``,
        ``fn`` returns (scalar, aux) and the result is (gradient, aux))."""

    def hvp_operator(self, value: Callable, y: Any) -> Callable:
        """v -> H v, H the Hessian of sum_b value(y)_b at y (B, n), linearised once so that
        each product costs one backward (or forward) pass."""


def evaluate(roots: Iterable[Expression], env: dict[int, Any], fw: Framework, like: Any) -> list[Any]:
    """Values of ``roots`` (no batch dimension) given leaf values ``env`` keyed by ``id(leaf)``."""
    roots = list(roots)
    values: dict[int, Any] = {}
    for node in _plan(roots):
        if isinstance(node, Constant):
            values[id(node)] = fw.constant(node.value, like)
        elif isinstance(node, Leaf):
            values[id(node)] = env[id(node)]
        else:
            values[id(node)] = node.evaluate(fw.xp, [values[id(a)] for a in node.args])
    return [values[id(r)] for r in roots]


# Expressions are immutable, so each root keeps its post-order: solvers evaluate the same
# expressions thousands of times per call. (Constants are not cached as arrays: one made
# inside a torch.func transform must not escape it.)


def _plan(roots: list[Expression]) -> list[Expression]:
    if len(roots) == 1:
        root = roots[0]
        plan = root.__dict__.get("_postorder")
        if plan is None:
            plan = list(walk([root]))
            root.__dict__["_postorder"] = plan
        return plan
    return list(walk(roots))

