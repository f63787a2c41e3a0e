"""Role tagging: dataset rows → token ids + per-token role codes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from wit_plugin.tagging.formats import RowFormat
from wit_plugin.tagging.registry import detect_format, get_format
from wit_plugin.tagging.spans import TaggedSequence, TaggingError, tag_rendered

__all__ = ["TAGGING_VERSION", "RoleTagger", "TaggedSequence", "TaggingError"]

# Bumped whenever the same row can be tagged differently (v2: reasoning role, text ends of turn, tool calls and
# definitions; v3: a generation prompt matched by its role header only, text parts joined for string templates;
# v4: every row carries its dropped-field counts, ``wit_dropped``; v5: message weights from the data,
# ``wit_message_weights``): prepared-dataset caches keyed on it (Axolotl's hash, TRL's map fingerprint) are then not
# reused.
TAGGING_VERSION = 5


class RoleTagger:
    """Tags rows of one format with one tokenizer.

    ``row_format`` is a registered format name (``chat``, ``alpaca``, ``prompt_completion``, ``text``) or
    ``None`` to detect it from the first row. ``max_length`` truncates every column together.
    """

    def __init__(
        self, tokenizer: Any, row_format: str | None = None, max_length: int | None = None, **options: Any
    ) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise TaggingError(
                "wit_plugin places roles with the tokenizer's offset mapping, which only fast tokenizers give: "
                "load the fast tokenizer (Axolotl: tokenizer_use_fast: true)"
            )
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.options = options
        self._format: RowFormat | None = get_format(row_format)(tokenizer, **options) if row_format else None

    @property
    def format_name(self) -> str | None:
        return self._format.name if self._format else None

    def tag(self, row: Mapping[str, Any]) -> TaggedSequence:
        if self._format is None:
            self._format = detect_format(row)(self.tokenizer, **self.options)
        tagged = tag_rendered(self.tokenizer, self._format.render(row))
        if self.max_length is not None and len(tagged.input_ids) > self.max_length:
            tagged = tagged.truncated(self.max_length)
        return tagged
