"""The batched evaluator (one pass for a whole batch, no vmap) against NumPy formulas written
out per example, for every atom; and the single-point evaluator (a batch of one) likewise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import diffcontrol as dc
from diffcontrol.emitters.torch_ops import TorchFramework
from diffcontrol.programs.evaluate import evaluate, evaluate_batched

B = 5
x = dc.Variable(3, name="x")
M = dc.Parameter((3, 4), name="M")
P = dc.Parameter((3, 3), name="P")
s = dc.Parameter(name="s")
w = dc.Parameter(4, name="w")
net = dc.Function(lambda a, b: torch.tanh(a[:2] * b), 2, name="net")  # written for one point

# (expression, the same for one example in NumPy); the leaves arrive as a dict of arrays
CASES = [
    (x + s, lambda v: v["x"] + v["s"]),                                   # vector + scalar
    (s * x - 2.0, lambda v: v["s"] * v["x"] - 2.0),
    (x / (1.0 + s ** 2), lambda v: v["x"] / (1.0 + v["s"] ** 2)),
    (x ** 3, lambda v: v["x"] ** 3),
    (-x, lambda v: -v["x"]),
    (M.T @ x, lambda v: v["M"].T @ v["x"]),                               # matrix @ vector
    (x @ M, lambda v: v["x"] @ v["M"]),                                   # vector @ matrix
    (x @ x, lambda v: v["x"] @ v["x"]),                                   # vector @ vector
    (P @ M, lambda v: v["P"] @ v["M"]),                                   # matrix @ matrix
    (M + w, lambda v: v["M"] + v["w"]),                                   # (3, 4) + (4,)
    (x[1], lambda v: v["x"][1]),
    (x[::-1], lambda v: v["x"][::-1]),
    (M[1:, 2], lambda v: v["M"][1:, 2]),
    (M[[0, 2], 1], lambda v: v["M"][[0, 2], 1]),                          # integer array + int
    (M[:, [3, 0, 3]], lambda v: v["M"][:, [3, 0, 3]]),
    (M[[2, 0], :][:, [1]], lambda v: v["M"][[2, 0], :][:, [1]]),
    (M[..., 0], lambda v: v["M"][..., 0]),
    (dc.sin(x) * dc.exp(s), lambda v: np.sin(v["x"]) * np.exp(v["s"])),
    (dc.atan2(x, s), lambda v: np.arctan2(v["x"], v["s"])),                # (3,) with ()
    (dc.sum(M), lambda v: v["M"].sum()),
    (dc.sum(M, axis=0), lambda v: v["M"].sum(0)),
    (dc.sum(M, axis=-1), lambda v: v["M"].sum(-1)),
    (dc.sum(s), lambda v: v["s"]),
    (dc.sum_squares(M), lambda v: (v["M"] ** 2).sum()),
    (dc.quad_form(x, P), lambda v: v["x"] @ v["P"] @ v["x"]),
    (dc.norm2(x), lambda v: np.linalg.norm(v["x"])),
    (dc.stack([x[0], s, x[2] * s]), lambda v: np.stack([v["x"][0], v["s"], v["x"][2] * v["s"]])),
    (dc.stack([x, 2.0 * x]), lambda v: np.stack([v["x"], 2.0 * v["x"]])),
    (dc.concat([x, s, w]), lambda v: np.concatenate([v["x"], [v["s"]], v["w"]])),
    (net(x, w[:2]), lambda v: np.tanh(v["x"][:2] * v["w"][:2])),
    # penalty atoms and reductions (cvxpy's meanings, written out in NumPy)
    (dc.pos(x - s), lambda v: np.maximum(v["x"] - v["s"], 0.0)),
    (dc.softplus(3.0 * x), lambda v: np.log1p(np.exp(3.0 * v["x"]))),
    (dc.huber(x, 0.7), lambda v: np.where(np.abs(v["x"]) <= 0.7, v["x"] ** 2, 1.4 * np.abs(v["x"]) - 0.49)),
    (dc.maximum(x, s, 0.1), lambda v: np.maximum(np.maximum(v["x"], v["s"]), 0.1)),
    (dc.minimum(M, w), lambda v: np.minimum(v["M"], v["w"])),
    (dc.max(M), lambda v: v["M"].max()),
    (dc.max(M, axis=0), lambda v: v["M"].max(0)),
    (dc.min(M, axis=-1), lambda v: v["M"].min(-1)),
    (dc.min(s), lambda v: v["s"]),
    (dc.logsumexp(M), lambda v: np.log(np.exp(v["M"]).sum())),
    (dc.logsumexp(M, axis=1), lambda v: np.log(np.exp(v["M"]).sum(1))),
    (dc.norm1(M), lambda v: np.abs(v["M"]).sum()),
    (dc.norm1(s), lambda v: np.abs(v["s"])),
    (dc.norm_inf(x), lambda v: np.abs(v["x"]).max()),
    (dc.norm(M, 1), lambda v: np.abs(v["M"]).sum()),
    (dc.mean(M), lambda v: v["M"].mean()),
    (dc.mean(M, axis=0), lambda v: v["M"].mean(0)),
    (dc.multiply(M, w), lambda v: v["M"] * v["w"]),
    (dc.reshape(M, (2, 6)), lambda v: v["M"].reshape((2, 6), order="F")),
    (dc.reshape(M, (4, 3), order="C"), lambda v: v["M"].reshape((4, 3))),
    (dc.reshape(M, 12), lambda v: v["M"].reshape(12, order="F")),
    (dc.reshape(x, (3, 1)), lambda v: v["x"].reshape(3, 1)),
    (dc.hstack([x, s, w]), lambda v: np.hstack([v["x"], v["s"], v["w"]])),
    (dc.hstack([M, P]), lambda v: np.hstack([v["M"], v["P"]])),
    (dc.vstack([M, w, 2.0 * w]), lambda v: np.vstack([v["M"], v["w"], 2.0 * v["w"]])),
    (dc.vstack([s, x[0]]), lambda v: np.vstack([v["s"], v["x"][0]])),
    (dc.diag(x), lambda v: np.diag(v["x"])),
    (dc.diag(P), lambda v: np.diag(v["P"])),
]

SHAPES = {"x": (3,), "M": (3, 4), "P": (3, 3), "s": (), "w": (4,)}
LEAVES = {"x": x, "M": M, "P": P, "s": s, "w": w}


def _values(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=(B,) + shape) for k, shape in SHAPES.items()}


@pytest.mark.parametrize("shared", [(), ("M", "s")], ids=["all batched", "M and s shared"])
@pytest.mark.parametrize("expr, reference", CASES, ids=[str(c[0]) for c in CASES])
def test_batched_evaluation_matches_numpy_per_example(expr, reference, shared):
    values = _values(0)
    for k in shared:  # a leaf shared by the batch arrives with a batch axis of 1
        values[k] = np.repeat(values[k][:1], B, 0)
    env = {id(LEAVES[k]): torch.as_tensor(v[:1] if k in shared else v) for k, v in values.items()}
    like = torch.zeros(B, dtype=torch.float64)
    (out,) = evaluate_batched([expr], env, TorchFramework, like)
    expected = np.stack([reference({k: v[b] for k, v in values.items()}) for b in range(B)])
    # a value that depends on shared leaves only is shared too: a batch axis of 1
    assert tuple(out.shape) in ((B,) + expr.shape, (1,) + expr.shape)
    np.testing.assert_allclose(np.broadcast_to(out.numpy(), expected.shape), expected, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("expr, reference", CASES[::3], ids=[str(c[0]) for c in CASES[::3]])
def test_single_point_evaluation_matches_numpy(expr, reference):
    values = {k: v[0] for k, v in _values(1).items()}
    env = {id(LEAVES[k]): torch.as_tensor(v) for k, v in values.items()}
    (out,) = evaluate([expr], env, TorchFramework, torch.zeros((), dtype=torch.float64))
    np.testing.assert_allclose(out.numpy(), reference(values), rtol=1e-13, atol=1e-13)


def test_function_with_a_wrong_shape_is_named():
    bad = dc.Function(lambda a: a, 2, name="bad")
    env = {id(x): torch.zeros(B, 3, dtype=torch.float64)}
    with pytest.raises(dc.ModelError, match=r"dc.Function bad declared shape \(2,\) but returned shape \(3,\)"):
        evaluate_batched([bad(x)], env, TorchFramework, torch.zeros(B, dtype=torch.float64))
