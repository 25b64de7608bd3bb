"""Receding-horizon helpers: what an MPC loop does between two solves."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from diffcontrol.errors import InputError


def shift(values: Any, steps: int = 1, axis: int = 0) -> Any:
    """``values`` moved ``steps`` stages earlier along its time ``axis``, the last stage
    repeated to keep the length: the next solve's warm start from this one's plan
    (``u`` (T, m) -> u_1..u_{T-1}, u_{T-1}), or a time-varying parameter's window one step
    on when no newer data exist. ``axis=1`` for batched values (B, T, ...). A torch tensor,
    JAX or NumPy array comes back as the same kind (differentiable where it was)."""
    if not isinstance(steps, numbers.Integral) or isinstance(steps, bool) or steps < 0:
        raise InputError(f"dc.shift: steps must be a nonnegative int, got {steps!r}")
    shape = getattr(values, "shape", None)
    if shape is None:
        raise InputError(f"dc.shift takes an array or tensor with a time axis, got {type(values).__name__}")
    if not -len(shape) <= axis < len(shape):
        raise InputError(f"dc.shift: axis {axis} is out of range for shape {tuple(shape)}")
    axis %= len(shape)
    length = shape[axis]
    if length == 0 or steps == 0:
        return values
    steps = min(int(steps), length)
    index = np.minimum(np.arange(steps, steps + length), length - 1)  # the last stage repeated
    module = type(values).__module__
    if module.startswith("torch"):
        import torch

        return values.index_select(axis, torch.as_tensor(index, device=values.device))
    if module.startswith(("jax", "jaxlib")):
        import jax.numpy as jnp

        return jnp.take(values, jnp.asarray(index), axis=axis)
    return np.take(np.asarray(values), index, axis=axis)


class MPCPolicy:
    """Receding-horizon MPC from a control layer: ``policy(obs)`` solves the layer's problem
    from the observed state and returns its first control; the next call warm-starts from
    this plan moved one stage on (:func:`shift`).

    ``layer``: a torch or JAX layer (``compiled.to_torch()`` / ``to_jax()``) of a
    ControlProblem whose ``initial_state`` is a ``dc.Parameter`` (the observed state);
    ``values``: its other parameters, fixed between calls (change them with :meth:`update`).
    ``obs``: (n,), or (E, n) from a vector environment; a torch tensor, JAX or NumPy array.
    The control comes back as the same kind, (m,) or (E, m): NumPy for NumPy observations,
    as gymnasium's ``env.step`` takes them. Solves run without gradients. After a call,
    ``policy.info`` is the solve's Info and ``policy.plan`` the next warm start.
    """

    def __init__(self, layer: Any, **values: Any):
        from diffcontrol.dsl.leaves import Parameter
        from diffcontrol.dsl.problems import ControlProblem
        from diffcontrol.errors import ModelError

        compiled = getattr(layer, "compiled", None)
        problem = getattr(compiled, "problem", None)
        if not isinstance(problem, ControlProblem):
            raise ModelError(f"dc.MPCPolicy takes the layer of a ControlProblem (compiled.to_torch() or "
                             f"to_jax()), got {type(layer).__name__}")
        if not isinstance(problem.initial_state, Parameter):
            raise ModelError(f"dc.MPCPolicy needs the problem's initial_state to be a dc.Parameter, the observed "
                             f"state; it is {problem.initial_state}: declare x0 = dc.Parameter({problem.n}, "
                             "name='x0') and pass initial_state=x0")
        self.state = problem.initial_state.name
        self._names = {p.name for p in compiled.parameters}
        self._torch = type(layer).__module__.startswith("diffcontrol.emitters.torch")
        self.layer, self.values = layer, {}
        self.plan: Any = None
        self.info: Any = None
        self.update(**values)

    def update(self, **values: Any) -> None:
        """Set some of the layer's parameters (not the state's: that is each call's ``obs``)."""
        if self.state in values:
            raise InputError(f"dc.MPCPolicy: '{self.state}' is the observed state: pass it as policy(obs), "
                             "not as a fixed value")
        unknown = sorted(set(values) - self._names)
        if unknown:
            raise InputError(f"dc.MPCPolicy: unknown parameter(s) {unknown}; the layer takes "
                             f"{sorted(self._names - {self.state})}")
        self.values.update(values)

    def reset(self, done: Any = None) -> None:
        """Forget the warm start: all of it (a new episode), or, with ``done`` (E,) booleans
        (a vector environment's finished episodes, which it resets itself), those rows only."""
        if done is None or self.plan is None:
            self.plan = None
            return
        mask = np.asarray(done, dtype=bool).reshape(-1)
        if self.plan.ndim != 3 or mask.shape[0] != self.plan.shape[0]:
            raise InputError(f"dc.MPCPolicy.reset: done has {mask.shape[0]} entries, the plan "
                             f"{tuple(self.plan.shape)} (one row per environment)")
        if self._torch:
            import torch

            keep = torch.as_tensor(~mask, device=self.plan.device)[:, None, None]
            self.plan = torch.where(keep, self.plan, torch.zeros_like(self.plan))
        else:
            import jax.numpy as jnp

            self.plan = jnp.where(jnp.asarray(~mask)[:, None, None], self.plan, 0.0 * self.plan)

    def __call__(self, obs: Any) -> Any:
        shape = getattr(obs, "shape", None)
        if shape is None or len(shape) not in (1, 2):
            raise InputError(f"dc.MPCPolicy: obs must be the state (n,) or a batch (E, n), got "
                             f"{type(obs).__name__} of shape {shape}")
        as_numpy = isinstance(obs, np.ndarray)
        x0 = self._array(obs)
        if self.plan is not None and self.plan.shape[:-2] != tuple(x0.shape[:-1]):
            self.plan = None  # the number of environments changed: start cold
        if self._torch:
            import torch

            with torch.no_grad():
                _, u, info = self.layer(**self.values, **{self.state: x0}, u_init=self.plan, return_info=True)
        else:
            _, u, info = self.layer(**self.values, **{self.state: x0}, u_init=self.plan, return_info=True)
        self.info = info
        self.plan = shift(u, axis=u.ndim - 2)
        first = u[..., 0, :]
        return np.asarray(first.cpu() if self._torch else first) if as_numpy else first

    def _array(self, obs: Any) -> Any:
        """obs as the layer's kind of array (NumPy: float64, or the dtype of a fixed torch value)."""
        if self._torch:
            import torch

            if isinstance(obs, torch.Tensor):
                return obs
            like = next((v for v in self.values.values() if isinstance(v, torch.Tensor)), None)
            return torch.as_tensor(np.asarray(obs), dtype=like.dtype if like is not None else torch.float64,
                                   device=like.device if like is not None else None)
        import jax.numpy as jnp

        return jnp.asarray(obs)
