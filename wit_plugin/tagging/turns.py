"""Assistant turns: what a chat template writes around one, read off the template, and found in a rendering.

The text that opens an assistant turn (its generation prompt) and the text that closes one (its end of turn:
``<|im_end|>``, ``<|eot_id|>``, ``<end_of_turn>``, ``</s>``..., a special token or not) are probed once per
template (:class:`TurnMarkers`). In a rendered row, everything between the two is assistant output
(``response``), the closing text ``eot``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from wit_plugin.roles import Role, message_role
from wit_plugin.tagging.messages import Message
from wit_plugin.tagging.placement import SENTINEL, Placed
from wit_plugin.tagging.spans import Span, TaggingError

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class TurnMarkers:
    """What a chat template writes around an assistant turn (``""`` where it writes nothing we can find)."""

    opening: str  # the generation prompt: ``<|im_start|>assistant\\n``
    closing: str  # the end of turn: ``<|im_end|>``

    @property
    def header(self) -> str:
        """The opening's role header: its first line and the whitespace after it. What a generation prompt adds
        after that (Qwen3's ``<think>\\n\\n``) is text the template writes inside a finished turn, and text inside
        an assistant turn is the model's output, never template."""
        first, newline, rest = self.opening.partition("\n")
        return first + newline + rest[: len(rest) - len(rest.lstrip())]


def probe_markers(tokenizer: Any, apply: Callable[..., str], template_kwargs: Mapping[str, Any]) -> TurnMarkers:
    """The template's generation prompt and end of turn, from renderings (``apply``) of small conversations (with
    the template arguments training renders with)."""
    user, assistant, user2 = (SENTINEL.format(k) for k in range(3))
    kwargs = dict(template_kwargs)
    try:
        prompt = [{"role": "user", "content": user}]
        plain, opened = apply(prompt, **kwargs), apply(prompt, add_generation_prompt=True, **kwargs)
        opening = opened[len(plain) :] if opened.startswith(plain) else ""
        final = apply([*prompt, {"role": "assistant", "content": assistant}], **kwargs)
        middle = apply(
            [*prompt, {"role": "assistant", "content": assistant}, {"role": "user", "content": user2}], **kwargs
        )
    except TaggingError as error:
        LOG.warning("wit: could not read the chat template's turn markers: %s", error)
        return TurnMarkers("", "")
    after_final = final.split(assistant, 1)[1] if assistant in final else ""
    after_middle = middle.split(assistant, 1)[1].split(user2, 1)[0] if assistant in middle else ""
    closing = os.path.commonprefix([after_final, after_middle])
    closing = after_middle[: _marker_boundary(tokenizer, after_middle, len(closing))]  # never half a marker
    for cut in range(len(closing)):  # an end of turn never runs into the next turn's start
        if opening and opening.startswith(closing[cut:]):
            closing = closing[:cut]
            break
    header = final.split(user, 1)[1].split(assistant, 1)[0] if user in final else ""
    last = _last_marker_start(tokenizer, closing)
    if last and closing[last:] in header:  # a final marker that also opens turns (Command's turn start)
        closing = closing[:last]
    closing = closing.rstrip()
    eos = getattr(tokenizer, "eos_token", None)
    if not closing and eos and after_final.lstrip().startswith(eos):
        closing = eos
    return TurnMarkers(opening, closing)


def _markers_in(tokenizer: Any, text: str) -> list[tuple[int, int]]:
    """Where ``text``'s added tokens (markers like ``<|USER_TOKEN|>``) lie, as (start, end), in order."""
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    added = set(getattr(tokenizer, "added_tokens_decoder", {}))
    return [
        tuple(offsets) for token, offsets in zip(encoding["input_ids"], encoding["offset_mapping"]) if token in added
    ]


def _marker_boundary(tokenizer: Any, text: str, limit: int) -> int:
    """``limit``, or the start of the marker that it falls inside."""
    return next((start for start, end in _markers_in(tokenizer, text) if start < limit < end), limit)


def _last_marker_start(tokenizer: Any, text: str) -> int:
    """Where the last marker of ``text`` starts, 0 if none does after its start."""
    markers = _markers_in(tokenizer, text)
    return markers[-1][0] if markers else 0


@dataclass(frozen=True)
class AssistantTurns:
    """Finds each assistant turn's output and end in a rendering, with the template's markers (or ``eot_tokens``,
    Axolotl's option, as the texts that close a turn) and the template itself (``apply``)."""

    markers: TurnMarkers
    eot_tokens: Sequence[str]
    apply: Callable[..., str]

    def add_spans(
        self,
        text: str,
        messages: list[Message],
        placed: Placed,
        spans: list[Span],
        kwargs: Mapping[str, Any],
        turn_ends: dict[int, int] | None = None,
    ) -> int:
        """Add each assistant turn's output (``response``) and end (``eot``) to ``spans`` (and where each turn ends
        to ``turn_ends``, by message index); returns the number of assistant turns whose end was not found."""
        count = len(messages)
        first_start, last_end = [len(text)] * count, [0] * count
        has_text = {slot.message for slot, _, _ in placed}
        for slot, start, end in placed:
            first_start[slot.message] = min(first_start[slot.message], start)
            last_end[slot.message] = max(last_end[slot.message], end)
        ends_before = [0] * (count + 1)  # the end of the last text placed of messages before each index
        for index in range(count):
            ends_before[index + 1] = max(ends_before[index], last_end[index])
        starts_after = [len(text)] * (count + 1)  # the start of the first text placed of messages after it
        for index in range(count - 1, -1, -1):
            starts_after[index] = min(starts_after[index + 1], first_start[index])
        opening, missing, cursor = self.markers.header, 0, 0
        for message in messages:
            if message_role(message.role) is not Role.RESPONSE or message.context:
                continue
            index = message.index
            low, high = max(cursor, ends_before[index]), starts_after[index + 1]
            if index in has_text:
                opened = _find_opening(text, opening, low, first_start[index], last=True)
                begin = first_start[index] if opened is None else opened
                search_from = last_end[index]
            else:  # nothing of it placed (a tool call without content): find where the turn starts
                opened = self._turn_start(text, messages, index, low, high, kwargs)
                if opened is None:
                    missing += 1
                    continue
                begin = search_from = opened
            closing = self._closing(text, search_from, high)
            stop = closing[0] if closing else search_from
            if stop > begin:
                spans.append(Span(begin, stop, Role.RESPONSE))
            if closing:
                spans.append(Span(*closing, Role.EOT))
                cursor = closing[1]
            else:
                missing += 1
                cursor = stop
            if turn_ends is not None:
                turn_ends[index] = cursor
        return missing

    def _turn_start(
        self, text: str, messages: list[Message], index: int, low: int, high: int, kwargs: Mapping[str, Any]
    ) -> int | None:
        """Where an assistant turn with nothing placed starts: after its opening, else where the rendering of the
        messages before it ends (when that rendering is where the row's text starts)."""
        opened = _find_opening(text, self.markers.header, low, high, last=False)
        if opened is not None:
            return opened
        before = self.apply([m.real for m in messages[:index]], **kwargs) if index else ""
        return len(before) if text.startswith(before) and low <= len(before) <= high else None

    def _closing(self, text: str, start: int, stop: int) -> tuple[int, int] | None:
        """The end-of-turn text in ``text[start:stop]``: its last occurrence there (the same text inside a tool
        call's arguments does not end the turn)."""
        found = []
        for marker in self.eot_tokens or ([self.markers.closing] if self.markers.closing else []):
            position = text.rfind(marker, start, stop)
            if position >= 0:
                found.append((position, position + len(marker)))
        return max(found) if found else None


def _find_opening(text: str, opening: str, start: int, stop: int, last: bool) -> int | None:
    """Where the assistant output starts after ``opening`` (a role header, :attr:`TurnMarkers.header`) in
    ``text[start:stop]`` (its last or first occurrence); a shorter prefix of it counts too (a template may write
    less whitespace after the header inside a turn), but never shorter than its first line.
    """
    if not opening:
        return None
    find = text.rfind if last else text.find
    shortest = len(opening.split("\n", 1)[0]) or len(opening)
    for length in range(len(opening), shortest - 1, -1):
        found = find(opening[:length], start, stop)
        if found >= 0:
            return found + length
    return None
