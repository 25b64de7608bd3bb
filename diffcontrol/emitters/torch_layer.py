"""``compiled.to_torch()``: the compiled problem as a ``torch.nn.Module``."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from diffcontrol.backends.base import Info
from diffcontrol.emitters import _common
from diffcontrol.emitters.torch_ops import TorchFramework, TorchOps
from diffcontrol.errors import BackendError, InputError, ModelError, NotConvergedWarning, SolverError, Status

_SUPPORTED = (torch.float32, torch.float64)


class TorchLayer(torch.nn.Module):
    """Call with the parameters by name: ``layer(A=A, B=B, x0=x0)``.

    Every parameter may carry one leading batch dimension B; unbatched ones
    broadcast. A ControlProblem returns ``(x, u)`` of shapes (B, T+1, n) and
    (B, T, m), a Problem one array (B, *shape) per variable in the order of
    ``prob.variables()`` (or those of ``to_torch(variables=...)``, in its order); without B
    when nothing is batched. ``u_init=`` (control problems) or ``y_init=`` (a tuple like the
    result) warm-starts the solver; ``return_info=True`` appends the solver's Info.
    """

    def __init__(self, compiled: Any, variables: Any = None):
        super().__init__()
        self.compiled = compiled
        self.order = _common.output_order(compiled.problem, variables)
        # Registered so .parameters(), .to() and optimisers see the dc.Function weights.
        self.functions = torch.nn.ModuleList(
            [f.fn for f in compiled.problem.functions() if isinstance(f.fn, torch.nn.Module)])
        _check_functions_differentiate(compiled.problem)

    def extra_repr(self) -> str:
        names = ", ".join(p.name for p in self.compiled.parameters)
        return f"backend={self.compiled.backend!r}, parameters=({names})"

    def forward(self, *, u_init: Any = None, y_init: Any = None, return_info: bool = False, **params: Any):
        _refuse_functorch()
        compiled = self.compiled
        y_init = _common.warm_start_in_solve_order(compiled.problem, self.order, y_init)
        values, init, batch, (dtype, device) = _common.bind_call(compiled, params, u_init, y_init, _TorchArrays)
        values = {k: _FiniteGradientGuard.apply(v, k) if v.requires_grad else v for k, v in values.items()}
        B = batch or 1
        like = torch.zeros(B, dtype=dtype, device=device)
        data = compiled.program.data(TorchFramework, values, like)
        _check_box(data)
        outputs, info = self._solve(values, data, init)
        info = _flag_non_finite(outputs, info)
        info.status = [Status.from_code(c) for c in info.status.tolist()]
        self._report(info, B)
        if batch is None:
            outputs = tuple(o[0] for o in outputs)
            info = _unbatch(info)
        if self.order is not None:
            outputs = tuple(outputs[i] for i in self.order)
        return (*outputs, info) if return_info else outputs

    def _solve(self, values: dict, data: dict, u_init: Any):
        """Solve; attach the implicit backward (the backend's VJP) where gradients are needed."""
        compiled = self.compiled
        spec, solver, options, program = compiled.spec, compiled.solver, compiled.options, compiled.program
        if options["backward"] == "unroll":  # autograd records every iteration
            outputs, info, _ = solver.solve(data, options, TorchOps, u_init)
            return outputs, info
        if spec.differentiable_solve:  # the solve brings its own backward (cvxpylayers')
            outputs, info, _ = solver.solve(data, options, TorchOps, u_init)
            return _OnceDifferentiable.apply(*outputs), info
        # Inference mode spares each op the autograd bookkeeping (about 15% of a small op's
        # overhead); the solve's tensors then leave it as clones, for they cannot be saved for
        # backward, neither by our backward nor by the user's.
        pure = spec.tensor_ops_only
        with torch.inference_mode() if pure else torch.no_grad():
            outputs, info, saved = solver.solve(data, options, TorchOps, u_init)
        if pure:
            info = info.map(torch.clone)
        inputs = program.implicit_inputs(TorchFramework, values, data, saved) if torch.is_grad_enabled() else {}
        if not any(isinstance(v, torch.Tensor) and v.requires_grad for v in inputs.values()):
            return tuple(o.clone() for o in outputs) if pure else outputs, info
        # no clone here: _ImplicitSolve's forward already returns clones of the outputs
        flat = _ImplicitSolve.apply(solver, saved, tuple(inputs), *inputs.values())
        return flat, info

    def _report(self, info: Any, batch: int) -> None:
        message = _common.non_finite_message(info.status)
        if message is not None:
            raise SolverError(message)
        _common.report_saddles(info.status, batch)
        bad = ~info.converged
        if not bool(bad.any()):
            return
        tol = self.compiled.tolerance(info.residual.dtype)
        statuses = [s for s, b in zip(info.status, bad.tolist()) if b]
        raising = self.compiled.options["on_nonconvergence"] == "raise"
        message = _common.nonconvergence_message(int(bad.sum()), batch, float(info.residual.detach().max()),
                                                 tol, statuses, raising)
        if raising:
            raise SolverError(message)
        warnings.warn(message, NotConvergedWarning, stacklevel=_common.user_stacklevel())


def _refuse_functorch() -> None:
    """A BackendError inside a torch.func transform (grad, vmap, jacrev, jvp), which would fail
    deep inside with torch's internal error: the solve stops on data-dependent tests and its
    backward is an autograd.Function without a vmap rule."""
    level = getattr(torch._C._functorch, "maybe_current_level", lambda: None)()
    if level is not None:
        raise BackendError(
            "the torch layer does not run inside torch.func transforms (grad, vmap, jacrev, jvp): its solve stops "
            "on data-dependent tests. Batch by the layer's leading batch dimension instead of vmap; take gradients "
            "with loss.backward() or torch.autograd.grad (torch.autograd.functional.jacobian works too); or use "
            "to_jax(), whose layer runs under jax.vmap / jax.jacrev")


def _flag_non_finite(outputs: tuple, info: Info) -> Info:
    """The info with the examples whose solution holds NaN or Inf marked NON_FINITE (and not
    converged): whatever path produced them, they raise rather than pass as a warning."""
    with torch.no_grad():
        bad = _common.non_finite_examples(torch, outputs, info)
    if not bool(bad.any()):
        return info
    return Info(info.converged & ~bad, info.iterations, info.residual,
                torch.where(bad, Status.NON_FINITE.code, info.status))


def _check_functions_differentiate(problem: Any) -> None:
    """Each dc.Function of the decision variables, called once on random inputs that require
    grad, must give an output that depends on them as autograd sees it. One that runs under
    ``torch.no_grad()`` (a frozen pretrained model wrapped so) would look constant to the
    solver: it would stop at its start and report convergence. A ModelError instead."""
    from diffcontrol.compilers.analysis import expression_facts
    from diffcontrol.dsl.function import FunctionCall
    from diffcontrol.dsl.traverse import nodes_of_type
    from diffcontrol.programs.evaluate import with_pytrees

    seen: set[int] = set()
    for call in nodes_of_type(problem.expressions(), FunctionCall):
        fn = call.function
        if id(fn) in seen or not expression_facts(call).uses:  # (a function of parameters only may be constant)
            continue
        seen.add(id(fn))
        weights = list(fn.fn.parameters()) if isinstance(fn.fn, torch.nn.Module) else []
        dtype, device = (weights[0].dtype, weights[0].device) if weights else (torch.get_default_dtype(), "cpu")
        args = [torch.randn(a.shape, dtype=dtype, device=device, requires_grad=True) for a in call.args]
        try:
            with torch.random.fork_rng(devices=[]), torch.enable_grad():  # (leave the user's random stream)
                out = with_pytrees(fn.fn, call.args)(*args)
        except Exception:  # noqa: BLE001  (the solve's own call reports a failing function, named)
            continue
        if isinstance(out, torch.Tensor) and out.is_floating_point() and not out.requires_grad:
            raise ModelError(
                f"dc.Function {fn.name}'s output does not depend on its inputs as autograd sees it: it runs under "
                "torch.no_grad() (or detaches, or ignores its inputs). The solver needs its derivatives in the "
                "states and controls even when its weights are frozen: remove the no_grad, and freeze the weights "
                "with module.requires_grad_(False) instead")


class _ImplicitSolve(torch.autograd.Function):
    """Ties a finished solve to its inputs: forward returns the solution, backward is the
    backend's VJP, giving the cotangents of ``inputs`` (whatever the program's
    ``implicit_inputs`` made them), from which torch's autograd carries on."""

    @staticmethod
    def forward(ctx, solver, saved, keys, *inputs):
        # the solve's own tensors are kept as they are (no autograd graph reaches them, and
        # inference-mode tensors cannot be saved for backward); the inputs are saved
        ctx.solver, ctx.keys, ctx.solve_saved = solver, keys, saved
        ctx.save_for_backward(*inputs)
        return tuple(o.clone() for o in saved.outputs)

    @staticmethod
    @once_differentiable
    def backward(ctx, *cotangents):
        # once differentiable: the VJP runs outside autograd, so a double backward
        # (create_graph=True) would silently drop the second-order term; torch raises instead
        inputs, saved = dict(zip(ctx.keys, ctx.saved_tensors)), ctx.solve_saved
        cot = tuple(torch.zeros_like(o) if g is None else g for g, o in zip(cotangents, saved.outputs))
        needs = {k for k, need in zip(ctx.keys, ctx.needs_input_grad[3:]) if need}
        grads = ctx.solver.vjp(inputs, saved, cot, TorchOps, needs)
        return (None, None, None, *(grads[k] for k in ctx.keys))


class _OnceDifferentiable(torch.autograd.Function):
    """The identity on a solve's outputs whose own backward is not differentiable (a host
    solver's): a double backward (create_graph=True) raises instead of silently dropping the
    second-order term."""

    @staticmethod
    def forward(ctx, *outputs):
        return tuple(o.view_as(o) for o in outputs)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        return grads


class _FiniteGradientGuard(torch.autograd.Function):
    """The identity on a parameter (B, ...), whose backward refuses NaN or Inf: a non-finite
    gradient would otherwise reach the parameter silently and an optimiser step would spread
    it everywhere. The error names the parameter and the examples."""

    @staticmethod
    def forward(ctx, value, name):
        ctx.name = name
        return value.view_as(value)

    @staticmethod
    def backward(ctx, grad):
        if grad is not None and not bool(torch.isfinite(grad).all()):
            rows = ~torch.isfinite(grad.reshape(grad.shape[0], -1)).all(-1)
            raise SolverError(
                f"the gradient reaching parameter {ctx.name!r} through this layer contains NaN or Inf "
                f"(examples {rows.nonzero().flatten().tolist()}); nothing was passed on. An example whose "
                "solve failed (info.status INFEASIBLE, GOAL_NOT_MET or SOLVER_FAILED) has a NaN gradient by"
                " design: leave it out of the loss. Otherwise, if the loss's gradient is finite, a "
                "derivative of the dynamics or cost (often a second derivative, e.g. of abs(.)**1.5 or sqrt"
                " at 0) is not finite at the solution, or the true gradient is infinite there (e.g. "
                "dc.sqrt(p) at p = 0); make the functions smooth there")
        return grad, None


class _TorchArrays:
    """Call arguments as tensors (see :class:`diffcontrol.emitters._common.Arrays`)."""

    xp = torch

    @staticmethod
    def choose(inputs: dict[str, Any]) -> tuple[torch.dtype, torch.device]:
        return _dtype_and_device(inputs)

    @staticmethod
    def to_array(name: str, value: Any, target: tuple) -> torch.Tensor:
        return _to_tensor(name, value, *target)

    @staticmethod
    def is_finite(a: torch.Tensor) -> bool:
        return bool(torch.isfinite(a).all())

    @staticmethod
    def is_nonneg(a: torch.Tensor) -> bool:
        return bool((a >= 0).all())

    @staticmethod
    def broadcast(a: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        return a.expand(shape)


def _dtype_and_device(inputs: dict[str, Any]) -> tuple[torch.dtype, torch.device]:
    tensors = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    devices = {v.device for v in tensors.values()}
    if len(devices) > 1:
        listed = ", ".join(f"{k}: {v.device}" for k, v in tensors.items())
        raise InputError(f"inputs are on different devices ({listed}); move them to one device")
    floats = [v.dtype for v in tensors.values() if v.is_floating_point()]
    # NumPy float arrays keep their precision, as torch.as_tensor would; Python numbers adapt.
    floats += [torch.from_numpy(np.zeros(0, dtype=v.dtype)).dtype for v in inputs.values()
               if isinstance(v, np.ndarray) and v.dtype in (np.float32, np.float64)]
    for k, v in tensors.items():
        if v.is_complex() or (v.is_floating_point() and v.dtype not in _SUPPORTED):
            raise InputError(f"input {k!r} has dtype {v.dtype}; diffcontrol solves in float32 or float64")
    for k, v in inputs.items():  # NumPy arrays are held to the same rule as tensors
        if isinstance(v, np.ndarray) and v.dtype.kind in "fc" and v.dtype not in (np.float32, np.float64):
            raise InputError(f"input {k!r} has dtype numpy.{v.dtype}; diffcontrol solves in float32 or float64")
    dtype = floats[0] if floats else torch.get_default_dtype()
    for d in floats[1:]:
        dtype = torch.promote_types(dtype, d)
    device = devices.pop() if devices else torch.device("cpu")
    return dtype, device


def _to_tensor(name: str, value: Any, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.to(dtype=dtype, device=device)
    if value is None:
        raise InputError(f"parameter {name!r} is None; pass its value (an array, a tensor or a number)")
    try:
        return torch.as_tensor(np.asarray(value, dtype=float), dtype=dtype, device=device)
    except (TypeError, ValueError) as err:
        why = " (a ragged nested list: its rows differ in length)" if "inhomogeneous" in str(err) else ""
        raise InputError(f"cannot convert {name!r} ({type(value).__name__}) to a tensor{why}") from None


def _check_box(data: dict) -> None:
    if "lo" in data and bool((data["lo"] > data["hi"]).any()):
        bad = (data["lo"] > data["hi"]).nonzero()[0].tolist()
        raise SolverError(f"the box on the controls is empty: lower bound > upper bound for "
                          f"u[{bad[-1]}] (batch element {bad[0]}); check the bounds' parameters")


def _unbatch(info: Info) -> Info:
    return info.map(lambda a: a[0])
