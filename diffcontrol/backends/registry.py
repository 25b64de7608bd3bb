"""What each backend can take, as data; selection matches it against a ProblemForm.

A requirement names a fact of :class:`~diffcontrol.compilers.analysis.ProblemForm`,
the values the backend accepts, and the words for a rejection.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from types import ModuleType


@dataclass(frozen=True)
class Requirement:
    fact: str
    allowed: tuple[str, ...]
    needs: str
    alternative: str = ""


@dataclass(frozen=True)
class Capabilities:
    name: str
    summary: str
    kinds: tuple[str, ...]
    requirements: tuple[Requirement, ...] = ()
    module: str | None = None  # None: not available yet

    @property
    def available(self) -> bool:
        return self.module is not None

    def load(self) -> ModuleType:
        return import_module(self.module)


_QUADRATIC = ("quadratic, convex", "quadratic, convexity unknown")
_SMOOTH = _QUADRATIC + ("smooth", "opaque")

#: In order of preference: the most structured solver that takes a problem wins.
BACKENDS: tuple[Capabilities, ...] = (
    Capabilities(
        "lqr",
        "batched Riccati solve of time-varying LQR with box-constrained controls; "
        "backward = one LQR solve with the active set frozen",
        kinds=("control",),
        requirements=(
            Requirement("dynamics", ("affine",), "dynamics affine in (x, u)",
                        "'ilqr' takes smooth nonlinear dynamics"),
            Requirement("stage cost", _QUADRATIC, "a quadratic stage cost", "'ilqr' takes smooth costs"),
            Requirement("terminal cost", ("none",) + _QUADRATIC, "a quadratic terminal cost",
                        "'ilqr' takes smooth costs"),
            Requirement("constraints", ("none", "box on controls"),
                        "no constraints other than box bounds on the controls",
                        "'cone' takes general convex constraints"),
        ),
        module="diffcontrol.backends.lqr",
    ),
    Capabilities(
        "ilqr",
        "box-constrained iLQR for smooth nonlinear dynamics and costs; backward = one LQR solve "
        "on the Hessian of the Lagrangian (exact implicit gradients)",
        kinds=("control",),
        requirements=(
            Requirement("dynamics", ("affine", "smooth", "opaque"), "smooth dynamics",
                        "write the dynamics with smooth atoms"),
            Requirement("stage cost", _SMOOTH, "a smooth stage cost", "write the cost with smooth atoms"),
            Requirement("terminal cost", ("none",) + _SMOOTH, "a smooth terminal cost",
                        "write the cost with smooth atoms"),
            Requirement("constraints", ("none", "box on controls"),
                        "no constraints other than box bounds on the controls",
                        "'cone' takes general convex constraints"),
        ),
        module="diffcontrol.backends.ilqr",
    ),
    Capabilities(
        "ift_cg",
        "generic unconstrained argmin; implicit-function-theorem gradients by conjugate gradient "
        "on Hessian-vector products",
        kinds=("generic",),
        requirements=(
            Requirement("constraints", ("none",), "an unconstrained problem",
                        "'cone' takes convex problems with constraints"),
            Requirement("objective", ("convex, smooth", "smooth", "opaque"), "a smooth objective",
                        "'cone' takes nonsmooth convex objectives"),
        ),
        module="diffcontrol.backends.ift_cg",
    ),
    Capabilities(
        "cone",
        "convex problems as cone programs through cvxpy, cvxpylayers and diffcp; backward = "
        "diffcp's derivative of the cone program's optimality conditions",
        kinds=("control", "generic"),
        requirements=(
            Requirement("convexity", ("convex",), "a convex problem (affine dynamics, convex "
                        "objective and constraints by DCP rules)",
                        "'ilqr' and 'ift_cg' take smooth nonconvex problems without constraints"),
        ),
        module="diffcontrol.backends.cone",
    ),
)

BY_NAME = {b.name: b for b in BACKENDS}
