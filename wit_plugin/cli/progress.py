"""Progress of a long evaluation, the same for every ``wit`` evaluator: on a terminal a bar with the time spent
and the time left; in a log or a pipe (where a bar would be lost or garbled) a line every
:data:`LOG_EVERY_S` seconds or :data:`LOG_EVERY_FRACTION` of the work, with elapsed and remaining time."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

logger = logging.getLogger(__name__)

LOG_EVERY_S = 30.0
LOG_EVERY_FRACTION = 0.1


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``: short enough for a progress line."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class ProgressLog:
    """Progress as log lines: the first update, then at most one line per ``interval_s`` seconds or per
    ``fraction`` of the total, and one when the work is done. The time left assumes the remaining items take
    as long as the finished ones did, on average."""

    def __init__(
        self,
        label: str,
        emit: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
        interval_s: float = LOG_EVERY_S,
        fraction: float = LOG_EVERY_FRACTION,
    ) -> None:
        self.label, self.emit, self.clock = label, emit, clock
        self.interval_s, self.fraction = interval_s, fraction
        self.start = clock()
        self.last_time: float | None = None
        self.last_fraction = 0.0
        self.finished = False

    def update(self, done: int, total: int | None) -> None:
        now = self.clock()
        elapsed = now - self.start
        if total:
            share = done / total
            if self.finished or (
                done < total
                and self.last_time is not None
                and now - self.last_time < self.interval_s
                and share - self.last_fraction < self.fraction
            ):
                return
            self.finished = done >= total
            line = f"{self.label}: {done}/{total} ({100 * share:.0f}%), {duration(elapsed)} elapsed"
            if self.finished:
                line += ", done"
            elif done:
                line += f", about {duration(elapsed * (total - done) / done)} left"
            self.last_fraction = share
        else:
            if self.last_time is not None and now - self.last_time < self.interval_s:
                return
            line = f"{self.label}: {done} done, {duration(elapsed)} elapsed"
        self.last_time = now
        self.emit(line)

    def stage(self, text: str) -> None:
        """A new step of the work (``run 2 of 3: POSIX``), always logged."""
        self.emit(f"{self.label}: {text} ({duration(self.clock() - self.start)} elapsed)")


class Reporter:
    """What an evaluator is handed: ``update(done, total)`` counts finished items, ``stage(text)`` names the
    step under way."""

    def __init__(self, progress: Any = None, task: Any = None, log: ProgressLog | None = None) -> None:
        self._progress, self._task, self._log = progress, task, log

    def update(self, done: int, total: int | None) -> None:
        if self._log is not None:
            self._log.update(done, total)
        else:
            self._progress.update(self._task, completed=done, total=total)

    def stage(self, text: str) -> None:
        if self._log is not None:
            self._log.stage(text)
        else:
            self._progress.update(self._task, description=text)


@contextmanager
def report_progress(console: Any, label: str) -> Iterator[Reporter]:
    """A :class:`Reporter` drawing a rich bar (items, elapsed, time left) when ``console`` is a terminal, else
    writing :class:`ProgressLog` lines to the log."""
    if not console.is_terminal:
        yield Reporter(log=ProgressLog(label, logger.info))
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        yield Reporter(progress, progress.add_task(label, total=None))
