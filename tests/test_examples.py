"""Every example's --quick mode runs end to end (a fresh process each, as a user runs it),
writes its table and figure, and learns: the loss it reports goes down."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _table(path: Path) -> list[dict[str, str]]:
    """The rows of the markdown table in ``path``, as header -> cell."""
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[2:]]


def _run(script: str, out: Path) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "examples" / script), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _learned_lqr(rows, out):
    for r in rows:  # every seed imitates far better than at its start
        assert float(r["imitation loss (end)"]) < 0.5 * float(r["imitation loss (start)"]), r


def _learned_pendulum(rows, out):
    last = rows[-1]  # the most data: the MPC policies beat the LSTM (the paper's finding)
    assert float(last["mpc.dx"]) < float(last["nn (LSTM)"]) and float(last["sysid"]) < float(last["nn (LSTM)"])
    # closed loop in gymnasium's Pendulum-v1 (installed with the test extra)
    returns = {r["controller"]: float(r["mean return"]) for r in _table(out / "pendulum_imitation_gym.md")}
    assert set(returns) == {"expert MPC (true g, m, l)", "mpc.dx", "sysid", "nn (LSTM)"}
    assert all(-2000 < v <= 0 for v in returns.values())  # Pendulum-v1's rewards are <= 0
    assert returns["mpc.dx"] > returns["nn (LSTM)"] and returns["expert MPC (true g, m, l)"] > returns["nn (LSTM)"]


def _learned_kepler(rows, out):
    assert float(rows[-1]["loss"]) < 1e-2 * float(rows[0]["loss"]) and abs(float(rows[-1]["e"]) - 0.6) < 0.05


def _learned_distributed(rows, out):
    assert abs(float(rows[-1]["g"]) - 10) < abs(float(rows[0]["g"]) - 10)
    assert abs(float(rows[-1]["l"]) - 1) < abs(float(rows[0]["l"]) - 1)


def _learned_dare(rows, out):
    by_method = {r["method"].split()[0]: r for r in rows}
    for r in rows:  # every method learns A, from the same start
        assert float(r["model loss (end)"].split()[0]) < 0.5 * float(r["model loss (start)"]), r
        assert float(r["imitation loss (end)"].split()[0]) < 0.5 * float(r["imitation loss (start)"]), r
    # the IFT-CG layer's training follows the analytic gradient's to the printed digits
    assert by_method["IFT-CG"]["model loss (end)"] == by_method["analytic"]["model loss (end)"]


def _learned_nonrealizable(rows, out):
    sysid, mpc_dx = rows
    assert float(mpc_dx["test imitation loss (end)"]) < float(mpc_dx["test imitation loss (after step 1)"])
    # sysid fits the transitions it regresses on better than mpc.dx, which only sees controls
    assert float(sysid["test transition loss (end)"]) < float(mpc_dx["test transition loss (end)"])


def _learned_neural_ode(rows, out):
    for r in rows:  # every method fits the training pieces and extrapolates to a finite test error
        assert float(r["train loss (last 10 steps)"]) < 0.5 * float(r["train loss (first step)"]), r
        assert 0 <= float(r["test MSE"].split()[0]) < 10, r
    assert any(r["method"].startswith("backward Euler, IFT-CG") for r in rows)


def _learned_cartpole(rows, out):
    by_name = {r["controller"]: r for r in rows}
    assert set(by_name) == {"expert (random shooting)", "BC", "MPC, learned dynamics and goal (ours)"}
    for name in ("BC", "MPC, learned dynamics and goal (ours)"):
        # both students come to explain the expert's next observations; the MPC's through its learned goal
        first, last = (float(v) for v in by_name[name]["training loss (first step -> last 10 steps)"].split(" -> "))
        assert last < 0.5 * first, by_name[name]
    for r in by_name.values():  # an episode's cost: 40 steps of a cost in [0, 1]
        low, high = (float(v) for k, v in r.items() if k.startswith("episode cost"))
        assert 0 <= low <= 40 and 0 <= high <= 40, r
    # from a goal of zeros, the learned goal's pole points up: cos th < 0 (upright: cos th = -1)
    title = (out / "cartpole_from_observations.md").read_text().splitlines()[0]
    goal = title.split("learned goals (x, cos th, sin th): (")[1].split(")")[0]
    assert float(goal.split(",")[1]) < -0.5, title


EXAMPLES = {
    "lqr_imitation.py": ("lqr_imitation", True, _learned_lqr),
    "pendulum_imitation.py": ("pendulum_imitation", True, _learned_pendulum),
    "kepler.py": ("kepler", True, _learned_kepler),
    "neural_ode.py": ("neural_ode", True, _learned_neural_ode),
    "mass_spring_damper.py": ("mass_spring_damper", True, _learned_dare),
    "pendulum_nonrealizable.py": ("pendulum_nonrealizable", True, _learned_nonrealizable),
    "distributed_training.py": ("distributed_training", False, _learned_distributed),
    "cartpole_from_observations.py": ("cartpole_from_observations", True, _learned_cartpole),
}


def test_every_example_is_covered():
    assert sorted(p.name for p in (ROOT / "examples").glob("[!_]*.py")) == sorted(EXAMPLES)


@pytest.mark.parametrize("script", sorted(EXAMPLES))
def test_example_quick_mode(script, tmp_path):
    stem, figure, learned = EXAMPLES[script]
    stdout = _run(script, tmp_path)
    assert f"wrote {tmp_path / (stem + '.md')}" in stdout
    rows = _table(tmp_path / f"{stem}.md")
    assert rows
    if figure:
        assert (tmp_path / f"{stem}.png").stat().st_size > 1000
    learned(rows, tmp_path)
