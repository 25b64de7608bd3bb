"""The backends, one :class:`~diffcontrol.backends.base.Backend` record each, in order of
preference: the most structured solver that takes a problem wins.

A record is all the library knows of a backend until it is chosen: what it
takes, its options, its capabilities, and where its solver, lowering and
explain section live (imported only then). Adding a backend is its solver
module, its lowering module and one record here (docs/contributing.md).
"""

from __future__ import annotations

from diffcontrol.backends.base import (
    NONNEGATIVE,
    NONNEGATIVE_INT,
    POSITIVE_INT,
    POSITIVE_OR_NONE,
    UNIT_INTERVAL,
    Backend,
    Requirement,
    Rule,
    common_options,
    one_of,
    option,
)
from diffcontrol.facts import QUADRATIC, SMOOTH, ConstraintKind, Form, Kind

_NONE = frozenset({Form.NONE})
_BOX_ONLY = frozenset({ConstraintKind.BOX})
_SMOOTH_PATH = frozenset({ConstraintKind.BOX, ConstraintKind.CONTROL_EQUALITY, ConstraintKind.CONTROL_INEQUALITY,
                          ConstraintKind.MIXED, ConstraintKind.STATE})
_SMOOTH_TERMINAL = frozenset({ConstraintKind.TERMINAL_EQUALITY, ConstraintKind.TERMINAL_INEQUALITY,
                              ConstraintKind.TERMINAL_NONLINEAR})
_PER_STAGE_QP = {
    "qp_max_iter": option(20, "projected-Newton iterations of each stage's box QP", POSITIVE_INT),
    "ls_decay": option(0.5, "step shrink factor of the line search", UNIT_INTERVAL),
}

LQR = Backend(
    name="lqr",
    summary="batched Riccati solve of time-varying LQR with box-constrained controls; "
            "backward = one LQR solve with the active set frozen",
    kinds=frozenset({Kind.CONTROL}),
    requirements=(
        Requirement("dynamics", frozenset({Form.AFFINE}), "dynamics affine in (x, u)",
                    "'ilqr' takes smooth nonlinear dynamics"),
        Requirement("stage cost", QUADRATIC, "a quadratic stage cost", "'ilqr' takes smooth costs"),
        Requirement("terminal cost", _NONE | QUADRATIC, "a quadratic terminal cost", "'ilqr' takes smooth costs"),
        Requirement("constraints", _BOX_ONLY, "no constraints other than box bounds on the controls",
                    "'cone' takes general convex constraints"),
        Requirement("terminal constraints", frozenset({ConstraintKind.TERMINAL_EQUALITY}),
                    "terminal constraints that are affine equalities (x_T == goal)",
                    "'cone' takes convex terminal inequalities"),
    ),
    options={
        **common_options(50, "box-DDP iterations at most (one suffices without bounds)",
                         "tolerance on the scaled projected gradient w.r.t. the controls",
                         "'implicit' (one LQR solve, active set frozen) or 'unroll' (autodiff through every "
                         "iteration)", ("implicit", "unroll")),
        **_PER_STAGE_QP,
        "ls_max_iter": option(10, "line-search trials per iteration", POSITIVE_INT),
        "condense": option("auto", "solve in condensed form (states eliminated: a dense QP in the T*m controls, "
                                   "each active-set iteration one dense Cholesky) instead of by Riccati sweeps: "
                                   "True, False, or 'auto' (when T*m <= 64, where the sweeps' per-stage overhead "
                                   "dominates)", one_of("auto", True, False, words="'auto', True or False")),
    },
    solver="diffcontrol.backends.lqr",
    lowering="diffcontrol.compilers.lower_lqr:lower_lqr",
    explain="diffcontrol.compilers.lower_lqr:explain_lowering",
    tensor_ops_only=True,
)

ILQR = Backend(
    name="ilqr",
    summary="box-constrained iLQR for smooth nonlinear dynamics and costs, general smooth path and terminal "
            "constraints by an augmented Lagrangian around it; backward = one LQR solve on the Hessian of the "
            "Lagrangian (exact implicit gradients), plus one per active constraint row",
    kinds=frozenset({Kind.CONTROL}),
    requirements=(
        Requirement("dynamics", frozenset({Form.AFFINE, Form.SMOOTH, Form.OPAQUE}), "smooth dynamics",
                    "write the dynamics with smooth atoms"),
        Requirement("stage cost", SMOOTH, "a smooth stage cost", "write the cost with smooth atoms"),
        Requirement("terminal cost", _NONE | SMOOTH, "a smooth terminal cost", "write the cost with smooth atoms"),
        Requirement("constraints", _SMOOTH_PATH, "smooth constraints in x and u",
                    "write them with smooth atoms ('cone' takes nonsmooth convex ones in convex problems)"),
        Requirement("terminal constraints", _SMOOTH_TERMINAL, "smooth terminal constraints",
                    "write them with smooth atoms ('cone' takes nonsmooth convex ones in convex problems)"),
    ),
    options={
        **common_options(100, "iLQR iterations at most",
                         "tolerance on the scaled projected gradient of the total cost w.r.t. the controls",
                         "'implicit' (exact: one LQR solve on the Hessian of the Lagrangian), 'gauss_newton' "
                         "(the final LQR approximation, as mpc.pytorch; inexact for nonlinear dynamics) or "
                         "'unroll' (autodiff through every iteration)", ("implicit", "gauss_newton", "unroll")),
        **_PER_STAGE_QP,
        "ls_max_iter": option(10, "step sizes tried per iteration: 1, decay, decay^2, ...", POSITIVE_INT),
        "ls_parallel": option(4, "step sizes rolled out at once (one batched rollout) per line-search round",
                              POSITIVE_INT),
        "ls_expand": option(1, "step sizes above the full step tried too, in its round: 1/decay, ..., "
                               "(1/decay)^ls_expand (at most ls_parallel - 1; 0: none); the round's lowest cost "
                               "wins, and per example they grow by 1/decay while the longest keeps winning",
                            NONNEGATIVE_INT),
        "hessian": option("newton", "'newton': near the solution (scaled residual below newton_switch) the sweep "
                                    "uses the Hessian of the Lagrangian, cost Hessian + sum lam d2f, as the exact "
                                    "backward does, on the free controls (those at a bound the gradient pushes "
                                    "against stay), for quadratic instead of linear convergence, falling back to "
                                    "Gauss-Newton per example where it is not positive definite or its step "
                                    "fails, until the residual has halved; 'gauss_newton': the cost Hessian "
                                    "throughout (classic iLQR). backward='unroll' always iterates Gauss-Newton",
                          one_of("newton", "gauss_newton", words="'newton' or 'gauss_newton'")),
        "newton_switch": option(1e-3, "scaled residual below which hessian='newton' uses the Lagrangian's Hessian",
                                NONNEGATIVE),
        "constraint_tol": option(None, "largest violation accepted of a general path or terminal constraint (in "
                                       "the constraint's units, with complementarity: |max(c, -lam / rho)| for "
                                       "c <= 0); None: the same as tol", POSITIVE_OR_NONE),
        "penalty": option(1.0, "first penalty rho of the augmented Lagrangian of general constraints",
                          Rule(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0,
                               "a positive number")),
        "penalty_factor": option(10.0, "rho grows by this factor where a solve did not cut the violation by 4",
                                 Rule(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 1,
                                      "a number above 1")),
        "outer_max_iter": option(30, "augmented-Lagrangian updates of the multipliers at most (each one iLQR "
                                     "solve, warm-started)", POSITIVE_INT),
    },
    yields_to=(("cone", lambda form: "a convex problem with constraints beyond the control box: 'cone' solves it "
                                     "globally (force backend='ilqr' for its speed)"
                if form.value("convexity") is Form.CONVEX and (form.other_constraints or not (
                    form.value("terminal constraints") <= {ConstraintKind.TERMINAL_EQUALITY})) else None),),
    solver="diffcontrol.backends.ilqr",
    lowering="diffcontrol.compilers.lower_ilqr:lower_ilqr",
    explain="diffcontrol.compilers.lower_ilqr:explain_lowering",
)

_SOLVER_CHOICE = Rule(lambda v: callable(v) or v in ("auto", "newton", "lbfgs"),
                      "'auto', 'newton', 'lbfgs' or a callable solver(fun, y0) -> y")

IFT_CG = Backend(
    name="ift_cg",
    summary="generic unconstrained argmin; implicit-function-theorem gradients by conjugate gradient "
            "on Hessian-vector products",
    kinds=frozenset({Kind.GENERIC}),
    requirements=(
        Requirement("constraints", frozenset(), "an unconstrained problem",
                    "'cone' takes convex problems with constraints"),
        Requirement("objective", frozenset({Form.CONVEX_SMOOTH, Form.SMOOTH, Form.OPAQUE}), "a smooth objective",
                    "'cone' takes nonsmooth convex objectives"),
    ),
    options={
        **common_options(100, "iterations of the forward solver at most",
                         "tolerance on the largest entry of grad_y f at the returned point",
                         "'implicit' (IFT, one linear solve) or 'unroll' (autodiff through every Newton "
                         "iteration)", ("implicit", "unroll")),
        "solver": option("auto", "'newton', 'lbfgs', 'auto' (newton up to newton_max_size variables, lbfgs "
                                  "above) or a callable solver(fun, y0) -> y, fun mapping y (B, n) to f (B,)",
                         _SOLVER_CHOICE),
        "newton_max_size": option(500, "the largest n that solver='auto' solves by Newton", POSITIVE_INT),
        "linear_solver": option("cg", "'cg' (on Hessian-vector products), 'cg_normal' (CG on the normal "
                                      "equations, for an indefinite Hessian) or 'dense' (form and solve H)",
                                one_of("cg", "cg_normal", "dense")),
        "cg_tol": option(None, "CG stops when ||residual|| <= cg_tol * ||dL/dy|| for every example; None: "
                               "sqrt(machine epsilon) of the dtype, the accuracy of y* itself at the default tol",
                         POSITIVE_OR_NONE),
        "cg_max_iter": option(1000, "CG iterations at most", POSITIVE_INT),
        "dense_fallback_max_size": option(
            2000, "examples whose CG (or cg_normal) solve misses cg_tol are solved again with the dense Hessian "
                  "when n is at most this (0: never); above it, or where the dense solve misses it too, the backward "
                  "warns (NotConvergedWarning; on_nonconvergence='raise': SolverError) naming them, or under "
                  "jax.jit gives them NaN gradients",
            NONNEGATIVE_INT),
        "tikhonov": option(0.0, "eps of (H + eps I) g = dL/dy, for a singular Hessian (Algorithm 1)", NONNEGATIVE),
        "ls_max_iter": option(30, "backtracking steps of Newton's line search", POSITIVE_INT),
    },
    option_rules=(lambda o: "backward='unroll' differentiates the built-in Newton solver; a user's solver is a "
                            "black box: use backward='implicit'"
                  if callable(o["solver"]) and o["backward"] == "unroll" else None,),
    solver="diffcontrol.backends.ift_cg",
    lowering="diffcontrol.compilers.lower_ift:lower_ift",
    explain="diffcontrol.compilers.lower_ift:explain_lowering",
)

CONE = Backend(
    name="cone",
    summary="convex problems as cone programs through cvxpy, cvxpylayers and diffcp; backward = "
            "diffcp's derivative of the cone program's optimality conditions",
    kinds=frozenset({Kind.CONTROL, Kind.GENERIC}),
    requirements=(
        Requirement("convexity", frozenset({Form.CONVEX}), "a convex problem (affine dynamics, convex "
                    "objective and constraints by DCP rules)",
                    "'ilqr' takes smooth nonconvex control problems (with smooth constraints), 'ift_cg' "
                    "unconstrained generic ones"),
    ),
    options={
        "solver": option("SCS", "the cone solver diffcp calls: 'SCS' or 'Clarabel'", one_of("SCS", "Clarabel")),
        "eps": option(1e-9, "the solver's tolerance (SCS: eps_abs = eps_rel; Clarabel: tol_gap_abs, "
                            "tol_gap_rel, tol_feas)", Rule(lambda v: isinstance(v, float) and v > 0,
                                                           "a positive float")),
        "derivative": option("auto", "diffcp's derivative mode: 'dense' (exact, O(N^3) in the cone program's "
                                     "size N), 'lsmr' / 'lsqr' (iterative, approximate), or 'auto': dense up to "
                                     "dense_max_size, lsmr above", one_of("auto", "dense", "lsmr", "lsqr")),
        "dense_max_size": option(1000, "the largest cone program (variables + constraint rows) that "
                                       "derivative='auto' differentiates densely", NONNEGATIVE_INT),
        **common_options(100_000, "the solver's iteration limit",
                         "the largest scaled primal infeasibility accepted in a returned solution (checked by "
                         "cvxpy)", "'implicit': diffcp's derivative of the cone program's optimality conditions "
                                   "(the only mode)", ("implicit",)),
        "n_jobs": option(1, "threads diffcp uses across a batch (-1: all cores)",
                         Rule(lambda v: isinstance(v, int) and not isinstance(v, bool) and (v >= 1 or v == -1),
                              "a positive int or -1")),
    },
    solver="diffcontrol.backends.cone",
    lowering="diffcontrol.compilers.lower_cone:lower_cone",
    explain="diffcontrol.compilers.lower_cone:explain_lowering",
    differentiable_solve=True,
    warm_start=False,
    extra="cone",
    packages=("cvxpy", "cvxpylayers", "diffcp"),
)

#: In order of preference.
BACKENDS: tuple[Backend, ...] = (LQR, ILQR, IFT_CG, CONE)
BY_NAME = {b.name: b for b in BACKENDS}
