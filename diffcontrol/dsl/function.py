"""Opaque differentiable functions (a ``torch.nn.Module``, a torch or JAX callable)."""

from __future__ import annotations

from typing import Any

from diffcontrol.dsl.expression import Expression, as_expression, as_shape
from diffcontrol.errors import ModelError


class Function:
    """``dc.Function(fn, shape)``: calling it on expressions gives an expression of ``shape``.

    ``fn`` receives one array per argument, without a batch dimension (the
    layer vectorises it with ``vmap``), and must return an array of ``shape``.
    A ``torch.nn.Module``'s weights stay learnable: the torch layer registers it.
    """

    def __init__(self, fn: Any, shape: Any, name: str | None = None):
        if not callable(fn):
            raise ModelError(f"dc.Function needs a callable, got {type(fn).__name__}")
        self.fn = fn
        self.shape = () if shape == () else as_shape(shape)
        self.name = name or getattr(fn, "__name__", None) or type(fn).__name__

    def __call__(self, *args: Any) -> FunctionCall:
        if not args:
            raise ModelError(f"{self.name}() needs at least one argument")
        return FunctionCall(self, [as_expression(a) for a in args])

    def __repr__(self) -> str:
        return f"Function({self.name}, shape={self.shape})"


class FunctionCall(Expression):
    """An application of an opaque :class:`Function`: smooth, never polynomial."""

    def __init__(self, function: Function, args: list[Expression]):
        self.function = function
        self.args = tuple(args)
        self.shape = function.shape

    def check_shape(self, out: Any, batched: bool = False) -> Any:
        """``out`` (the function's value; with ``batched``, a batch of them) if its shape is the
        declared one, else a ModelError."""
        shape = tuple(out.shape[1:] if batched else out.shape)
        if shape != self.shape:
            raise ModelError(
                f"dc.Function {self.function.name} declared shape {self.shape} "
                f"but returned shape {shape}"
            )
        return out

    def evaluate(self, xp, values):  # the evaluator calls the function itself (it needs vmap)
        raise AssertionError("dc.Function calls are evaluated by the evaluator")

    def render(self, s):
        return f"{self.function.name}({', '.join(s)})"
