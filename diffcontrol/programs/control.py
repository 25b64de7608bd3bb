"""What every lowered ControlProblem shares: sizes, the environment that binds the DSL's
leaves to arrays, and the initial state and control bounds as data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from diffcontrol.dsl.atoms import broadcast_batch
from diffcontrol.dsl.expression import Expression
from diffcontrol.dsl.function import FunctionCall
from diffcontrol.dsl.leaves import Parameter
from diffcontrol.dsl.problems import ControlProblem
from diffcontrol.dsl.traverse import nodes_of_type
from diffcontrol.programs.evaluate import Framework, evaluate, evaluate_batched

if TYPE_CHECKING:  # (a record of the analysis; the program only reads its fields)
    from diffcontrol.compilers.analysis import BoxBound

#: The data keys of terminal terms (evaluated with the parameters' values at t = T).
TERMINAL_KEYS = ("CT", "cT", "G", "g")


@dataclass(frozen=True)
class ControlProgram:
    """A ControlProblem's expressions, its box bounds and parameters (in order of first use)."""

    problem: ControlProblem
    bounds: tuple[BoxBound, ...]
    parameters: tuple[Parameter, ...]
    # parameter-free data per (keys, dtype, device) and each piece's dependencies: a pure
    # cache, never per-call state
    _constants: dict = field(default_factory=dict, compare=False, repr=False, kw_only=True)

    @property
    def n(self) -> int:
        return self.problem.n

    @property
    def m(self) -> int:
        return self.problem.m

    @property
    def T(self) -> int:
        return self.problem.horizon

    def _evaluate_pieces(self, fw: Framework, params: dict[str, Any], like: Any, pieces: list) -> dict[str, Any]:
        """Evaluate each (keys, expressions, piece[, batched]) for the batch (vectorised over B:
        by the framework's vmap, or, for a ``batched`` piece, by the piece itself on the
        batched parameters, each (B, ...) or (1, ...)); pieces that depend on no parameter (nor
        dc.Function) are computed once per dtype and device. "lo" and "hi" get the T axis:
        (B, T, m)."""
        xp = fw.xp
        B, T = like.shape[0], self.T
        out: dict[str, Any] = {}
        for keys, exprs, piece, *batched in pieces:
            names, opaque = self._dependencies(keys, exprs)
            per_stage = names & self._time_varying
            piece_params = params
            if per_stage and keys[0] in TERMINAL_KEYS:  # terminal terms read p_T
                piece_params = {**params, **{k: params[k][:, T] for k in per_stage}}
                per_stage = set()
            if names or opaque:  # a dc.Function's weights may change
                sub = {k: v for k, v in piece_params.items() if k in names}
                rows, ref = B, like
                if per_stage:  # the stage data of p_t: one row per (example, stage), example-major
                    sub = {k: _stages(v, T) if k in per_stage else repeat_rows(xp, v, T) for k, v in sub.items()}
                    rows, ref = B * T, repeat_rows(xp, like, T)
                if batched and batched[0]:  # (no vmap: its overhead is most of a small problem's call)
                    values = [xp.broadcast_to(v, (rows,) + tuple(v.shape[1:])) for v in piece(fw, sub, ref)]
                else:
                    values = fw.vmap(lambda p, ref, piece=piece: piece(fw, p, ref))(sub, ref)
                if per_stage:
                    values = [v.reshape((B, T) + tuple(v.shape[1:])) for v in values]
            else:
                cache_key = (fw.name, keys, str(like.dtype), str(getattr(like, "device", "")))

                def one_example(piece=piece, batched=batched):
                    if batched and batched[0]:
                        return [v[0] for v in piece(fw, {}, like[:1])]
                    return piece(fw, {}, like[0])

                if not fw.caches_arrays:  # arrays made while tracing (jax.jit) must not outlive the trace
                    constants = one_example()
                elif cache_key not in self._constants:
                    constants = self._constants[cache_key] = one_example()
                else:
                    constants = self._constants[cache_key]
                values = [xp.broadcast_to(v, (B,) + tuple(v.shape)) for v in constants]
            out.update(zip(keys, values))
        for k in ("lo", "hi"):
            if k in out and out[k].ndim == 2:  # (per-stage bounds carry their T axis already)
                out[k] = xp.broadcast_to(out[k][:, None], (B, T) + tuple(out[k].shape[1:]))
        return out

    @property
    def _time_varying(self) -> set[str]:
        """The names of the time-varying parameters."""
        return {p.name for p in self.parameters if p.time_varying}

    def _dependencies(self, keys: tuple, exprs: list) -> tuple[set, bool]:
        """The names of the parameters ``exprs`` use and whether they call a dc.Function (the
        expressions are fixed, so the walk is done once per piece)."""
        cache_key = ("dependencies", keys)
        if cache_key not in self._constants:
            self._constants[cache_key] = ({p.name for p in nodes_of_type(exprs, Parameter)},
                                          bool(nodes_of_type(exprs, FunctionCall)))
        return self._constants[cache_key]

    def _bound_pieces(self) -> list:
        """The pieces of :meth:`_evaluate_pieces` for x0 and the control box."""
        return [
            (("x0",), [self.problem.initial_state], self._initial_state, True),
            (("lo", "hi"), [b.bound for b in self.bounds], self._bounds),
        ]

    def _terminal_pieces(self) -> list:
        """The piece of :meth:`_evaluate_pieces` for the terminal equalities G x_T = g (none
        without terminal constraints)."""
        if not self.problem.terminal_constraints:
            return []
        return [(("G", "g"), self._terminal_sides(), self._terminal_equalities, True)]

    def _terminal_sides(self) -> list[Expression]:
        return [e for c in self.problem.terminal_constraints for e in (c.lhs, c.rhs)]

    def _terminal_equalities(self, fw: Framework, p: dict, like: Any) -> tuple:
        """G (b, k, n) and g (b, k) of the terminal equalities, stacked as G x_T = g (each side's
        difference flattened; exact: they are affine)."""
        xp = fw.xp

        def residual(z: Any, p: dict) -> Any:
            env = self._env(p)
            env[id(self.problem.state)] = z
            sides = broadcast_batch(xp, [z[:, :1], *evaluate_batched(self._terminal_sides(), env, fw, z[:, 0])])[1:]
            return xp.concatenate([(a - b).reshape(z.shape[0], -1) for a, b in zip(sides[::2], sides[1::2])], -1)

        r, G = fw.row_jacobian(residual, fw.constant(np.zeros((like.shape[0], self.n)), like), p)
        return G, -r

    def _at_rows(self, fw: Framework, root: Expression, terminal: bool = False) -> Any:
        """z (b, k), parameters -> ``root``'s values (b, ...), with x, u the rows of z = [x; u]
        (``terminal``: z = x): the functions of rows whose derivatives at 0 are the data."""
        xp = fw.xp

        def value(z: Any, p: dict) -> Any:
            env = self._env(p, None if terminal else z)
            if terminal:
                env[id(self.problem.state)] = z
            return broadcast_batch(xp, [z[:, 0], evaluate_batched([root], env, fw, z[:, 0])[0]])[1]

        return value

    def _env(self, p: dict[str, Any], tau: Any = None) -> dict[int, Any]:
        """Leaf values keyed by id: the parameters in ``p``, and x, u from tau = [x; u] (one
        point (N,), or rows (b, N))."""
        env = {id(param): p[param.name] for param in self.parameters if param.name in p}
        if tau is not None:
            env[id(self.problem.state)] = tau[..., : self.n]
            env[id(self.problem.control)] = tau[..., self.n:]
        return env

    def _initial_state(self, fw: Framework, p: dict, like: Any) -> tuple:
        """x0 (b, n) for batched parameters ``p`` (b = B, or 1 when none is batched)."""
        return (evaluate_batched([self.problem.initial_state], self._env(p), fw, like)[0],)

    def _bounds(self, fw: Framework, p: dict, ref: Any) -> tuple[Any, Any]:
        """(lo, hi) of shape (m,), infinite where a control is unbounded."""
        xp, m, env = fw.xp, self.m, self._env(p)
        lo = fw.constant(np.full(m, -np.inf), ref)
        hi = fw.constant(np.full(m, np.inf), ref)
        for b in self.bounds:
            rows = np.atleast_1d(np.arange(m)[b.index])
            value = xp.broadcast_to(evaluate([b.bound], env, fw, ref)[0], (rows.size,))
            scatter = np.zeros((m, rows.size))
            scatter[rows, np.arange(rows.size)] = 1.0
            full = fw.constant(scatter, ref) @ value
            mask = fw.constant(np.isin(np.arange(m), rows).astype(float), ref) > 0.5
            if b.lower:
                lo = xp.where(mask, xp.maximum(lo, full), lo)
            else:
                hi = xp.where(mask, xp.minimum(hi, full), hi)
        return lo, hi


def _stages(v: Any, T: int) -> Any:
    """p_0..p_{T-1} of a time-varying value (B, T+1, ...) as rows (B * T, ...)."""
    return v[:, :T].reshape((v.shape[0] * T,) + tuple(v.shape[2:]))


def repeat_rows(xp: Any, v: Any, T: int) -> Any:
    """(b, ...) -> (b * T, ...), each row T times."""
    rest = tuple(v.shape[1:])
    return xp.broadcast_to(v[:, None], (v.shape[0], T) + rest).reshape((v.shape[0] * T,) + rest)
