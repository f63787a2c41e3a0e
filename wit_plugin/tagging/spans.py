"""Character spans → per-token roles, through the tokenizer's offset mapping.

Every tagger renders a row to one string and says which character spans have which role; this module
tokenises that string once and gives each token a role. No token-subsequence searching: a token's role comes
from the characters it covers.

Spans are applied in order, a later one overriding an earlier one where they overlap (the chat renderer adds
tool definitions, then assistant output and ends of turn, then the placed texts). Characters of no span are
``template``.

Boundary policy (a token covering characters of two roles): **content wins**. A token that covers any
non-template character takes that role (the role of its first character if that is not template, else of its
last). So every content character lands in a token of its own role, except where two *different* roles touch
with no template text between them, or where one token covers a whole content with template text on both
sides (it takes the template's role then) (a prompt ending in a space, then its completion; a response's last
character and its end-of-turn text): a token covering both takes the later one's role, the one the model is
asked to produce. Tokens the tokenizer adds itself (BOS) are template; other tokens that cover no character
(whitespace, with tokenizers that trim offsets past it) take the role of the character just before their
offset.

Multipliers from the data (a message's weight, :mod:`~wit_plugin.tagging.weights`) go the same way, from
character spans to tokens (:func:`token_weights`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wit_plugin.roles import MESSAGE_WEIGHTS_KEY, Role


class TaggingError(ValueError):
    """A row that cannot be tagged exactly; the message names the row's problem."""


WEIGHT_DTYPE = np.float32
NO_WEIGHTS = np.zeros(0, dtype=WEIGHT_DTYPE)  # the multipliers of a row without weights from the data: all 1


@dataclass(frozen=True)
class WeightSpan:
    """Characters ``[start, end)`` of the rendered text whose tokens get multiplier ``weight`` (later spans win
    where they overlap; :mod:`~wit_plugin.tagging.weights` says which characters a message's weight covers)."""

    start: int
    end: int
    weight: float


@dataclass(frozen=True)
class Span:
    """Characters ``[start, end)`` of the rendered text that hold one message's content."""

    start: int
    end: int
    role: Role


@dataclass
class RenderedRow:
    """A row rendered to text, with its role spans (later spans win where they overlap)."""

    text: str
    spans: list[Span] = field(default_factory=list)
    add_special_tokens: bool = False  # let the tokenizer add BOS/EOS (plain-text formats)
    turns_without_end: int = 0  # assistant turns whose end-of-turn text was not found
    placed: list[Span] = field(default_factory=list)  # where the row's own texts are (contents, reasoning)
    unread: tuple[str, ...] = ()  # message keys no format or template reads (``messages[2].weight``)
    dropped: tuple[str, ...] = ()  # fields left out because the template does not render them (opted in)
    dropped_kinds: tuple[str, ...] = ()  # each one's kind (``tagging.dropped.DROP_KINDS``), in the same order
    weights: list[WeightSpan] = field(default_factory=list)  # multipliers from the data (message weights)
    row_weight: float = 1.0  # the row's own weight (plain formats): multiplies every token


@dataclass
class TaggedSequence:
    """Token ids and their role codes, always the same length; ``text`` and ``offsets`` (each token's
    ``[start, end)`` in it) say what the tokens cover, for inspection."""

    input_ids: list[int]
    roles: list[int]
    text: str = ""
    offsets: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))
    turns_without_end: int = 0
    unread: tuple[str, ...] = ()  # see RenderedRow
    dropped: tuple[str, ...] = ()
    dropped_kinds: tuple[str, ...] = ()
    # Each token's multiplier from the data (its message's weight); empty when every one is 1.
    message_weights: np.ndarray = field(default_factory=lambda: NO_WEIGHTS)

    def __post_init__(self) -> None:
        if len(self.input_ids) != len(self.roles):
            raise TaggingError(f"{len(self.input_ids)} tokens but {len(self.roles)} roles")
        if len(self.message_weights) not in (0, len(self.input_ids)):
            raise TaggingError(f"{len(self.input_ids)} tokens but {len(self.message_weights)} message weights")

    def token_multipliers(self) -> np.ndarray:
        """Every token's multiplier from the data, 1 where the row has none."""
        if len(self.message_weights):
            return self.message_weights
        return np.ones(len(self.input_ids), dtype=WEIGHT_DTYPE)

    def truncated(self, max_length: int) -> TaggedSequence:
        """Cut every per-token column at the same place (Axolotl's own truncation cuts only its columns), the
        text where the last kept token ends."""
        offsets = self.offsets[:max_length]
        text = self.text[: int(offsets[:, 1].max())] if len(offsets) and len(offsets) < len(self.offsets) else self.text
        return TaggedSequence(
            self.input_ids[:max_length],
            self.roles[:max_length],
            text,
            offsets,
            self.turns_without_end,
            self.unread,
            self.dropped,
            self.dropped_kinds,
            self.message_weights[:max_length],
        )

    def token_texts(self) -> list[str]:
        """Exactly the characters each token covers, so that their concatenation is the whole text.

        Offsets can overlap (a multi-byte character split over two byte-level tokens: both report the whole
        character) or leave gaps (trimmed whitespace); each character goes to the first token starting at or
        before it, and text before the first token or after the last belongs to its neighbour.
        """
        if not len(self.offsets):
            return []
        cuts = np.maximum.accumulate(np.maximum(self.offsets[:, 0], 0)).tolist()
        cuts[0] = 0
        return [self.text[a:b] for a, b in zip(cuts, [*cuts[1:], len(self.text)])]

    def as_features(self) -> dict[str, Any]:
        """Columns for a tokenised dataset: labels are the ids; the collator masks them by weight. The message
        weights are a float32 array (empty when all 1), so that Arrow types the column alike in every row."""
        return {
            "input_ids": self.input_ids,
            "attention_mask": [1] * len(self.input_ids),
            "labels": list(self.input_ids),
            "wit_roles": self.roles,
            MESSAGE_WEIGHTS_KEY: self.message_weights,
        }


def tag_rendered(tokenizer: Any, row: RenderedRow) -> TaggedSequence:
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
    return TaggedSequence(
        input_ids.tolist(),
        roles.tolist(),
        row.text,
        offsets,
        row.turns_without_end,
        row.unread,
        row.dropped,
        row.dropped_kinds,
        token_weights(len(row.text), row.weights, row.row_weight, offsets, special),
    )


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


def token_weights(
    text_length: int, spans: Sequence[WeightSpan], row_weight: float, offsets: np.ndarray, special: np.ndarray
) -> np.ndarray:
    """One multiplier per token: the smallest of the characters it covers (a token partly inside a masked span is
    masked), the one of the character before it for a token covering none, 1 for a token the tokenizer added
    (BOS); times ``row_weight``. :data:`NO_WEIGHTS` when every one is 1 (rows without weights cost nothing)."""
    if not spans and row_weight == 1.0:
        return NO_WEIGHTS
    chars = np.ones(text_length + 1, dtype=WEIGHT_DTYPE)
    for span in spans:
        chars[span.start : span.end] = span.weight
    if not len(offsets):
        return NO_WEIGHTS
    starts = np.clip(offsets[:, 0], 0, text_length)
    ends = np.clip(offsets[:, 1], 0, text_length)
    weights = np.minimum.reduceat(chars, np.stack([starts, ends], axis=1).reshape(-1))[::2]
    empty = ends <= starts
    weights[empty] = chars[np.clip(ends - 1, 0, text_length)][empty]
    weights[empty & special] = 1.0
    weights *= WEIGHT_DTYPE(row_weight)
    return NO_WEIGHTS if bool((weights == 1.0).all()) else weights
