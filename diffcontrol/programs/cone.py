"""The cone program: a DPP cvxpy problem, canonicalised once for cvxpylayers, and the
values of its derived parameters, evaluated per call.

A ControlProblem is unrolled over its horizon with one cvxpy expression per
declared expression: states ``X`` (n, T+1) and controls ``U`` (m, T), time by
columns, dynamics ``X[:, 1:] == f(X[:, :T], U)``, stage constraints on the
columns t = 0..T-1, cost ``sum(stage cost over t) + terminal(X[:, T])``.
A generic Problem maps its variables one to one.

The cvxpy problem's parameters are the :class:`DerivedParameter` s of
:mod:`~diffcontrol.compilers.to_cvxpy`; :meth:`ConeProgram.data` computes their
values with the layer's framework, so gradients reach the dc.Parameters through
that framework's autodiff, and cvxpylayers (diffcp underneath) differentiates
the cone program itself.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import cvxpy as cp
import numpy as np

from diffcontrol.dsl.expression import Expression
from diffcontrol.dsl.leaves import Parameter
from diffcontrol.dsl.problems import ControlProblem, Problem
from diffcontrol.dsl.traverse import nodes_of_type
from diffcontrol.programs.evaluate import Framework, evaluate

#: How a derived parameter's value follows from its DSL expression's value ``v``.
TRANSFORMS = {
    "value": lambda xp, v: v,
    "reciprocal": lambda xp, v: 1.0 / v,
    # x^T P x = ||L x||^2 with L^T L = P: quad_form with a parameter matrix in DPP form.
    "psd_factor": lambda xp, v: psd_factor(xp, v),
}


def psd_factor(xp: Any, v: Any) -> Any:
    """L (n, n) with L^T L = P for P = (v + v^T) / 2 (n, n), one example (vmapped): the
    transposed Cholesky factor where P is positive definite, the eigen-factor
    sqrt(max(w, 0)) V^T where it is singular (still convex), and NaN where P has a negative
    eigenvalue (the cone backend then refuses the example, named). Each branch is fed a
    matrix it handles (the other's rows are swapped for I or diag(1..n)): a failed Cholesky,
    or an eigen-decomposition's gradient at repeated eigenvalues, would poison the selected
    branch's gradient through ``where``."""
    P = 0.5 * (v + v.mT)
    w = xp.linalg.eigvalsh(P)
    scale = xp.clip(xp.max(xp.abs(w)), 1.0)
    singular, indefinite = w[0] <= 1e-8 * scale, w[0] < -1e-8 * scale
    ones = xp.ones_like(w)
    chol = xp.linalg.cholesky(xp.where(singular, xp.diag(ones), P)).mT
    w_s, V = xp.linalg.eigh(xp.where(singular, P, xp.diag(xp.cumsum(ones, 0))))
    eigen = xp.sqrt(xp.clip(w_s, 0.0))[:, None] * V.mT
    return xp.where(indefinite, float("nan"), xp.where(singular, eigen, chol))


@dataclass(frozen=True)
class DerivedParameter:
    """A cvxpy Parameter whose value is ``TRANSFORMS[transform]`` of a DSL expression."""

    parameter: cp.Parameter
    expr: Expression
    transform: str = "value"
    #: the stage t whose rows of the time-varying parameters it reads (None: none)
    stage: int | None = None

    def describe(self) -> str:
        what = {"value": "{}", "reciprocal": "1 / ({})", "psd_factor": "psd_factor({})"}[self.transform]
        at = "" if self.stage is None else f"   (time-varying: at t = {self.stage})"
        return f"{self.parameter.name()} = {what.format(self.expr)}{at}"


@dataclass(frozen=True)
class ConeProgram:
    """The cvxpy problem, its derived parameters, and the cvxpy variables the layer returns:
    ``(X, U)`` (time by columns) for a control problem, else the problem's variables."""

    problem: ControlProblem | Problem
    parameters: tuple[Parameter, ...]
    cvx: cp.Problem
    derived: tuple[DerivedParameter, ...]
    returned: tuple[cp.Variable, ...]
    # canonicalised cvxpylayers layers per framework, and the size: a pure cache, never per-call state
    _cache: dict = field(default_factory=dict, compare=False, repr=False, kw_only=True)
    _lock: Any = field(default_factory=threading.Lock, compare=False, repr=False, kw_only=True)

    def layer(self, framework: str) -> Any:
        """The cvxpylayers layer for ``framework`` ("torch" or "jax"), canonicalised on first use."""
        with self._lock:
            if framework not in self._cache:
                self._cache[framework] = _make_layer(framework, self.cvx, self.derived, self.returned)
            return self._cache[framework]

    def data(self, fw: Framework, params: dict[str, Any], like: Any) -> dict[str, Any]:
        """The derived parameters' values, each (B, *shape), vectorised over the batch."""
        names = {p.name for p in nodes_of_type([d.expr for d in self.derived], Parameter)}
        sub = {k: v for k, v in params.items() if k in names}
        stages: dict[int | None, list[int]] = {}
        for i, d in enumerate(self.derived):
            stages.setdefault(d.stage, []).append(i)

        def one(p: dict, ref: Any) -> list:
            out: list = [None] * len(self.derived)
            for t, indices in stages.items():  # time-varying parameters (T+1, ...) give row t
                env = {id(q): p[q.name][t] if q.time_varying else p[q.name]
                       for q in self.parameters if q.name in p and (t is not None or not q.time_varying)}
                values = evaluate([self.derived[i].expr for i in indices], env, fw, ref)
                for i, v in zip(indices, values):
                    out[i] = TRANSFORMS[self.derived[i].transform](fw.xp, v)
            return out

        values = fw.vmap(one)(sub, like) if self.derived else []
        return {"layer": self.layer(fw.name), "derived": values, "like": like, "size": self.size,
                "shapes": [v.shape for v in self.returned], "unpack": self.unpack, "residual": self.residual}

    @property
    def size(self) -> int:
        """Variables plus constraint rows of the cone program: diffcp's dense derivative
        factorises a matrix of about this order."""
        with self._lock:
            if "size" not in self._cache:
                self._cache["size"] = sum(self.cone_program()["A"].shape)
            return self._cache["size"]

    def cone_program(self) -> dict:
        """cvxpy's problem data in the form diffcp solves (SCS's cones, a quadratic objective
        as a second-order cone): "A", "b", "c", "dims"."""
        return self.cvx.get_problem_data(cp.SCS, solver_opts={"use_quad_obj": False})[0]

    def unpack(self, solutions: list) -> tuple:
        """The layer's results from the cvxpy variables' batched values: (x, u) of shapes
        (B, T+1, n) and (B, T, m) for a control problem, else one array per variable."""
        if isinstance(self.problem, ControlProblem):
            X, U = solutions
            return X.mT, U.mT
        return tuple(solutions)

    def residual(self, values: list, solutions: list) -> np.ndarray:
        """Scaled primal infeasibility (B,) of returned solutions, evaluated by cvxpy itself:
        the largest constraint violation over 1 + the largest entry of the solution."""
        B = len(solutions[0]) if solutions else 0
        out = np.zeros(B)
        with self._lock:  # the values live on the shared cvxpy objects
            self._residuals(values, solutions, out)
        return out

    def _residuals(self, values: list, solutions: list, out: np.ndarray) -> None:
        for i in range(len(out)):
            if not all(np.isfinite(s[i]).all() for s in solutions):
                out[i] = np.inf
                continue
            for d, v in zip(self.derived, values):
                d.parameter.value = v[i]
            for var, s in zip(self.returned, solutions):
                var.value = s[i]
            scale = 1.0 + max(float(np.abs(s[i]).max()) for s in solutions)
            worst = max((float(np.max(c.violation())) for c in self.cvx.constraints), default=0.0)
            out[i] = worst / scale if np.isfinite(worst) else np.inf


def _make_layer(framework: str, problem: cp.Problem, derived, returned) -> Any:
    if framework == "jax":
        from cvxpylayers.jax import CvxpyLayer
    else:
        from cvxpylayers.torch import CvxpyLayer

    return CvxpyLayer(problem, parameters=[d.parameter for d in derived], variables=list(returned))
