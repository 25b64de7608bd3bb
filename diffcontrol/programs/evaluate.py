"""Evaluating expressions with a framework's arrays and autodiff (no framework imported here).

``Framework`` is what an emitter supplies: the array module, constants, and
the function transforms (vmap, jacobian, hessian, grad) through which the
framework's own autodiff owns the parameter -> data map (ARCHITECTURE.md,
principle 4).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

import numpy as np

from diffcontrol.dsl.atoms import broadcast_batch
from diffcontrol.dsl.expression import Expression
from diffcontrol.dsl.function import FunctionCall
from diffcontrol.dsl.leaves import Constant, Leaf, Parameter
from diffcontrol.dsl.traverse import walk
from diffcontrol.errors import DiffControlError, ModelError


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

    def row_jacobian(self, fn: Callable, x: Any, params: dict) -> tuple[Any, Any]:
        """(fn(x, params), its Jacobian in x) for a function of rows: x (b, k) -> (b, p), each
        row of the output depending on its row of x only; the Jacobian is (b, p, k), and
        differentiable in ``params`` where the framework records gradients (``params`` holds
        every array ``fn`` reads besides x)."""

    def row_gradient(self, fn: Callable, x: Any, params: dict, hessian: bool = False) -> Any:
        """The gradient (b, k) in x of a function of rows x (b, k) -> (b,) (and with
        ``hessian``, the pair (gradient, Hessian (b, k, k))), as :meth:`row_jacobian`."""

    def hvp_operator(self, value: Callable, y: Any) -> Callable:
        """v -> H v, H the Hessian of sum_b value(y)_b at y (B, n), linearised once so that
        each product costs one backward (or forward) pass."""


def evaluate(roots: Iterable[Expression], env: dict[int, Any], fw: Framework, like: Any) -> list[Any]:
    """Values of ``roots`` at one point: leaf values ``env`` keyed by ``id(leaf)``, no batch
    dimension (the form the framework's function transforms differentiate and vmap)."""
    batched = evaluate_batched(roots, {k: v[None] for k, v in env.items()}, fw, like)
    return [v[0] for v in batched]


def evaluate_batched(roots: Iterable[Expression], env: dict[int, Any], fw: Framework, like: Any,
                     constants: dict[int, Any] | None = None) -> list[Any]:
    """Values (b, *root.shape) of ``roots`` for a whole batch in one pass: each leaf value in
    ``env`` has a leading batch axis of size b, or 1 when shared by the batch. Only a
    ``dc.Function`` (written for one point) is vectorised, with the framework's vmap.
    ``constants``: the Constants' arrays from :func:`constant_arrays`, if made beforehand."""
    roots = list(roots)
    values: dict[int, Any] = dict(constants) if constants else {}
    for node in _plan(roots):
        if id(node) in values:
            continue
        if isinstance(node, Constant):
            values[id(node)] = fw.constant(node.value, like)[None]
        elif isinstance(node, Leaf):
            values[id(node)] = env[id(node)]
        elif isinstance(node, FunctionCall):
            values[id(node)] = _call(node, [values[id(a)] for a in node.args], fw)
        else:
            values[id(node)] = node.evaluate(fw.xp, [values[id(a)] for a in node.args])
    return [values[id(r)] for r in roots]


def constant_arrays(roots: Iterable[Expression], fw: Framework, like: Any) -> dict[int, Any] | None:
    """The Constants of ``roots`` as arrays (1, *shape) of ``like``'s dtype and device, for
    :func:`evaluate_batched` to reuse across calls (solvers evaluate the same expressions
    thousands of times); None where the framework's arrays must not outlive a trace."""
    if not fw.caches_arrays:
        return None
    return {id(c): fw.constant(c.value, like)[None] for c in walk(list(roots)) if isinstance(c, Constant)}


def _call(node: FunctionCall, args: list[Any], fw: Framework) -> Any:
    """A dc.Function on batched arguments: called directly for a batch of one, else vmapped
    over the batch (arguments shared by the batch broadcast to it). A function that fails,
    or returns something other than an array of the layer's framework, is a ModelError that
    names it."""
    fn, batched = node.function.fn, max(a.shape[0] for a in args) > 1
    fn = with_pytrees(fn, node.args)
    try:
        out = fw.vmap(fn)(*broadcast_batch(fw.xp, args)) if batched else fn(*[a[0] for a in args])
    except DiffControlError:
        raise
    except Exception as err:  # noqa: BLE001  (the user's code: any failure is re-raised, named)
        raise ModelError(_failure(node, args, err, batched)) from err
    if isinstance(out, np.ndarray) or not hasattr(out, "shape"):
        raise ModelError(f"dc.Function {node.function.name} returned a {type(out).__module__}.{type(out).__name__},"
                         f" not an array of the layer's framework (like its inputs, {type(args[0]).__name__}): the "
                         "solver differentiates it, so compute it with that framework's operations (torch for "
                         "to_torch(), jax.numpy for to_jax()), without converting to NumPy")
    return node.check_shape(out, batched=True) if batched else node.check_shape(out)[None]


def with_pytrees(fn: Callable, args: list[Expression]) -> Callable:
    """``fn`` called on ``args``, with a pytree parameter's flat array (size,) of one example
    given to it as the pytree (``dc.Parameter.pytree``); ``fn`` itself where there is none."""
    trees = [a.tree if isinstance(a, Parameter) else None for a in args]
    if all(t is None for t in trees):
        return fn

    def call(*args: Any) -> Any:
        return fn(*(a if t is None else t.unflatten(a) for t, a in zip(trees, args)))
    return call


def _failure(node: FunctionCall, args: list[Any], err: Exception, batched: bool) -> str:
    """The message for a dc.Function that raised: its name, the error, and the likely fix."""
    name, dtype = node.function.name, getattr(args[0], "dtype", None)
    message = f"dc.Function {name} raised {type(err).__name__} when the solver called it"
    message += f" on a batch of {args[0].shape[0]} examples (vmapped)" if batched else ""
    message += f" with inputs of dtype {dtype}: {err}. "
    if "dtype" in str(err).lower() or "double" in str(err).lower() or "float" in str(err).lower():
        return message + (f"Its computation must run in the layer's dtype ({dtype}, that of the parameters' "
                          "values): convert its module's weights (module.double() or module.float()) or pass "
                          "inputs in the weights' dtype")
    if batched or "vmap" in str(err):
        return message + ("A batch, and the derivatives, are evaluated with vmap (torch.func.vmap / jax.vmap), "
                          "so the function must not branch in Python on values, call .item() or .numpy(), or "
                          "modify its inputs in place; use where() for branches")
    return message + "Check that it runs on arrays of the declared argument shapes"


# Expressions are immutable, so each root keeps its post-order: solvers evaluate the same
# expressions thousands of times per call. (The evaluator caches no arrays itself: one made
# inside a torch.func transform must not escape it; callers pass :func:`constant_arrays`
# made outside any transform.)


def _plan(roots: list[Expression]) -> list[Expression]:
    if len(roots) == 1:
        root = roots[0]
        plan = root.__dict__.get("_postorder")
        if plan is None:
            plan = list(walk([root]))
            root.__dict__["_postorder"] = plan
        return plan
    return list(walk(roots))

