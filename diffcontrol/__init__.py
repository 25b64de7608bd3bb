"""diffcontrol: optimal control and optimisation problems as differentiable layers.

The public names of ``../API.md``; importing this never imports JAX.
"""

from diffcontrol import models
from diffcontrol.compilers.compiled import CompiledProblem
from diffcontrol.dsl.constraints import Constraint, Equality, Inequality
from diffcontrol.dsl.constructors import (
    abs,
    atan2,
    concat,
    cos,
    exp,
    log,
    norm2,
    quad_form,
    sin,
    sqrt,
    square,
    stack,
    sum,
    sum_squares,
    tan,
    tanh,
)
from diffcontrol.dsl.expression import Expression
from diffcontrol.dsl.function import Function
from diffcontrol.dsl.leaves import Control, Parameter, State, Variable
from diffcontrol.dsl.problems import ControlProblem, Maximize, Minimize, Problem
from diffcontrol.errors import (
    BackendError,
    GradientFallbackWarning,
    InputError,
    ModelError,
    NotConvergedWarning,
    SolverError,
    Status,
)

__version__ = "0.1.0"

__all__ = [
    "BackendError", "CompiledProblem", "Constraint", "Control", "ControlProblem", "Equality",
    "Expression", "Function", "GradientFallbackWarning", "Inequality", "InputError", "Maximize",
    "Minimize", "ModelError",
    "NotConvergedWarning", "Parameter", "Problem", "SolverError", "State", "Status", "Variable", "abs",
    "atan2", "concat", "cos", "exp", "log", "models", "norm2", "quad_form", "sin", "sqrt", "square",
    "stack", "sum", "sum_squares", "tan", "tanh",
]
