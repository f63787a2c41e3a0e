"""JSON Lines files, read so that every error can name its ``file:line``.

Datasets, prompt sets and task files are JSONL; a malformed line, or a row the tagger refuses, must be reported
where a user can find it. :func:`find_row` maps a row back to its line after a framework (Axolotl, Arrow) has
loaded it and lost the position.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any


class JSONLError(ValueError):
    """A line that is not a JSON object; the message starts with ``file:line``."""


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for every non-blank line."""
    with Path(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise JSONLError(f"{path}:{number}: not valid JSON ({error.msg} at column {error.colno})") from None
            if not isinstance(row, dict):
                raise JSONLError(f"{path}:{number}: expected a JSON object per line, got {type(row).__name__}")
            yield number, row


def check_jsonl(path: str | Path) -> int:
    """Read the whole file (raising :class:`JSONLError` at the first bad line); returns the number of rows."""
    return sum(1 for _ in read_jsonl(path))


def without_nulls(value: Any) -> Any:
    """``value`` with ``None``-valued keys dropped at every depth: Arrow gives every row every column."""
    if isinstance(value, Mapping):
        return {key: without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, (list, tuple)):
        return [without_nulls(item) for item in value]
    return value


def find_row(path: str | Path, row: Mapping[str, Any]) -> int | None:
    """The line of ``path`` holding ``row`` (as loaded by ``datasets``), or ``None``."""
    wanted = without_nulls(row)
    try:
        for number, candidate in read_jsonl(path):
            if without_nulls(candidate) == wanted:
                return number
    except (OSError, JSONLError, UnicodeDecodeError):
        return None
    return None


def describe_row(row: Mapping[str, Any], limit: int = 160) -> str:
    """A row's start, for errors about rows that cannot be found in a file."""
    text = json.dumps(without_nulls(row), ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"
