"""The search space: which ``wit_*`` weights a study samples, in which ranges, and the trials it starts with.

``--space "wit_prompt_weight=0:1,wit_response_weight=0.5:1"``: one ``key=low:high`` per weight (float ranges,
whatever the text looks like: ``0:1`` is never an integer range). Keys are the float weight options of
:mod:`wit_plugin.options`. The default space follows the literature: the WIT paper finds the best weights at
low-to-moderate λp and moderate-to-high λr, so λp ∈ [0, 0.5] and λr ∈ [0.5, 1] (λp's upper end is raised to the
data's rule-of-thumb point when that lies above it, see :mod:`.priors`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from wit_plugin import options
from wit_plugin.options import PROMPT_WEIGHT, RESPONSE_WEIGHT


@dataclass(frozen=True)
class Range:
    low: float
    high: float

    def clip(self, value: float) -> float:
        return min(max(value, self.low), self.high)


Space = dict[str, Range]
DEFAULT_SPACE: Space = {PROMPT_WEIGHT: Range(0.0, 0.5), RESPONSE_WEIGHT: Range(0.5, 1.0)}
# λp = 0 with λr = 1: plain instruction tuning, the reference every weighted run is measured against.
INSTRUCTION_TUNING = {PROMPT_WEIGHT: 0.0, RESPONSE_WEIGHT: 1.0}


def weight_keys() -> list[str]:
    """The keys a space may name: every float weight option."""
    return [option.name for option in options.OPTIONS if option.group == "weights" and option.type is float]


def parse_space(text: str) -> Space:
    """``key=low:high,...`` as a :data:`Space`; a bad entry is named with what is wrong with it."""
    space: Space = {}
    known = weight_keys()
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        key, sep, bounds = entry.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"--space entry {entry!r}: expected key=low:high (e.g. wit_prompt_weight=0:0.5)")
        if key not in known:
            raise ValueError(f"--space entry {entry!r}: {key!r} is not a weight; choose from {', '.join(known)}")
        if key in space:
            raise ValueError(f"--space names {key} twice")
        parts = bounds.split(":")
        try:
            low, high = (float(part) for part in parts) if len(parts) == 2 else (None, None)
        except ValueError:
            low = high = None
        if low is None or high is None:
            raise ValueError(f"--space entry {entry!r}: expected two numbers low:high, got {bounds!r}")
        if not (math.isfinite(low) and math.isfinite(high)) or low < 0 or high <= low:
            raise ValueError(f"--space entry {entry!r}: need 0 <= low < high, got {low:g}:{high:g}")
        space[key] = Range(low, high)
    if not space:
        raise ValueError("--space is empty: give at least one key=low:high")
    return space


def format_space(space: Space) -> str:
    """The space as ``--space`` text (the inverse of :func:`parse_space`)."""
    return ",".join(f"{key}={r.low:g}:{r.high:g}" for key, r in space.items())


def default_space(rule_of_thumb: float | None) -> Space:
    """:data:`DEFAULT_SPACE`, its λp range widened to hold the data's rule-of-thumb prompt weight."""
    space = dict(DEFAULT_SPACE)
    if rule_of_thumb is not None and rule_of_thumb > space[PROMPT_WEIGHT].high:
        space[PROMPT_WEIGHT] = Range(space[PROMPT_WEIGHT].low, rule_of_thumb)
    return space


def first_trials(space: Space, rule_of_thumb: float | None) -> list[dict[str, float]]:
    """The points a new study evaluates first, inside ``space``: the rule-of-thumb prompt weight with λr = 1,
    then plain instruction tuning (λp = 0, λr = 1). Keys outside the space are left to the sampler, and
    duplicates (after clipping into the space) are dropped."""
    points = []
    candidates = [INSTRUCTION_TUNING] if rule_of_thumb is None else [
        {PROMPT_WEIGHT: rule_of_thumb, RESPONSE_WEIGHT: 1.0}, INSTRUCTION_TUNING
    ]  # fmt: skip
    for candidate in candidates:
        point = {key: space[key].clip(float(value)) for key, value in candidate.items() if key in space}
        if point and len(point) == len(space) and point not in points:
            points.append(point)
    return points
