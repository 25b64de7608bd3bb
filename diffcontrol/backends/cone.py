"""The ``cone`` backend: convex problems as cone programs, solved and differentiated by
cvxpylayers with diffcp underneath.

Forward: the lowered cvxpy problem (canonicalised once, at compile) is solved for
the whole batch by one cvxpylayers call. If the solver fails or reports an
inaccurate solution for any example, the examples are solved one by one, so each
gets its own status, and a failed one NaN outputs. Every returned solution is
then checked by cvxpy itself: its scaled primal infeasibility is the residual
compared to ``tol``.

Backward: diffcp's derivative of the cone program's optimality conditions,
through cvxpylayers' autograd function; the framework's autodiff carries it on
to the dc.Parameters. Without a gradient, cvxpylayers solves only.
"""

from __future__ import annotations

import warnings
from typing import Any

import diffcp
import numpy as np

from diffcontrol.backends.kkt import Info
from diffcontrol.backends.ops import Ops
from diffcontrol.errors import BackendError, Status

NAME = "cone"

# cvxpylayers converts tensors with np.array(t) in its backward (outside any call of ours);
# NumPy 2 warns about that for every call. It is cvxpylayers' business, not the user's.
warnings.filterwarnings("ignore", message="__array__ implementation doesn't accept a copy keyword",
                        category=DeprecationWarning)

#: Options with their defaults and one line of documentation each.
OPTIONS = {
    "solver": ("SCS", "the cone solver diffcp calls: 'SCS' or 'Clarabel'"),
    "eps": (1e-9, "the solver's tolerance (SCS: eps_abs = eps_rel; Clarabel: tol_gap_abs, "
                   "tol_gap_rel, tol_feas)"),
    "max_iter": (100_000, "the solver's iteration limit"),
    "derivative": ("auto", "diffcp's derivative mode: 'dense' (exact, O(N^3) in the cone "
                           "program's size N), 'lsmr' / 'lsqr' (iterative, approximate), or 'auto': "
                           "dense up to dense_max_size, lsmr above"),
    "dense_max_size": (1000, "the largest cone program (variables + constraint rows) that "
                             "derivative='auto' differentiates densely"),
    "tol": (None, "the largest scaled primal infeasibility accepted in a returned solution "
                  "(checked by cvxpy); None: sqrt(machine epsilon) of the dtype"),
    "backward": ("implicit", "'implicit': diffcp's derivative of the cone program's optimality "
                             "conditions (the only mode)"),
    "on_nonconvergence": ("warn", "'warn' (NotConvergedWarning) or 'raise' (SolverError)"),
    "n_jobs": (1, "threads diffcp uses across a batch (-1: all cores)"),
}
BACKWARD_MODES = ("implicit",)
#: The solve is differentiable by the framework itself (cvxpylayers owns the backward).
DIFFERENTIABLE_SOLVE = True
#: diffcp's cvxpylayers path takes no warm start.
WARM_START = False

_SOLVERS = ("SCS", "Clarabel")
_MODES = ("auto", "dense", "lsmr", "lsqr")


def validate_options(options: dict) -> None:
    """Backend-specific checks, after the shared ones."""
    if options["solver"] not in _SOLVERS:
        raise BackendError(f"solver must be one of {', '.join(map(repr, _SOLVERS))}, got {options['solver']!r}")
    if options["derivative"] not in _MODES:
        raise BackendError(f"derivative must be one of {', '.join(map(repr, _MODES))}, "
                           f"got {options['derivative']!r}")
    if not (isinstance(options["eps"], float) and options["eps"] > 0):
        raise BackendError(f"eps must be a positive float, got {options['eps']!r}")
    if not isinstance(options["dense_max_size"], int) or options["dense_max_size"] < 0:
        raise BackendError(f"dense_max_size must be a nonnegative int, got {options['dense_max_size']!r}")
    if not isinstance(options["n_jobs"], int) or options["n_jobs"] == 0 or options["n_jobs"] < -1:
        raise BackendError(f"n_jobs must be a positive int or -1, got {options['n_jobs']!r}")


def solver_args(options: dict, size: int, differentiate: bool = True) -> dict:
    """The keyword arguments cvxpylayers hands to diffcp for a cone program of ``size``
    (diffcp's solve-only path takes no derivative mode)."""
    args: dict[str, Any] = {"solve_method": options["solver"], "n_jobs_forward": options["n_jobs"]}
    if differentiate:
        mode = options["derivative"]
        if mode == "auto":
            mode = "dense" if size <= options["dense_max_size"] else "lsmr"
        args.update(mode=mode, n_jobs_backward=options["n_jobs"])
    eps = options["eps"]
    if options["solver"] == "SCS":
        args.update(eps_abs=eps, eps_rel=eps, max_iters=options["max_iter"])
    else:
        args.update(tol_gap_abs=eps, tol_gap_rel=eps, tol_feas=eps, max_iter=options["max_iter"])
    return args


def solve(data: dict, options: dict, ops: Ops, init: Any = None) -> tuple[tuple, Info, dict]:
    """Solve the batch; outputs in the dtype and on the device of ``data["like"]``."""
    like = data["like"]
    args = [ops.as_float64_cpu(v) for v in data["derived"]]
    kwargs = solver_args(options, data["size"], ops.needs_grad(data["derived"]))
    solutions, trouble = _call(data["layer"], args, kwargs)
    B = like.shape[0]
    statuses = [Status.CONVERGED] * B
    if trouble is not None:  # find out which examples, and give each its status
        solutions, statuses = _one_by_one(data["layer"], args, kwargs, ops, data["shapes"])
    residual = data["residual"]([ops.to_numpy(a) for a in args], [ops.to_numpy(s) for s in solutions])
    tol = options["tol"] if options["tol"] is not None else ops.eps(like) ** 0.5
    for i, r in enumerate(residual):
        if statuses[i] is Status.CONVERGED and not r <= tol:
            statuses[i] = Status.INFEASIBLE_SOLUTION
    converged = ops.as_array(np.array([s is Status.CONVERGED for s in statuses]), like)
    info = Info(converged, ops.as_array(np.full(B, -1), like), ops.cast_like(ops.as_array(residual, like), like),
                ops.as_array(np.array([s.code for s in statuses]), like))
    outputs = tuple(ops.cast_like(o, like) for o in data["unpack"](solutions))
    return outputs, info, {}


def _call(layer: Any, args: list, kwargs: dict) -> tuple[list | None, str | None]:
    """One cvxpylayers call: (solutions, None), or (solutions or None, what went wrong)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            solutions = list(layer(*args, solver_args=kwargs))
        except diffcp.SolverError as e:  # infeasible, unbounded, or the solver gave up
            return None, str(e) or type(e).__name__
    inaccurate = [str(w.message) for w in caught if "inaccurate" in str(w.message).lower()]
    return solutions, (inaccurate[0] if inaccurate else None)


def _one_by_one(layer: Any, args: list, kwargs: dict, ops: Ops, shapes: list) -> tuple[list, list]:
    """Each example on its own: a status each, NaN solutions where the solver failed."""
    B = args[0].shape[0]
    per_example, statuses, template = [], [], None
    for i in range(B):
        solutions, trouble = _call(layer, [a[i:i + 1] for a in args], kwargs)
        statuses.append(_status(trouble))
        per_example.append(solutions)
        template = template or solutions
    if template is None:  # every example failed: shapes from the layer's variables
        template = [ops.as_array(np.zeros((1,) + tuple(shape)), args[0]) for shape in shapes]
    rows = [s if s is not None else [ops.full_like(ops.cast_like(t, args[0]), np.nan) for t in template]
            for s in per_example]
    return [ops.xp.concatenate(parts, 0) for parts in zip(*rows)], statuses


def _status(trouble: str | None) -> Status:
    if trouble is None:
        return Status.CONVERGED
    text = trouble.lower()
    if "inaccurate" in text:
        return Status.INACCURATE
    if "infeasible" in text:
        return Status.INFEASIBLE
    if "unbounded" in text:
        return Status.UNBOUNDED
    return Status.SOLVER_FAILED
