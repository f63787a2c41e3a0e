"""Fields left out because the chat template does not render them (``wit_drop_unrendered``), counted exactly.

Why a column and not a counter: tagging runs wherever the dataset map runs, in worker processes
(``dataset_num_proc`` > 1, Axolotl's and TRL's) or not at all (a prepared dataset loaded from cache), so a
counter kept by the tagger sees part of the rows or none of them. Instead each tagged row carries what was
dropped from it in the ``wit_dropped`` column, which the prepared dataset keeps (and saves) with its other
columns; the adapters sum that column over the prepared datasets in the main process once they are ready, and
:class:`~wit_plugin.training.collation.RoleCollator` takes it out of every batch before the model sees it (TRL's
preparation keeps only the token columns anyway). The counts are therefore of the rows that are trained and
evaluated: a row a length filter removes is not counted.

The column is a fixed-length list of integers: the row's dataset (its position in the config's ``datasets`` or
``test_datasets``; 0 for TRL's one dataset; -1 when unknown), then how many fields of each kind in
:data:`DROP_KINDS` were dropped from the row. It is written for every row, all zeros where nothing was dropped,
so that every dataset a run merges has the same columns and types.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np

DROPPED_KEY = "wit_dropped"
# What can be dropped: a message's tool calls, a row's tool definitions, a message's text, the last turn's
# reasoning (or thinking block), and an assistant turn left with nothing to render (removed).
DROP_KINDS = ("tool_calls", "tools", "content", "reasoning_content", "empty_turns")
UNKNOWN_DATASET = -1


def dropped_column(dataset: int, kinds: Iterable[str]) -> list[int]:
    """One row's ``wit_dropped`` value: ``dataset``, then the count of each of :data:`DROP_KINDS` in ``kinds``."""
    counts = Counter(kinds)
    unknown = set(counts) - set(DROP_KINDS)
    if unknown:
        raise ValueError(f"unknown dropped-field kind(s) {sorted(unknown)}; known: {DROP_KINDS}")
    return [dataset, *(counts[kind] for kind in DROP_KINDS)]


def no_drops() -> dict[str, int]:
    return dict.fromkeys(DROP_KINDS, 0)


def sum_dropped(datasets: Iterable[Any], batch_size: int = 4096) -> dict[int, dict[str, int]] | None:
    """Per dataset position, the fields dropped from the rows of ``datasets`` (prepared ``datasets.Dataset``s
    with a ``wit_dropped`` column), by kind. Rows are read through the datasets' own indices (a split or a
    shuffle of a saved dataset holds only its rows), a batch at a time. ``None`` when one is an
    ``IterableDataset``: its rows are tagged only as training reads them, so there is nothing to count before."""
    from datasets import Dataset

    datasets = list(datasets)
    if not all(isinstance(dataset, Dataset) for dataset in datasets):
        return None
    totals: dict[int, np.ndarray] = {}
    for dataset in datasets:
        if DROPPED_KEY not in (dataset.column_names or []):
            raise ValueError(
                f"the prepared dataset has no '{DROPPED_KEY}' column (columns: {dataset.column_names}): it was not "
                "tagged by this version of wit_plugin"
            )
        for batch in dataset.select_columns([DROPPED_KEY]).with_format("numpy").iter(batch_size=batch_size):
            rows = np.stack(list(batch[DROPPED_KEY])).astype(np.int64).reshape(-1, 1 + len(DROP_KINDS))
            for position in np.unique(rows[:, 0]).tolist():
                count = rows[rows[:, 0] == position, 1:].sum(axis=0)
                totals[position] = totals.get(position, 0) + count
    return {position: dict(zip(DROP_KINDS, map(int, count))) for position, count in totals.items()}


def describe(counts: dict[str, int]) -> str:
    """``3 tool_calls, 3 empty_turns`` (only the kinds that occur), or ``nothing``."""
    return ", ".join(f"{count} {kind}" for kind, count in counts.items() if count) or "nothing"
