"""The invariants every tagged chat row must satisfy, checked against the row itself (shared by the tagging tests).

* the tokens are the tokenizer's own tokenisation of the rendered text, and their texts concatenate to it;
* every text the row supplies (contents, text parts, reasoning) is placed exactly (as written, or as the template
  trims it), and each of its characters lands in a token of its role, except the last characters of an
  assistant's output that share a token with its end-of-turn text (then ``eot``);
* every assistant turn is closed by the template's end-of-turn text, and the ``eot`` tokens are exactly the
  tokens covering those texts;
* a token covering no supplied text is template, assistant output (inside a turn), system (tool definitions)
  or eot.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from wit_plugin.roles import Role, message_role
from wit_plugin.tagging import RoleTagger, TaggedSequence
from wit_plugin.tagging.formats import parse_tools
from wit_plugin.tagging.messages import THINK_CLOSE, THINK_OPEN


def expected_texts(messages: Sequence[Mapping[str, Any]]) -> list[tuple[str, Role]]:
    """What the row supplies, in order: (text, role) of reasoning, contents and text parts."""
    texts = []
    for message in messages:
        role = message_role(message["role"])
        reasoning = message.get("reasoning_content")
        content = message.get("content")
        if isinstance(content, str) and THINK_CLOSE in content and not reasoning and role is Role.RESPONSE:
            reasoning = content.split(THINK_CLOSE)[0].split(THINK_OPEN)[-1]
            content = content.split(THINK_CLOSE)[-1]
        if reasoning:
            texts.append((reasoning, Role.REASONING))
        parts = content if isinstance(content, list) else [{"text": content or ""}]
        texts += [(part["text"], role) for part in parts if part["text"]]
    return texts


def _trimmed(value: str) -> dict[str, None]:
    return dict.fromkeys((value, value.strip(), value.strip("\n")))


def covering(offsets: np.ndarray, start: int, end: int) -> np.ndarray:
    """Indices of the tokens that overlap characters ``[start, end)``."""
    return np.nonzero((offsets[:, 0] < end) & (offsets[:, 1] > start))[0]


def check_chat_row(
    tokenizer: Any,
    row: Mapping[str, Any],
    closing: str,
    tagger: RoleTagger | None = None,
    messages_in_order: bool = True,
    **options: Any,
) -> TaggedSequence:
    tagger = tagger or RoleTagger(tokenizer, "chat", **options)
    renderer = tagger._format.renderer if tagger._format else None
    tagged = tagger.tag(row)
    renderer = renderer or tagger._format.renderer
    text = tagged.text
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    assert encoding["input_ids"] == tagged.input_ids
    assert "".join(tagged.token_texts()) == text
    offsets = np.asarray(encoding["offset_mapping"]).reshape(-1, 2)
    roles = np.asarray(tagged.roles)

    # the row's own texts, placed exactly
    placed = renderer.render(row["messages"], tools=parse_tools(row.get("tools"))).placed
    # (a text of white space only may be trimmed away by the template)
    wanted = [(value, role) for value, role in expected_texts(row["messages"]) if value.strip()]
    got = [(text[s.start : s.end], s.role) for s in placed if text[s.start : s.end].strip()]
    if messages_in_order:  # a reasoning text may be dropped (templates keep only the last turns' reasoning)
        remaining = list(got)
        for expected, expected_role in wanted:
            if remaining and remaining[0][1] is expected_role and remaining[0][0] in _trimmed(expected):
                remaining.pop(0)
            else:
                assert expected_role is Role.REASONING, (expected, expected_role, remaining)
        assert not remaining, remaining

    # end of turn: each occurrence of the closing text after an assistant output is eot, and only those tokens
    eot_chars = np.zeros(len(text) + 1, dtype=bool)
    assistant_turns = sum(message_role(m["role"]) is Role.RESPONSE for m in row["messages"])
    closings = [m.start() for m in re.finditer(re.escape(closing), text)] if closing else []
    eot_tokens = set(np.nonzero(roles == Role.EOT)[0].tolist())
    found = 0
    for start in closings:
        tokens = set(covering(offsets, start, start + len(closing)).tolist())
        if tokens and tokens <= eot_tokens:
            found += 1
            eot_chars[start : start + len(closing)] = True
    assert found == assistant_turns == tagged.turns_without_end + found, (found, assistant_turns)
    for index in eot_tokens:  # every eot token covers end-of-turn text
        assert eot_chars[offsets[index, 0] : offsets[index, 1]].any() or offsets[index, 0] == offsets[index, 1]

    # every supplied character in its role, except where its token also covers a later text of another role
    # (texts that touch: the later one wins) or end-of-turn text
    supplied = np.zeros(len(text) + 1, dtype=bool)
    char_role = np.full(len(text) + 1, -1)
    for span in placed:
        supplied[span.start : span.end] = True
        char_role[span.start : span.end] = span.role
    for span in placed:
        for char in range(span.start, span.end):
            tokens = covering(offsets, char, char + 1)
            assert len(tokens) >= 1
            for token in tokens:
                start, end = offsets[token]
                later = set(char_role[char + 1 : end].tolist()) - {-1}
                straddles_eot = roles[token] == Role.EOT and eot_chars[start:end].any()
                assert roles[token] == span.role or roles[token] in later or straddles_eot, (
                    text[span.start : span.end],
                    char,
                    roles[token],
                )
    for index, (start, end) in enumerate(offsets):
        if not supplied[start:end].any():
            assert roles[index] in (Role.TEMPLATE, Role.EOT, Role.RESPONSE, Role.SYSTEM), (index, roles[index])
    return tagged


def role_text(tagged: TaggedSequence, role: Role) -> str:
    return "".join(t for t, r in zip(tagged.token_texts(), tagged.roles) if r == role)
