"""The search space: which ``wit_*`` weights a study samples, in which ranges, and the trials it starts with.

``--space "wit_prompt_weight=0:1,wit_response_weight=0.5:1"``: one ``key=low:high`` per weight (float ranges,
whatever the text looks like: ``0:1`` is never an integer range). Keys are the float weight options of
:mod:`wit_plugin.options`. The default space follows the literature: the WIT paper finds the best weights at
low-to-moderate λp and moderate-to-high λr, so λp ∈ [0, 0.5] and λr ∈ [0.5, 1] (λp's upper end is raised to the
data's rule-of-thumb point when that lies above it, see :mod:`.priors`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from wit_plugin import options
from wit_plugin.options import PROMPT_WEIGHT, RESPONSE_WEIGHT
from wit_plugin.roles import KEY_ROLES, deciding_keys
from wit_plugin.schedules import parse_schedule

log = logging.getLogger(__name__)


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


def check_space_applies(space: Space | None, values: Mapping[str, Any], where: str) -> None:
    """Every key the search varies (``space``, None: the default) decides the weight of at least one role, given
    the weight keys the set-up itself sets (``values``; ``where`` names it, e.g. the config file). A group key
    whose roles all have their own key set (``wit_prompt_weight`` with ``wit_template/system/instruction_weight``)
    would be suggested, recorded and plotted while every trial trained the same weights: refused, naming the
    keys. A group key overridden for some of its roles only is logged. A searched key the set-up gives a schedule
    (a weight that changes during training) is refused: every trial would replace it by a constant."""
    varied = list(space or DEFAULT_SPACE)
    for key in varied:
        given = values.get(key)
        schedule = parse_schedule(given, f"{where}: {key}") if isinstance(given, Mapping) else None
        if schedule is not None and not schedule.constant:
            raise ValueError(
                f"{'--space' if space else 'the default space'} searches a constant {key}, but {where} sets it to "
                f"a schedule ({schedule.describe()}), which every trial would replace: drop the schedule from "
                f"{where} to search a constant, or search other keys"
            )
    fixed = {key for key in KEY_ROLES if values.get(key) is not None and key not in varied}
    deciding = deciding_keys(fixed | set(varied))
    for key in varied:
        roles = KEY_ROLES[key]
        overriding = {role: deciding[role] for role in roles if deciding[role] != key}
        if not overriding:
            continue
        winners = set(overriding.values())
        parts = [f"{where} sets {', '.join(sorted(winners & fixed))}"] if winners & fixed else []
        parts += [f"--space also searches {', '.join(sorted(winners - fixed))}"] if winners - fixed else []
        why = " and ".join(parts)
        if len(overriding) == len(roles):
            raise ValueError(
                f"{'--space' if space else 'the default space'} searches {key}, but {why}, which replace it for every role it weights "
                f"({', '.join(role.label for role in roles)}): every trial would train the same weights while the "
                f"results report different {key} values; drop {', '.join(sorted(winners))} or search them instead"
            )
        kept = ", ".join(role.label for role in roles if role not in overriding)
        log.info("wit tune: %s weights %s only: %s (the more specific keys win)", key, kept, why)
