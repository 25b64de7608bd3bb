"""Figures of the committed benchmark tables: time against batch size, ours beside the
competitor, drawn from the Markdown pages under ``benchmarks/results/`` (so a figure always
shows the numbers its table reports, and redrawing it needs no rerun of the benchmark).

- ``lqr_vs_cvxpylayers.png``: forward + backward time per problem, lqr vs cvxpylayers;
- ``ilqr_vs_mpc_pytorch.png``: the same for ilqr vs mpc.pytorch;
- ``scale.png``: time per example and peak memory against batch size.

    python benchmarks/plot_results.py                     # figures beside the tables
    python benchmarks/plot_results.py --quick --out /tmp/figures.md   # into another folder
"""

from __future__ import annotations

import argparse
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def read_table(page: Path) -> list[dict[str, str]]:
    """The first Markdown table of ``page`` as rows keyed by its header."""
    lines = [line.strip() for line in page.read_text().splitlines() if line.strip().startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[2:]]


def number(cell: str) -> float:
    return float(cell.rstrip("x").split()[0])


def by_problem(rows: list[dict[str, str]], key: str = "problem") -> dict[str, list[dict[str, str]]]:
    groups: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        groups.setdefault(row[key], []).append(row)
    return groups


def versus(plt, page: Path, ours: str, theirs: str, name: str, out: Path) -> Path:
    """Forward + backward time against batch size, one panel per problem."""
    groups = by_problem(read_table(page))
    fig, axes = plt.subplots(1, len(groups), figsize=(3.2 * len(groups), 3.2), squeeze=False)
    for ax, (problem, rows) in zip(axes[0], groups.items()):
        batch = [number(r["batch"]) for r in rows]
        ax.loglog(batch, [number(r[ours]) for r in rows], "o-", label="diffcontrol")
        ax.loglog(batch, [number(r[theirs]) for r in rows], "s--", label=name)
        ax.set_title(problem, fontsize=9)
        ax.set_xlabel("batch")
    axes[0][0].set_ylabel("forward + backward (s)")
    axes[0][0].legend(fontsize=8)
    return _save(fig, out / f"{page.stem}.png")


def scale(plt, page: Path, out: Path) -> Path:
    """Time per example and peak memory against batch size, per problem."""
    groups = by_problem(read_table(page))
    fig, (time_ax, memory_ax) = plt.subplots(1, 2, figsize=(8, 3.2))
    for problem, rows in groups.items():
        batch = [number(r["batch"]) for r in rows]
        time_ax.loglog(batch, [number(r["per example (ms)"]) for r in rows], "o-", label=problem)
        memory_ax.loglog(batch, [number(r["peak memory (MiB)"]) for r in rows], "o-", label=problem)
    time_ax.set(xlabel="batch", ylabel="forward + backward per example (ms)")
    memory_ax.set(xlabel="batch", ylabel="peak memory (MiB)")
    time_ax.legend(fontsize=8)
    return _save(fig, out / f"{page.stem}.png")


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the same figures (they need no solve)")
    parser.add_argument("--out", type=Path, default=None,
                        help="a Markdown page listing the figures; they are written beside it")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = RESULTS if args.out is None else args.out.parent
    out.mkdir(parents=True, exist_ok=True)
    figures = [
        versus(plt, RESULTS / "lqr_vs_cvxpylayers.md", "ours fwd+bwd (s)", "cvxpylayers fwd+bwd (s)", "cvxpylayers",
               out),
        versus(plt, RESULTS / "ilqr_vs_mpc_pytorch.md", "ours fwd+bwd (s)", "mpc.pytorch fwd+bwd (s)", "mpc.pytorch",
               out),
        scale(plt, RESULTS / "scale.md", out),
    ]
    if args.out is not None:
        args.out.write_text("# Benchmark figures\n\n" + "".join(f"![{f.stem}]({f.name})\n\n" for f in figures))


if __name__ == "__main__":
    main()
