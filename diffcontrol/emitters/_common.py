"""What every emitter does the same way: binding arguments by name, batch sizes, checks.

Written once, framework-neutral: the emitter passes its array conversion in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from diffcontrol.dsl.leaves import Parameter
from diffcontrol.errors import InputError, ModelError, SolverError, listed


class Arrays(Protocol):
    """How an emitter turns call arguments into its arrays."""

    xp: Any

    def choose(self, inputs: dict[str, Any]) -> Any:
        """The dtype (and device) every input is converted to; raises InputError for bad ones."""

    def to_array(self, name: str, value: Any, target: Any) -> Any:
        """``value`` as an array of ``target`` (from :meth:`choose`)."""

    def is_finite(self, a: Any) -> bool:
        """Whether every entry is finite (True where that is not known yet: a traced array)."""

    def broadcast(self, a: Any, shape: tuple[int, ...]) -> Any:
        """``a`` broadcast to ``shape`` without a copy."""

    def is_nonneg(self, a: Any) -> bool:
        """Whether every entry is >= 0 (True where that is not known yet: a traced array)."""


def bind_call(compiled: Any, params: dict[str, Any], u_init: Any, y_init: Any,
              arrays: Arrays) -> tuple[dict[str, Any], Any, int | None, Any]:
    """A layer call's arguments, checked and converted once for every emitter: the parameters
    with a leading batch dimension B, the warm start (u (B, T, m), or the variables joined into
    y (B, n), or None), the batch size given (None: unbatched) and the dtype target chosen."""
    parameters = compiled.parameters
    check_names(parameters, params)
    params = flat_pytrees(parameters, params, arrays.xp)
    check_warm_start(compiled, u_init, y_init)
    warm = warm_start_inputs(compiled.problem, u_init, y_init)  # name -> (shape, value)
    target = arrays.choose({**params, **{k: v for k, (_, v) in warm.items()}})
    values = {k: arrays.to_array(k, v, target) for k, v in params.items()}
    warm = {k: (shape, arrays.to_array(k, v, target)) for k, (shape, v) in warm.items()}
    values, shapes = with_time_axes(compiled.problem, parameters, values, arrays.xp)
    batch = batch_size_of(parameters, values, warm, shapes)
    check_finite({**values, **{k: v for k, (_, v) in warm.items()}}, arrays.is_finite)
    check_nonneg(parameters, values, arrays.is_nonneg)
    B = batch or 1
    values = expand_to_batch(parameters, values, B, arrays.broadcast, shapes)
    init = [v if v.ndim > len(shape) else arrays.broadcast(v, (B, *shape)) for shape, v in warm.values()]
    if not init:
        init = None
    else:
        init = init[0] if u_init is not None else compiled.program.join(arrays.xp, init)
    return values, init, batch, target


def flat_pytrees(parameters: Sequence[Parameter], params: dict[str, Any], xp: Any) -> dict[str, Any]:
    """The values of pytree parameters (``dc.Parameter.pytree``) as flat arrays (size,) or
    (B, size); the framework's concatenate carries gradients back to the leaves."""
    out = dict(params)
    for p in parameters:
        if p.tree is None or params[p.name] is None or p.tree.is_flat(params[p.name]):
            continue
        # (torch.as_tensor keeps a leaf's autograd graph; torch.asarray warns about it)
        out[p.name] = p.tree.flatten(p.name, params[p.name], getattr(xp, "as_tensor", xp.asarray), xp.concatenate)
    return out


def _signature(parameters: Sequence[Parameter]) -> str:
    if not parameters:
        return "no parameters"
    return ", ".join(f"{p.name}{p.shape}" for p in parameters)


def check_names(parameters: Sequence[Parameter], given: dict[str, Any]) -> None:
    """Unknown or missing parameter names raise InputError naming the valid ones."""
    names = [p.name for p in parameters]
    for name in given:
        if name not in names:
            raise InputError(f"unknown parameter {name!r}; this layer takes {_signature(parameters)}")
    for p in parameters:
        if p.name not in given:
            raise InputError(f"missing parameter {p.name!r} of shape {p.shape}; "
                             f"this layer takes {_signature(parameters)}")


def with_time_axes(problem: Any, parameters: Sequence[Parameter], values: dict[str, Any],
                   xp: Any) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """The values with every time-varying parameter's time axis at length T+1 (a value of
    length T, where that is allowed, gets its last stage repeated: stage T never reads it),
    and each parameter's unbatched shape ((T+1, *shape) for a time-varying one). A time axis
    of another length raises InputError naming the lengths expected."""
    out, shapes = dict(values), {}
    for p in parameters:
        if not p.time_varying:
            shapes[p.name] = p.shape
            continue
        lengths = problem.time_lengths(p)
        v, k = values[p.name], len(p.shape)
        got = tuple(v.shape)
        axis = len(got) - k - 1
        if axis not in (0, 1) or got[axis + 1:] != p.shape or got[axis] not in lengths:
            allowed = " or ".join(f"({', '.join(map(str, (L, *p.shape)))})" for L in lengths)
            why = "" if len(lengths) == 2 else " (it appears in a terminal term, so stage T needs a value)"
            raise InputError(f"time-varying parameter {p.name!r} expects a time axis: shape {allowed}, or with a "
                             f"leading batch dimension B, got {got}{why}".replace(",)", ")"))
        if got[axis] == problem.horizon:
            last = v[:, -1:] if axis == 1 else v[-1:]
            v = xp.concatenate([v, last], axis)
        out[p.name] = v
        shapes[p.name] = (problem.horizon + 1, *p.shape)
    return out, shapes


def batch_size_of(parameters: Sequence[Parameter], values: dict[str, Any],
                  extra: dict[str, tuple[tuple[int, ...], Any]] | None = None,
                  shapes: dict[str, tuple[int, ...]] | None = None) -> int | None:
    """The shared leading batch size, or None when nothing is batched.

    ``values`` are arrays; each must have the parameter's shape (``shapes[name]`` where
    given: a time-varying one's includes its time axis), or one more leading dimension.
    ``extra`` adds call-time inputs (``u_init``) as name -> (unbatched shape, array).
    """
    given = shapes or {}
    shapes = {p.name: (given.get(p.name, p.shape), values[p.name]) for p in parameters}
    shapes.update(extra or {})
    sizes: dict[str, int] = {}
    for name, (shape, value) in shapes.items():
        got = tuple(value.shape)
        if got == shape:
            continue
        if len(got) == len(shape) + 1 and got[1:] == shape:
            sizes[name] = got[0]
            continue
        raise InputError(f"{name!r} expects shape {shape} or (B, {', '.join(map(str, shape))})"
                         .replace("(B, )", "(B,)") + f", got {got}")
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{k}: {v}" for k, v in sizes.items())
        raise InputError(f"batched inputs must share one batch size, got {listed}")
    return next(iter(sizes.values()), None)


def check_warm_start(compiled: Any, u_init: Any, y_init: Any) -> None:
    """Warm starts the problem kind and the backend take: ``u_init`` for control problems,
    ``y_init`` for generic ones; a backend without warm starts says so."""
    from diffcontrol.dsl.problems import ControlProblem

    control = isinstance(compiled.problem, ControlProblem)
    wrong = ("y_init", "u_init") if control else ("u_init", "y_init")
    if (y_init if control else u_init) is not None:
        raise InputError(f"{wrong[0]}= warm-starts {'generic' if control else 'control'} problems; "
                         f"this is a {'control' if control else 'generic'} problem: pass {wrong[1]}=")
    given = u_init if control else y_init
    if given is not None and not compiled.spec.warm_start:
        raise InputError(f"backend '{compiled.backend}' takes no warm start; drop {wrong[1]}=")


def warm_start_inputs(problem: Any, u_init: Any, y_init: Any) -> dict[str, tuple[tuple[int, ...], Any]]:
    """The warm start as name -> (unbatched shape, value), for batch sizing and checks:
    ``u_init`` (T, m), or one entry per variable of ``y_init`` (a tuple like the result)."""
    if u_init is not None:
        return {"u_init": ((problem.horizon, problem.m), u_init)}
    if y_init is None:
        return {}
    variables = problem.variables()
    items = tuple(y_init) if isinstance(y_init, (tuple, list)) else (y_init,)
    if len(items) != len(variables):
        raise InputError(f"y_init must be a tuple of {len(variables)} arrays, one per variable "
                         f"({', '.join(f'{v.name}{v.shape}' for v in variables)}), got {len(items)}")
    return {f"y_init[{i}]": (v.shape, item) for i, (v, item) in enumerate(zip(variables, items))}


def check_finite(values: dict[str, Any], is_finite: Callable[[Any], bool]) -> None:
    """Non-finite inputs raise SolverError before any solve."""
    for name, value in values.items():
        if not is_finite(value):
            raise SolverError(f"input {name!r} contains NaN or Inf; no solve was attempted")


def check_nonneg(parameters: Sequence[Parameter], values: dict[str, Any], is_nonneg: Callable[[Any], bool]) -> None:
    """A negative value of a parameter declared ``nonneg=True`` raises InputError: the problem
    was analysed (its convexity, the cone backend's canonicalisation) on that sign."""
    for p in parameters:
        if p.nonneg and not is_nonneg(values[p.name]):
            raise InputError(f"parameter {p.name!r} is declared nonneg=True, but its value has a negative entry; "
                             "the problem was compiled for nonnegative values of it (convexity rests on that "
                             "sign): pass values >= 0, or declare it without nonneg=True")


def expand_to_batch(parameters: Sequence[Parameter], values: dict[str, Any], batch: int,
                    broadcast: Callable[[Any, tuple[int, ...]], Any],
                    shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, Any]:
    """Every parameter with a leading batch dimension (unbatched ones broadcast, no copy)."""
    out = {}
    for p in parameters:
        v, shape = values[p.name], (shapes or {}).get(p.name, p.shape)
        out[p.name] = v if tuple(v.shape) == (batch,) + shape else broadcast(v, (batch,) + shape)
    return out


def non_finite_examples(xp: Any, outputs: Sequence[Any], info: Any, values: Sequence[Any] = ()) -> Any:
    """(B,) bool: the examples whose outputs or residual hold NaN or Inf, or whose ``values``
    (inputs (B, ...): passed where the call could not check them, under ``jax.jit``) do. The
    examples a solver's verdict already gives NaN outputs (cone: infeasible, unbounded,
    failed) are left to that verdict."""
    from diffcontrol.errors import Status

    B = info.converged.shape[0]
    bad = ~xp.isfinite(info.residual)
    for a in (*outputs, *values):
        bad = bad | ~xp.isfinite(a.reshape(B, -1)).all(-1)
    for verdict in (Status.INFEASIBLE, Status.UNBOUNDED, Status.SOLVER_FAILED):
        bad = bad & (info.status != verdict.code)
    return bad


def non_finite_message(statuses: list) -> str | None:
    """The SolverError's message for the examples marked NON_FINITE, or None if there are none."""
    from diffcontrol.errors import Status

    examples = [i for i, s in enumerate(statuses) if s is Status.NON_FINITE]
    if not examples:
        return None
    return (f"NaN or Inf in the solution of {len(examples)} of {len(statuses)} examples (batch elements "
            f"{listed(examples)}): "
            "either the dynamics, the cost or their derivatives (a dc.Function among them, or dc.log / dc.sqrt / "
            "a division outside its domain) evaluated to a non-finite value or overflowed at an iterate the "
            "solver reached, or a matrix that must be positive definite was not (a cost that is not strictly "
            "convex in u on lqr: add e.g. 1e-6 * dc.sum_squares(u)). Check the functions' domains and the "
            "inputs' scale, or warm-start nearer a solution")


def report_saddles(statuses: list, batch: int) -> None:
    """Warn (:class:`~diffcontrol.errors.SaddlePointWarning`) where converged examples sit at a
    stationary point that is not a local minimum (``statuses``: each example's Status)."""
    import warnings

    from diffcontrol.errors import SaddlePointWarning, Status

    n = sum(s is Status.SADDLE_POINT for s in statuses)
    if n:
        warnings.warn(f"{n} of {batch} examples converged to a stationary point that is not a local minimum "
                      "(the Hessian of the Lagrangian is not positive definite on their free controls: a saddle "
                      "or a maximum; info.status says which); start them elsewhere (u_init=) to reach a minimum",
                      SaddlePointWarning, stacklevel=user_stacklevel())


def user_stacklevel() -> int:
    """The ``stacklevel`` for a ``warnings.warn`` in the caller that attributes the warning to
    the first frame outside diffcontrol, torch and JAX (the user's line, so that filters such as
    ``-W error::dc.NotConvergedWarning:mymodule`` match), however deep the call went."""
    import sys

    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] in _LIBRARY_MODULES:
        frame, level = frame.f_back, level + 1
    return level if frame is not None else 1


_LIBRARY_MODULES = ("diffcontrol", "torch", "jax", "jaxlib", "functools")


def nonconvergence_message(n_bad: int, batch: int, worst: float, tol: float, statuses: list = (),
                           raising: bool = False) -> str:
    counts: dict[str, int] = {}
    for s in statuses:
        counts[s.value] = counts.get(s.value, 0) + 1
    why = "; ".join(f"{text} ({k})" for text, k in counts.items())
    from diffcontrol.errors import Status

    if statuses and all(s is Status.GOAL_NOT_MET for s in statuses):
        advice = ("their outputs are not solutions and their gradients are NaN: check that the goal can be reached "
                  "(controllability, the box), or raise max_iter")
    elif statuses and all(s is Status.INFEASIBLE_SOLUTION for s in statuses):
        advice = ("their outputs violate the constraints and their gradients rest on that point: check that the "
                  "constraints can be met together (with x_0 and the box); for ilqr, raise outer_max_iter or "
                  "constraint_tol")
    else:
        advice = ("raise max_iter or warm-start (u_init= / y_init=)" if raising else
                  "their gradients rest on a fixed point that was not reached. Raise max_iter, warm-start, "
                  "or pass on_nonconvergence='raise' to stop here")
    return (f"{n_bad} of {batch} examples did not converge (largest residual {worst:.2e} > tol "
            f"{tol:.1e}{'; ' + why if why else ''}); {advice}")


def output_order(problem: Any, variables: Sequence[Any] | None) -> tuple[int, ...] | None:
    """Which of the solve's results (a ControlProblem's (x, u), a Problem's variables in order
    of first appearance) the layer returns, in the order of ``variables``: the decision
    variables themselves or their names, each at most once. None: all, in the solve's order."""
    if variables is None:
        return None
    from diffcontrol.dsl.problems import ControlProblem

    results = [problem.state, problem.control] if isinstance(problem, ControlProblem) else problem.variables()
    listed = ", ".join(v.name for v in results)
    if isinstance(variables, (str, bytes)) or not isinstance(variables, Sequence):
        raise ModelError(f"variables= takes a list of the problem's variables ({listed}) or their names, "
                         f"got {variables!r}")
    order = []
    for v in variables:
        if isinstance(v, str):
            matches = [i for i, r in enumerate(results) if r.name == v]
            if len(matches) > 1:
                raise ModelError(f"two of the problem's variables are named {v!r}: pass the variables themselves")
        else:
            matches = [i for i, r in enumerate(results) if r is v]
        if not matches:
            raise ModelError(f"variables= names {getattr(v, 'name', v)!r}, which is not a decision variable of "
                             f"this problem (its results: {listed})")
        if matches[0] in order:
            raise ModelError(f"variables= lists {results[matches[0]].name} twice")
        order.append(matches[0])
    return tuple(order)


def warm_start_in_solve_order(problem: Any, order: tuple[int, ...] | None, y_init: Any) -> Any:
    """A generic problem's ``y_init``, given in the layer's order (``order``, see
    :func:`output_order`), in the solve's order; a warm start needs every variable."""
    if order is None or y_init is None or not hasattr(problem, "variables"):
        return y_init
    n_results = len(problem.variables())
    items = tuple(y_init) if isinstance(y_init, (tuple, list)) else (y_init,)
    if len(order) != n_results or len(items) != n_results:
        raise InputError(f"y_init warm-starts every variable: this layer returns {len(order)} of the problem's "
                         f"{n_results}; compile a layer that returns all of them to warm-start it")
    solve_order = [None] * n_results
    for position, index in enumerate(order):
        solve_order[index] = items[position]
    return tuple(solve_order)
