"""Weights that change over training: one formula per schedule kind, defined here and nowhere else.

A weight key takes a number (constant) or a mapping ``{start, end, schedule, warmup}``. Its value depends only on
``progress = global_step / max_steps`` (the optimiser steps done before the current one, over all of them), so a
run resumed from a checkpoint continues the schedule exactly. With ``q = (progress − warmup) / (1 − warmup)``:

* ``progress < warmup``: ``start`` (every kind: the warm-up holds the starting weight);
* ``constant``: ``start`` (``end``, if given, must equal it);
* ``linear``: ``start + (end − start)·q``;
* ``cosine``: ``end + (start − end)·(1 + cos(π·q)) / 2``;
* ``step``: ``end`` (it jumps when the warm-up ends, so it needs ``warmup > 0``).

This module imports nothing but the standard library: the ``wit`` CLI and the option schema read it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SCHEDULE_KINDS: tuple[str, ...] = ("constant", "linear", "cosine", "step")
SCHEDULE_FIELDS: tuple[str, ...] = ("start", "end", "schedule", "warmup")


class WeightError(ValueError):
    """Raised for weights that would make training silently wrong."""


class ScheduleError(WeightError):
    """A schedule that cannot be followed; the message names the key the user wrote."""


def check_weight(value: Any, name: str) -> None:
    """A weight must be a finite number ≥ 0; the error names the key the user wrote."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise WeightError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise WeightError(f"{name} must be finite, got {value}")
    if value < 0:
        raise WeightError(f"{name} must be >= 0, got {value}")


def _number(value: Any, where: str) -> float:
    try:
        check_weight(value, where)
    except WeightError as error:
        raise ScheduleError(str(error)) from None
    return float(value)


@dataclass(frozen=True)
class Schedule:
    """One weight over training; a plain number is ``Schedule(w, w)``."""

    start: float
    end: float
    kind: str = "constant"
    warmup: float = 0.0

    @property
    def constant(self) -> bool:
        return self.kind == "constant"

    def at(self, progress: float) -> float:
        """The weight at ``progress`` (clamped to [0, 1])."""
        progress = min(max(progress, 0.0), 1.0)
        if self.constant or progress < self.warmup:
            return self.start
        if self.kind == "step":
            return self.end
        q = (progress - self.warmup) / (1.0 - self.warmup)
        if self.kind == "linear":
            return self.start + (self.end - self.start) * q
        return self.end + (self.start - self.end) * (1.0 + math.cos(math.pi * q)) / 2.0

    def breakpoints(self) -> tuple[float, ...]:
        """Progress values where the weight can first take each of its values' extremes (0, end of warm-up, 1):
        a zero of a piecewise-monotone schedule starts at one of them."""
        return (0.0, self.warmup, 1.0)

    def as_json(self) -> float | dict[str, Any]:
        """A number when constant, else the mapping the user wrote (every field filled in)."""
        if self.constant:
            return self.start
        return {"start": self.start, "end": self.end, "schedule": self.kind, "warmup": self.warmup}

    def describe(self) -> str:
        """``0.4`` or ``1→0.1 (cosine)``, with the warm-up when there is one: ``1→0.1 (step, warmup 0.2)``."""
        if self.constant:
            return f"{self.start:g}"
        warmup = f", warmup {self.warmup:g}" if self.warmup else ""
        return f"{self.start:g}→{self.end:g} ({self.kind}{warmup})"


def parse_schedule(value: Any, key: str) -> Schedule:
    """``value`` (a number or a schedule mapping) as a :class:`Schedule`; errors name ``key`` and the field."""
    if not isinstance(value, Mapping):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ScheduleError(f"{key} must be a number or a schedule mapping {{start, end, schedule}}, got {value!r}")
        weight = _number(value, key)
        return Schedule(weight, weight)
    unknown = sorted(str(field) for field in value if field not in SCHEDULE_FIELDS)
    if unknown:
        raise ScheduleError(f"{key}: unknown schedule field(s) {unknown}; valid: {list(SCHEDULE_FIELDS)}")
    kind = value.get("schedule")
    if kind not in SCHEDULE_KINDS:
        raise ScheduleError(f"{key}.schedule: unknown schedule {kind!r}; choose from {', '.join(SCHEDULE_KINDS)}")
    if "start" not in value:
        raise ScheduleError(f"{key}: a schedule needs 'start'")
    start = _number(value["start"], f"{key}.start")
    if kind == "constant":
        end = _number(value.get("end", start), f"{key}.end")
        if end != start:
            raise ScheduleError(f"{key}: a constant schedule has one value, got start={start:g} end={end:g}")
    elif "end" not in value:
        raise ScheduleError(f"{key}: a {kind} schedule needs 'end'")
    else:
        end = _number(value["end"], f"{key}.end")
    warmup = _number(value.get("warmup", 0.0), f"{key}.warmup")
    if warmup >= 1:
        raise ScheduleError(f"{key}.warmup must be a fraction of training in [0, 1), got {warmup:g}")
    if kind == "step" and warmup == 0:
        raise ScheduleError(f"{key}: a step schedule jumps from start to end when the warm-up ends; set warmup > 0")
    return Schedule(start, end, kind, warmup)


def progress(global_step: int, max_steps: int) -> float:
    """Training progress of the step about to run: the optimiser steps done over all of them (0 before training
    knows its length)."""
    return global_step / max_steps if max_steps > 0 else 0.0
