"""Every ```python block of the README and the docs runs, in order, file by file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_the_readme_and_the_docs_have_snippets():
    assert python_blocks(ROOT / "README.md")
    assert sum(len(python_blocks(p)) for p in PAGES) >= 6


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_snippets_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__snippet__"}
    for block in python_blocks(page):
        exec(compile(block, str(page), "exec"), namespace)  # noqa: S102


def test_demo_trains_and_writes_its_outputs(tmp_path, capsys):
    from diffcontrol.demo import TRUE, run

    history = run(iterations=21, out=str(tmp_path), seed=0)
    assert history["test_loss"][-1] < 0.7 * history["test_loss"][0]
    start = sum(abs(history[k][0] - v) / v for k, v in TRUE.items())
    assert sum(abs(history[k][-1] - v) / v for k, v in TRUE.items()) < start  # the physics moves toward the truth
    assert (tmp_path / "pendulum_mpc_dx.md").exists()
    out = capsys.readouterr().out
    assert "Backend: ilqr" in out and "wrote" in out
