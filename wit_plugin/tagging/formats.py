"""Row formats: how a dataset row becomes text with role spans.

A format renders one row to a :class:`RenderedRow`; :mod:`wit_plugin.tagging.spans` turns that into tokens.
New formats plug in through :mod:`wit_plugin.tagging.registry` (a pluggy hook, discoverable by entry point).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

from wit_plugin.roles import (
    CONTENT_FIELD,
    MESSAGES_FIELD,
    ROLE_FIELD,
    TEXT_FIELD,
    TOOLS_FIELD,
    Role,
    WeightError,
    check_weight,
)
from wit_plugin.tagging.chat import ChatRenderer
from wit_plugin.tagging.messages import WeightKeys
from wit_plugin.tagging.spans import RenderedRow, Span, TaggingError


class RowFormat:
    """Base of row formats. ``columns`` are the fields a row must have for the format to apply."""

    name: ClassVar[str]
    columns: ClassVar[tuple[str, ...]]

    def __init__(self, tokenizer: Any, **options: Any) -> None:
        self.tokenizer = tokenizer
        self.options = options
        self.weight_field: str = options.get("weight_field") or WeightKeys.weight

    @classmethod
    def matches(cls, row: Mapping[str, Any]) -> bool:
        return all(column in row for column in cls.columns)

    def render(self, row: Mapping[str, Any]) -> RenderedRow:
        raise NotImplementedError

    def _field(self, row: Mapping[str, Any], name: str, *, required: bool = True) -> str:
        value = row.get(name)
        if value is None and not required:
            return ""
        if not isinstance(value, str):
            raise TaggingError(f"{self.name} row field '{name}' must be a string, got {type(value).__name__}")
        return value

    def _row_weight(self, row: Mapping[str, Any]) -> float:
        """The row's weight (its ``weight_field``; absent: 1), which multiplies every token of a plain-text row."""
        value = row.get(self.weight_field)
        if value is None:
            return 1.0
        try:
            check_weight(value, f"{self.name} row field '{self.weight_field}'")
        except WeightError as error:
            raise TaggingError(str(error)) from None
        return float(value)


class _SegmentWriter:
    """Concatenates text segments and records the role of each, for the plain-text formats."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.row = RenderedRow(text="", add_special_tokens=True)
        self._length = 0

    def add(self, text: str, role: Role = Role.TEMPLATE) -> None:
        if role is not Role.TEMPLATE and text:
            span = Span(self._length, self._length + len(text), role)
            self.row.spans.append(span)
            if role is not Role.EOT:
                self.row.placed.append(span)
        self.parts.append(text)
        self._length += len(text)

    def finish(self) -> RenderedRow:
        self.row.text = "".join(self.parts)
        return self.row


def _add_response(writer: _SegmentWriter, tokenizer: Any, response: str) -> None:
    """The response, closed by EOS (its end of turn) unless the text already ends with it."""
    if not tokenizer.eos_token:
        raise TaggingError("the tokenizer has no eos_token to close the response with")
    eos = tokenizer.eos_token
    writer.add(response.removesuffix(eos), Role.RESPONSE)
    writer.add(eos, Role.EOT)


def parse_tools(tools: Any) -> Any:
    """Tool definitions as the template gets them; like Axolotl, a JSON string is parsed first. ``None`` (or an
    empty list or string) means no tools."""
    if isinstance(tools, str):
        if not tools.strip():
            return None
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError:
            return tools  # text a template renders as it is
    return tools or None


class ChatFormat(RowFormat):
    """Conversations (``messages``), rendered with the tokenizer's (or a given) chat template.

    Options: ``field_messages``, ``chat_template``, ``role_map``, ``role_field``, ``content_field``,
    ``template_kwargs``, ``field_tools`` (a row's tool definitions, rendered by the template and tagged
    ``system``), ``eot_tokens`` (texts closing an assistant turn, instead of the template's own),
    ``drop_unrendered`` (drop tool calls, tool definitions and texts the template does not render instead of
    refusing the row), ``chat_template_name`` (named in errors), ``weight_field``, ``training_field`` and
    ``training_detail_field`` (the message keys that weight a message: :mod:`~wit_plugin.tagging.weights`).
    A row's ``chat_template_kwargs`` (TRL's per-row template arguments) are passed to the template too.
    """

    name = "chat"
    columns = (MESSAGES_FIELD,)

    def __init__(self, tokenizer: Any, **options: Any) -> None:
        super().__init__(tokenizer, **options)
        self.field_messages: str = options.get("field_messages") or MESSAGES_FIELD
        self.field_tools: str = options.get("field_tools") or TOOLS_FIELD
        self.renderer = ChatRenderer(
            tokenizer,
            chat_template=options.get("chat_template"),
            role_map=options.get("role_map") or {},
            role_field=options.get("role_field") or ROLE_FIELD,
            content_field=options.get("content_field") or CONTENT_FIELD,
            messages_field=self.field_messages,
            template_kwargs=options.get("template_kwargs") or {},
            eot_tokens=tuple(options.get("eot_tokens") or ()),
            template_name=options.get("chat_template_name"),
            drop_unrendered=bool(options.get("drop_unrendered")),
            weight_keys=WeightKeys(
                self.weight_field,
                options.get("training_field") or WeightKeys.training,
                options.get("training_detail_field") or WeightKeys.training_detail,
            ),
        )
        if self.renderer.chat_template is None and not getattr(tokenizer, "chat_template", None):
            raise TaggingError("the tokenizer has no chat template and none was given (chat_template)")

    def render(self, row: Mapping[str, Any]) -> RenderedRow:
        if self.field_messages not in row:
            raise TaggingError(f"chat row has no '{self.field_messages}' field; fields: {sorted(row)}")
        return self.render_messages(row, row[self.field_messages])

    def render_messages(self, row: Mapping[str, Any], messages: Any, context: int = 0) -> RenderedRow:
        """``messages`` of ``row``, with the row's tool definitions and template arguments, if any; the first
        ``context`` messages are a prompt given to the model (see :meth:`ChatRenderer.render`)."""
        kwargs = row.get("chat_template_kwargs") or {}
        if not isinstance(kwargs, Mapping):
            raise TaggingError(f"'chat_template_kwargs' must be a mapping, got {type(kwargs).__name__}")
        tools = parse_tools(row.get(self.field_tools))
        return self.renderer.render(messages, tools=tools, template_kwargs=kwargs, context=context)


class AlpacaFormat(RowFormat):
    """``instruction`` / ``input`` / ``output`` rows in Axolotl's ``alpaca`` prompt layout.

    The fixed preamble and ``### ...`` headers are template; instruction and input are instruction; the
    output is the response, closed by EOS (end of turn).
    """

    name = "alpaca"
    columns = ("instruction", "output")
    preamble = (
        "Below is an instruction that describes a task, paired with an input that provides further "
        "context. Write a response that appropriately completes the request.\n\n"
    )
    preamble_no_input = (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    )

    def render(self, row: Mapping[str, Any]) -> RenderedRow:
        instruction = self._field(row, "instruction")
        context = self._field(row, "input", required=False)
        output = self._field(row, "output")
        writer = _SegmentWriter()
        writer.add((self.preamble if context else self.preamble_no_input) + "### Instruction:\n")
        writer.add(instruction, Role.INSTRUCTION)
        if context:
            writer.add("\n\n### Input:\n")
            writer.add(context, Role.INSTRUCTION)
        writer.add("\n\n### Response:\n")
        _add_response(writer, self.tokenizer, output)
        writer.row.row_weight = self._row_weight(row)
        return writer.finish()


class PromptCompletionFormat(RowFormat):
    """Plain-text ``prompt`` / ``completion`` rows: prompt is instruction, completion is response + EOS.

    Conversational prompt/completion rows (lists of messages) are rendered as one chat whose prompt messages are
    context: an assistant turn inside the prompt is instruction text, as TRL's completion-only loss treats it.
    """

    name = "prompt_completion"
    columns = ("prompt", "completion")
    _chat: ChatFormat | None = None

    def render(self, row: Mapping[str, Any]) -> RenderedRow:
        prompt, completion = row.get("prompt"), row.get("completion")
        if isinstance(prompt, list) and isinstance(completion, list):
            if self._chat is None:
                self._chat = ChatFormat(self.tokenizer, **self.options)
            return self._chat.render_messages(row, [*prompt, *completion], context=len(prompt))
        writer = _SegmentWriter()
        writer.add(self._field(row, "prompt"), Role.INSTRUCTION)
        _add_response(writer, self.tokenizer, self._field(row, "completion"))
        writer.row.row_weight = self._row_weight(row)
        return writer.finish()


class TextFormat(RowFormat):
    """Raw ``text`` rows (Axolotl's ``completion`` type): the text is what the model learns to produce."""

    name = "text"
    columns = (TEXT_FIELD,)

    def render(self, row: Mapping[str, Any]) -> RenderedRow:
        writer = _SegmentWriter()
        _add_response(writer, self.tokenizer, self._field(row, self.options.get("field") or TEXT_FIELD))
        writer.row.row_weight = self._row_weight(row)
        return writer.finish()


BUILTIN_FORMATS: tuple[type[RowFormat], ...] = (ChatFormat, AlpacaFormat, PromptCompletionFormat, TextFormat)
