"""Task files for cross-task evaluation: JSON Lines of labelled items of many tasks.

A row is ``{"task", "input", "label", "options"?, "definition"?, "id"?}``. A *pool* file holds the labelled
examples demos are drawn from, a *targets* file the items evaluated. ``id`` defaults to ``<file name>:<line>``
(the same wherever the file is read from); every error names ``file:line`` and the field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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
        if len(set(options)) != len(options):
            raise TaskFileError(f"{where}: field 'options' lists an option twice: {options}")
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


def by_task(items: Sequence[TaskItem]) -> dict[str, list[TaskItem]]:
    """Items grouped by task, tasks in order of first appearance."""
    groups: dict[str, list[TaskItem]] = {}
    for item in items:
        groups.setdefault(item.task, []).append(item)
    return groups
