"""Backends: framework-neutral solvers and their implicit VJPs (lqr, ilqr, ift_cg, cone), and the
registry that describes each one once."""
