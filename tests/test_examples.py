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
    for method in ("sysid", "mpc.dx", "mpc.cost"):
        assert float(last[method]) < float(last["nn (LSTM)"]), last
    # closed loop in gymnasium's Pendulum-v1 (installed with the test extra)
    returns = {r["controller"]: float(r["mean return"]) for r in _table(out / "pendulum_imitation_gym.md")}
    assert set(returns) == {"expert MPC (true g, m, l and cost)", "sysid", "mpc.dx", "mpc.cost", "mpc.cost.dx",
                            "nn (LSTM)"}
    assert all(-2000 < v <= 0 for v in returns.values())  # Pendulum-v1's rewards are <= 0
    for controller in ("expert MPC (true g, m, l and cost)", "mpc.dx", "mpc.cost"):
        assert returns[controller] > returns["nn (LSTM)"], returns
    # what was learned: every learner's row, the cost learners' weights moved from the truth's
    learned = {r["learner"]: r for r in _table(out / "pendulum_imitation_learned.md")}
    assert set(learned) == {"expert", "sysid", "mpc.dx", "mpc.cost", "mpc.cost.dx"}
    assert learned["mpc.dx"]["w (cos th, sin th, th_dot, u)"] == learned["expert"]["w (cos th, sin th, th_dot, u)"]
    assert learned["mpc.cost"]["g, m, l"] == learned["expert"]["g, m, l"]
    assert learned["mpc.cost"]["w (cos th, sin th, th_dot, u)"] != learned["expert"]["w (cos th, sin th, th_dot, u)"]


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


def _learned_cartpole_imitation(rows, out):
    last = rows[-1]  # the most data: the MPC policies beat the LSTM by far (controls in [-100, 100])
    for method in ("sysid", "mpc.dx", "mpc.cost", "mpc.cost.dx"):
        assert float(last[method]) < 0.2 * float(last["nn (LSTM)"]), last
    learned = {r["learner"]: r for r in _table(out / "cartpole_imitation_learned.md")}
    assert set(learned) == {"expert", "sysid", "mpc.dx", "mpc.cost", "mpc.cost.dx"}
    physical = "gravity, masscart, masspole, length"
    assert learned["mpc.cost"][physical] == learned["expert"][physical]
    assert learned["mpc.dx"][physical] != learned["expert"][physical]


def _tracked(rows, out):
    by_name = {r["controller"]: r for r in rows}
    moving, held = by_name["time-varying reference r_t"], by_name["reference held constant"]
    # knowing r_t over the horizon tracks the moving point; holding r_k lags behind it
    assert float(moving["mean position error (steady)"]) < 0.05
    assert float(moving["mean position error (steady)"]) < 0.1 * float(held["mean position error (steady)"])


def _learned_radius(rows, out):
    by_step = {r["step"]: r for r in rows}
    first, final = by_step["0"], by_step["final"]
    # from a guess of half the radius, the imitation loss falls and the radius grows toward 0.5
    assert float(final["imitation loss"]) < 0.2 * float(first["imitation loss"])
    assert abs(float(final["radius"]) - 0.5) < abs(float(first["radius"]) - 0.5) * 0.5


EXAMPLES = {
    "lqr_imitation.py": ("lqr_imitation", True, _learned_lqr),
    "pendulum_imitation.py": ("pendulum_imitation", True, _learned_pendulum),
    "kepler.py": ("kepler", True, _learned_kepler),
    "neural_ode.py": ("neural_ode", True, _learned_neural_ode),
    "mass_spring_damper.py": ("mass_spring_damper", True, _learned_dare),
    "pendulum_nonrealizable.py": ("pendulum_nonrealizable", True, _learned_nonrealizable),
    "distributed_training.py": ("distributed_training", False, _learned_distributed),
    "cartpole_from_observations.py": ("cartpole_from_observations", True, _learned_cartpole),
    "cartpole_imitation.py": ("cartpole_imitation", True, _learned_cartpole_imitation),
    "receding_horizon_tracking.py": ("receding_horizon_tracking", True, _tracked),
    "obstacle_avoidance.py": ("obstacle_avoidance", True, _learned_radius),
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


def _imitation_module():
    """examples/_imitation.py, the imitation experiments' shared module."""
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import _imitation
    finally:
        sys.path.remove(str(ROOT / "examples"))
    return _imitation


def test_weighted_goal_cost_is_the_models_quadratic():
    """The imitation learners' cost ||w o (tau - tau_g)||^2 enters the models as
    1/2 tau^T diag(q) tau + p^T tau: the two differ by a constant for every tau."""
    import torch

    im = _imitation_module()
    cost_of, weights_of = im.cost_of, im.weights_of

    gen = torch.Generator().manual_seed(0)
    log_w, goal = torch.randn(6, generator=gen, dtype=torch.float64), torch.randn(6, generator=gen, dtype=torch.float64)
    cost = cost_of(log_w, goal)
    tau = torch.randn(20, 6, generator=gen, dtype=torch.float64)
    weighted = ((log_w.exp() * (tau - goal)) ** 2).sum(-1)
    quadratic = 0.5 * (cost["q"] * tau**2).sum(-1) + tau @ cost["p"]
    assert torch.allclose(weighted - quadratic, (weighted - quadratic)[0].expand(20), atol=1e-12)
    w, back = weights_of(cost)
    assert torch.allclose(w, log_w.exp()) and torch.allclose(back, goal)


def _pendulum_task(spread: float = 0.4):
    import diffcontrol as dc

    im = _imitation_module()
    model = dc.models.pendulum(horizon=3)
    return im, im.Task("pendulum", model, None, {"g": 10.0, "m": 1.0, "l": 1.0}, None, None,
                       ("cos th", "sin th", "th_dot", "u"), spread)


def test_learners_start_perturbed_by_the_tasks_spread():
    """The same seed draws the same noise and the task's spread scales it (0: the truth
    itself): log g, m, l and log w by the spread, tau_g by half of it."""
    import math

    import torch

    im = _imitation_module()
    starts = {s: _pendulum_task(s)[1] for s in (0.0, 0.2, 0.4)}
    truth = {k: math.log(v) for k, v in starts[0.4].physical.items()}
    physical = {s: {k: float(v.detach()) - truth[k] for k, v in im.start_physical(t.physical, 3, s).items()}
                for s, t in starts.items()}
    assert all(v == 0 for v in physical[0.0].values())
    assert all(abs(physical[0.2][k] - 0.5 * physical[0.4][k]) < 1e-15 for k in truth)
    assert any(abs(v) > 0.05 for v in physical[0.4].values())
    w, goal = im.weights_of(starts[0.4].expert_cost())
    cost = {s: im.start_cost(t, 3) for s, t in starts.items()}
    assert torch.equal(cost[0.0][0], w.log()) and torch.equal(cost[0.0][1], goal)
    assert torch.allclose(cost[0.2][0] - w.log(), 0.5 * (cost[0.4][0] - w.log()), atol=1e-15)
    assert torch.allclose(cost[0.2][1] - goal, 0.5 * (cost[0.4][1] - goal), atol=1e-15)
    assert (cost[0.4][1] - goal).abs().max() > 0.01


def test_imitation_report_averages_the_trials(tmp_path):
    """The results table holds the mean over trials of each learner's test loss; the trials
    table every trial's own."""
    im, task = _pendulum_task()
    values = {**task.expert_physical(), **task.expert_cost()}
    losses = [{8: 1.0, 32: 0.5}, {8: 3.0, 32: 0.25}]  # trial -> size -> loss, times j + 1 for the j-th method
    trials = [{size: {m: {"test": (j + 1) * loss, "values": values} for j, m in enumerate(im.METHODS)}
               for size, loss in by_size.items()} for by_size in losses]
    im.report(task, trials, tmp_path, "a test")
    rows = {r["expert trajectories"]: r for r in _table(tmp_path / "pendulum_imitation.md")}
    for size, mean in ((8, 2.0), (32, 0.375)):
        for j, m in enumerate(im.METHODS):
            assert float(rows[str(size)][im.COLUMNS[m]]) == (j + 1) * mean
    assert "the mean over 2 trials" in (tmp_path / "pendulum_imitation.md").read_text()
    per_trial = _table(tmp_path / "pendulum_imitation_trials.md")
    assert [(r["trial"], r["expert trajectories"]) for r in per_trial] == [("1", "8"), ("1", "32"), ("2", "8"),
                                                                            ("2", "32")]
    assert float(per_trial[2]["sysid"]) == 2 * 3.0
