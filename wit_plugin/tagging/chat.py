"""Exact role tagging for any Hugging Face chat template.

The template is rendered twice: once with every non-empty content replaced by a unique sentinel, which
yields the *scaffold* (the text the template adds around contents: role headers, default system prompts,
end-of-turn tokens), and once for real. Walking the real text along the scaffold places each message's
content exactly, even when the same words occur in a default system prompt. Templates that trim content
are handled (the trimmed content is what the text holds); a template that alters content in another way
gets the whole text between its two scaffold pieces as that message's content.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from wit_plugin.roles import Role, message_role
from wit_plugin.tagging.spans import RenderedRow, Span, TaggingError

_SENTINEL = "\ue000{}\ue001"  # private-use code points: no template or dataset text contains them
_SENTINEL_PATTERN = re.compile("\ue000(\\d+)\ue001")
_MAX_CACHED_SCAFFOLDS = 4096  # conversation shapes; datasets usually have a handful


@dataclass
class ChatRenderer:
    """Renders conversations with one chat template and locates each message's content.

    ``role_map`` renames dataset roles (``human`` → ``user``) before rendering; ``template_kwargs`` go to
    ``apply_chat_template`` (e.g. ``tools``).
    """

    tokenizer: Any
    chat_template: str | None = None
    role_map: Mapping[str, str] = field(default_factory=dict)
    role_field: str = "role"
    content_field: str = "content"
    template_kwargs: Mapping[str, Any] = field(default_factory=dict)
    _scaffolds: dict[str, list[str]] = field(default_factory=dict, repr=False)

    def render(self, messages: Sequence[Mapping[str, Any]]) -> RenderedRow:
        """Render ``messages`` and return the text with each content's span and each assistant turn's end."""
        normalised = self._normalise(messages)
        text = self._apply(normalised)
        self._check_extra_fields(normalised, text)
        try:
            return self._place(text, normalised)
        except TaggingError:
            # A cached scaffold can go stale when the template renders today's date (Llama 3.1's default
            # system prompt): render the scaffold afresh once before calling the row untaggable.
            self._scaffolds.clear()
            return self._place(text, normalised)

    def _place(self, text: str, messages: list[dict[str, Any]]) -> RenderedRow:
        try:  # every content placed, empty ones too: an empty assistant turn still has its end-of-turn
            return _locate(text, self._scaffold(messages, mark_empty=True), messages)
        except TaggingError:  # the template renders empty contents differently (e.g. skips them)
            return _locate(text, self._scaffold(messages, mark_empty=False), messages)

    def _normalise(self, messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)) or not messages:
            raise TaggingError(f"a conversation must be a non-empty list of messages, got {messages!r:.200}")
        normalised = []
        for index, message in enumerate(messages):
            if not isinstance(message, Mapping):
                raise TaggingError(f"message {index} is not a mapping: {message!r:.200}")
            if self.role_field not in message or self.content_field not in message:
                raise TaggingError(
                    f"message {index} needs '{self.role_field}' and '{self.content_field}' fields, "
                    f"has {sorted(message)}"
                )
            role = message[self.role_field]
            if not isinstance(role, str):
                raise TaggingError(f"message {index} role must be a string, got {role!r:.80}")
            role = self.role_map.get(role, role)
            try:
                message_role(role)
            except ValueError as error:
                raise TaggingError(f"message {index}: {error}") from None
            content = message[self.content_field]
            if not isinstance(content, str):
                raise TaggingError(f"message {index} ({role}) content must be a string, got {type(content).__name__}")
            # Like Axolotl, keys holding None are absent: Arrow gives every message every key of the dataset.
            extra = {
                k: v for k, v in message.items() if k not in (self.role_field, self.content_field) and v is not None
            }
            normalised.append({**extra, "role": role, "content": content})
        return normalised

    def _check_extra_fields(self, messages: list[dict[str, Any]], text: str) -> None:
        """Message fields besides role and content (``reasoning_content``, ``tool_calls``...) are fine while the
        template ignores them; rendered, they would land in the scaffold and be trained as template text."""
        extra = sorted({key for m in messages for key in m if key not in ("role", "content")})
        if extra and self._apply([{"role": m["role"], "content": m["content"]} for m in messages]) != text:
            raise TaggingError(
                f"the chat template renders message field(s) {extra} besides the contents; wit_plugin tags "
                "message contents only, so that text would be weighted as template: drop those fields, or "
                "write them into the content"
            )

    def _apply(self, messages: list[dict[str, Any]]) -> str:
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, tokenize=False, **self.template_kwargs
        )

    def _scaffold(self, messages: list[dict[str, Any]], mark_empty: bool) -> list[str]:
        """Split the sentinel rendering into [text, message index, text, message index, ..., text]."""
        sentinel_messages = [
            {**m, "content": _SENTINEL.format(i) if m["content"] or mark_empty else ""} for i, m in enumerate(messages)
        ]
        try:
            key = json.dumps(sentinel_messages, sort_keys=True)
        except TypeError:  # extra fields that JSON cannot hold: render without the cache
            return _SENTINEL_PATTERN.split(self._apply(sentinel_messages))
        if key not in self._scaffolds:
            if len(self._scaffolds) >= _MAX_CACHED_SCAFFOLDS:
                self._scaffolds.clear()
            self._scaffolds[key] = _SENTINEL_PATTERN.split(self._apply(sentinel_messages))
        return self._scaffolds[key]


def _locate(text: str, pieces: list[str], messages: list[dict[str, Any]]) -> RenderedRow:
    row = RenderedRow(text=text)
    rendered_indices = {int(index) for index in pieces[1::2]}
    for index, message in enumerate(messages):
        if message["content"] and index not in rendered_indices:
            raise TaggingError(f"the chat template does not render message {index} ({message['role']})")
    if not text.startswith(pieces[0]):
        raise TaggingError("the chat template renders this conversation differently from its scaffold")
    position = len(pieces[0])
    for k in range(1, len(pieces), 2):
        message = messages[int(pieces[k])]
        following, is_last = pieces[k + 1], k + 2 == len(pieces)
        end = _content_end(text, position, message["content"], following, is_last)
        role = message_role(message["role"])
        row.spans.append(Span(position, end, role))
        if role is Role.RESPONSE:
            row.turn_ends.append(end)
        position = end + len(following)
    if position != len(text):
        raise TaggingError("the chat template renders this conversation differently from its scaffold")
    return row


def _content_end(text: str, start: int, content: str, following: str, is_last: bool) -> int:
    """Where a content placed at ``start`` ends: exact, or as trimmed by the template, else up to the scaffold."""
    for candidate in dict.fromkeys((content, content.strip(), content.rstrip(), content.lstrip())):
        end = start + len(candidate)
        fits = text.startswith(candidate, start) and text.startswith(following, end)
        if fits and (not is_last or end + len(following) == len(text)):
            return end
    end = len(text) - len(following) if is_last else text.find(following, start)
    if end < start or not text.startswith(following, end):
        raise TaggingError("the chat template renders this conversation differently from its scaffold")
    return end
