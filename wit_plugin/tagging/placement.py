"""Placing a row's texts in its rendering through a sentinel scaffold.

The template renders the conversation once more with every text the row supplies replaced by a unique sentinel:
the *scaffold*, the text the template adds around them. Walking the real rendering along the scaffold places each
text exactly (as trimmed by the template, or else as the whole text between its two scaffold pieces).
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from wit_plugin.roles import Role, message_role
from wit_plugin.tagging.messages import THINK_CLOSE, THINK_OPEN, Message
from wit_plugin.tagging.spans import Span, TaggingError

SENTINEL = "\ue000{}\ue001"  # private-use code points: no template or dataset text contains them
_SENTINEL_PATTERN = re.compile("\ue000(\\d+)\ue001")
_MAX_CACHED_SCAFFOLDS = 4096  # conversation shapes; datasets usually have a handful


@dataclass(frozen=True)
class Slot:
    """A text of the row that the scaffold places through a sentinel."""

    message: int
    role: Role
    text: str
    field: str  # where it is in the row, for errors: ``messages[2].content``
    required: bool  # an assistant's non-empty content must be rendered (others may be dropped: a warning says so)


Placed = list[tuple[Slot, int, int]]  # each placed text and where it lies in the rendering


@dataclass
class Scaffolds:
    """The scaffolds of the conversation shapes seen (rendered with ``apply``, the template), cached."""

    apply: Callable[..., str]
    messages_field: str  # for the fields named in errors: ``messages[2].content``
    _cache: dict[str, list[str]] = field(default_factory=dict, repr=False)

    def clear(self) -> None:
        self._cache.clear()

    def place(self, text: str, messages: list[Message], kwargs: Mapping[str, Any]) -> Placed:
        try:  # every text placed, empty ones too: an empty assistant turn still has its end of turn
            return _locate(text, *self._scaffold(messages, kwargs, mark_empty=True))
        except TaggingError:  # the template renders empty texts differently (e.g. skips them)
            return _locate(text, *self._scaffold(messages, kwargs, mark_empty=False))

    def _scaffold(self, messages: list[Message], kwargs: Mapping[str, Any], mark_empty: bool) -> tuple[list, list]:
        """The sentinel rendering split into [text, slot, text, slot, ..., text], and the slots."""
        slots: list[Slot] = []

        def sentinel(message: Message, role: Role, text: str, where: str, required: bool) -> str:
            if not text and not mark_empty:
                return text
            slots.append(Slot(message.index, role, text, where, required and bool(text) and role is Role.RESPONSE))
            return SENTINEL.format(len(slots) - 1)

        rendered = []
        for message in messages:
            where = f"{self.messages_field}[{message.source}]"
            role = message_role(message.role)
            item = dict(message.real)
            if isinstance(message.content, list):
                item["content"] = [
                    {**part, "text": sentinel(message, role, text, f"{where}.content[{k}].text", True)}
                    for k, (part, text) in enumerate(zip(message.real["content"], message.content))
                ]
            else:
                item["content"] = sentinel(message, role, message.content, f"{where}.content", True)
            if message.reasoning:
                item["reasoning_content"] = sentinel(
                    message, Role.REASONING, message.reasoning, f"{where}.reasoning_content", False
                )
            rendered.append(item)
        try:
            key = json.dumps([rendered, kwargs], sort_keys=True)
        except TypeError:  # values that JSON cannot hold: render without the cache
            return _SENTINEL_PATTERN.split(self.apply(rendered, **kwargs)), slots
        if key not in self._cache:
            if len(self._cache) >= _MAX_CACHED_SCAFFOLDS:
                self._cache.clear()
            self._cache[key] = _SENTINEL_PATTERN.split(self.apply(rendered, **kwargs))
        return self._cache[key], slots


def _locate(text: str, pieces: list[str], slots: list[Slot]) -> list[tuple[Slot, int, int]]:
    rendered_indices = {int(index) for index in pieces[1::2]}
    for index, slot in enumerate(slots):
        if slot.required and index not in rendered_indices:
            raise TaggingError(f"the chat template does not render {slot.field}")
    if not text.startswith(pieces[0]):
        raise TaggingError("the chat template renders this conversation differently from its scaffold")
    placed = []
    position = len(pieces[0])
    for k in range(1, len(pieces), 2):
        slot = slots[int(pieces[k])]
        following, is_last = pieces[k + 1], k + 2 == len(pieces)
        end = _content_end(text, position, slot.text, following, is_last)
        placed.append((slot, position, end))
        position = end + len(following)
    if position != len(text):
        raise TaggingError("the chat template renders this conversation differently from its scaffold")
    return placed


def _content_end(text: str, start: int, content: str, following: str, is_last: bool) -> int:
    """Where a text placed at ``start`` ends: exact, or as trimmed by the template, else up to the scaffold."""
    for candidate in dict.fromkeys((content, content.strip(), content.rstrip(), content.lstrip())):
        end = start + len(candidate)
        fits = text.startswith(candidate, start) and text.startswith(following, end)
        if fits and (not is_last or end + len(following) == len(text)):
            return end
    end = len(text) - len(following) if is_last else text.find(following, start)
    if end < start or not text.startswith(following, end):
        raise TaggingError("the chat template renders this conversation differently from its scaffold")
    return end


def inserted(without: str, text: str, role: Role) -> list[Span]:
    """Spans of ``text`` that ``without`` lacks (what rendering tool definitions added).

    The two renderings share most of their text: the common prefix and suffix are set aside first, so the
    (quadratic) sequence matcher sees only the part that differs; each inserted block is then moved as far
    left as it can go (an insertion that starts with the character it is followed by could be placed one
    character later; the template wrote it first).
    """
    prefix = len(os.path.commonprefix([without, text]))
    suffix = len(os.path.commonprefix([without[prefix:][::-1], text[prefix:][::-1]]))
    old, new = without[prefix : len(without) - suffix], text[prefix : len(text) - suffix]
    if not new:
        return []
    opcodes = (
        [("insert", 0, 0, 0, len(new))]
        if not old
        else difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes()
    )
    spans = []
    for tag, _, _, j1, j2 in opcodes:
        if tag in ("insert", "replace") and j2 > j1:
            start, end = prefix + j1, prefix + j2
            while tag == "insert" and start > 0 and text[start - 1] == text[end - 1]:
                start, end = start - 1, end - 1
            spans.append(Span(start, end, role))
    return spans


def split_thinking_span(text: str, span: Span) -> list[Span]:
    """A response whose own text holds a thinking block (``<think>…</think>``, rendered as written): its inner
    text is reasoning, the rest (markers included) response."""
    close = text.find(THINK_CLOSE, span.start, span.end) if span.role is Role.RESPONSE else -1
    if close < 0:
        return [span]
    opened = text.rfind(THINK_OPEN, span.start, close)
    begin = opened + len(THINK_OPEN) if opened >= 0 else span.start
    pieces = [
        Span(span.start, begin, Role.RESPONSE),
        Span(begin, close, Role.REASONING),
        Span(close, span.end, Role.RESPONSE),
    ]
    return [piece for piece in pieces if piece.end > piece.start]
