"""The cross-task evaluation's settings, read from the ``wit_crosstask_*`` options (:mod:`wit_plugin.options`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from wit_plugin import options as wit_options


@dataclass(frozen=True)
class CrossTaskSettings:
    """The evaluation's knobs; defaults are the ``wit_crosstask_*`` options' (:mod:`wit_plugin.options`)."""

    conditions: tuple[str, ...]
    shots: int
    select: str
    scoring: str
    limit: int | None
    pseudo_rows: int
    seed: int
    max_new_tokens: int
    chat: bool
    batch_size: int

    @classmethod
    def from_options(cls, values: Mapping[str, Any] | None = None) -> CrossTaskSettings:
        values = values or {}
        for name in wit_options.OPTION_BY_NAME:
            if name.startswith("wit_crosstask_"):
                wit_options.OPTION_BY_NAME[name].check(values.get(name))

        def get(name: str) -> Any:
            return wit_options.resolved(values, f"wit_crosstask_{name}")

        option = wit_options.OPTION_BY_NAME["wit_crosstask_conditions"]
        conditions = tuple(dict.fromkeys(wit_options.parse_choices(get("conditions"), option)))
        return cls(
            conditions=conditions,
            shots=get("shots"),
            select=get("select"),
            scoring=get("scoring"),
            limit=get("limit"),
            pseudo_rows=get("pseudo_rows"),
            seed=get("seed"),
            max_new_tokens=get("max_new_tokens"),
            chat=bool(get("chat")),
            batch_size=get("batch_size"),
        )
