"""The table of atom rules: every atom class of the DSL has its row (its own or its base
class's), and every cvxpy translation a row names exists."""

from __future__ import annotations

import importlib
import inspect

import pytest

from diffcontrol.compilers.rules import RULES, rules_of
from diffcontrol.dsl import atoms, penalties
from diffcontrol.dsl.expression import Expression


def _atom_classes():
    for module in (atoms, penalties):
        for _, kind in inspect.getmembers(module, inspect.isclass):
            if issubclass(kind, Expression) and kind is not Expression and kind.__module__ == module.__name__ \
                    and not kind.__name__.startswith("_") and kind is not penalties.Reduction:
                yield kind


@pytest.mark.parametrize("kind", sorted(_atom_classes(), key=lambda k: k.__name__), ids=lambda k: k.__name__)
def test_every_atom_class_has_a_row(kind):
    assert any(base in RULES for base in kind.__mro__), f"{kind.__name__} has no row in compilers/rules.py"


def test_every_named_translation_exists():
    pytest.importorskip("cvxpy")
    for kind, row in RULES.items():
        if row.cvxpy is not None:
            module, name = row.cvxpy.split(":")
            assert callable(getattr(importlib.import_module(module), name, None)), (kind.__name__, row.cvxpy)


def test_a_subclass_without_a_row_uses_its_base_class_row():
    assert rules_of(object.__new__(atoms.Sin)) is RULES[atoms.Elementwise]
    assert rules_of(object.__new__(atoms.Square)) is RULES[atoms.Square]
