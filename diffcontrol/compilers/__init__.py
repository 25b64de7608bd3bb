"""From a declared problem to a compiled one: analysis, selection, lowering."""
