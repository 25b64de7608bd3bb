"""Emitters: a compiled problem as a framework layer (``to_torch()``, ``to_jax()``)."""
