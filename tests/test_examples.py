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


def _learned_lqr(rows):
    for r in rows:  # every seed imitates far better than at its start
        assert float(r["imitation loss (end)"]) < 0.5 * float(r["imitation loss (start)"]), r


def _learned_pendulum(rows):
    last = rows[-1]  # the most data: the MPC policies beat the LSTM (the paper's finding)
    assert float(last["mpc.dx"]) < float(last["nn (LSTM)"]) and float(last["sysid"]) < float(last["nn (LSTM)"])


def _learned_kepler(rows):
    assert float(rows[-1]["loss"]) < 1e-2 * float(rows[0]["loss"]) and abs(float(rows[-1]["e"]) - 0.6) < 0.05


def _learned_distributed(rows):
    assert abs(float(rows[-1]["g"]) - 10) < abs(float(rows[0]["g"]) - 10)
    assert abs(float(rows[-1]["l"]) - 1) < abs(float(rows[0]["l"]) - 1)


EXAMPLES = {
    "lqr_imitation.py": ("lqr_imitation", True, _learned_lqr),
    "pendulum_imitation.py": ("pendulum_imitation", True, _learned_pendulum),
    "kepler.py": ("kepler", True, _learned_kepler),
    "distributed_training.py": ("distributed_training", False, _learned_distributed),
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
    learned(rows)
