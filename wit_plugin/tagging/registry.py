"""Discoverable row formats: third-party packages add formats without touching this one.

A package exposes a module with a ``@hookimpl def wit_row_formats()`` returning :class:`RowFormat`
subclasses, and registers it under the ``wit_plugin.formats`` entry-point group.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import pluggy

from wit_plugin.tagging.formats import BUILTIN_FORMATS, RowFormat
from wit_plugin.tagging.spans import TaggingError

PROJECT = "wit_plugin"
ENTRY_POINT_GROUP = "wit_plugin.formats"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class FormatSpec:
    @hookspec
    def wit_row_formats(self) -> list[type[RowFormat]]:  # type: ignore[empty-body]
        """Return the row formats this package provides."""


class _Builtins:
    @hookimpl
    def wit_row_formats(self) -> list[type[RowFormat]]:
        return list(BUILTIN_FORMATS)


@lru_cache(maxsize=1)
def plugin_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(PROJECT)
    manager.add_hookspecs(FormatSpec)
    manager.register(_Builtins())
    manager.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    return manager


def available_formats() -> dict[str, type[RowFormat]]:
    """Every registered format by name; a later registration of a name wins over the built-in one."""
    formats: dict[str, type[RowFormat]] = {}
    for batch in reversed(plugin_manager().hook.wit_row_formats()):
        for row_format in batch:
            formats[row_format.name] = row_format
    return formats


def get_format(name: str) -> type[RowFormat]:
    formats = available_formats()
    if name not in formats:
        raise TaggingError(f"unknown row format {name!r}; available: {sorted(formats)}")
    return formats[name]


def detect_format(row: Mapping[str, Any]) -> type[RowFormat]:
    """The first format whose columns the row has (chat, alpaca, prompt/completion, text, then plug-ins)."""
    for row_format in available_formats().values():
        if row_format.matches(row):
            return row_format
    raise TaggingError(
        f"no row format matches a row with fields {sorted(row)}; available: {sorted(available_formats())}"
    )
