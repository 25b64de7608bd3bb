"""The torch implementations of the backends' :class:`~diffcontrol.backends.ops.Ops`
and the compilers' :class:`~diffcontrol.programs.evaluate.Framework`."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from diffcontrol.backends.ops import cholesky_failure

#: running batches smaller than this are not compacted (the body's ops cost their overhead)
_COMPACT_MIN_ROWS = 64


def _tree_map(fn, tree, *others):
    """fn over the tensors of nested tuples / NamedTuples / dicts (None stays None)."""
    if tree is None:
        return None
    if isinstance(tree, dict):
        return {k: _tree_map(fn, v, *(o[k] for o in others)) for k, v in tree.items()}
    if isinstance(tree, tuple):
        items = [_tree_map(fn, *parts) for parts in zip(tree, *others)]
        return type(tree)(*items) if hasattr(tree, "_fields") else tuple(items)
    return fn(tree, *others)


def _rows(tree, index):
    """The rows ``index`` (a bool mask or indices) of every batch-first tensor in ``tree``."""
    return _tree_map(lambda a: a[index], tree)


def _put_rows(tree, rows, values):
    """``tree`` with its rows ``rows`` (indices) replaced by ``values`` (out of place)."""
    if rows.numel() == 0:
        return tree
    return _tree_map(lambda a, v: a.index_copy(0, rows, v), tree, values)


class TorchOps:
    """Array operations for the framework-neutral backends, on torch tensors."""

    name = "torch"
    xp = torch

    @staticmethod
    def loop(cond, body, state, max_iter: int):
        for _ in range(max_iter):
            if not bool(cond(state)):
                break
            state = body(state)
        return state

    @staticmethod
    def batch_loop(body, state, shared, settled, max_iter: int):
        rows = None  # the examples in the running batch, None while it is the whole batch
        iterations = torch.zeros(settled.shape, dtype=torch.long, device=settled.device)
        out, done, finished = state, settled, settled.clone()  # finished: of the whole batch

        def compact(keep):
            nonlocal rows, state, shared, done
            rows = (torch.arange(settled.shape[0], device=settled.device) if rows is None else rows)[keep]
            state, shared, done = _rows(state, keep), _rows(shared, keep), done[keep]

        if bool(done.any()):  # the examples settled at the start take no call
            compact(~done)
        for _ in range(max_iter):
            if done.numel() == 0:
                break
            state, ok = body(state, shared)
            if rows is None:
                iterations += (~done).long()
            else:
                iterations[rows] += (~done).long()
            done = done | ok
            stopped = int(done.sum())
            if stopped == done.numel():
                break
            # Gathering costs about one elementwise op per array; it pays once the stopped rows
            # are half of a batch large enough that the body's work grows with its rows.
            if done.numel() >= _COMPACT_MIN_ROWS and 2 * stopped >= done.numel():
                leaving = torch.arange(settled.shape[0], device=settled.device)[done] if rows is None else rows[done]
                out = _put_rows(out, leaving, _rows(state, done))
                finished[leaving] = True
                compact(~done)
        if rows is None:
            return state, iterations, done
        finished[rows] = done
        return _put_rows(out, rows, state), iterations, finished

    @staticmethod
    def scan(step, carry, stages: dict, reverse: bool = False):
        T = next(iter(stages.values())).shape[1]
        slices = {k: a.unbind(1) for k, a in stages.items()}  # one call per array, not T slicings
        ys = [None] * T
        for t in (reversed(range(T)) if reverse else range(T)):
            carry, ys[t] = step(carry, {k: a[t] for k, a in slices.items()})
        return carry, tuple(torch.stack(parts, 1) for parts in zip(*ys))

    @staticmethod
    def cond(pred, true_fn, false_fn):
        return true_fn() if bool(pred) else false_fn()

    @staticmethod
    def known_any(a: torch.Tensor) -> bool:
        return bool(a.any())

    @staticmethod
    def lbfgs(fun, y0: torch.Tensor, max_iter: int, tol: float):
        """Minimise sum_b fun(y)_b by torch.optim.LBFGS (strong-Wolfe line search); the
        examples are independent, so the sum's gradient is theirs. Gradients reach y only:
        ``fun``'s parameters accumulate nothing."""
        y = y0.detach().clone().requires_grad_(True)
        opt = torch.optim.LBFGS([y], lr=1.0, max_iter=max_iter, tolerance_grad=tol, tolerance_change=0.0,
                                history_size=20, line_search_fn="strong_wolfe")

        def closure():
            with torch.enable_grad():
                loss = fun(y).sum()
                (y.grad,) = torch.autograd.grad(loss, [y])
            return loss.detach()

        opt.step(closure)
        steps = opt.state[y].get("n_iter", 0)
        return y.detach(), torch.full((y.shape[0],), int(steps), dtype=torch.long, device=y.device)

    @staticmethod
    def needs_grad(arrays) -> bool:
        return torch.is_grad_enabled() and any(a.requires_grad for a in arrays)

    @staticmethod
    def poison_gradient(outputs: tuple, failed: torch.Tensor, anchor: torch.Tensor) -> tuple:
        return _PoisonGradient.apply(failed, anchor, *outputs)

    @staticmethod
    def to_numpy(a: torch.Tensor):
        return a.detach().cpu().numpy()

    @staticmethod
    def as_float64_cpu(a: torch.Tensor) -> torch.Tensor:
        """For host solvers (diffcp): the autograd graph follows the conversion."""
        return a.to(dtype=torch.float64, device="cpu")

    @staticmethod
    def cast_like(a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return a.to(dtype=like.dtype, device=like.device)

    @staticmethod
    def full_like(a: torch.Tensor, value: float) -> torch.Tensor:
        return torch.full_like(a, value)

    @staticmethod
    def as_array(value, like: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(value, device=like.device)

    @staticmethod
    def cholesky(A: torch.Tensor, strict: bool = True) -> torch.Tensor:
        L, info = torch.linalg.cholesky_ex(A)
        failed = info > 0
        if bool(failed.any()):
            if strict:
                raise cholesky_failure(not bool(torch.isfinite(A).all()), failed.cpu().numpy())
            L = torch.where(failed[..., None, None], torch.nan, L)
        return L

    @staticmethod
    def cho_solve(L: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if b.ndim == L.ndim - 1:
            return torch.cholesky_solve(b[..., None], L)[..., 0]
        return torch.cholesky_solve(b, L)

    @staticmethod
    def tri_solve(L: torch.Tensor, b: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        A = L.mT if transpose else L
        if b.ndim == L.ndim - 1:
            return torch.linalg.solve_triangular(A, b[..., None], upper=transpose)[..., 0]
        return torch.linalg.solve_triangular(A, b, upper=transpose)

    @staticmethod
    def matmul_add(C: torch.Tensor, A: torch.Tensor, B: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
        if C.ndim == A.ndim == B.ndim == 3 and C.shape[0] == A.shape[0] == B.shape[0]:
            return torch.baddbmm(C, A, B, alpha=alpha)
        return C + alpha * (A @ B) if alpha != 1.0 else C + A @ B

    @staticmethod
    def eye_like(A: torch.Tensor) -> torch.Tensor:
        return torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)

    @staticmethod
    def eps(A: torch.Tensor) -> float:
        return torch.finfo(A.dtype).eps

    @staticmethod
    def zeros(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        return torch.zeros(shape, dtype=like.dtype, device=like.device)


class TorchFramework:
    """Constants and function transforms (torch.func) for evaluating the IR's data."""

    name = "torch"
    xp = torch
    caches_arrays = True

    @staticmethod
    def constant(value: Any, like: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(value, dtype=like.dtype, device=like.device)

    vmap = staticmethod(torch.func.vmap)
    # Reverse mode only: torch's forward-AD levels are process-global, so jacfwd is not
    # thread-safe (a compiled problem must serve several threads at once).
    @staticmethod
    def jacobian(fn, argnums=0):
        return torch.func.jacrev(fn, argnums=argnums)

    @staticmethod
    def hessian(fn, argnums=0):
        return torch.func.jacrev(torch.func.jacrev(fn, argnums=argnums), argnums=argnums)

    @staticmethod
    def grad(fn, argnums=0, has_aux=False):
        return torch.func.grad(fn, argnums=argnums, has_aux=has_aux)

    # The rows' derivatives by classic autograd, one backward per output column: unlike
    # torch.func's reverse transforms, it does not import torch._dynamo (0.9 s of a cold
    # start on 2 cores), and unlike jacfwd it is thread-safe.
    @staticmethod
    def row_jacobian(fn, x: torch.Tensor, params: dict) -> tuple[torch.Tensor, torch.Tensor]:
        graph = _recorded(params)
        with _recording():
            params, x = _recordable(params), x.detach().clone().requires_grad_(True)
            out = fn(x, params)
            J = torch.stack([_grad(out[:, i].sum(), x, graph) for i in range(out.shape[1])], 1)
        return (out if graph else out.detach()), J

    @staticmethod
    def row_gradient(fn, x: torch.Tensor, params: dict, hessian: bool = False):
        graph = _recorded(params)
        with _recording():
            params, x = _recordable(params), x.detach().clone().requires_grad_(True)
            g = _grad(fn(x, params).sum(), x, graph or hessian)
            if not hessian:
                return g
            H = torch.stack([_grad(g[:, i].sum(), x, graph) for i in range(x.shape[1])], 1)
        return (g if graph else g.detach()), H

    @staticmethod
    def hvp_operator(value, y: torch.Tensor):
        """v -> H v for f = sum_b value(y)_b at y (B, n): the gradient's graph is recorded once,
        then each product is one backward pass through it (Algorithm 1's grad calls)."""
        y = y.detach().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(value(y).sum(), [y], create_graph=True)

        def apply(v: torch.Tensor) -> torch.Tensor:
            if not g.requires_grad:  # the gradient does not depend on y: a zero Hessian
                return torch.zeros_like(y)
            with torch.enable_grad():
                (hv,) = torch.autograd.grad(g, [y], v, retain_graph=True, allow_unused=True)
            return torch.zeros_like(y) if hv is None else hv

        return apply


class _PoisonGradient(torch.autograd.Function):
    """The identity on outputs (B, ...) whose backward sends NaN to ``anchor`` (B,) for each
    ``failed`` example whose outputs get a nonzero cotangent (see Ops.poison_gradient)."""

    @staticmethod
    def forward(ctx, failed, anchor, *outputs):
        ctx.save_for_backward(failed)
        return tuple(o.view_as(o) for o in outputs)

    @staticmethod
    def backward(ctx, *grads):
        (failed,) = ctx.saved_tensors
        used = torch.zeros_like(failed)
        for g in grads:
            if g is not None:
                used = used | (g.reshape(g.shape[0], -1) != 0).any(-1)
        nan = torch.full(failed.shape, float("nan"), dtype=grads[0].dtype, device=failed.device)
        return None, torch.where(failed & used, nan, 0.0 * nan.nan_to_num()), *grads


def _recorded(params: dict) -> bool:
    """Whether the derivatives must themselves carry gradients: to a parameter that wants them
    (``params`` holds every tensor the function reads besides x)."""
    return torch.is_grad_enabled() and any(isinstance(v, torch.Tensor) and v.requires_grad for v in params.values())


def _recording():
    """Autograd on, also inside the caller's no_grad or inference_mode."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode(False))
    stack.enter_context(torch.enable_grad())
    return stack


def _recordable(params: dict) -> dict:
    """The parameters, cloned where they are inference tensors (autograd cannot save those)."""
    return {k: v.clone() if isinstance(v, torch.Tensor) and v.is_inference() else v for k, v in params.items()}


def _grad(out: torch.Tensor, x: torch.Tensor, graph: bool) -> torch.Tensor:
    """d out / d x (zeros where out does not depend on x); with ``graph``, itself differentiable."""
    if not out.requires_grad:
        return torch.zeros_like(x)
    (g,) = torch.autograd.grad(out, x, retain_graph=True, create_graph=graph, allow_unused=True)
    return torch.zeros_like(x) if g is None else g
