"""Character spans → per-token roles, through the tokenizer's offset mapping.

Every tagger renders a row to one string and says which character spans are which message's content; this
module tokenises that string once and gives each token a role. No token-subsequence searching: a token's
role comes from the characters it covers.

Boundary policy (a token covering characters of two roles): **content wins**. A token that covers any
content character takes that content's role (the role of its first character if that is content, else of
its last). So every content character lands in a token of its own role, except where two *different*
contents touch with no template text between them (a prompt ending in a space, then its completion): a
token covering both takes the later content's role, the one the model is asked to produce. Tokens the
tokenizer adds itself (BOS) are template; other tokens that cover no character (whitespace, with
tokenizers that trim offsets past it) take the role of the character just before their offset.

End-of-turn: the first special token after an assistant message's content, with at most white space
between them (``<|im_end|>``, ``<|eot_id|>``, ``</s>``, ``<end_of_turn>``...), gets :attr:`Role.EOT`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wit_plugin.roles import Role


class TaggingError(ValueError):
    """A row that cannot be tagged exactly; the message names the row's problem."""


@dataclass(frozen=True)
class Span:
    """Characters ``[start, end)`` of the rendered text that hold one message's content."""

    start: int
    end: int
    role: Role


@dataclass
class RenderedRow:
    """A row rendered to text, with its content spans and where assistant turns end."""

    text: str
    spans: list[Span] = field(default_factory=list)
    turn_ends: list[int] = field(default_factory=list)  # char offsets right after assistant contents
    add_special_tokens: bool = False  # let the tokenizer add BOS/EOS (plain-text formats)


@dataclass
class TaggedSequence:
    """Token ids and their role codes, always the same length."""

    input_ids: list[int]
    roles: list[int]

    def __post_init__(self) -> None:
        if len(self.input_ids) != len(self.roles):
            raise TaggingError(f"{len(self.input_ids)} tokens but {len(self.roles)} roles")

    def truncated(self, max_length: int) -> TaggedSequence:
        """Cut every per-token column at the same place (Axolotl's own truncation cuts only its columns)."""
        return TaggedSequence(self.input_ids[:max_length], self.roles[:max_length])

    def as_features(self) -> dict[str, list[int]]:
        """Columns for a tokenised dataset: labels are the ids; the collator masks them by weight."""
        return {
            "input_ids": self.input_ids,
            "attention_mask": [1] * len(self.input_ids),
            "labels": list(self.input_ids),
            "wit_roles": self.roles,
        }


def special_token_ids(tokenizer: Any) -> np.ndarray:
    """Ids the tokenizer treats as special (control tokens such as ``<|im_end|>``)."""
    ids = set(tokenizer.all_special_ids)
    for token_id, added in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(added, "special", False):
            ids.add(int(token_id))
    return np.fromiter(sorted(ids), dtype=np.int64)


def tag_rendered(tokenizer: Any, row: RenderedRow, special_ids: np.ndarray | None = None) -> TaggedSequence:
    """Tokenise ``row.text`` once and give each token the role of the characters it covers."""
    encoding = tokenizer(
        row.text,
        add_special_tokens=row.add_special_tokens,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
    )
    input_ids = np.asarray(encoding["input_ids"], dtype=np.int64)
    offsets = np.asarray(encoding["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    special = np.asarray(encoding["special_tokens_mask"], dtype=bool)
    roles = token_roles(len(row.text), row.spans, offsets, special)
    if row.turn_ends:
        if special_ids is None:
            special_ids = special_token_ids(tokenizer)
        mark_turn_ends(row.text, row.turn_ends, input_ids, offsets, roles, special_ids)
    return TaggedSequence(input_ids.tolist(), roles.tolist())


def token_roles(text_length: int, spans: Sequence[Span], offsets: np.ndarray, special: np.ndarray) -> np.ndarray:
    """Vectorised content-wins role per token (see module docstring); ``special`` marks special tokens."""
    char_roles = np.full(text_length + 1, Role.TEMPLATE, dtype=np.int8)
    for span in spans:
        char_roles[span.start : span.end] = span.role
    starts, ends = offsets[:, 0], offsets[:, 1]
    first = char_roles[np.clip(starts, 0, text_length)]
    last = char_roles[np.clip(ends - 1, 0, text_length)]
    roles = np.where((first == Role.TEMPLATE) | ((last != Role.TEMPLATE) & (last != first)), last, first)
    # No character covered: a token the tokenizer added (BOS) is template; any other is a whitespace token
    # whose offsets were trimmed past the characters it covers, so it takes the role of the one just before
    # its offset, which for an empty span is ``last``.
    empty = ends <= starts
    roles[empty] = last[empty]
    roles[empty & special] = Role.TEMPLATE
    return roles


def mark_turn_ends(
    text: str,
    turn_ends: Sequence[int],
    input_ids: np.ndarray,
    offsets: np.ndarray,
    roles: np.ndarray,
    special_ids: np.ndarray,
) -> None:
    """Tag as EOT the first special token after each assistant content, across white space only."""
    starts = offsets[:, 0]
    is_special = np.isin(input_ids, special_ids)
    for end in turn_ends:
        # First token starting at or after the content end; one straddling the end is content already.
        index = int(np.searchsorted(starts, end, side="left"))
        while index < len(input_ids) and not is_special[index]:
            if text[offsets[index, 0] : offsets[index, 1]].strip():
                break  # visible template text before any special token: the turn has no EOT token
            index += 1
        if index < len(input_ids) and is_special[index] and roles[index] == Role.TEMPLATE:
            roles[index] = Role.EOT
