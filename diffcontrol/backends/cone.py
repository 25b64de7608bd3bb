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

import threading
import warnings
from typing import Any

import numpy as np

from diffcontrol.backends.base import Info
from diffcontrol.backends.ops import Ops
from diffcontrol.errors import GradientFallbackWarning, SolverError, Status, listed

# cvxpylayers converts tensors with np.array(t) in its backward (outside any call of ours);
# NumPy 2 warns about that for every call. It is cvxpylayers' business, not the user's.
warnings.filterwarnings("ignore", message="__array__ implementation doesn't accept a copy keyword",
                        category=DeprecationWarning)

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


_LSMR_NOTE = ("this cone program (size N = {size}: variables + constraint rows) is above dense_max_size = {limit}, "
              "so derivative='auto' differentiates it with diffcp's iterative lsmr: its gradients are approximate "
              "(1.4e-5 relative on a size-3000 LQ, where the dense derivative gives 6e-12 at about 6x the time). "
              "Pass derivative='dense' (or a larger dense_max_size) for exact gradients, or derivative='lsmr' to "
              "accept them without this warning")


def solve(data: dict, options: dict, ops: Ops, init: Any = None) -> tuple[tuple, Info, None]:
    """Solve the batch; outputs in the dtype and on the device of ``data["like"]``."""
    like = data["like"]
    args = [ops.as_float64_cpu(v) for v in data["derived"]]
    _check_finite_data([ops.to_numpy(a) for a in args], like.shape[0])
    kwargs = solver_args(options, data["size"], ops.needs_grad(data["derived"]))
    if kwargs.get("mode") == "lsmr" and options["derivative"] == "auto":
        warnings.warn(_LSMR_NOTE.format(size=data["size"], limit=options["dense_max_size"]), GradientFallbackWarning,
                      stacklevel=2)
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
    failed = [s in (Status.INFEASIBLE, Status.UNBOUNDED, Status.SOLVER_FAILED) for s in statuses]
    if any(failed) and ops.needs_grad(data["derived"]):
        # a failed example's NaN outputs depend on no parameter: its gradient would be a silent
        # zero; it is NaN instead wherever the loss uses those outputs
        anchor = sum(a.reshape(B, -1).sum(-1) for a in data["derived"])
        outputs = ops.poison_gradient(outputs, ops.as_array(np.array(failed), like), anchor)
    return outputs, info, None  # (no saved state: cvxpylayers' autograd owns the backward)


def _check_finite_data(args: list, batch: int) -> None:
    """The cone program's parameters (B, ...), expressions of the dc.Parameters such as 1 / c,
    must be finite: a solver handed NaN or Inf prints to stdout and returns NaN. A SolverError
    naming the examples instead, before any solve."""
    bad = np.zeros(batch, dtype=bool)
    for a in args:
        bad |= ~np.isfinite(np.asarray(a).reshape(batch, -1)).all(-1)
    if bad.any():
        rows = np.flatnonzero(bad).tolist()
        raise SolverError(f"the cone program's data is NaN or Inf for {len(rows)} of {batch} examples (batch "
                          f"elements {listed(rows)}): an expression of the parameters is undefined at these values "
                          "(a division by a parameter equal to 0, or the matrix of a quad_form that is not positive "
                          "semidefinite); no solve was attempted")


class _InaccurateLog:
    """diffcp reports an inaccurate solve only by ``warnings.warn("Solved/Inaccurate.")``.
    ``warnings.catch_warnings`` would capture it by swapping the process's warning machinery,
    swallowing every other thread's warnings meanwhile; instead a hook in front of
    ``warnings.showwarning`` takes diffcp's inaccuracy warnings while a cone solve runs (in any
    thread: diffcp may solve on a pool) and passes everything else on untouched. Two cone
    solves at once may each see the other's: both then re-solve one by one, which finds the
    true status of every example."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active = 0
        self.seen = 0
        self.installed: Any = None

    def hook(self, previous: Any) -> Any:
        def showwarning(message, category, filename, lineno, file=None, line=None):
            if self.active and "diffcp" in str(filename) and "naccurate" in str(message):
                with self.lock:
                    self.seen += 1
                return
            previous(message, category, filename, lineno, file, line)

        return showwarning

    def __enter__(self) -> int:
        with self.lock:
            if warnings.showwarning is not self.installed:  # (re)install in front of whatever is there
                self.installed = warnings.showwarning = self.hook(warnings.showwarning)
            # shown every time, not once per location, so that each solve can see its own
            warnings.filterwarnings("always", message="Solved/Inaccurate", category=UserWarning)
            self.active += 1
            return self.seen

    def __exit__(self, *exc: Any) -> None:
        with self.lock:
            self.active -= 1


_INACCURATE = _InaccurateLog()


def _call(layer: Any, args: list, kwargs: dict) -> tuple[list | None, str | None]:
    """One cvxpylayers call: (solutions, None), or (solutions or None, what went wrong)."""
    import diffcp

    with _INACCURATE as before:
        try:
            solutions = list(layer(*args, solver_args=kwargs))
        except diffcp.SolverError as e:  # infeasible, unbounded, or the solver gave up
            return None, str(e) or type(e).__name__
        inaccurate = _INACCURATE.seen > before
    return solutions, ("Solved/Inaccurate." if inaccurate else None)


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
