"""Emitters: a compiled problem as a framework layer (torch now; JAX planned)."""
