"""Run every benchmark's documented ``--quick`` command (CI's smoke test of the benchmarks).

Each benchmark script documents its commands in its docstring; this runs the ones with
``--quick``, writing their pages to a temporary folder (``--out`` replaced), and fails if
any exits non-zero or a script documents no quick command.

    python benchmarks/run_quick.py
"""

from __future__ import annotations

import ast
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: modules the benchmarks import, not benchmarks themselves
HELPERS = {"common.py", "mpc_pytorch_reference.py", "run_quick.py"}


def quick_commands(script: Path) -> list[list[str]]:
    """The ``python benchmarks/<script> --quick ...`` commands in ``script``'s docstring."""
    doc = ast.get_docstring(ast.parse(script.read_text())) or ""
    commands = []
    for line in doc.splitlines():
        if not line.strip().startswith("python benchmarks/"):
            continue
        words = shlex.split(line.split("#")[0])
        if words[:2] == ["python", f"benchmarks/{script.name}"] and "--quick" in words:
            commands.append(words)
    return commands


def with_out(words: list[str], folder: str, script: Path) -> list[str]:
    """The command with ``--out`` pointing into ``folder``."""
    if "--out" in words:
        i = words.index("--out")
        words = words[:i] + words[i + 2:]
    return [sys.executable, *words[1:], "--out", str(Path(folder) / f"{script.stem}.md")]


def main() -> int:
    scripts = sorted(p for p in HERE.glob("*.py") if p.name not in HELPERS)
    failures = []
    with tempfile.TemporaryDirectory() as folder:
        for script in scripts:
            commands = quick_commands(script)
            if not commands:
                failures.append(f"{script.name}: no documented --quick command")
                continue
            for words in commands:
                start = time.perf_counter()
                result = subprocess.run(with_out(words, folder, script), cwd=HERE.parent, capture_output=True,
                                        text=True)
                print(f"{' '.join(words)}: exit {result.returncode} in {time.perf_counter() - start:.0f} s",
                      flush=True)
                if result.returncode != 0:
                    failures.append(f"{' '.join(words)}:\n{result.stderr[-2000:]}")
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
