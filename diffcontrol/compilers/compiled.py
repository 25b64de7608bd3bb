"""CompiledProblem: an immutable artifact holding the analysis, the decision and the lowered IR."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from diffcontrol.backends.base import Backend, Solver
from diffcontrol.compilers.analysis import ProblemForm
from diffcontrol.compilers.selection import Decision
from diffcontrol.dsl.leaves import Parameter

if TYPE_CHECKING:
    from diffcontrol.emitters.jax_layer import JaxLayer
    from diffcontrol.emitters.torch_layer import TorchLayer


@dataclass(frozen=True)
class CompiledProblem:
    """The result of ``prob.compile()``. Holds no per-call state: one compiled problem may
    back several layers, used from several threads."""

    problem: Any
    form: ProblemForm
    decision: Decision
    program: Any
    spec: Backend
    solver: Solver = field(repr=False)
    options: dict[str, Any] = field(repr=False)

    @property
    def backend(self) -> str:
        """The chosen backend's name: "lqr", ..."""
        return self.spec.name

    @property
    def parameters(self) -> list[Parameter]:
        """The layer's inputs, in order of first appearance."""
        return list(self.program.parameters)

    def __reduce__(self) -> tuple:
        """Pickled (and deep-copied) as what it was compiled from: the problem, the backend and
        the options; loading compiles again, so host objects (the cone backend's cvxpylayers
        layer) are rebuilt rather than serialised."""
        from diffcontrol.compilers.compile import compile_problem

        return compile_problem, (self.problem, self.backend if self.decision.forced else "auto", dict(self.options))

    def tolerance(self, dtype: Any) -> float:
        """The convergence tolerance in force for ``dtype`` (the ``tol`` option or its default)."""
        tol = self.options.get("tol")
        return tol if tol is not None else _machine_epsilon(dtype) ** 0.5

    def explain(self) -> str:
        """The detected structure, the backend chosen and why the others were not, and the
        lowered problem."""
        from diffcontrol.explain import report

        return report(self.problem, self.form, self.decision, self.program, self.options)

    def to_torch(self, variables: Sequence[Any] | None = None) -> TorchLayer:
        """A ``torch.nn.Module`` that solves the problem for given parameters, differentiably.
        ``variables``: the decision variables (or their names) it returns, in that order
        (default: a ControlProblem's (x, u), a Problem's variables in order of first appearance)."""
        from diffcontrol.emitters.torch_layer import TorchLayer

        return TorchLayer(self, variables)

    def to_jax(self, variables: Sequence[Any] | None = None) -> JaxLayer:
        """A JAX function with a custom VJP, jit / vmap / grad-able (the cone backend: eager
        and grad only). Needs the ``jax`` extra: ``pip install 'diffcontrol[jax]'``.
        ``variables``: as for :meth:`to_torch`."""
        try:
            import jax  # noqa: F401
        except ImportError:
            from diffcontrol.errors import BackendError

            raise BackendError("to_jax() needs JAX: pip install 'diffcontrol[jax]'") from None
        from diffcontrol.emitters.jax_layer import JaxLayer

        return JaxLayer(self, variables)


def _machine_epsilon(dtype: Any) -> float:
    """Machine epsilon of a NumPy, JAX or torch floating dtype."""
    import numpy as np

    try:
        return float(np.finfo(dtype).eps)
    except (TypeError, ValueError):  # a torch dtype
        import torch

        return float(torch.finfo(dtype).eps)
