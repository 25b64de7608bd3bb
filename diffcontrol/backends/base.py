"""What a backend is: one :class:`Backend` record per backend, and the :class:`Solver`
protocol its solver module implements.

Selection reads a record's ``kinds`` and ``requirements``, ``compile()`` its
options and lowering, the emitters its capabilities (fields, never module
attributes), ``explain()`` its summary and lowered section. The solver module,
the lowering and the explain section are named by import path and loaded only
when the backend is chosen, so compiling an LQR never imports cvxpy.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import import_module
from typing import Any, Protocol

from diffcontrol.errors import BackendError
from diffcontrol.facts import Kind

# ---- options --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One option of ``compile()``: its default, one line of documentation, and the check of a
    given value (``check(value)`` is true for a valid one; ``expects`` words the rule)."""

    default: Any
    doc: str
    check: Callable[[Any], bool] | None = None
    expects: str = ""
    choices: tuple | None = None  # the values it takes, where they are a list


@dataclass(frozen=True)
class Rule:
    """How an option's value is checked: ``check(value)`` is true for a valid one."""

    check: Callable[[Any], bool]
    expects: str
    choices: tuple | None = None


def one_of(*values: Any, words: str | None = None) -> Rule:
    """The rule of an option that takes one of ``values`` (compared by type and value, so
    True is not 1); ``words`` replaces "one of 'a', 'b', ..." in the error."""
    words = words or "one of " + ", ".join(map(repr, values))
    return Rule(lambda v: any(type(v) is type(w) and v == w for w in values), words, values)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


POSITIVE_INT = Rule(lambda v: _int(v) and v >= 1, "a positive int")
NONNEGATIVE_INT = Rule(lambda v: _int(v) and v >= 0, "a nonnegative int")
NONNEGATIVE = Rule(lambda v: _real(v) and v >= 0, "nonnegative")
POSITIVE_OR_NONE = Rule(lambda v: v is None or (_real(v) and v > 0), "positive (or None: the default)")
UNIT_INTERVAL = Rule(lambda v: _real(v) and 0 < v < 1, "in (0, 1)")


def option(default: Any, doc: str, rule: Rule | None = None) -> Option:
    if rule is None:
        return Option(default, doc)
    return Option(default, doc, rule.check, rule.expects, rule.choices)


def common_options(max_iter: int, max_iter_doc: str, tol_doc: str, backward_doc: str,
                   backward_modes: tuple[str, ...]) -> dict[str, Option]:
    """The four options every iterative backend takes (API.md), with the backend's words."""
    return {
        "max_iter": option(max_iter, max_iter_doc, POSITIVE_INT),
        "tol": option(None, f"{tol_doc}; None: sqrt(machine epsilon) of the dtype", POSITIVE_OR_NONE),
        "backward": option("implicit", backward_doc, one_of(*backward_modes)),
        "on_nonconvergence": option("warn", "'warn' (NotConvergedWarning) or 'raise' (SolverError)",
                                    one_of("warn", "raise", words="'warn' or 'raise'")),
    }


# ---- problem facts a backend is matched against ---------------------------------------------


@dataclass(frozen=True)
class Requirement:
    """A backend takes the problem only if ``fact`` has one of the ``allowed`` values; else it
    rejects it for want of ``needs``, pointing to ``alternative``."""

    fact: str
    allowed: frozenset
    needs: str
    alternative: str = ""

    def met_by(self, value: object) -> bool:
        """Whether a fact's value meets it (the constraints' kinds: each one allowed)."""
        return value <= self.allowed if isinstance(value, frozenset) else value in self.allowed


# ---- the solver protocol and its records ----------------------------------------------------


class Solver(Protocol):
    """What a backend's solver module provides (``diffcontrol/backends/<name>.py``).

    ``solve`` returns its saved state as a NamedTuple (a JAX pytree) whose ``outputs``
    property gives the solution arrays. Its fields are arrays (or tuples of them, or None),
    except those its class names in ``FROM_DATA`` (field -> key of the lowered data: objects
    such as the iLQR model, rebuilt from the data) and ``STATIC`` (plain values): the JAX
    layer carries only the arrays as residuals and restores the others for the backward.
    """

    def solve(self, data: Any, options: dict, ops: Any, init: Any = None) -> tuple[tuple, Any, Any]:
        """(outputs, :class:`Info`, saved state for :meth:`vjp`) for a batch of lowered data."""

    def vjp(self, data: dict, saved: Any, cotangents: tuple, ops: Any, needs: Any) -> dict:
        """Cotangents of the implicit inputs named in ``needs`` given those of the outputs."""


@dataclass
class Info:
    """Per-example outcome: ``converged`` (B,) bool, ``iterations`` (B,) int,
    ``residual`` (B,) the solver's own scaled residual, ``status`` (B,) the integer codes of
    :class:`~diffcontrol.Status` (the torch layer hands users a list of Status). The same
    record in torch and JAX (a registered pytree there); ``info["converged"]`` works too."""

    converged: Any
    iterations: Any
    residual: Any
    status: Any

    def __getitem__(self, name: str) -> Any:
        if name not in self.keys():
            raise KeyError(name)
        return getattr(self, name)

    def keys(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self))

    def map(self, fn: Callable[[Any], Any]) -> Info:
        """The info with ``fn`` applied to each field (e.g. the first example's: ``lambda a: a[0]``)."""
        return Info(*(fn(getattr(self, k)) for k in self.keys()))


@dataclass(frozen=True)
class Backend:
    """One backend, described once: what it takes (selection), its options (compile), its
    capabilities (the emitters), its lowering and its section of ``explain()``.

    ``solver``, ``lowering`` and ``explain`` are import paths ("module" or "module:name"),
    resolved only when the backend is chosen.
    """

    name: str
    summary: str
    kinds: frozenset[Kind]
    requirements: tuple[Requirement, ...]
    options: Mapping[str, Option]
    solver: str
    lowering: str
    explain: str
    #: the solve is differentiated by the framework itself (cvxpylayers brings its own backward)
    differentiable_solve: bool = False
    #: the solve is tensor operations only (no autodiff inside): torch runs it in inference mode
    tensor_ops_only: bool = False
    #: the solve takes a warm start (u_init= / y_init=)
    warm_start: bool = True
    #: the pip extra and the packages it needs beyond the core install
    extra: str | None = None
    packages: tuple[str, ...] = ()
    #: rules between options: each returns what is wrong with the resolved options, or None
    option_rules: tuple[Callable[[dict], str | None], ...] = ()
    #: in auto-selection, later backends this one yields to when they take the problem too:
    #: (name, rule) pairs, the rule giving the reason to yield for a ProblemForm, or None
    yields_to: tuple[tuple[str, Callable[[Any], str | None]], ...] = ()

    @property
    def backward_modes(self) -> tuple[str, ...]:
        return self.options["backward"].choices

    @property
    def missing_packages(self) -> tuple[str, ...]:
        """The packages this backend needs that are not installed."""
        return tuple(p for p in self.packages if importlib.util.find_spec(p) is None)

    def load(self) -> Solver:
        """The solver module (imported on first use)."""
        if self.missing_packages:
            raise BackendError(
                f"backend '{self.name}' needs {', '.join(self.missing_packages)}, which is not installed: "
                f"pip install 'diffcontrol[{self.extra}]'")
        return import_module(self.solver)

    def lower(self, problem: Any, form: Any) -> Any:
        """The lowered program (the runtime object the layers evaluate)."""
        return _resolve(self.lowering)(problem, form)

    def explain_lowering(self, program: Any, options: dict) -> list[str]:
        """The lines of ``explain()`` that describe the lowered problem."""
        return _resolve(self.explain)(program, options)

    def resolve_options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """The defaults updated with ``given``; unknown names and invalid values raise
        BackendError naming the valid ones."""
        for name in given:
            if name not in self.options:
                raise BackendError(f"unknown option {name!r} for backend '{self.name}'; "
                                   f"valid options: {', '.join(self.options)}")
        resolved = {name: opt.default for name, opt in self.options.items()}
        resolved.update(given)
        for name, opt in self.options.items():
            value = resolved[name]
            if opt.check is not None and not opt.check(value):
                if name == "backward":
                    raise BackendError(f"backward={value!r} is not offered by '{self.name}'; choose "
                                       f"{opt.expects}")
                verb = "lie" if opt.expects.startswith("in ") else "be"
                raise BackendError(f"{name} must {verb} {opt.expects}, got {value!r}")
        for rule in self.option_rules:
            wrong = rule(resolved)
            if wrong:
                raise BackendError(wrong)
        return resolved


def _resolve(path: str) -> Any:
    """The function an entry point "package.module:name" names."""
    module, _, name = path.partition(":")
    return vars(import_module(module))[name]
