"""Per-message weights from the data: character spans of a rendered row → one multiplier per token.

A message's weight (its ``weight`` key, or the key ``wit_message_weight_field`` names, times Axolotl's
``training`` flag) covers the message's whole rendered *turn*: the characters from the end of the previous
message's turn to the end of its own. A turn ends at the end of its end-of-turn text: for an assistant message its
``eot`` span; for any other message the first end-of-turn marker of the template (or ``eot_tokens``) in the
template text after its last text; where there is none, where its last text ends. The first message's turn starts
after the last end-of-turn marker before its first text (a default system prompt the template writes is no
message's), else at the start. So a turn holds the message's header and template markup, its texts and its end of
turn; text after the last turn (a trailing newline) and before the first is no message's: multiplier 1.

Axolotl's ``training_detail`` spans (inclusive character offsets into the content as written) then set the
content's characters: those of a span with ``train: true`` keep the message's weight, every other content
character is 0 (as Axolotl trains only the spans marked); the header and end of turn keep the message's weight.

A token takes the *smallest* multiplier among the characters it covers (a token partly inside a masked span is
masked, as Axolotl does); a token covering no character takes the one of the character before it, 1 if the tokenizer
added it (BOS). Rows of the plain formats (alpaca, prompt/completion, text) may carry a row weight, which multiplies
every token of the row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from wit_plugin.roles import Role, message_role
from wit_plugin.tagging.messages import Message
from wit_plugin.tagging.placement import Placed
from wit_plugin.tagging.spans import TaggingError, WeightSpan


def message_weight_spans(
    text: str,
    messages: list[Message],
    placed: Placed,
    turn_ends: Mapping[int, int],
    closings: Sequence[str],
    where: str,
) -> list[WeightSpan]:
    """The weight spans of the weighted messages (none if no message is weighted; see the module docstring).

    ``turn_ends`` are the assistant turns' ends (message index → character), ``closings`` the texts that end a
    turn, ``where`` names the messages field in errors (``messages``).
    """
    if not any(message.weighted for message in messages):
        return []
    count = len(messages)
    first, last = [len(text)] * count, [-1] * count
    for slot, start, end in placed:
        first[slot.message] = min(first[slot.message], start)
        last[slot.message] = max(last[slot.message], end)
    starts_after = [len(text)] * (count + 1)
    for index in range(count - 1, -1, -1):
        starts_after[index] = min(starts_after[index + 1], first[index])
    closings = [closing for closing in closings if closing]
    before = [text.rfind(closing, 0, starts_after[0]) for closing in closings]
    begin = max((p + len(c) for p, c in zip(before, closings) if p >= 0), default=0)
    spans: list[WeightSpan] = []
    for message in messages:
        index = message.index
        is_output = message_role(message.role) is Role.RESPONSE and not message.context
        if is_output and index in turn_ends:
            end = turn_ends[index]
        elif last[index] >= 0:
            found = [p + len(c) for c in closings if (p := text.find(c, last[index], starts_after[index + 1])) >= 0]
            end = min(found, default=last[index])
        else:
            end = None
        if end is None or end < begin:
            if message.weighted:
                raise TaggingError(
                    f"{where}[{message.source}].{message.weight_key}: the chat template does not render this "
                    "message, so its weight would apply to nothing"
                )
            continue
        if message.weighted:
            spans.append(WeightSpan(begin, end, message.weight))
            if message.detail is not None:
                spans += _detail_spans(text, message, placed, f"{where}[{message.source}].{message.weight_key}")
        begin = end
    return spans


def _detail_spans(text: str, message: Message, placed: Placed, where: str) -> list[WeightSpan]:
    """The content's characters: 0, then the weight on the spans trained, then 0 on the spans not trained."""
    assert isinstance(message.content, str) and message.detail is not None, "checked when the message was read"
    located = [(a, b) for slot, a, b in placed if slot.message == message.index and slot.role is not Role.REASONING]
    if not located:
        raise TaggingError(f"{where}: the chat template does not render the content its offsets refer to")
    start, end = located[0]
    shift = message.content.find(text[start:end]) if text[start:end] != message.content else 0
    if shift < 0:
        raise TaggingError(f"{where}: the chat template alters the content, so its offsets cannot be placed")
    base = start - shift
    spans = [WeightSpan(start, end, 0.0)]
    for train in (True, False):
        for first, final, trained in message.detail:
            if trained is train:
                low, high = max(start, base + first), min(end, base + final + 1)
                if high > low:
                    spans.append(WeightSpan(low, high, message.weight if train else 0.0))
    return spans
