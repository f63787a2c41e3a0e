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

This module renders a row and refuses (or drops, when opted in) what the template leaves out; reading the messages
is :mod:`~wit_plugin.tagging.messages`, placing the texts :mod:`~wit_plugin.tagging.placement`, and the assistant
turns' markers :mod:`~wit_plugin.tagging.turns`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from wit_plugin.roles import CONTENT_FIELD, MESSAGES_FIELD, ROLE_FIELD, Role, message_role
from wit_plugin.tagging.messages import THINK_CLOSE, Message, MessageReader, WeightKeys, inline_thinking
from wit_plugin.tagging.placement import SENTINEL, Placed, Scaffolds, Slot, inserted, split_thinking_span
from wit_plugin.tagging.spans import RenderedRow, Span, TaggingError
from wit_plugin.tagging.turns import AssistantTurns, TurnMarkers, probe_markers
from wit_plugin.tagging.weights import message_weight_spans

LOG = logging.getLogger(__name__)

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
    weight_keys: WeightKeys = field(default_factory=WeightKeys)  # the message keys that weight a message (read)
    _scaffolds: Scaffolds = field(init=False, repr=False)
    _reader: MessageReader = field(init=False, repr=False)
    _markers: TurnMarkers | None = field(default=None, repr=False)
    _dropped_warned: set[str] = field(default_factory=set, repr=False)
    _renders_key: dict[tuple[str, str], bool] = field(default_factory=dict, repr=False)
    _takes_parts: bool | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._scaffolds = Scaffolds(self._apply, self.messages_field)
        self._reader = MessageReader(
            self.messages_field,
            self.role_field,
            self.content_field,
            self.role_map,
            lambda: self.takes_parts,
            self.weight_keys,
        )

    @property
    def takes_parts(self) -> bool:
        """Whether the template renders content given as a list of text parts as it renders the same text given
        as a string (decided once per template; SmolLM2's concatenates strings and fails on a list)."""
        if self._takes_parts is None:
            text = SENTINEL.format(0)
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
            self._markers = probe_markers(self.tokenizer, self._apply, self.template_kwargs)
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
        inline = inline_thinking(messages, self.content_field)
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
        parsed = self._reader.read(messages, split_thinking)
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
            placed = self._scaffolds.place(text, parsed, kwargs)
        except TaggingError:
            # A cached scaffold can go stale when the template renders today's date (Llama 3.1's default
            # system prompt): render the scaffold afresh once before calling the row untaggable.
            self._scaffolds.clear()
            placed = self._scaffolds.place(text, parsed, kwargs)
        dropped += self._report_dropped(text, parsed, placed)
        row = RenderedRow(
            text=text,
            unread=tuple(unread),
            dropped=tuple(where for _, where in dropped),
            dropped_kinds=tuple(kind for kind, _ in dropped),
        )
        if without_tools is not None:
            row.spans += inserted(without_tools, text, Role.SYSTEM)
        turns = AssistantTurns(self.markers, self.eot_tokens, self._apply)
        turn_ends: dict[int, int] = {}
        row.turns_without_end = turns.add_spans(text, parsed, placed, row.spans, kwargs, turn_ends)
        closings = self.eot_tokens or (self.markers.closing,)
        row.weights = message_weight_spans(text, parsed, placed, turn_ends, closings, self.messages_field)
        row.placed = [
            piece
            for slot, start, end in placed
            for piece in split_thinking_span(text, Span(start, end, self._slot_role(slot, parsed)))
        ]
        row.spans += row.placed
        return row

    @staticmethod
    def _slot_role(slot: Slot, messages: list[Message]) -> Role:
        """A text's role; an assistant's text given as context (a prompt) is instruction."""
        return Role.INSTRUCTION if messages[slot.message].context and slot.role is not Role.SYSTEM else slot.role

    def _report_dropped(self, text: str, messages: list[Message], placed: Placed) -> list[tuple[str, str]]:
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

    def _where(self, message: Message) -> str:
        return f"{self.messages_field}[{message.source}]"

    def _describe_template(self) -> str:
        if self.template_name:
            return f"`{self.template_name}`"
        source = getattr(self.tokenizer, "name_or_path", "")
        # Axolotl hands over the tokenizer's own template as text when its config names none
        given = self.chat_template and self.chat_template != getattr(self.tokenizer, "chat_template", None)
        return "a template given as chat_template" if given else f"the tokenizer's, {source}"

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
        self, messages: list[Message], kwargs: Mapping[str, Any]
    ) -> tuple[list[Message], list[str], list[tuple[str, str]]]:
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

    def _renders(self, messages: list[Message], message: Message, key: str, kwargs: Mapping[str, Any]) -> bool:
        """Whether the template renders ``key`` of a message of this role (the text changes without it)."""
        cache = (message.role, key)
        if cache not in self._renders_key:
            real = [m.real for m in messages]
            without = [{k: v for k, v in m.items() if k != key} if m is message.real else m for m in real]
            self._renders_key[cache] = self._apply(real, **kwargs) != self._apply(without, **kwargs)
        return self._renders_key[cache]

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
