"""Walking expression trees: unique nodes in post-order, and the leaves by kind."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from diffcontrol.dsl.expression import Expression


def walk(roots: Iterable[Expression]) -> Iterator[Expression]:
    """Every node reachable from ``roots`` once, children before parents."""
    seen: set[int] = set()
    for root in roots:
        stack: list[tuple[Expression, bool]] = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if id(node) in seen:
                continue
            if expanded:
                seen.add(id(node))
                yield node
            else:
                stack.append((node, True))
                stack.extend((a, False) for a in reversed(node.args) if id(a) not in seen)


def nodes_of_type(roots: Iterable[Expression], kind: type) -> list:
    """Nodes of ``kind`` in order of first appearance (``leaf in list`` would build a constraint)."""
    return [n for n in walk(roots) if isinstance(n, kind)]
