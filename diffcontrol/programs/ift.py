"""The ift_cg program: an unconstrained generic Problem, evaluated per call.

The backend sees one flat decision vector y (B, n): the problem's variables,
each flattened (C order) and concatenated in the order of ``prob.variables()``.
:class:`Objective` evaluates f(y; theta), its gradient, Hessian-vector products
and (for the dense oracle) Hessian for a batch with the emitter's framework
(autodiff, vectorised over the batch), which is also how a ``dc.Function`` is
differentiated.

For the implicit backward, :meth:`IFTProgram.implicit_inputs` evaluates, with
the framework's autodiff recording, the gradient grad_y f(y*; theta) at the
(fixed) solution: by the implicit function theorem its cotangent is -g with
H g = dL/dy, which the backend returns, and the framework carries it on to the
Parameters and dc.Function weights (-g^T d2f/dy dtheta, Algorithm 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from diffcontrol.dsl.leaves import Parameter, Variable
from diffcontrol.dsl.problems import Problem
from diffcontrol.programs.evaluate import Framework, constant_arrays, evaluate_batched


@dataclass(frozen=True)
class IFTProgram:
    """The objective, the variables (their shapes and offsets in y) and the parameters."""

    problem: Problem
    variables: tuple[Variable, ...]
    parameters: tuple[Parameter, ...]
    opaque: tuple[str, ...]  # names of the dc.Functions the objective calls

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return [v.shape for v in self.variables]

    @property
    def size(self) -> int:
        """n: the length of the flat decision vector y."""
        return int(sum(np.prod(s, dtype=int) for s in self.shapes))

    def data(self, fw: Framework, params: dict[str, Any], like: Any) -> dict[str, Any]:
        return {"objective": Objective(self, fw, params, like), "like": like, "shapes": self.shapes}

    def implicit_inputs(self, fw: Framework, params: dict, data: dict, saved: dict) -> dict[str, Any]:
        """grad_y f(y*; theta) (B, n) at the solution, recorded by the framework's autodiff."""
        return {"grad_y": data["objective"].gradient(saved.y)}

    def split(self, xp: Any, y: Any) -> list:
        """The variables' values (B, *shape) from y (B, n)."""
        out, start = [], 0
        for shape in self.shapes:
            size = int(np.prod(shape, dtype=int))
            out.append(y[:, start:start + size].reshape((y.shape[0],) + tuple(shape)))
            start += size
        return out

    def join(self, xp: Any, values: list) -> Any:
        """y (B, n) from the variables' values (B, *shape)."""
        return xp.concatenate([v.reshape(v.shape[0], -1) for v in values], 1)

    def _value(self, fw: Framework, p: dict, y: Any, ref: Any, constants: dict | None = None) -> Any:
        """f(y; p) (B,) for a batch y (B, n), parameters p (B, ...), in one pass."""
        env = {id(q): p[q.name] for q in self.parameters if q.name in p}
        env.update((id(v), value) for v, value in zip(self.variables, self.split(fw.xp, y)))
        return evaluate_batched([self.problem.objective.expr], env, fw, ref, constants)[0]


class Objective:
    """f, its gradient, Hessian-vector products and Hessian for one batch of parameters.
    y and v are (B, n); every method is vectorised over the batch."""

    def __init__(self, program: IFTProgram, fw: Framework, params: dict[str, Any], like: Any):
        self.program, self.fw, self.params, self.like = program, fw, params, like
        self._constants = constant_arrays([program.problem.objective.expr], fw, like)

        def point(p: dict, y: Any, ref: Any) -> Any:  # one example: y (n,), for the Hessian
            return program._value(fw, {k: v[None] for k, v in p.items()}, y[None], ref)[0]

        # the examples are independent, so the gradient of the batch's total is theirs
        self._gradient = fw.grad(lambda y: self.value(y).sum())
        self._hessian = fw.vmap(fw.hessian(point, argnums=1))

    def value(self, y: Any) -> Any:
        """f (B,)."""
        f = self.program._value(self.fw, self.params, y, self.like, self._constants)
        return self.fw.xp.broadcast_to(f, y.shape[:1])

    def gradient(self, y: Any) -> Any:
        """grad_y f (B, n)."""
        return self._gradient(y)

    def hessian(self, y: Any) -> Any:
        """The Hessian (B, n, n), formed explicitly: the dense oracle and small-n Newton."""
        return self._hessian(self.params, y, self.like)

    def hvp_operator(self, y: Any) -> Any:
        """v -> H(y) v for repeated products at one y (CG): the gradient is differentiated
        once, each product is then one backward pass."""
        return self.fw.hvp_operator(self.value, y)
