"""diffcontrol: optimal control and optimisation problems as differentiable layers.

The public names of ``../API.md``; importing this never imports JAX.
"""

from diffcontrol import models
from diffcontrol.backends.base import Info
from diffcontrol.compilers.compiled import CompiledProblem
from diffcontrol.dsl.constraints import Constraint, Equality, Inequality
from diffcontrol.dsl.constructors import (
    abs,
    atan2,
    concat,
    cos,
    diag,
    exp,
    hstack,
    huber,
    log,
    log_sum_exp,
    logistic,
    logsumexp,
    max,
    maximum,
    mean,
    min,
    minimum,
    multiply,
    norm,
    norm1,
    norm2,
    norm_inf,
    pos,
    quad_form,
    reshape,
    sin,
    softplus,
    sqrt,
    square,
    stack,
    sum,
    sum_squares,
    tan,
    tanh,
    vstack,
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
    SaddlePointWarning,
    SolverError,
    Status,
)
from diffcontrol.mpc import MPCPolicy, shift

__version__ = "0.1.0"

__all__ = [
    "BackendError", "CompiledProblem", "Constraint", "Control", "ControlProblem", "Equality",
    "Expression", "Function", "GradientFallbackWarning", "Inequality", "Info", "InputError", "Maximize",
    "MPCPolicy", "Minimize", "ModelError",
    "NotConvergedWarning", "Parameter", "Problem", "SaddlePointWarning", "SolverError", "State", "Status",
    "Variable", "abs",
    "atan2", "concat", "cos", "diag", "exp", "hstack", "huber", "log", "log_sum_exp", "logistic",
    "logsumexp", "max", "maximum", "mean", "min", "minimum", "models", "multiply", "norm", "norm1",
    "norm2", "norm_inf", "pos", "quad_form", "reshape", "shift", "sin", "softplus", "sqrt", "square", "stack",
    "sum", "sum_squares", "tan", "tanh", "vstack",
]

#: Names users reach for that mean one of ours (other libraries' spellings).
_ALIASES = {
    "relu": "pos", "clip": "maximum / minimum", "abs2": "square", "norm_2": "norm2", "l1_norm": "norm1",
    "log1p_exp": "softplus", "smooth_l1": "huber", "amax": "max", "amin": "min", "average": "mean",
    "concatenate": "concat", "transpose": "expr.T", "matmul": "the @ operator", "dot": "the @ operator",
    "power": "the ** operator", "inv_pos": "1 / x (on smooth backends)", "sum_largest": "max",
    "arctan2": "atan2", "Constant": "a plain number or NumPy array",
}


def __getattr__(name: str):
    """A missing name raises AttributeError naming the closest existing one."""
    import difflib

    hint = _ALIASES.get(name)
    if hint is None:
        close = difflib.get_close_matches(name, __all__, n=3, cutoff=0.6)
        hint = " or ".join(f"dc.{c}" for c in close) if close else None
    elif not hint.startswith(("the", "expr", "a ", "1 /")):
        hint = " or ".join(f"dc.{h.strip()}" for h in hint.split("/"))
    text = f"module 'diffcontrol' has no attribute {name!r}"
    raise AttributeError(f"{text}; did you mean {hint}?" if hint else
                         f"{text}; the atoms are listed in the docs' API reference")
