"""Checks over a whole tagged dataset, for what one row cannot tell: how many assistant turns end untrained.

Per row, the tagger warns when a template has no end-of-turn text at all; the adapters run
:func:`audit_turn_ends` over the prepared dataset so that the count of turns without an ``eot`` token is
reported once, with the first row that has one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wit_plugin.roles import Role
from wit_plugin.tagging.messages import weight_field_hint

LOG = logging.getLogger(__name__)
_OUTPUT = np.array([Role.RESPONSE, Role.REASONING, Role.EOT], dtype=np.int64)


@dataclass(frozen=True)
class TurnEndAudit:
    turns: int  # assistant turns (maximal runs of response, reasoning and eot tokens) that end inside a row
    without_end: int  # of those, turns with no eot token
    first_row: int | None  # the first row holding one

    def warn(self, dataset: str, template: str | None = None) -> None:
        """Log a warning if any turn ends without an eot token (once, with the count)."""
        if not self.without_end:
            return
        LOG.warning(
            "wit: %d of %d assistant turns in the %s dataset have no end-of-turn token (first in row %s)%s; the "
            "model will not learn where those turns end: give the template's end-of-turn text as `eot_tokens`",
            self.without_end,
            self.turns,
            dataset,
            self.first_row,
            f" with chat template {template}" if template else "",
        )


@dataclass
class UnreadKeys:
    """Warns once per dataset and key about message keys that no row format reads and the chat template does not
    render (a per-message ``weight``): they change nothing in training, which the user may not expect."""

    dataset: str
    seen: set[str] = field(default_factory=set)

    def report(self, tagged: Any, where: Callable[[], str]) -> None:
        """``where`` names the row (computed only when a warning is due: finding a row's line costs a search)."""
        for name in getattr(tagged, "unread", ()):
            key = name.rsplit(".", 1)[-1]
            if key in self.seen:
                continue
            self.seen.add(key)
            LOG.warning(
                "wit: %s dataset: message key %r is read by no row format and not rendered by the chat template, so "
                "it changes nothing in training (first seen at %s, %s; warned once per dataset and worker process)%s",
                self.dataset,
                key,
                where(),
                name,
                weight_field_hint(key),
            )


def dataset_roles(dataset: Any, column: str, batch_size: int = 1000) -> Iterator[Sequence[int]]:
    """A dataset's role column, row by row, read in batches (never the whole column in memory at once)."""
    for batch in dataset.with_format("numpy").iter(batch_size=batch_size):
        yield from batch[column]


def audit_turn_ends(rows: Iterable[Sequence[int]]) -> TurnEndAudit:
    """Count assistant turns without an ``eot`` token. A turn cut by the end of its row (truncation, packing)
    is not counted: its end may simply lie beyond the row."""
    turns = without_end = 0
    first_row = None
    for index, row in enumerate(rows):
        roles = np.asarray(row, dtype=np.int64)
        output = np.isin(roles, _OUTPUT)
        if not output.any():
            continue
        edges = np.diff(np.concatenate([[0], output.astype(np.int8), [0]]))
        for start, end in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)):
            if end == len(roles):
                continue
            turns += 1
            if not (roles[start:end] == Role.EOT).any():
                without_end += 1
                first_row = index if first_row is None else first_row
    return TurnEndAudit(turns, without_end, first_row)


def weighted_datasets(dataset: Any, weights_column: str, dropped_column: str) -> set[int]:
    """The dataset positions (``wit_dropped``'s first value) of the rows with multipliers from the data (a
    non-empty ``wit_message_weights``), read as Arrow: for the warning about a weight key that no row carries."""
    import pyarrow.compute as pc

    if weights_column not in (dataset.column_names or []):
        return set()
    table = dataset.select_columns([weights_column, dropped_column]).with_format("arrow")[:]
    weighted = pc.greater(pc.list_value_length(table[weights_column]), 0)
    positions = pc.filter(pc.list_element(table[dropped_column], 0), weighted)
    return set(pc.unique(positions).to_pylist())
