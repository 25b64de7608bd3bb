"""Parameters whose values are pytrees (a Flax or Equinox model's weights, a dict of arrays).

``dc.Parameter.pytree(example)`` declares a parameter of shape (size,), size the total number
of entries of ``example``'s leaves. A layer takes its value as a pytree of the same structure
(each leaf of its declared shape, or all with one leading batch dimension B) or already flat,
(size,) or (B, size); a ``dc.Function`` given the parameter as an argument receives the pytree;
``jax.grad`` with respect to the pytree returns a pytree. The structure is JAX's
(``jax.tree_util``), so declaring one needs JAX; both layers take the values.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from diffcontrol.errors import BackendError, InputError, ModelError


def _tree_util() -> Any:
    try:
        import jax.tree_util
    except ImportError:
        raise BackendError("dc.Parameter.pytree uses JAX's pytrees: install the JAX extra, "
                           "pip install 'diffcontrol[jax]'") from None
    return jax.tree_util


class ParameterTree:
    """The structure of a pytree parameter: its tree definition and the shape of each leaf."""

    def __init__(self, example: Any):
        leaves, self.treedef = _tree_util().tree_flatten(example)
        if not leaves:
            raise ModelError("dc.Parameter.pytree needs a pytree with at least one array leaf")
        self.shapes = [tuple(np.shape(leaf)) for leaf in leaves]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.size = sum(self.sizes)

    def __repr__(self) -> str:
        return f"ParameterTree({self.treedef}, leaf shapes {self.shapes})"

    def is_flat(self, value: Any) -> bool:
        """Whether ``value`` is the flat form, an array (size,) or (B, size), not the tree."""
        if self.treedef.num_leaves == 1 and self.treedef.num_nodes == 1:  # the tree is one array
            return False
        return hasattr(value, "shape") and _tree_util().tree_structure(value).num_nodes == 1

    def flatten(self, name: str, value: Any, asarray: Any, concatenate: Any) -> Any:
        """The pytree ``value`` as one array (size,), or (B, size) when every leaf has a leading
        batch dimension B; ``asarray`` / ``concatenate`` are the layer's framework's."""
        leaves, treedef = _tree_util().tree_flatten(value)
        if treedef != self.treedef:
            raise InputError(f"parameter {name!r} takes a pytree of structure {self.treedef} (leaf shapes "
                             f"{self.shapes}), or its flat form of shape ({self.size},); got {treedef}")
        arrays = [asarray(leaf) for leaf in leaves]
        batches = set()
        for i, (a, shape) in enumerate(zip(arrays, self.shapes)):
            got = tuple(a.shape)
            if got == shape:
                batches.add(())
            elif got[1:] == shape and len(got) == len(shape) + 1:
                batches.add(got[:1])
            else:
                raise InputError(f"leaf {i} of parameter {name!r} has shape {got}; expected {shape}, or "
                                 f"(B, {', '.join(map(str, shape))}) with a leading batch dimension")
        if len(batches) > 1:
            raise InputError(f"the leaves of parameter {name!r} disagree on the batch dimension: "
                             f"{sorted(batches)}; give every leaf the same leading batch size, or none")
        (batch,) = batches
        return concatenate([a.reshape(*batch, -1) for a in arrays], -1)

    def unflatten(self, flat: Any) -> Any:
        """The pytree of one example from its flat array (size,) (torch or JAX)."""
        pieces, start = [], 0
        for shape, size in zip(self.shapes, self.sizes):
            pieces.append(flat[start:start + size].reshape(shape))
            start += size
        return self.treedef.unflatten(pieces)
