"""The JAX implementations of the backends' :class:`~diffcontrol.backends.ops.Ops` and the
compilers' :class:`~diffcontrol.programs.evaluate.Framework`.

Loops are ``lax.while_loop`` (or, for ``backward="unroll"``, a ``lax.scan`` of fixed
length, which reverse-mode autodiff can walk through); branches are ``lax.cond``. So the
backends' code traces under ``jax.jit`` and ``jax.vmap``. Imported only by ``to_jax()``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from diffcontrol.backends.ops import cholesky_failure
from diffcontrol.errors import SolverError


def concrete(a: Any) -> Any:
    """a as a NumPy value, or None while it is being traced (under jit or vmap)."""
    try:
        return np.asarray(a)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


class JaxOps:
    """Array operations for the framework-neutral backends, on JAX arrays."""

    name = "jax"
    xp = jnp

    @staticmethod
    def loop(cond, body, state, max_iter: int):
        def go_on(carry):
            i, s = carry
            return (i < max_iter) & cond(s)

        def step(carry):
            i, s = carry
            return i + 1, body(s)

        return lax.while_loop(go_on, step, (0, state))[1]

    @classmethod
    def batch_loop(cls, body, state, shared, settled, max_iter: int):
        def running(carry):
            return ~carry[1].all()

        def step(carry):
            state, done, iterations = carry
            new, ok = body(state, shared)
            keep = jax.tree_util.tree_map(
                lambda n, o: jnp.where(done.reshape(done.shape + (1,) * (n.ndim - 1)), o, n), new, state)
            return keep, done | ok, iterations + jnp.where(done, 0, 1)

        state, done, iterations = cls.loop(running, step, (state, settled, jnp.zeros(settled.shape, int)), max_iter)
        return state, iterations, done

    @staticmethod
    def scan(step, carry, stages: dict, reverse: bool = False):
        time_major = {k: jnp.moveaxis(a, 1, 0) for k, a in stages.items()}
        carry, ys = lax.scan(step, carry, time_major, reverse=reverse)
        return carry, tuple(jnp.moveaxis(y, 0, 1) for y in ys)

    @staticmethod
    def cond(pred, true_fn, false_fn):
        return lax.cond(pred, lambda _: true_fn(), lambda _: false_fn(), None)

    @staticmethod
    def known_any(a) -> bool | None:
        value = concrete(a)
        return None if value is None else bool(value.any())

    @staticmethod
    def lbfgs(fun, y0, max_iter: int, tol: float):
        """Minimise sum_b fun(y)_b by optax's L-BFGS (zoom line search, strong Wolfe), the
        JAX counterpart of torch.optim.LBFGS."""
        try:
            import optax
        except ImportError:
            raise SolverError("solver='lbfgs' under JAX needs optax: pip install 'diffcontrol[jax]'") from None

        def total(y):
            return fun(y).sum()

        opt = optax.lbfgs(memory_size=20)
        value_and_grad = optax.value_and_grad_from_state(total)

        def go_on(carry):
            y, state, _ = carry
            grad = optax.tree_utils.tree_get(state, "grad")
            return jnp.max(jnp.abs(grad)) > tol

        def step(carry):
            y, state, k = carry
            value, grad = value_and_grad(y, state=state)
            updates, state = opt.update(grad, state, y, value=value, grad=grad, value_fn=total)
            return optax.apply_updates(y, updates), state, k + 1

        state = opt.init(y0)
        # one step first: the state's gradient is only set once a step has evaluated it
        carry = step((y0, state, jnp.zeros((), y0.dtype)))
        y, _, steps = JaxOps.loop(go_on, step, carry, max_iter - 1)
        return y, jnp.zeros(y.shape[:1], int) + steps

    @staticmethod
    def needs_grad(arrays) -> bool:
        """Whether a transformation (jax.grad) traces the arrays; the host-bound cone solve runs
        eagerly, so a tracer there means a gradient is coming."""
        return any(isinstance(a, jax.core.Tracer) for a in arrays)

    @staticmethod
    def poison_gradient(outputs: tuple, failed, anchor) -> tuple:
        return _poison_gradient(tuple(outputs), failed, anchor)

    @staticmethod
    def to_numpy(a):
        """A host copy; under an eager jax.grad, of the primal value."""
        return np.asarray(lax.stop_gradient(a))

    @staticmethod
    def as_float64_cpu(a):
        return a.astype(jnp.float64) if jax.config.jax_enable_x64 else a

    @staticmethod
    def cast_like(a, like):
        return jnp.asarray(a).astype(like.dtype)

    @staticmethod
    def full_like(a, value: float):
        return jnp.full_like(a, value)

    @staticmethod
    def as_array(value, like):
        return jnp.asarray(value)

    @staticmethod
    def cholesky(A, strict: bool = True):
        """A factor of NaNs where A is not PD (JAX's own convention); ``strict`` raises only
        when that is known at call time (not under jit)."""
        L = jnp.linalg.cholesky(A)
        if strict:
            failed = concrete(jnp.isnan(L).any())
            if failed is not None and bool(failed):
                raise cholesky_failure(not bool(np.isfinite(np.asarray(A)).all()),
                                       np.isnan(np.asarray(L)).any((-2, -1)))
        return L

    @classmethod
    def cho_solve(cls, L, b):
        return cls.tri_solve(L, cls.tri_solve(L, b), transpose=True)

    @staticmethod
    def tri_solve(L, b, transpose: bool = False):
        vector = b.ndim == L.ndim - 1
        rhs = b[..., None] if vector else b
        z = lax.linalg.triangular_solve(L, rhs, left_side=True, lower=True, transpose_a=transpose)
        return z[..., 0] if vector else z

    @staticmethod
    def matmul_add(C, A, B, alpha: float = 1.0):
        return C + alpha * (A @ B)  # XLA fuses it

    @staticmethod
    def eye_like(A):
        return jnp.eye(A.shape[-1], dtype=A.dtype)

    @staticmethod
    def eps(A) -> float:
        return float(jnp.finfo(A.dtype).eps)

    @staticmethod
    def zeros(shape: tuple[int, ...], like):
        return jnp.zeros(shape, dtype=like.dtype)


class UnrolledJaxOps(JaxOps):
    """``backward="unroll"``: every loop runs its full ``max_iter`` as a ``lax.scan`` whose
    steps past the stopping point leave the state unchanged, so reverse mode can differentiate
    through every iteration (``lax.while_loop`` has no reverse-mode rule)."""

    @staticmethod
    def loop(cond, body, state, max_iter: int):
        def step(s, _):
            go_on = cond(s)
            return jax.tree_util.tree_map(lambda new, old: jnp.where(go_on, new, old), body(s), s), None

        return lax.scan(step, state, None, length=max_iter)[0]


class JaxFramework:
    """Constants and function transforms (jax) for evaluating the IR's data."""

    name = "jax"
    xp = jnp
    caches_arrays = False  # a value cached while tracing under jit would leak its tracer

    @staticmethod
    def constant(value: Any, like: Any) -> Any:
        return jnp.asarray(value, dtype=like.dtype)

    vmap = staticmethod(jax.vmap)

    @staticmethod
    def jacobian(fn, argnums=0):
        return jax.jacfwd(fn, argnums=argnums)

    @staticmethod
    def hessian(fn, argnums=0):
        return jax.hessian(fn, argnums=argnums)

    @staticmethod
    def grad(fn, argnums=0, has_aux=False):
        return jax.grad(fn, argnums=argnums, has_aux=has_aux)

    @staticmethod
    def row_jacobian(fn, x, params):
        out = fn(x, params)
        eye = jnp.eye(x.shape[-1], dtype=x.dtype)
        # column j: the directional derivative along e_j in every row (the rows are independent)
        J = jax.vmap(lambda e: jax.jvp(lambda z: fn(z, params), (x,), (jnp.broadcast_to(e, x.shape),))[1],
                     out_axes=-1)(eye)
        return out, J

    @staticmethod
    def row_gradient(fn, x, params, hessian=False):
        grad = jax.grad(lambda z: fn(z, params).sum())
        if not hessian:
            return grad(x)
        eye = jnp.eye(x.shape[-1], dtype=x.dtype)
        H = jax.vmap(lambda e: jax.jvp(grad, (x,), (jnp.broadcast_to(e, x.shape),))[1], out_axes=-1)(eye)
        return grad(x), H

    @staticmethod
    def hvp_operator(value, y):
        """v -> H v for f = sum_b value(y)_b at y (B, n): the gradient linearised once
        (``jax.linearize``), each product then one forward-mode pass."""
        _, apply = jax.linearize(jax.grad(lambda z: value(z).sum()), y)
        return apply


@jax.custom_vjp
def _poison_gradient(outputs: tuple, failed, anchor) -> tuple:
    """The identity on outputs; the VJP sends NaN to ``anchor`` for each ``failed`` example
    whose outputs get a nonzero cotangent (see Ops.poison_gradient)."""
    return outputs


def _poison_forward(outputs, failed, anchor):
    return outputs, (failed, anchor)


def _poison_backward(residuals, grads):
    failed, anchor = residuals
    return grads, None, jnp.where(failed & used_examples(grads), jnp.nan, 0.0).astype(anchor.dtype)


def used_examples(cotangents: tuple) -> Any:
    """(B,): the examples that get a nonzero cotangent in any of ``cotangents`` (each (B, ...))."""
    used = jnp.zeros(cotangents[0].shape[:1], bool)
    for c in cotangents:
        used = used | (c.reshape(c.shape[0], -1) != 0).any(-1)
    return used


_poison_gradient.defvjp(_poison_forward, _poison_backward)
