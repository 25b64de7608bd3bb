"""Selection: match the backends' records against a ProblemForm, keeping every reason."""

from __future__ import annotations

from dataclasses import dataclass

from diffcontrol.backends.base import Backend
from diffcontrol.backends.registry import BACKENDS, BY_NAME
from diffcontrol.compilers.analysis import ProblemForm
from diffcontrol.errors import BackendError


@dataclass(frozen=True)
class Decision:
    """The chosen backend (None when none fits), why, and each other backend with its reason."""

    chosen: str | None
    why: str
    rejected: dict[str, str]
    forced: bool = False


def rejection(backend: Backend, form: ProblemForm) -> str | None:
    """Why ``backend`` cannot take the problem, or None if it can."""
    if form.kind not in backend.kinds:
        kinds = " or ".join(f"{k} problems" for k in sorted(k.value for k in backend.kinds))
        return f"'{backend.name}' takes {kinds}, this is a {form.kind} problem"
    for req in backend.requirements:
        fact = form.facts[req.fact]
        if not req.met_by(fact.value):
            text = f"'{backend.name}' needs {req.needs}; {fact.reason}"
            return f"{text}; {req.alternative}" if req.alternative else text
    missing = backend.missing_packages
    if missing:
        return (f"'{backend.name}' would take it, but needs {', '.join(missing)}: "
                f"pip install 'diffcontrol[{backend.extra}]'")
    return None


def _yields(backend: Backend, form: ProblemForm, reasons: dict) -> str | None:
    """Why ``backend``, which fits, leaves the problem to a later one that fits too, or None."""
    for other, rule in backend.yields_to:
        why = rule(form) if reasons.get(other) is None else None
        if why is not None:
            return f"fits, but leaves it to '{other}': {why}"
    return None


def select(form: ProblemForm, backend: str = "auto") -> Decision:
    """Pick ``backend`` (or, for "auto", the first in order of preference that fits)."""
    reasons = {b.name: rejection(b, form) for b in BACKENDS}
    if backend != "auto":
        if backend not in BY_NAME:
            raise BackendError(f"unknown backend {backend!r}; choose one of 'auto', "
                               + ", ".join(repr(n) for n in BY_NAME))
        if reasons[backend] is not None:
            raise BackendError(f"backend={backend!r} cannot take this problem: {reasons[backend]}")
        why = f"forced with backend={backend!r}"
        return Decision(backend, why, {k: v or "fits, but not forced"
                                       for k, v in reasons.items() if k != backend}, forced=True)
    order = ", ".join(b.name for b in BACKENDS)
    for b in BACKENDS:
        if reasons[b.name] is None:
            yielded = _yields(b, form, reasons)
            if yielded is not None:
                reasons[b.name] = yielded
                continue
            met = "; ".join(f"{r.fact}: {form.facts[r.fact].value}" for r in b.requirements)
            why = (f"'{b.name}' is the first backend in order of preference ({order}) that takes "
                   f"the problem ({met})")
            rejected = {k: v or f"fits, but '{b.name}' comes first" for k, v in reasons.items() if k != b.name}
            return Decision(b.name, why, rejected)
    return Decision(None, "no available backend takes this problem", dict(reasons))
