"""mkdocs hooks: the figures of the examples and the benchmarks (``examples/results/*.png``,
``benchmarks/results/*.png``, written by their scripts) are served under ``figures/``, so the
docs show them without a second copy that could go stale; the Sphinx roles of the docstrings
(``:class:`~diffcontrol.Status```), which mkdocstrings leaves as raw text, become code."""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
#: the examples' figures and the benchmarks' (benchmarks/plot_results.py)
FIGURES = [ROOT / "examples" / "results", ROOT / "benchmarks" / "results"]


def on_files(files, config):
    for folder in FIGURES:
        for png in sorted(folder.glob("*.png")):
            files.append(File.generated(config, f"figures/{png.name}", abs_src_path=str(png)))
    return files


# after Markdown: `:class:`x`` has become ``:class:<code>x</code>``; a leading ~ shows the last name
_ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|exc|obj):<code>(~?)([\w.]+)</code>")


def on_page_content(html, page, config, files):
    return _ROLE.sub(lambda m: f"<code>{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}</code>", html)
