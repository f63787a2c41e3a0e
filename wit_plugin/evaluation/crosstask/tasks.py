"""Task files for cross-task evaluation: JSON Lines of labelled items of many tasks.

A row is ``{"task", "input", "label", "options"?, "definition"?, "id"?}``. A *pool* file holds the labelled
examples demos are drawn from, a *targets* file the items evaluated. ``id`` defaults to ``<file name>:<line>``
(the same wherever the file is read from); every error names ``file:line`` and the field.

Real data has quirks a user cannot fix upstream: CommonsenseQA lists some options twice. Such a row loads as
given; :func:`usable_rows` then resolves it by the rule of its role (pool or targets), counting and naming every
row it changed or skipped, so one row never aborts a run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from wit_plugin.jsonl import read_jsonl

FIELDS = ("task", "input", "label", "options", "definition", "id")


class TaskFileError(ValueError):
    """A task file row that cannot be evaluated; the message starts with ``file:line``."""


@dataclass(frozen=True)
class TaskItem:
    """One labelled item. ``options`` is ``None`` for items answered by generation (exact match)."""

    task: str
    input: str
    label: str
    options: tuple[str, ...] | None
    definition: str
    id: str  # as the file gives it (unique within the file), for traces
    where: str  # path:line: unique among everything loaded, the key evaluators index items by

    def same_item(self, other: TaskItem) -> bool:
        """The same example, whichever file it came from (an item is never its own demo): the same row, or the
        same task and input (ids are unique per file only)."""
        return self.where == other.where or (self.task == other.task and self.input == other.input)


def _string(row: dict[str, Any], key: str, where: str, required: bool = True) -> str:
    value = row.get(key)
    if value is None and not required:
        return ""
    if key not in row:
        raise TaskFileError(f"{where}: field '{key}' is missing")
    if not isinstance(value, str):
        raise TaskFileError(f"{where}: field '{key}' must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise TaskFileError(f"{where}: field '{key}' is empty")
    return value


def parse_item(row: dict[str, Any], where: str, default_id: str | None = None) -> TaskItem:
    """A row checked field by field."""
    unknown = sorted(set(row) - set(FIELDS))
    if unknown:
        raise TaskFileError(f"{where}: unknown field(s) {unknown}; a task row has {list(FIELDS)}")
    task, text, label = (_string(row, key, where) for key in ("task", "input", "label"))
    options = row.get("options")
    if options is not None:
        if not isinstance(options, list) or not all(isinstance(option, str) for option in options):
            raise TaskFileError(f"{where}: field 'options' must be a list of strings")
        if len(options) < 2:
            raise TaskFileError(f"{where}: field 'options' needs at least 2 options, got {len(options)}")
        if any(not option.strip() for option in options):
            raise TaskFileError(f"{where}: field 'options' has an empty option")
        if label not in options:
            raise TaskFileError(f"{where}: field 'label' {label!r} is not among the options {options}")
        options = tuple(options)
    identifier = row.get("id", default_id or where)
    if not isinstance(identifier, (str, int)) or isinstance(identifier, bool):
        raise TaskFileError(f"{where}: field 'id' must be a string or an integer")
    definition = _string(row, "definition", where, required=False)
    return TaskItem(task, text, label, options, definition, str(identifier), where)


def load_items(path: str | Path) -> list[TaskItem]:
    """Every row of a task file; ids must be unique within it. Rows of a task without a ``definition`` take the
    first definition given for that task in the file."""
    path = Path(path)
    if not path.is_file():
        raise TaskFileError(f"no task file at {path}")
    items: list[TaskItem] = []
    seen: dict[str, str] = {}
    for line, row in read_jsonl(path):
        where = f"{path}:{line}"
        item = parse_item(row, where, f"{path.name}:{line}")
        if item.id in seen:
            raise TaskFileError(f"{where}: field 'id' {item.id!r} is used again (first at {seen[item.id]})")
        seen[item.id] = where
        items.append(item)
    if not items:
        raise TaskFileError(f"{path} has no rows")
    definitions: dict[str, str] = {}
    for item in items:
        if item.definition:
            definitions.setdefault(item.task, item.definition)
    return [
        item if item.definition else TaskItem(**{**item.__dict__, "definition": definitions.get(item.task, "")})
        for item in items
    ]


def listed_twice(item: TaskItem) -> list[str]:
    """The options ``item`` lists more than once (in order of first appearance)."""
    counts = Counter(item.options or ())
    return [option for option in dict.fromkeys(item.options or ()) if counts[option] > 1]


def usable_rows(items: Sequence[TaskItem], role: str) -> tuple[list[TaskItem], list[str]]:
    """``items`` of a ``"pool"`` or ``"targets"`` file with options listed twice resolved, and notes that count and
    name (``file:line``) every row changed or skipped.

    * A wrong option listed twice is kept once (first place): the answer stays unambiguous.
    * A target whose gold answer is also listed as a wrong option is skipped: the key marks the same text right
      and wrong, so no prediction can be scored.
    * A pool row with its gold answer listed twice is kept, options de-duplicated: a demo shows only its input
      and its keyed label, and a pseudo-labelled row needs its options distinct, which they then are.
    """
    if role not in ("pool", "targets"):
        raise ValueError(f"role must be 'pool' or 'targets', got {role!r}")
    kept: list[TaskItem] = []
    changed: list[str] = []
    skipped: list[str] = []
    for item in items:
        twice = listed_twice(item)
        if not twice:
            kept.append(item)
        elif role == "targets" and item.label in twice:
            skipped.append(item.where)
        else:
            kept.append(replace(item, options=tuple(dict.fromkeys(item.options or ()))))
            changed.append(item.where)
    notes = []
    if changed:
        notes.append(f"{role}: {len(changed)} row(s) list an option twice, kept once: {', '.join(changed)}")
    if skipped:
        notes.append(
            f"{role}: {len(skipped)} row(s) skipped, their gold answer also listed as a wrong option: "
            + ", ".join(skipped)
        )
    return kept, notes


def by_task(items: Sequence[TaskItem]) -> dict[str, list[TaskItem]]:
    """Items grouped by task, tasks in order of first appearance."""
    groups: dict[str, list[TaskItem]] = {}
    for item in items:
        groups.setdefault(item.task, []).append(item)
    return groups
