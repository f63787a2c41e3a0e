"""Reading a conversation's messages for rendering: roles mapped, contents checked, thinking blocks split out.

What is read here is what :mod:`~wit_plugin.tagging.chat` renders: each message as the template receives it and
the texts the row supplies (content or its text parts, reasoning), which :mod:`~wit_plugin.tagging.placement`
then places in the rendered text.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from wit_plugin.roles import Role, WeightError, check_weight, message_role
from wit_plugin.tagging.spans import TaggingError

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


@dataclass(frozen=True)
class WeightKeys:
    """The message keys that weight a message's tokens (read, checked and kept from the template): its loss
    ``weight`` (``wit_message_weight_field``), and Axolotl's ``training`` (a bool) and ``training_detail`` (a list
    of ``{begin_offset, end_offset, train}`` over the content's characters, both offsets inclusive)."""

    weight: str = "weight"
    training: str = "training"
    training_detail: str = "training_detail"

    def given(self, message: Mapping[str, Any]) -> bool:
        """Whether ``message`` has any of these keys (None counts as absent, as Arrow fills missing keys)."""
        get = message.get
        return get(self.weight) is not None or get(self.training) is not None or get(self.training_detail) is not None


# Message keys other frameworks keep loss weights under (LLaMA-Factory, ms-swift): an unread one gets a hint.
PEER_WEIGHT_KEYS = ("loss_weight", "loss_scale", "loss")


def weight_field_hint(key: str) -> str:
    """For an unread message key that other frameworks use as a loss weight: how to make it one here."""
    return f"; to weight messages by it, set `wit_message_weight_field: {key}`" if key in PEER_WEIGHT_KEYS else ""


# One span of a content's characters ``[begin, end]`` (inclusive, as Axolotl writes them) trained or not.
Detail = tuple[int, int, bool]


@dataclass
class Message:
    """One message as rendered, with the texts of it that are placed in the rendering."""

    index: int  # position in the conversation as rendered
    role: str  # the template's role name (after role_map)
    real: dict[str, Any]  # the message as the template renders it
    content: str | list[str]  # the content, or its text parts
    reasoning: str  # reasoning text ("" when none; split out of a thinking block in the content if written there)
    context: bool = False  # given as context (a prompt), not produced by the model
    source: int = -1  # position in the row (differs from ``index`` once a dropped turn is removed)
    inline_thinking: bool = False  # ``reasoning`` was split out of a thinking block written in the content
    written_thinking: bool = False  # the content holds a thinking block, rendered as written
    weight: float = 1.0  # the message's weight (its weight key × its training flag)
    detail: tuple[Detail, ...] | None = None  # its training_detail spans, if given
    weight_key: str = ""  # the key that set ``weight`` or ``detail``, for errors
    weighted: bool = False  # its tokens get a multiplier other than 1


@dataclass(frozen=True)
class MessageReader:
    """Reads a row's messages with the dataset's field names; ``takes_parts`` says (asked only when a content is
    given as text parts) whether the template renders text parts as it renders a string."""

    messages_field: str
    role_field: str
    content_field: str
    role_map: Mapping[str, str]
    takes_parts: Callable[[], bool]
    weight_keys: WeightKeys = WeightKeys()
    _not_real: frozenset[str] = frozenset()  # keys not given to the template: role, content and the weight keys

    def __post_init__(self) -> None:
        keys = self.weight_keys
        not_real = {self.role_field, self.content_field, keys.weight, keys.training, keys.training_detail}
        object.__setattr__(self, "_not_real", frozenset(not_real))

    def read(self, messages: Sequence[Mapping[str, Any]], split_thinking: bool = True) -> list[Message]:
        where = self.messages_field
        if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)) or not messages:
            raise TaggingError(f"'{where}' must be a non-empty list of messages, got {messages!r:.200}")
        return [self._message(index, message, split_thinking) for index, message in enumerate(messages)]

    def _message(self, index: int, message: Any, split_thinking: bool = True) -> Message:
        where = f"{self.messages_field}[{index}]"
        if not isinstance(message, Mapping):
            raise TaggingError(f"{where} is not a mapping: {message!r:.200}")
        if self.role_field not in message:
            raise TaggingError(f"{where} has no '{self.role_field}' field; fields: {sorted(message)}")
        role = message[self.role_field]
        if not isinstance(role, str):
            raise TaggingError(f"{where}.{self.role_field} must be a string, got {role!r:.80}")
        role = self.role_map.get(role, role)
        try:
            token_role = message_role(role)
        except ValueError as error:
            raise TaggingError(f"{where}.{self.role_field}: {error}") from None
        # Like Axolotl, keys holding None are absent: Arrow gives every message every key of the dataset.
        not_real = self._not_real
        real = {key: value for key, value in message.items() if key not in not_real and value is not None}
        real["role"] = role
        content = message.get(self.content_field)
        if content is None and (self.content_field in message or real.get("tool_calls")):
            content = ""  # `content: null` beside tool calls: rendered as an empty content
        if content is None:
            raise TaggingError(f"{where} has no '{self.content_field}' field; fields: {sorted(message)}")
        texts = _content_texts(content, f"{where}.{self.content_field}")
        if isinstance(texts, list) and not self.takes_parts():
            texts = content = "".join(texts)  # a template that concatenates strings: the parts, joined
        real["content"] = content
        reasoning = real.get("reasoning_content", "")
        if not isinstance(reasoning, str):
            raise TaggingError(f"{where}.reasoning_content must be a string, got {type(reasoning).__name__}")
        inline = token_role is Role.RESPONSE and isinstance(texts, str) and THINK_CLOSE in texts and not reasoning
        if inline and split_thinking:
            # A thinking block written into the content: templates that know reasoning (Qwen3) render it as such
            before, texts = texts.split(THINK_CLOSE, 1)[0], texts.split(THINK_CLOSE)[-1].lstrip("\n")
            reasoning = before.rstrip("\n").split(THINK_OPEN)[-1].lstrip("\n")
        parsed = Message(
            index,
            role,
            real,
            texts,
            reasoning,
            source=index,
            inline_thinking=inline and split_thinking,
            written_thinking=inline and not split_thinking,
        )
        if self.weight_keys.given(message):
            _read_weights(parsed, message, self.weight_keys, where)
        return parsed


def _read_weights(parsed: Message, message: Mapping[str, Any], keys: WeightKeys, where: str) -> None:
    """A message's weight keys, checked: the weight a finite number ≥ 0, ``training`` a bool, ``training_detail``
    spans of a string content's characters; an error names the message and the key."""
    weight, training, detail = (message.get(key) for key in (keys.weight, keys.training, keys.training_detail))
    if weight is not None:
        try:
            check_weight(weight, f"{where}.{keys.weight}")
        except WeightError as error:
            raise TaggingError(str(error)) from None
        parsed.weight, parsed.weight_key = float(weight), keys.weight
    if training is not None:
        if not isinstance(training, bool):
            raise TaggingError(f"{where}.{keys.training} must be true or false, got {training!r:.80}")
        parsed.weight *= float(training)
        parsed.weight_key = parsed.weight_key or keys.training
    if detail is not None:
        parsed.detail = _read_detail(detail, parsed.content, f"{where}.{keys.training_detail}")
        parsed.weight_key = parsed.weight_key or keys.training_detail
        if parsed.inline_thinking:
            raise TaggingError(
                f"{where}.{keys.training_detail}: the content holds a thinking block that the template renders as "
                "reasoning, so offsets into the content as written cannot be placed; move the thinking into "
                "`reasoning_content`"
            )
    parsed.weighted = parsed.weight != 1.0 or parsed.detail is not None


def _read_detail(detail: Any, content: str | list[str], where: str) -> tuple[Detail, ...]:
    if not isinstance(content, str):
        raise TaggingError(f"{where} needs the message's content as a string, not text parts")
    if not isinstance(detail, Sequence) or isinstance(detail, (str, bytes)):
        raise TaggingError(f"{where} must be a list of {{begin_offset, end_offset, train}}, got {detail!r:.80}")
    spans = []
    for k, item in enumerate(detail):
        if not isinstance(item, Mapping):
            raise TaggingError(f"{where}[{k}] must be a mapping with begin_offset, end_offset and train")
        begin, end, train = item.get("begin_offset"), item.get("end_offset"), item.get("train")
        for name, value in (("begin_offset", begin), ("end_offset", end)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TaggingError(f"{where}[{k}].{name} must be an integer, got {value!r:.80}")
        if not isinstance(train, bool):
            raise TaggingError(f"{where}[{k}].train must be true or false, got {train!r:.80}")
        if not 0 <= begin <= end < len(content):
            raise TaggingError(
                f"{where}[{k}]: offsets [{begin}, {end}] (inclusive) are outside the content's {len(content)} characters"
            )
        spans.append((begin, end, train))
    return tuple(spans)


def inline_thinking(messages: Any, content_field: str) -> int | None:
    """The first message whose content (a string) holds a thinking block, if any."""
    for index, message in enumerate(messages if isinstance(messages, Sequence) else ()):
        content = message.get(content_field) if isinstance(message, Mapping) else None
        if isinstance(content, str) and THINK_CLOSE in content:
            return index
    return None


def _is_text_part(part: Any) -> bool:
    return isinstance(part, Mapping) and part.get("type", "text") == "text" and "text" in part


def text_content(content: Any, where: str) -> str:
    """A content as one string: text parts joined (as templates that take parts render them); a non-text part is
    an error naming it."""
    texts = _content_texts(content, where)
    return texts if isinstance(texts, str) else "".join(texts)


def _content_texts(content: Any, where: str) -> str | list[str]:
    """A content as its text, or its text parts' texts; anything else is an error naming the field."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence) and not isinstance(content, bytes):
        texts = []
        for k, part in enumerate(content):
            if not _is_text_part(part):
                kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                raise TaggingError(f"{where}[{k}] is a {kind!r} part; only text parts can be tagged")
            if not isinstance(part["text"], str):
                raise TaggingError(f"{where}[{k}].text must be a string, got {type(part['text']).__name__}")
            texts.append(part["text"])
        return texts
    raise TaggingError(f"{where} must be a string, a list of text parts or null, got {type(content).__name__}")
