"""Problems: a generic argmin (:class:`Problem`) and an optimal-control problem."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

from diffcontrol.dsl.constraints import Constraint, Equality
from diffcontrol.dsl.expression import Expression, as_expression
from diffcontrol.dsl.function import Function, FunctionCall
from diffcontrol.dsl.leaves import Control, Parameter, State, StateNext, Variable
from diffcontrol.dsl.traverse import nodes_of_type
from diffcontrol.errors import ModelError

#: Keywords of the layers' call, so no parameter may take them.
RESERVED_NAMES = ("self", "u_init", "y_init", "return_info")  # the layer call's own keywords


class Minimize:
    """The objective of a :class:`Problem`: a scalar expression to minimise."""

    def __init__(self, expr: Any):
        self.expr = as_expression(expr)
        if self.expr.shape != ():
            raise ModelError(f"the objective must be a scalar, got shape {self.expr.shape} for {self.expr}")

    def __str__(self) -> str:
        return f"minimize {self.expr}"


class Maximize(Minimize):
    """Maximise a scalar expression (minimises its negation)."""

    def __init__(self, expr: Any):
        super().__init__(expr)
        self.expr = -self.expr


class _ProblemBase:
    """What both problem kinds share: their expressions, parameters, compile and explain."""

    def expressions(self) -> list[Expression]:
        raise NotImplementedError

    def parameters(self) -> list[Parameter]:
        """The parameters, in order of first appearance; the layer's keyword names."""
        return nodes_of_type(self.expressions(), Parameter)

    def functions(self) -> list[Function]:
        """The distinct opaque functions used, in order of first appearance."""
        found: dict[int, Function] = {}
        for call in nodes_of_type(self.expressions(), FunctionCall):
            found.setdefault(id(call.function), call.function)
        return list(found.values())

    def _check_parameter_names(self) -> None:
        names: dict[str, Parameter] = {}
        for p in self.parameters():
            if p.name in RESERVED_NAMES:
                raise ModelError(f"a parameter may not be named {p.name!r}: the layer takes that keyword "
                                 f"itself ({', '.join(RESERVED_NAMES)} are reserved)")
            if p.name in names:
                raise ModelError(f"two different parameters are named {p.name!r}; give each a unique name")
            names[p.name] = p

    def compile(self, backend: str = "auto", **options: Any):
        """Analyse, select a backend and lower; returns a :class:`~diffcontrol.CompiledProblem`."""
        from diffcontrol.compilers.compile import compile_problem

        return compile_problem(self, backend, options)

    def explain(self) -> str:
        """The analysis, the backend ``compile(backend="auto")`` picks and why, and the lowering."""
        from diffcontrol.compilers.compile import explain_problem

        return explain_problem(self)


class Problem(_ProblemBase):
    """``dc.Problem(dc.Minimize(expr), constraints=[...])``: a generic argmin."""

    def __init__(self, objective: Minimize, constraints: Sequence[Constraint] | None = None):
        if not isinstance(objective, Minimize):
            raise ModelError("dc.Problem takes dc.Minimize(expr) (or dc.Maximize(expr)) as its objective")
        self.objective = objective
        self.constraints = _as_constraints(constraints)
        exprs = self.expressions()
        for kind in (State, Control, StateNext):
            found = nodes_of_type(exprs, kind)
            if found:
                raise ModelError(
                    f"{found[0]} is a {kind.__name__}; states and controls belong in dc.ControlProblem, "
                    "a dc.Problem optimises over dc.Variable"
                )
        if not self.variables():
            raise ModelError("the problem has no dc.Variable to optimise over")
        for q in self.parameters():
            if q.time_varying:
                raise ModelError(f"the parameter {q.name} is time_varying=True, which only a dc.ControlProblem "
                                 "gives a meaning (p_t at stage t); declare it without time_varying here")
        self._check_parameter_names()

    def expressions(self) -> list[Expression]:
        return [self.objective.expr] + [e for c in self.constraints for e in (c.lhs, c.rhs)]

    def __str__(self) -> str:
        lines = [f"minimize   {self.objective.expr}"]
        lines += [f"{'subject to' if i == 0 else '':<10} {c}" for i, c in enumerate(self.constraints)]
        return "\n".join(lines)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{v.name}{v.shape}" for v in self.variables())
        return (f"Problem(variables: {sizes}; parameters: {_names(self.parameters())}; "
                f"{len(self.constraints)} constraints)")

    def variables(self) -> list[Variable]:
        """The variables, in order of first appearance: the order of the layer's results."""
        return nodes_of_type(self.expressions(), Variable)


class ControlProblem(_ProblemBase):
    """A finite-horizon optimal-control problem (states x_0..x_T, controls u_0..u_{T-1}).

    minimise  sum_{t<T} cost(x_t, u_t) + terminal_cost(x_T)
    s.t.      x_{t+1} = f(x_t, u_t),  x_0 = initial_state,
              constraints(x_t, u_t) for t < T      (those that involve the control)
              constraints(x_t) for t = 1..T        (those on the state alone; x_0 is given)
              terminal_constraints(x_T)            (on the final state only, e.g. x == goal)
    """

    def __init__(
        self,
        dynamics: Equality,
        cost: Any,
        horizon: int,
        initial_state: Any,
        constraints: Sequence[Constraint] | None = None,
        terminal_cost: Any = None,
        terminal_constraints: Sequence[Constraint] | None = None,
    ):
        self.state, self.transition = _split_dynamics(dynamics)
        n = self.state.shape[0]
        self.dynamics = dynamics
        self.cost = _scalar(cost, "cost")
        self.terminal_cost = None if terminal_cost is None else _scalar(terminal_cost, "terminal_cost")
        if not isinstance(horizon, numbers.Integral) or isinstance(horizon, bool) or horizon < 1:
            raise ModelError(f"horizon must be a positive int, got {horizon!r}")
        self.horizon = int(horizon)
        self.initial_state = as_expression(initial_state)
        if self.initial_state.shape != (n,):
            raise ModelError(
                f"initial_state must have the state's shape ({n},), got {self.initial_state.shape} "
                f"for {self.initial_state}"
            )
        self.constraints = _as_constraints(constraints)
        self.terminal_constraints = _as_constraints(terminal_constraints, "terminal_constraints")
        self.control = self._find_control()
        for q in nodes_of_type([self.initial_state], Parameter):
            if q.time_varying:
                raise ModelError(f"initial_state uses the time_varying parameter {q.name}; x_0 is one value: "
                                 "declare it without time_varying")
        self._check_leaves()
        self._check_stage_ranks()
        self._check_parameter_names()

    @property
    def n(self) -> int:
        return self.state.shape[0]

    @property
    def m(self) -> int:
        return self.control.shape[0]

    def expressions(self) -> list[Expression]:
        exprs = [self.transition, self.cost]
        if self.terminal_cost is not None:
            exprs.append(self.terminal_cost)
        exprs.append(self.initial_state)
        return exprs + [e for c in self.constraints + self.terminal_constraints for e in (c.lhs, c.rhs)]

    def __str__(self) -> str:
        x, T = self.state.name, self.horizon
        cost = f"sum over t = 0..{T - 1} of ({self.cost})"
        if self.terminal_cost is not None:
            cost += f"  +  ({self.terminal_cost}) at t = {T}"
        lines = [f"minimize   {cost}",
                 f"subject to {x}_(t+1) = {self.transition},  t = 0..{T - 1}",
                 f"           {x}_0 = {self.initial_state}"]
        for c in self.constraints:
            when = f"t = 0..{T - 1}" if nodes_of_type([c.lhs, c.rhs], Control) else f"t = 1..{T}"
            lines.append(f"           {c},  {when}")
        lines += [f"           {c},  at t = {T} (terminal)" for c in self.terminal_constraints]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"ControlProblem(state {self.state.name} in R^{self.n}, control {self.control.name} in R^{self.m}, "
                f"horizon {self.horizon}; parameters: {_names(self.parameters())}; {len(self.constraints)} "
                f"constraints, {len(self.terminal_constraints)} terminal)")

    def time_lengths(self, parameter: Parameter) -> tuple[int, ...]:
        """The time-axis lengths a time-varying parameter's value may have: T+1, and T where it
        appears in no terminal term (the terminal cost, or a constraint on the state alone,
        which binds at x_1..x_T, or a terminal constraint)."""
        T = self.horizon
        terminal = [self.terminal_cost] if self.terminal_cost is not None else []
        terminal += [e for c in self.terminal_constraints for e in (c.lhs, c.rhs)]
        terminal += [e for c in self.constraints if not nodes_of_type([c.lhs, c.rhs], Control)
                     for e in (c.lhs, c.rhs)]
        used_at_T = any(q is parameter for q in nodes_of_type(terminal, Parameter))
        return (T + 1,) if used_at_T else (T + 1, T)

    def _find_control(self) -> Control:
        controls = nodes_of_type(self.expressions(), Control)
        if not controls:
            raise ModelError("the problem has no dc.Control: the dynamics, cost or constraints must use one")
        if len(controls) > 1:
            raise ModelError(
                f"a ControlProblem has one control, found {controls[0].name} and {controls[1].name}; "
                "join them into one dc.Control and index it"
            )
        return controls[0]

    def _check_leaves(self) -> None:
        where = {"dynamics": [self.transition], "cost": [self.cost],
                 "initial_state": [self.initial_state],
                 "constraints": [e for c in self.constraints for e in (c.lhs, c.rhs)]}
        if self.terminal_cost is not None:
            where["terminal_cost"] = [self.terminal_cost]
        if self.terminal_constraints:
            where["terminal_constraints"] = [e for c in self.terminal_constraints for e in (c.lhs, c.rhs)]
        for part, exprs in where.items():
            for leaf in nodes_of_type(exprs, Variable):
                raise ModelError(f"{part} uses the dc.Variable {leaf.name}; a ControlProblem optimises over "
                                 "its State and Control only")
            for node in nodes_of_type(exprs, StateNext):
                raise ModelError(f"{part} uses {node}; x.next may appear only in the dynamics 'x.next == f(x, u)'")
            for state in nodes_of_type(exprs, State):
                if state is not self.state:
                    raise ModelError(f"{part} uses the state {state.name}, but the dynamics are of {self.state.name}")
        if self.terminal_cost is not None and nodes_of_type([self.terminal_cost], Control):
            raise ModelError(f"terminal_cost {self.terminal_cost} uses the control; it may depend on x_T only")
        for c in self.terminal_constraints:
            if nodes_of_type([c.lhs, c.rhs], Control):
                raise ModelError(f"terminal constraint {c} uses the control; a terminal constraint binds x_T "
                                 "only (there is no u_T): put constraints on controls in constraints=[...]")
            if not nodes_of_type([c.lhs, c.rhs], State):
                raise ModelError(f"terminal constraint {c} does not use the state; it would bind parameters only")
        if nodes_of_type([self.initial_state], State) or nodes_of_type([self.initial_state], Control):
            raise ModelError(f"initial_state {self.initial_state} must not depend on the state or control")


    def _check_stage_ranks(self) -> None:
        """A stage expression stands for one time t: an operation that broadcasts x_t or u_t
        against a parameter of higher rank (a sequence over time passed as a plain parameter,
        e.g. a reference of shape (T+1, n) in ``x - r``) would silently make every stage
        depend on every row; refuse it, naming the parameter."""
        parts = {"dynamics": [self.transition], "cost": [self.cost],
                 "terminal_cost": [] if self.terminal_cost is None else [self.terminal_cost]}
        for c in self.constraints:
            parts.setdefault("constraints", []).append(c)
        for c in self.terminal_constraints:
            parts.setdefault("terminal_constraints", []).append(c)
        decision = (self.state, self.control)
        for part, roots in parts.items():
            depends: dict[int, bool] = {}
            for node in _postorder(roots):
                args = (node.lhs, node.rhs) if isinstance(node, Constraint) else node.args
                uses = any(node is d for d in decision) or any(depends[id(a)] for a in args)
                depends[id(node)] = uses
                if not uses:
                    continue
                low = [a for a in args if depends[id(a)] and a.ndim < len(node.shape)]
                if low and len(node.shape) >= 2:
                    _raise_rank_broadcast(part, node, low[0], [a for a in args if not depends[id(a)]])


def _postorder(roots: list) -> list:
    """Every node under ``roots`` (expressions, or constraints as nodes of their two sides),
    children before parents."""
    out, seen = [], set()

    def visit(node):
        if id(node) in seen:
            return
        seen.add(id(node))
        for a in ((node.lhs, node.rhs) if isinstance(node, Constraint) else node.args):
            visit(a)
        out.append(node)

    for r in roots:
        visit(r)
    return out


def _raise_rank_broadcast(part: str, node: Any, low: Expression, others: list) -> None:
    params = [p for o in others for p in nodes_of_type([o], Parameter) if p.ndim >= 1]
    culprit = max(params, key=lambda p: p.ndim, default=None)
    if culprit is not None:
        per_stage = culprit.shape[1:] or (1,)
        shape = per_stage[0] if len(per_stage) == 1 else per_stage
        way_out = (f"If {culprit.name} holds one value per stage, declare it per stage: "
                   f"dc.Parameter({shape}, name={culprit.name!r}, time_varying=True), and pass values of "
                   f"shape (T+1, {', '.join(map(str, per_stage))}) (or (B, T+1, ...) for a batch)")
        what = f"the parameter {culprit.name} of shape {culprit.shape}"
    else:
        way_out = "index or reduce the higher-rank operand so the result has the stage's shape"
        what = "an operand of higher rank"
    raise ModelError(
        f"{part}: {node} broadcasts {low} of shape {low.shape} against {what} to shape {node.shape}; a stage "
        f"expression stands for one time t, so every stage would use all of "
        f"{'it' if culprit is None else culprit.name} at once. {way_out}")


def _split_dynamics(dynamics: Any) -> tuple[State, Expression]:
    if not isinstance(dynamics, Equality):
        raise ModelError("dynamics must be written 'x.next == f(x, u)'")
    lhs, rhs = dynamics.lhs, dynamics.rhs
    if isinstance(rhs, StateNext) and not isinstance(lhs, StateNext):
        lhs, rhs = rhs, lhs
    if not isinstance(lhs, StateNext):
        raise ModelError(f"dynamics must be written 'x.next == f(x, u)'; got {dynamics}")
    n = lhs.state.shape[0]
    if rhs.shape != (n,):
        raise ModelError(f"the dynamics' right side must have the state's shape ({n},), got {rhs.shape} for {rhs}")
    return lhs.state, rhs


def _names(parameters: list[Parameter]) -> str:
    return ", ".join(f"{p.name}{p.shape}" + (" per stage" if p.time_varying else "") for p in parameters) or "none"


def _scalar(expr: Any, what: str) -> Expression:
    expr = as_expression(expr)
    if expr.shape != ():
        raise ModelError(f"{what} must be a scalar expression, got shape {expr.shape} for {expr}; "
                         "wrap it in dc.sum or dc.sum_squares")
    return expr


def _as_constraints(constraints: Sequence[Constraint] | None, what: str = "constraints") -> list[Constraint]:
    if constraints is None:
        return []
    if isinstance(constraints, Constraint):
        constraints = [constraints]
    if isinstance(constraints, (str, bytes)) or not hasattr(constraints, "__iter__"):
        raise ModelError(f"{what} must be a list of comparisons (a <= b, a == b), got {constraints!r}")
    out = list(constraints)
    for c in out:
        if not isinstance(c, Constraint):
            raise ModelError(f"{what} must be comparisons of expressions (a <= b, a == b), got {c!r}")
    return out
