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
