"""Many VJPs of one solve as one batched VJP.

The Schur complements of the constrained backends (:mod:`~diffcontrol.backends.augmented`,
:mod:`~diffcontrol.backends.terminal`) need the inner solver's VJP of several cotangents
per example. Run one by one, each is a full backward pass of small tensor operations; tiled,
the solve's data and saved state are repeated k times along the batch (copy-major rows
``j * B + b``: copy j of example b) and the k cotangents go through one backward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from diffcontrol.backends.ops import Ops


def tile(xp: Any, tree: Any, B: int, k: int) -> Any:
    """Every array in ``tree`` whose leading axis is the batch (B) repeated k times along it
    (copy-major); other leaves (scalars, None, strings) as they are. An object with a
    ``tiled(k)`` method (the iLQR model of the problem's functions) tiles itself."""
    if k == 1:
        return tree
    if hasattr(tree, "tiled"):
        return tree.tiled(k)
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(tile(xp, v, B, k) for v in tree))
    if isinstance(tree, (tuple, list)):
        return type(tree)(tile(xp, v, B, k) for v in tree)
    if isinstance(tree, dict):
        return {name: tile(xp, v, B, k) for name, v in tree.items()}
    shape = getattr(tree, "shape", None)
    if shape is not None and len(shape) >= 1 and shape[0] == B:
        return xp.concatenate([tree] * k, 0)
    return tree


def tiled_vjp(ops: Ops, vjp: Callable, data: dict, saved: Any, cotangents: Sequence[tuple[Any, Any]],
              keys: tuple[str, ...], max_rows: int | None = None) -> list[dict]:
    """``vjp(data, saved, (gx, gu), ops, keys)`` for each of the k cotangent pairs (gx (B, T+1,
    n), gu (B, T, m)), as one call on the batch tiled k times; above ``max_rows`` rows (B * k),
    k calls instead, to bound memory. Returns one dict per pair, each key's array (B, ...)."""
    xp = ops.xp
    k, B = len(cotangents), cotangents[0][0].shape[0]
    if max_rows is not None and B * k > max_rows:
        return [vjp(data, saved, pair, ops, keys) for pair in cotangents]
    gx = xp.concatenate([pair[0] for pair in cotangents], 0)
    gu = xp.concatenate([pair[1] for pair in cotangents], 0)
    out = vjp(tile(xp, data, B, k), tile(xp, saved, B, k), (gx, gu), ops, keys)
    return [{key: out[key][j * B:(j + 1) * B] for key in keys} for j in range(k)]
