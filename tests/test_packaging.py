"""The install surface: the cone stack as an extra (imported only when chosen, named when
missing), the command line, the typed marker and the licence."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import diffcontrol as dc

ROOT = Path(__file__).resolve().parent.parent


def test_compiling_and_solving_an_lqr_imports_no_cone_stack_and_no_jax():
    code = (
        "import sys, numpy as np, torch, diffcontrol as dc\n"
        "x, u = dc.State(2), dc.Control(1); x0 = dc.Parameter(2, name='x0')\n"
        "p = dc.ControlProblem(dynamics=x.next == x + u[0], cost=dc.sum_squares(x) + dc.sum_squares(u),\n"
        "                      horizon=3, initial_state=x0, constraints=[-1 <= u, u <= 1])\n"
        "c = p.compile(); c.explain(); c.to_torch()(x0=torch.ones(2))\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'cvxpy', 'cvxpylayers', 'diffcp', 'jax'}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_cold_lqr_layer_call_and_backward_import_no_torch_dynamo():
    """torch.func's reverse transforms import torch._dynamo (0.9 s of a cold start here); the
    LQR data's derivatives use classic autograd, so a first call and backward avoid it. The
    same script checks the layer in inference mode against no_grad, with a moving reference
    (the data's derivatives then run on inference tensors) and terminal equalities."""
    code = (
        "import sys, numpy as np, torch, diffcontrol as dc\n"
        "x, u = dc.State(2), dc.Control(1); A = dc.Parameter((2, 2), name='A')\n"
        "r = dc.Parameter(2, name='r', time_varying=True)\n"
        "p = dc.ControlProblem(dynamics=x.next == A @ x + u[0], cost=dc.sum_squares(x - r) + dc.sum_squares(u),\n"
        "                      horizon=3, initial_state=np.ones(2), constraints=[-1 <= u, u <= 1],\n"
        "                      terminal_constraints=[x[0] == 0.5])\n"
        "layer = p.compile().to_torch(); A_ = torch.eye(2, dtype=torch.float64, requires_grad=True)\n"
        "R = torch.zeros(4, 2, dtype=torch.float64)\n"
        "layer(A=A_, r=R)[1].sum().backward()\n"
        "with torch.no_grad():\n"
        "    plain = layer(A=A_, r=R)[1]\n"
        "with torch.inference_mode():\n"
        "    inferred = layer(A=torch.eye(2, dtype=torch.float64), r=R)[1]\n"
        "assert torch.allclose(plain, inferred, atol=1e-12, rtol=0) and A_.grad is not None\n"
        "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


def _constrained_control_problem():
    x, u = dc.State(2, name="x"), dc.Control(1, name="u")
    return dc.ControlProblem(dynamics=x.next == x + u[0], cost=dc.sum_squares(x) + dc.sum_squares(u), horizon=3,
                             initial_state=np.ones(2), constraints=[x[0] <= 0.5])


def test_a_missing_cone_extra_is_named_by_selection_explain_and_a_forced_compile(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("cvxpy", "cvxpylayers", "diffcp") else real(name, *a))
    prob = _constrained_control_problem()
    text = prob.explain()
    assert "cone: 'cone' would take it, but needs cvxpy, cvxpylayers, diffcp: pip install 'diffcontrol[cone]'" in text
    with pytest.raises(dc.BackendError, match=r"pip install 'diffcontrol\[cone\]'"):
        prob.compile(backend="cone")
    # without the cone stack the smooth state constraint goes to ilqr; a nonsmooth one to none
    assert prob.compile().backend == "ilqr"
    x, u = dc.State(2, name="x"), dc.Control(1, name="u")
    nonsmooth = dc.ControlProblem(dynamics=x.next == x + u[0], cost=dc.sum_squares(x) + dc.sum_squares(u), horizon=3,
                                  initial_state=np.ones(2), constraints=[dc.norm1(x) <= 1.5])
    with pytest.raises(dc.BackendError, match=r"(?s)no available backend.*diffcontrol\[cone\]"):
        nonsmooth.compile()


def test_the_command_line_tells_its_version():
    for cmd in ([sys.executable, "-m", "diffcontrol", "--version"],):
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == f"diffcontrol {dc.__version__}"


def test_the_package_ships_its_typed_marker_and_licence():
    assert (ROOT / "diffcontrol" / "py.typed").exists()
    assert "Apache License" in (ROOT / "LICENSE").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'license = "Apache-2.0"' in pyproject and '"py.typed"' in pyproject


def test_every_benchmark_documents_a_quick_command_for_ci():
    """CI runs each benchmark's documented ``--quick`` command (benchmarks/run_quick.py);
    a benchmark without one would go untested."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import run_quick
    finally:
        sys.path.pop(0)
    scripts = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if p.name not in run_quick.HELPERS)
    assert len(scripts) >= 10
    for script in scripts:
        commands = run_quick.quick_commands(script)
        assert commands, script.name
        assert all(words[1] == f"benchmarks/{script.name}" for words in commands)
    assert "python benchmarks/run_quick.py" in (ROOT / ".ci" / "run").read_text()
