"""What the example scripts share: a progress bar, the results table and the figure."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path


def arguments(doc: str) -> argparse.Namespace:
    """Every example's command line: ``--quick`` and ``--out`` (default examples_output)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the short run (about a minute on 2 cores)")
    parser.add_argument("--out", default="examples_output", help="folder for the table and the figure")
    return parser.parse_args()


def progress(items: Iterable, desc: str) -> Iterable:
    """tqdm's progress bar where it is installed (``pip install 'diffcontrol[bench]'``)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, leave=False)


def write_table(path: Path, header: list[str], rows: list[list], title: str = "") -> Path:
    """A markdown table (numbers as given), printed and saved."""
    lines = ([f"# {title}", ""] if title else []) + ["| " + " | ".join(header) + " |",
                                                     "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {path}")
    return path


def pyplot():
    """matplotlib.pyplot on the Agg backend, or None (then no figure is written)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'diffcontrol[bench]'); no figure written")
        return None
    return plt


def save_figure(fig, path: Path) -> Path:
    """Lay out, save (PNG, 120 dpi), close and report a figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")
    return path
