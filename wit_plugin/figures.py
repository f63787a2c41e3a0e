"""What every figure of wit_plugin shares: pyplot on the headless Agg backend, and saving a figure as a PNG.

matplotlib is imported on first use (the ``eval`` extra), so ``wit --help`` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot`` drawing off-screen (no display on servers and CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(figure: Any, path: Path) -> Path:
    """Write ``figure`` to ``path`` and free it (pyplot keeps every open figure alive)."""
    figure.savefig(path)
    pyplot().close(figure)
    return path
