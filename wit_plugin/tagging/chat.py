"""Exact role tagging for any Hugging Face chat template.

The template is rendered twice: once with every text the row supplies (message contents, their text parts,
reasoning) replaced by a unique sentinel, which yields the *scaffold* (the text the template adds around them:
role headers, default system prompts, rendered tool calls, end-of-turn markers), and once for real. Walking the
real text along the scaffold places each text exactly, even when the same words occur in a default system
prompt. Templates that trim texts are handled; a template that alters a text in another way gets the whole
text between its two scaffold pieces as that text.

Around the placed texts, what the template writes is read off the template itself, once per template
(:class:`TurnMarkers`): the text that opens an assistant turn (its generation prompt) and the text that closes
one (its end of turn: ``<|im_end|>``, ``<|eot_id|>``, ``<end_of_turn>``, ``</s>``..., a special token or not).
Everything between the two is assistant output (``response``: rendered tool calls, a thinking block's markers)
except reasoning (``reasoning``); the closing text is ``eot``. Tool definitions the template renders are
``system``.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from wit_plugin.roles import CONTENT_FIELD, MESSAGES_FIELD, ROLE_FIELD, Role, message_role
from wit_plugin.tagging.spans import RenderedRow, Span, TaggingError

LOG = logging.getLogger(__name__)

_SENTINEL = "\ue000{}\ue001"  # private-use code points: no template or dataset text contains them
_SENTINEL_PATTERN = re.compile("\ue000(\\d+)\ue001")
_MAX_CACHED_SCAFFOLDS = 4096  # conversation shapes; datasets usually have a handful
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# Message keys placed through sentinels, and keys templates may leave out without losing training data.
_TEXT_KEYS = ("content", "reasoning_content")
_METADATA_KEYS = frozenset({"role", "tool_call_id", "name"})
# Message keys that carry conversation data: a template that does not render them loses it.
DATA_KEYS = frozenset({"tool_calls"})
DROP_HINT = (
    "use a chat template that renders it (Axolotl: `chat_template: jinja` with `chat_template_jinja`, or one of its "
    "templates that renders tools such as `qwen3`; TRL: the tokenizer's `chat_template`), or set "
    "`wit_drop_unrendered: true` on this dataset (TRL: WITConfig(wit_drop_unrendered=True)) to drop what the "
    "template does not render"
)


class _WrittenThinking(TaggingError):
    """The template renders no reasoning for a thinking block split out of a content: tag it as written."""


@dataclass(frozen=True)
class Slot:
    """A text of the row that the scaffold places through a sentinel."""

    message: int
    role: Role
    text: str
    field: str  # where it is in the row, for errors: ``messages[2].content``
    required: bool  # an assistant's non-empty content must be rendered (others may be dropped: a warning says so)


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


@dataclass
class _Message:
    index: int  # position in the conversation as rendered
    role: str  # the template's role name (after role_map)
    real: dict[str, Any]  # the message as the template renders it
    content: str | list[str]  # the content, or its text parts
    reasoning: str  # reasoning text ("" when none; split out of a thinking block in the content if written there)
    context: bool = False  # given as context (a prompt), not produced by the model
    source: int = -1  # position in the row (differs from ``index`` once a dropped turn is removed)
    inline_thinking: bool = False  # ``reasoning`` was split out of a thinking block written in the content
    written_thinking: bool = False  # the content holds a thinking block, rendered as written


@dataclass
class ChatRenderer:
    """Renders conversations with one chat template and locates every text the row supplies.

    ``role_map`` renames dataset roles (``human`` → ``user``) before rendering; ``template_kwargs`` go to
    ``apply_chat_template``; ``eot_tokens`` (Axolotl's option), when given, are the texts that close an assistant
    turn instead of the template's own end of turn.
    """

    tokenizer: Any
    chat_template: str | None = None
    role_map: Mapping[str, str] = field(default_factory=dict)
    role_field: str = ROLE_FIELD
    content_field: str = CONTENT_FIELD
    messages_field: str = MESSAGES_FIELD
    template_kwargs: Mapping[str, Any] = field(default_factory=dict)
    eot_tokens: Sequence[str] = ()
    template_name: str | None = None  # for errors: Axolotl's template name, else "the tokenizer's"
    drop_unrendered: bool = False  # drop fields the template does not render instead of refusing the row
    _scaffolds: dict[str, list[str]] = field(default_factory=dict, repr=False)
    _markers: TurnMarkers | None = field(default=None, repr=False)
    _dropped_warned: set[str] = field(default_factory=set, repr=False)
    _renders_key: dict[tuple[str, str], bool] = field(default_factory=dict, repr=False)
    _takes_parts: bool | None = field(default=None, repr=False)

    @property
    def takes_parts(self) -> bool:
        """Whether the template renders content given as a list of text parts as it renders the same text given
        as a string (decided once per template; SmolLM2's concatenates strings and fails on a list)."""
        if self._takes_parts is None:
            text = _SENTINEL.format(0)
            as_string = [{"role": "user", "content": text}]
            as_parts = [{"role": "user", "content": [{"type": "text", "text": text}]}]
            try:
                self._takes_parts = self._apply(as_parts, **self.template_kwargs) == self._apply(
                    as_string, **self.template_kwargs
                )
            except TaggingError:
                self._takes_parts = False
            if not self._takes_parts:
                LOG.info("wit: the chat template takes content only as a string: text parts are joined into one")
        return self._takes_parts

    @property
    def markers(self) -> TurnMarkers:
        if self._markers is None:
            self._markers = self._probe()
            if not self._markers.closing and not self.eot_tokens:
                LOG.warning(
                    "wit: the chat template writes nothing wit_plugin can find after an assistant turn, so no token "
                    "is tagged eot and the model does not learn where a turn ends; set Axolotl's `eot_tokens` "
                    "(or use a template with an end-of-turn marker)"
                )
        return self._markers

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Any = None,
        template_kwargs: Mapping[str, Any] | None = None,
        context: int = 0,
    ) -> RenderedRow:
        """Render ``messages`` (with tool definitions ``tools``, if any) and place every role in the text.

        The first ``context`` messages are given context (a conversational prompt/completion row's prompt): an
        assistant turn among them is ``instruction`` text, its markup and end of turn template, as a prompt is.

        A thinking block written into an assistant's content is first taken as the template's reasoning (as
        Qwen3's template splits it out); a template that renders ``reasoning_content`` but writes the content as
        it is gets the content as written, its thinking block tagged in place.
        """
        inline = _inline_thinking(messages, self.content_field)
        try:
            return self._render(messages, tools, template_kwargs, context, split_thinking=True)
        except _WrittenThinking:
            pass  # the template renders no reasoning: the block is tagged where it is written
        except TaggingError as error:
            if inline is None or "from its scaffold" not in str(error):
                raise
        try:
            return self._render(messages, tools, template_kwargs, context, split_thinking=False)
        except TaggingError as error:
            if "differently from its scaffold" not in str(error):
                raise
            raise TaggingError(
                f"{self.messages_field}[{inline}].{self.content_field} holds a thinking block (<think>…</think>) "
                "that the chat template renders neither as written nor as reasoning, so its text cannot be placed: "
                "move the thinking into the message's `reasoning_content` and keep only the answer in "
                f"`{self.content_field}`"
            ) from None

    def _render(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Any,
        template_kwargs: Mapping[str, Any] | None,
        context: int,
        split_thinking: bool,
    ) -> RenderedRow:
        parsed = self._normalise(messages, split_thinking)
        for message in parsed[:context]:
            message.context = True
        kwargs = {**self.template_kwargs, **(template_kwargs or {})}
        if tools is not None:
            kwargs["tools"] = tools
        parsed, unread, dropped = self._unrendered_keys(parsed, kwargs)
        real = [message.real for message in parsed]
        text = self._apply(real, **kwargs)
        without_tools = None
        if kwargs.get("tools"):
            without = {key: value for key, value in kwargs.items() if key != "tools"}
            without_tools = self._apply(real, **without)
            if without_tools == text:
                self._refuse_or_drop("tools", "tool definitions (`tools`)")
                dropped.append(("tools", "tools"))
                kwargs, without_tools = without, None
        try:
            placed = self._place(text, parsed, kwargs)
        except TaggingError:
            # A cached scaffold can go stale when the template renders today's date (Llama 3.1's default
            # system prompt): render the scaffold afresh once before calling the row untaggable.
            self._scaffolds.clear()
            placed = self._place(text, parsed, kwargs)
        dropped += self._report_dropped(text, parsed, placed)
        row = RenderedRow(
            text=text,
            unread=tuple(unread),
            dropped=tuple(where for _, where in dropped),
            dropped_kinds=tuple(kind for kind, _ in dropped),
        )
        if without_tools is not None:
            row.spans += _inserted(without_tools, text, Role.SYSTEM)
        row.turns_without_end = self._assistant_turns(text, parsed, placed, row.spans, kwargs)
        row.placed = [
            piece
            for slot, start, end in placed
            for piece in _split_thinking(text, Span(start, end, self._slot_role(slot, parsed)))
        ]
        row.spans += row.placed
        return row

    @staticmethod
    def _slot_role(slot: Slot, messages: list[_Message]) -> Role:
        """A text's role; an assistant's text given as context (a prompt) is instruction."""
        return Role.INSTRUCTION if messages[slot.message].context and slot.role is not Role.SYSTEM else slot.role

    def _report_dropped(
        self, text: str, messages: list[_Message], placed: list[tuple[Slot, int, int]]
    ) -> list[tuple[str, str]]:
        """A text of the row that the template leaves out (a system prompt some templates do not render, the
        final turn's reasoning) would be trained as nothing at all: refused, or dropped when opted in. Reasoning
        of earlier turns is not counted: templates that render reasoning keep only the final turn's (an assistant
        turn no user message follows), as the model sees it at inference."""
        rendered = {slot.field for slot, _, _ in placed}
        placed_text = {slot.field: text[start:end] for slot, start, end in placed}
        last_assistant = max((m.index for m in messages if message_role(m.role) is Role.RESPONSE), default=-1)
        last_user = max((m.index for m in messages if m.role == "user"), default=-1)
        if last_user > last_assistant:  # the row ends on a user turn: every assistant turn is history
            last_assistant = -1
        dropped = []
        for message in messages:
            where = self._where(message)
            if message.content and isinstance(message.content, str) and f"{where}.content" not in rendered:
                self._refuse_or_drop("content", f"{where}.content ({message.role})")
                dropped.append(("content", f"{where}.content"))
            last = message.index == last_assistant
            if message.inline_thinking and last and f"{where}.reasoning_content" not in rendered:
                raise _WrittenThinking(f"the chat template renders no reasoning for {where}")  # render as written
            if message.written_thinking and last and THINK_CLOSE not in placed_text.get(f"{where}.content", ""):
                self._refuse_or_drop("reasoning_content", f"the thinking block (<think>…</think>) in {where}.content")
                dropped.append(("reasoning_content", f"{where}.content"))
            if message.reasoning and message.index == last_assistant and f"{where}.reasoning_content" not in rendered:
                self._refuse_or_drop("reasoning_content", f"{where}.reasoning_content")
                dropped.append(("reasoning_content", f"{where}.reasoning_content"))
        return dropped

    def _where(self, message: _Message) -> str:
        return f"{self.messages_field}[{message.source}]"

    def _describe_template(self) -> str:
        if self.template_name:
            return f"`{self.template_name}`"
        source = getattr(self.tokenizer, "name_or_path", "")
        return "a template given as chat_template" if self.chat_template else f"the tokenizer's, {source}"

    def _refuse_or_drop(self, kind: str, what: str) -> None:
        """Refuse the row (the default) for a field the template does not render, naming it and the fix; when opted
        in, say once per kind that such fields are dropped (the row records each one, :mod:`~.tagging.dropped`)."""
        if not self.drop_unrendered:
            raise TaggingError(
                f"the chat template ({self._describe_template()}) does not render {what}, so it would not be "
                f"trained at all; {DROP_HINT}"
            )
        if kind not in self._dropped_warned:
            self._dropped_warned.add(kind)
            LOG.warning(
                "wit: dropping %s (wit_drop_unrendered): the chat template (%s) does not render it; further drops "
                "of this kind are counted (the totals are logged once the datasets are prepared)",
                what,
                self._describe_template(),
            )

    def _unrendered_keys(
        self, messages: list[_Message], kwargs: Mapping[str, Any]
    ) -> tuple[list[_Message], list[str], list[tuple[str, str]]]:
        """Message keys besides the texts: tool calls the template does not render are refused or dropped (an
        assistant turn left empty is removed, so no lone end of turn is trained); keys that no format reads and
        the template does not render either (a per-message ``weight``) are returned for a warning. Whether the
        template renders a key is decided once per role and key, on the first message that has it."""
        unread: list[str] = []
        dropped: list[tuple[str, str]] = []  # (kind, field)
        emptied: set[int] = set()
        for message in messages:
            for key in [key for key in message.real if key not in _TEXT_KEYS and key not in _METADATA_KEYS]:
                if key in DATA_KEYS and not message.real[key]:
                    continue
                if self._renders(messages, message, key, kwargs):
                    continue
                where = f"{self._where(message)}.{key}"
                if key not in DATA_KEYS:
                    unread.append(where)
                    continue
                self._refuse_or_drop(key, f"{where} (tool calls)")
                dropped.append((key, where))
                del message.real[key]
                if not (message.content or message.reasoning or set(message.real) - {"role", "content"}):
                    emptied.add(message.source)
        kept = [m for m in messages if m.source not in emptied]
        for source in sorted(emptied):
            dropped.append(("empty_turns", f"{self.messages_field}[{source}]"))
        if emptied:
            if not kept:
                raise TaggingError("nothing of this conversation is left once the unrendered fields are dropped")
            for position, message in enumerate(kept):
                message.index = position
        return kept, unread, dropped

    def _renders(self, messages: list[_Message], message: _Message, key: str, kwargs: Mapping[str, Any]) -> bool:
        """Whether the template renders ``key`` of a message of this role (the text changes without it)."""
        cache = (message.role, key)
        if cache not in self._renders_key:
            real = [m.real for m in messages]
            without = [{k: v for k, v in m.items() if k != key} if m is message.real else m for m in real]
            self._renders_key[cache] = self._apply(real, **kwargs) != self._apply(without, **kwargs)
        return self._renders_key[cache]

    # --- normalisation -------------------------------------------------------------------------------------

    def _normalise(self, messages: Sequence[Mapping[str, Any]], split_thinking: bool = True) -> list[_Message]:
        where = self.messages_field
        if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)) or not messages:
            raise TaggingError(f"'{where}' must be a non-empty list of messages, got {messages!r:.200}")
        return [self._message(index, message, split_thinking) for index, message in enumerate(messages)]

    def _message(self, index: int, message: Any, split_thinking: bool = True) -> _Message:
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
        real = {
            key: value
            for key, value in message.items()
            if key not in (self.role_field, self.content_field) and value is not None
        }
        real["role"] = role
        content = message.get(self.content_field)
        if content is None and (self.content_field in message or real.get("tool_calls")):
            content = ""  # `content: null` beside tool calls: rendered as an empty content
        if content is None:
            raise TaggingError(f"{where} has no '{self.content_field}' field; fields: {sorted(message)}")
        texts = _content_texts(content, f"{where}.{self.content_field}")
        if isinstance(texts, list) and not self.takes_parts:
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
        return _Message(
            index,
            role,
            real,
            texts,
            reasoning,
            source=index,
            inline_thinking=inline and split_thinking,
            written_thinking=inline and not split_thinking,
        )

    # --- rendering -----------------------------------------------------------------------------------------

    def _apply(self, messages: list[dict[str, Any]], add_generation_prompt: bool = False, **kwargs: Any) -> str:
        try:
            return self.tokenizer.apply_chat_template(
                messages,
                chat_template=self.chat_template,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                **kwargs,
            )
        except TaggingError:
            raise
        except Exception as error:  # noqa: BLE001 - whatever a template raises (jinja2 TemplateError, TypeError...)
            raise TaggingError(f"the chat template fails on this row: {type(error).__name__}: {error}") from None

    def _scaffold(self, messages: list[_Message], kwargs: Mapping[str, Any], mark_empty: bool) -> tuple[list, list]:
        """The sentinel rendering split into [text, slot, text, slot, ..., text], and the slots."""
        slots: list[Slot] = []

        def sentinel(message: _Message, role: Role, text: str, where: str, required: bool) -> str:
            if not text and not mark_empty:
                return text
            slots.append(Slot(message.index, role, text, where, required and bool(text) and role is Role.RESPONSE))
            return _SENTINEL.format(len(slots) - 1)

        rendered = []
        for message in messages:
            where = self._where(message)
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
            return _SENTINEL_PATTERN.split(self._apply(rendered, **kwargs)), slots
        if key not in self._scaffolds:
            if len(self._scaffolds) >= _MAX_CACHED_SCAFFOLDS:
                self._scaffolds.clear()
            self._scaffolds[key] = _SENTINEL_PATTERN.split(self._apply(rendered, **kwargs))
        return self._scaffolds[key], slots

    def _place(self, text: str, messages: list[_Message], kwargs: Mapping[str, Any]) -> list[tuple[Slot, int, int]]:
        try:  # every text placed, empty ones too: an empty assistant turn still has its end of turn
            return _locate(text, *self._scaffold(messages, kwargs, mark_empty=True))
        except TaggingError:  # the template renders empty texts differently (e.g. skips them)
            return _locate(text, *self._scaffold(messages, kwargs, mark_empty=False))

    # --- assistant turns ------------------------------------------------------------------------------------

    def _probe(self) -> TurnMarkers:
        """The template's generation prompt and end of turn, from renderings of small conversations (with the
        template arguments training renders with)."""
        user, assistant, user2 = (_SENTINEL.format(k) for k in range(3))
        kwargs = dict(self.template_kwargs)
        try:
            prompt = [{"role": "user", "content": user}]
            plain, opened = self._apply(prompt, **kwargs), self._apply(prompt, add_generation_prompt=True, **kwargs)
            opening = opened[len(plain) :] if opened.startswith(plain) else ""
            final = self._apply([*prompt, {"role": "assistant", "content": assistant}], **kwargs)
            middle = self._apply(
                [*prompt, {"role": "assistant", "content": assistant}, {"role": "user", "content": user2}], **kwargs
            )
        except TaggingError as error:
            LOG.warning("wit: could not read the chat template's turn markers: %s", error)
            return TurnMarkers("", "")
        after_final = final.split(assistant, 1)[1] if assistant in final else ""
        after_middle = middle.split(assistant, 1)[1].split(user2, 1)[0] if assistant in middle else ""
        closing = os.path.commonprefix([after_final, after_middle])
        closing = after_middle[: self._marker_boundary(after_middle, len(closing))]  # never half a marker
        for cut in range(len(closing)):  # an end of turn never runs into the next turn's start
            if opening and opening.startswith(closing[cut:]):
                closing = closing[:cut]
                break
        header = final.split(user, 1)[1].split(assistant, 1)[0] if user in final else ""
        last = self._last_marker_start(closing)
        if last and closing[last:] in header:  # a final marker that also opens turns (Command's turn start)
            closing = closing[:last]
        closing = closing.rstrip()
        eos = getattr(self.tokenizer, "eos_token", None)
        if not closing and eos and after_final.lstrip().startswith(eos):
            closing = eos
        return TurnMarkers(opening, closing)

    def _turn_start(
        self, text: str, messages: list[_Message], index: int, low: int, high: int, kwargs: Mapping[str, Any]
    ) -> int | None:
        """Where an assistant turn with nothing placed starts: after its opening, else where the rendering of the
        messages before it ends (when that rendering is where the row's text starts)."""
        opened = _find_opening(text, self.markers.header, low, high, last=False)
        if opened is not None:
            return opened
        before = self._apply([m.real for m in messages[:index]], **kwargs) if index else ""
        return len(before) if text.startswith(before) and low <= len(before) <= high else None

    def _markers_in(self, text: str) -> list[tuple[int, int]]:
        """Where ``text``'s added tokens (markers like ``<|USER_TOKEN|>``) lie, as (start, end), in order."""
        encoding = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        added = set(getattr(self.tokenizer, "added_tokens_decoder", {}))
        return [
            tuple(offsets)
            for token, offsets in zip(encoding["input_ids"], encoding["offset_mapping"])
            if token in added
        ]

    def _marker_boundary(self, text: str, limit: int) -> int:
        """``limit``, or the start of the marker that it falls inside."""
        return next((start for start, end in self._markers_in(text) if start < limit < end), limit)

    def _last_marker_start(self, text: str) -> int:
        """Where the last marker of ``text`` starts, 0 if none does after its start."""
        markers = self._markers_in(text)
        return markers[-1][0] if markers else 0

    def _closing(self, text: str, start: int, stop: int) -> tuple[int, int] | None:
        """The end-of-turn text in ``text[start:stop]``: its last occurrence there (the same text inside a tool
        call's arguments does not end the turn)."""
        found = []
        for marker in self.eot_tokens or ([self.markers.closing] if self.markers.closing else []):
            position = text.rfind(marker, start, stop)
            if position >= 0:
                found.append((position, position + len(marker)))
        return max(found) if found else None

    def _assistant_turns(
        self,
        text: str,
        messages: list[_Message],
        placed: list[tuple[Slot, int, int]],
        spans: list[Span],
        kwargs: Mapping[str, Any],
    ) -> int:
        """Add each assistant turn's output (``response``) and end (``eot``) to ``spans``; returns the number of
        assistant turns whose end was not found."""
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
        return missing


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


def _inline_thinking(messages: Any, content_field: str) -> int | None:
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


def _inserted(without: str, text: str, role: Role) -> list[Span]:
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


def _split_thinking(text: str, span: Span) -> list[Span]:
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
