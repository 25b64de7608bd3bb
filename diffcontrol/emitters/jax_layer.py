"""``compiled.to_jax()``: the compiled problem as a JAX function, differentiable in both modes.

The solve runs the same framework-neutral backend code as the torch layer, with
:class:`~diffcontrol.emitters.jax_ops.JaxOps` (``lax.while_loop`` / ``lax.cond``), so
lqr, ilqr and ift_cg trace under ``jax.jit`` and ``jax.vmap``. The derivative is a
``jax.custom_jvp`` whose tangent map transposes to the backend's VJP (implicit: one more
LQR solve, or CG on Hessian-vector products), so ``jax.grad`` runs exactly that backward
and ``jax.jvp`` / ``jax.jacfwd`` work too; ``jax.vjp`` of the program's ``implicit_inputs``
carries the backend's cotangents on to the parameters.
The cone backend goes through cvxpylayers' JAX layer, which is host-bound: eager calls
and ``jax.grad`` work, ``jax.jit`` / ``jax.vmap`` do not.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import sys
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from diffcontrol.backends.base import Info
from diffcontrol.emitters import _common
from diffcontrol.emitters.jax_ops import JaxFramework, JaxOps, UnrolledJaxOps, concrete, used_examples
from diffcontrol.errors import BackendError, InputError, NotConvergedWarning, SolverError, Status

# Info is a pytree here, so it passes through jit, vmap and custom_vjp as the torch layer's does
jax.tree_util.register_dataclass(Info, data_fields=[f.name for f in dataclasses.fields(Info)], meta_fields=[])


class JaxLayer:
    """Call with the parameters by name: ``solve(A=A, B=B, x0=x0)``; same conventions as the
    torch layer (one optional leading batch dimension, ``u_init=`` / ``y_init=`` warm
    starts, ``return_info=True``). The info is the same :class:`Info` record as the torch
    layer's, a pytree of arrays: ``info.converged``, ``info.iterations``, ``info.residual`` and
    ``info.status`` (integer codes, see ``dc.Status.from_code``); ``info["converged"]`` works too.
    """

    def __init__(self, compiled: Any, variables: Any = None):
        self.compiled = compiled
        self.order = _common.output_order(compiled.problem, variables)
        torch = sys.modules.get("torch")
        for f in compiled.problem.functions():
            if torch is not None and isinstance(f.fn, torch.nn.Module):
                raise BackendError(f"dc.Function {f.name} wraps a torch.nn.Module; the JAX layer calls JAX "
                                   "functions: pass e.g. a Flax/Equinox apply function with its weights "
                                   "as a dc.Parameter (see docs/jax.md), or use to_torch()")
        # compiled once per input shape: eager calls then cost one XLA execution, not a retrace
        # of every while_loop; the cone backend solves on the host and cannot be compiled
        host = compiled.spec.differentiable_solve
        self._solve = self._solve_arrays if host else jax.jit(self._solve_arrays)

    def __repr__(self) -> str:
        names = ", ".join(p.name for p in self.compiled.parameters)
        return f"JaxLayer(backend={self.compiled.backend!r}, parameters=({names}))"

    def __call__(self, *, u_init: Any = None, y_init: Any = None, return_info: bool = False, **params: Any):
        y_init = _common.warm_start_in_solve_order(self.compiled.problem, self.order, y_init)
        values, init, batch, dtype = _common.bind_call(self.compiled, params, u_init, y_init, _JaxArrays)
        B = batch or 1
        outputs, info, empty_box = self._solve(values, init, jnp.zeros((B,), dtype))
        _check_box(empty_box)
        self._report(info, B)
        if batch is None:
            outputs = tuple(o[0] for o in outputs)
            info = info.map(lambda a: a[0])
        if self.order is not None:
            outputs = tuple(outputs[i] for i in self.order)
        return (*outputs, info) if return_info else outputs

    # -- solving ---------------------------------------------------------------------------------

    def _solve_arrays(self, values: dict, init: Any, like: Any) -> tuple[tuple, Info, Any]:
        """(outputs, info, which examples have an empty control box (B,) or None)."""
        compiled = self.compiled
        solver, options, program = compiled.solver, compiled.options, compiled.program
        unroll = options["backward"] == "unroll"
        ops = UnrolledJaxOps if unroll else JaxOps

        def run(values: dict, init: Any, like: Any) -> tuple:
            data = program.data(JaxFramework, values, like)
            outputs, info, saved = solver.solve(data, options, ops, init)
            return outputs, info, saved, data

        if unroll or compiled.spec.differentiable_solve:
            # autodiff through every iteration, or a solve that brings its own backward (cone)
            try:
                outputs, info, _, _ = run(values, init, like)
            except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
                raise BackendError(f"backend '{compiled.backend}' solves on the host (cvxpylayers + diffcp): "
                                   "its JAX layer runs eagerly and under jax.grad, not under jax.jit or "
                                   "jax.vmap; call it outside them (pass the batch as a leading dimension "
                                   "instead of vmap)") from None
            except TypeError as err:
                if "forward-mode" not in str(err):
                    raise
                raise BackendError(f"backend '{compiled.backend}' differentiates through cvxpylayers' JAX layer, "
                                   "which is reverse mode only: use jax.grad / jax.vjp / jax.jacrev, or a "
                                   "backend with forward mode too (lqr, ilqr, ift_cg)") from None
        else:
            outputs, info = _implicit(program, solver, run)(values, init, like)
        # NaN or Inf in an example's solution (or, under jit, in its inputs) is flagged, its
        # outputs made NaN, and any gradient that uses them NaN: never finite numbers that hide it
        bad = _common.non_finite_examples(jnp, outputs, info, tuple(values.values()))
        outputs = _nan_where(values, bad, tuple(outputs))
        info = Info(info.converged & ~bad, info.iterations, info.residual,
                    jnp.where(bad, Status.NON_FINITE.code, info.status))
        empty_box = None
        if getattr(program, "bounds", ()):  # (the solve's data lives in its own trace: evaluate anew)
            data = program.data(JaxFramework, values, like)
            empty_box = (data["lo"] > data["hi"]).reshape(like.shape[0], -1).any(-1)
        return tuple(outputs), info, empty_box

    def _report(self, info: Info, batch: int) -> None:
        if concrete(info.status) is None:
            # traced (jit, grad, vmap): the report runs on the host when the values exist, as a
            # debug callback; one that raises fails the jitted call with a JaxRuntimeError that
            # carries the SolverError's message
            jax.debug.callback(functools.partial(self._report_values, traced=True),
                               info.converged, info.status, info.residual)
            return
        self._report_values(info.converged, info.status, info.residual, traced=False)

    def _report_values(self, converged: Any, status: Any, residual: Any, traced: bool) -> None:
        """Raise or warn for the examples that did not converge (arrays (B,), or any shape under vmap)."""
        raising = self.compiled.options["on_nonconvergence"] == "raise"
        statuses = [Status.from_code(c) for c in np.asarray(status).reshape(-1).tolist()]
        batch = len(statuses)
        message = _common.non_finite_message(statuses)
        if message is not None:
            if raising or not traced:  # as the torch layer does; under jit, NaN outputs and a warning
                raise SolverError(message)
            warnings.warn(message, NotConvergedWarning, stacklevel=_common.user_stacklevel())
            return
        _common.report_saddles(statuses, batch)
        bad = ~np.asarray(converged).reshape(-1).astype(bool)
        if not bad.any():
            return
        residual = np.asarray(residual)
        tol = self.compiled.tolerance(residual.dtype)
        message = _common.nonconvergence_message(int(bad.sum()), batch, float(np.max(residual)), tol,
                                                 [s for s, b in zip(statuses, bad.tolist()) if b], raising)
        if raising:
            raise SolverError(message)
        warnings.warn(message, NotConvergedWarning, stacklevel=_common.user_stacklevel())


def _implicit(program: Any, solver: Any, run: Any) -> Any:
    """The solve as a ``jax.custom_jvp`` of (values, init, like): primal = the backend's solve;
    tangent = :func:`_linear` of its implicit Jacobian, whose transpose (reverse mode) is
    the backend's VJP pulled back through the program's ``implicit_inputs``.

    Both modes come from the one rule, as in optimistix: ``jax.jvp`` / ``jax.jacfwd`` apply
    the Jacobian, ``jax.grad`` / ``jax.vjp`` transpose it into exactly the backward a
    ``custom_vjp`` would run (one more LQR solve, or CG on Hessian-vector products).

    The backward rebuilds the fields of the backend's saved state that its class declares
    ``FROM_DATA`` (objects of the IR data that close over the parameters: the ilqr Model, the
    ift_cg Objective) from the parameters, and keeps its ``STATIC`` fields (strings, options)
    aside; its arrays pass through :func:`_first_order`, which makes a second derivative
    (``jax.hessian``, grad of grad) a clear error instead of a silently partial one.
    """
    static: dict = {}  # filled by the forward (at trace time under jit), read by the backward

    def split(saved: Any) -> Any:
        kind = type(saved)
        static.update({f: getattr(saved, f) for f in kind.STATIC})
        return saved._replace(**{f: None for f in (*kind.FROM_DATA, *kind.STATIC)})

    def full(arrays: Any, data: dict) -> Any:
        return arrays._replace(**{f: data[key] for f, key in type(arrays).FROM_DATA.items()}, **static)

    @jax.custom_jvp
    def solve(values: dict, init: Any, like: Any) -> tuple:
        outputs, info, _, _ = run(values, init, like)
        return tuple(outputs), info

    def solve_jvp(primals: tuple, tangents: tuple) -> tuple:
        values, init, like = primals
        outputs, info, saved, _ = run(values, init, like)
        outputs = tuple(outputs)
        info_tangent = jax.tree_util.tree_map(_no_tangent, info)
        moving = {k: t for k, t in tangents[0].items() if not _zero(t)}  # the values differentiated
        if not moving:
            return (outputs, info), (tuple(jnp.zeros_like(o) for o in outputs), info_tangent)
        bad = _common.non_finite_examples(jnp, outputs, info, tuple(values.values()))
        kept, arrays = jax.tree_util.tree_map(_first_order, (values, split(saved)))

        def pullback(output_cotangents: tuple) -> dict:
            """Output cotangents (each (B, ...)) -> the values' cotangents (each (B, ...))."""
            def inputs_of(values: dict) -> dict:
                data = program.data(JaxFramework, values, like)
                return program.implicit_inputs(JaxFramework, values, data, full(arrays, data))

            inputs, inputs_pullback = jax.vjp(inputs_of, kept)
            data = program.data(JaxFramework, kept, like)
            grads = solver.vjp(inputs, full(arrays, data), tuple(output_cotangents), JaxOps, tuple(inputs))
            grads = {k: jnp.zeros_like(v) if grads.get(k) is None else grads[k] for k, v in inputs.items()}
            (value_cotangents,) = inputs_pullback(grads)
            # a non-finite example's backward is NaN even where its cotangent is zero (0 * NaN):
            # its share is zero here, and NaN through _nan_where where the loss uses it
            return {k: jnp.where(_rows(bad, v), 0.0, v) for k, v in value_cotangents.items()}

        def apply(v: dict) -> tuple:  # J v
            return _jacobian_times(pullback, v, outputs)

        def transpose(c: tuple) -> dict:  # J^T c
            cotangents = pullback(c)
            return {k: cotangents[k] for k in moving}

        return (outputs, info), (_linear(apply, transpose, moving, outputs), info_tangent)

    solve.defjvp(solve_jvp, symbolic_zeros=True)
    return solve


def _linear(apply: Any, transpose: Any, v: Any, outputs: tuple) -> tuple:
    """``apply(v)``, shaped like ``outputs``, for a linear ``apply`` whose transpose is ``transpose``
    (a pytree of ``outputs``' shapes -> one of ``v``'s), with every leaf of ``v`` a tangent.

    As a ``lax.custom_linear_solve`` of the square operator (v, t) -> (0, apply(v)), whose
    transpose (c, o) -> (transpose(o), 0) JAX calls in reverse mode: so ``jax.grad`` runs the
    backend's backward itself, once, and ``jax.jvp`` runs ``apply``. The t part is zeros made
    linear in v (times 0), because every operand of a transposed solve must be a tangent.
    """
    leaves = jax.tree_util.tree_leaves(v)
    nothing = sum(jnp.sum(a) for a in leaves) * 0.0
    anchor = tuple(jnp.broadcast_to(nothing.astype(o.dtype), o.shape) for o in outputs)
    zeros_v = jax.tree_util.tree_map(jnp.zeros_like, v)
    zeros_out = tuple(jnp.zeros_like(o) for o in outputs)

    def forward(_: Any, b: tuple) -> tuple:
        return zeros_v, tuple(apply(b[0]))

    def backward(_: Any, c: tuple) -> tuple:
        return transpose(c[1]), zeros_out

    identity = lambda z: z  # noqa: E731  (no matrix: custom_linear_solve uses only the two maps)
    return lax.custom_linear_solve(identity, (v, anchor), forward, backward)[1]


def _zero(t: Any) -> bool:
    return isinstance(t, jax.custom_derivatives.SymbolicZero)


def _jacobian_times(pullback: Any, v: dict, outputs: tuple) -> tuple:
    """(J_b v_b)_b, each output (B, ...), from ``pullback`` of unit cotangents: row k of every
    example's Jacobian is pullback(e_k placed in each example), because an example's outputs
    depend on its own values only (shared values reach the solve broadcast to (B, ...)).
    Exact, and N backward solves per example where reverse mode needs one (a tangent rule per
    backend would make forward mode one solve too)."""
    B, dtype = outputs[0].shape[0], outputs[0].dtype
    sizes = [math.prod(o.shape[1:]) for o in outputs]
    N = sum(sizes)

    def row(k: Any) -> Any:  # (B,): output element k of every example, in direction v
        unit = (jnp.arange(N) == k).astype(dtype)
        pieces = jnp.split(unit, list(itertools.accumulate(sizes))[:-1])
        cotangents = tuple(jnp.broadcast_to(p.reshape(o.shape[1:]), o.shape) for p, o in zip(pieces, outputs))
        g = pullback(cotangents)
        return sum(jnp.sum((g[key] * v[key]).reshape(B, -1), -1) for key in v)

    # blocks of about 2048 backward solves (cotangents x examples): a bounded working set
    rows = lax.map(row, jnp.arange(N), batch_size=max(1, min(N, 2048 // B)))  # (N, B)
    flat = rows.T
    pieces = jnp.split(flat, list(itertools.accumulate(sizes))[:-1], axis=1)
    return tuple(p.reshape(o.shape) for p, o in zip(pieces, outputs))


@jax.custom_jvp
def _first_order(a: Any) -> Any:
    """The identity; differentiating it raises: marks arrays a backward reads, so that a
    second derivative through the layer fails loudly (the implicit backward is not itself
    differentiated; a linear solve's constants would otherwise get no tangent)."""
    return a


@_first_order.defjvp
def _first_order_jvp(primals: tuple, tangents: tuple) -> tuple:
    raise BackendError("second derivatives through the JAX layer (jax.hessian, grad of grad, jacfwd of "
                       "jacrev) are not implemented: the implicit backward is not itself differentiated. "
                       "First derivatives work in both modes (jax.grad / jax.vjp, jax.jvp / jax.jacfwd); "
                       "for a second, difference the gradient, or use backward='unroll' (differentiates "
                       "through every iteration)")


def _no_tangent(a: Any) -> Any:
    """The zero tangent of an Info field (float0 for integers and booleans)."""
    if jnp.issubdtype(a.dtype, jnp.inexact):
        return jnp.zeros_like(a)
    return np.zeros(a.shape, dtype=jax.dtypes.float0)


@jax.custom_jvp
def _nan_where(values: dict, bad: Any, outputs: tuple) -> tuple:
    """``outputs`` (each (B, ...)) with the examples ``bad`` (B,) made NaN. Reverse mode: a loss
    that uses a bad example's outputs gets NaN in the gradient of every input of that example
    (all of an unbatched parameter's), where ``jnp.where`` would give a silent zero; a loss that
    masks them out (``info.converged``) keeps the other examples' gradients finite. Forward
    mode: a bad example's output tangents are NaN."""
    return tuple(jnp.where(_rows(bad, o), jnp.nan, o) for o in outputs)


def _nan_where_jvp(primals: tuple, tangents: tuple) -> tuple:
    values, bad, outputs = primals
    out = _nan_where(values, bad, outputs)
    value_tangents = {k: t for k, t in tangents[0].items() if not _zero(t)}
    output_tangents = {i: t for i, t in enumerate(tangents[2]) if not _zero(t)}
    if not value_tangents and not output_tangents:
        return out, tuple(jnp.zeros_like(o) for o in outputs)

    def apply(v: tuple) -> tuple:  # a bad example's output tangents are NaN
        return tuple(jnp.where(_rows(bad, v[1][i]), jnp.nan, v[1][i]) if i in v[1] else
                     jnp.where(_rows(bad, o), jnp.nan, 0.0) for i, o in enumerate(outputs))

    def transpose(cotangents: tuple) -> tuple:  # NaN into the inputs of a bad example the loss uses
        hit = bad & used_examples(cotangents)
        return ({k: jnp.where(_rows(hit, values[k]), jnp.nan, jnp.zeros_like(values[k])) for k in value_tangents},
                {i: jnp.where(_rows(bad, cotangents[i]), 0.0, cotangents[i]) for i in output_tangents})

    return out, _linear(apply, transpose, (value_tangents, output_tangents), outputs)


_nan_where.defjvp(_nan_where_jvp, symbolic_zeros=True)


def _rows(mask: Any, like: Any) -> Any:
    """A (B,) mask shaped to broadcast against ``like`` (B, ...)."""
    return mask.reshape(mask.shape + (1,) * (like.ndim - 1))


# -- inputs ------------------------------------------------------------------------------------------

_SUPPORTED = ("float32", "float64")


def _dtype(inputs: dict) -> Any:
    """float64 where an input is (and JAX's x64 mode is on), else float32."""
    floats = []
    for k, v in inputs.items():
        if type(v).__module__.split(".")[0] == "torch":
            raise InputError(f"input {k!r} is a {type(v).__module__}.{type(v).__name__}: the JAX layer takes JAX or "
                             "NumPy arrays (torch's autograd would not see this solve); pass "
                             "jnp.asarray(t.detach().cpu().numpy()), or use to_torch()")
        kind = getattr(v, "dtype", None)
        if kind is None:
            continue
        kind = np.dtype(kind)
        if kind.kind not in "biuf" or (kind.kind == "f" and kind.name not in _SUPPORTED):
            raise InputError(f"input {k!r} has dtype {kind}; diffcontrol solves in float32 or float64")
        if kind.kind == "f":
            floats.append(kind)
    dtype = np.result_type(*floats) if floats else np.dtype("float32")
    if dtype == np.float64 and not jax.config.jax_enable_x64:
        warnings.warn("float64 inputs while JAX's x64 mode is off: solving in float32; "
                      "enable it with jax.config.update('jax_enable_x64', True)", UserWarning, stacklevel=4)
        dtype = np.dtype("float32")
    return jnp.dtype(dtype)


def _to_array(name: str, value: Any, dtype: Any) -> Any:
    if value is None:
        raise InputError(f"parameter {name!r} is None; pass its value (an array or a number)")
    try:
        return jnp.asarray(value, dtype=dtype)
    except (TypeError, ValueError):
        raise InputError(f"cannot convert {name!r} ({type(value).__name__}) to a JAX array") from None


def _finite(a: Any) -> bool:
    value = concrete(jnp.isfinite(a).all())
    return True if value is None else bool(value)  # traced values are checked by the solve's info


def _nonneg(a: Any) -> bool:
    value = concrete((a >= 0).all())
    return True if value is None else bool(value)  # (under jit the sign cannot be checked)


class _JaxArrays:
    """Call arguments as JAX arrays (see :class:`diffcontrol.emitters._common.Arrays`)."""

    xp = jnp
    choose = staticmethod(_dtype)
    to_array = staticmethod(_to_array)
    is_finite = staticmethod(_finite)
    is_nonneg = staticmethod(_nonneg)
    broadcast = staticmethod(jnp.broadcast_to)


def _check_box(empty: Any) -> None:
    """An empty control box (lower bound > upper bound) raises, where the values are known."""
    empty = None if empty is None else concrete(empty)
    if empty is not None and empty.any():
        raise SolverError(f"the box on the controls is empty: lower bound > upper bound for some control "
                          f"(batch element {int(np.argmax(empty))}); check the bounds' parameters")
