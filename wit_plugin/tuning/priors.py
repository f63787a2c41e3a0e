"""The prompt-weight rule of thumb from the training data (Huerta-Enochian & Ko, 2024, "Instruction Fine-Tuning:
Does Prompt Loss Matter?"): the best prompt loss weight depends on the completion/prompt length ratio of the
data, about 0.01–0.1 on short-completion data and about 1 on long generation.

We turn those two regimes into one number, ``λp = clip(0.1 × R, 0.01, 1)`` with R the ratio of completion to
prompt tokens (R = 0.1 → 0.01, R = 1 → 0.1, R ≥ 10 → 1): the interpolation is ours, not the paper's; it only
chooses the study's first trial, the search does the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

ROWS_READ = 1000  # rows measured per dataset: enough for a ratio, quick on any tokenizer
MESSAGE_FIELDS = ("messages", "conversations")
COMPLETION_ROLES = ("assistant", "gpt", "model")


@dataclass(frozen=True)
class LengthRatio:
    prompt_tokens: int
    completion_tokens: int
    rows: int

    @property
    def ratio(self) -> float:
        return self.completion_tokens / max(self.prompt_tokens, 1)

    @property
    def prompt_weight(self) -> float:
        return rule_of_thumb(self.ratio)

    def describe(self) -> str:
        regime = "short completions" if self.ratio < 1 else "long generation" if self.ratio >= 10 else "in between"
        return (
            f"completion/prompt length ratio {self.ratio:.3g} over {self.rows} rows ({regime}): rule-of-thumb "
            f"prompt weight {self.prompt_weight:.3g} (Huerta-Enochian & Ko 2024: ~0.01–0.1 on short-completion "
            "data, ~1 on long generation)"
        )


def rule_of_thumb(ratio: float) -> float:
    return min(max(0.1 * ratio, 0.01), 1.0)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}]
        return " ".join(part.get("text", "") for part in content if isinstance(part, Mapping))
    return ""


def split_row(row: Mapping[str, Any]) -> tuple[str, str] | None:
    """(prompt text, completion text) of a chat, prompt/completion or instruction/output row; None otherwise."""
    for name in MESSAGE_FIELDS:
        messages = row.get(name)
        if isinstance(messages, list):
            prompt, completion = [], []
            for message in messages:
                if not isinstance(message, Mapping):
                    continue
                role = message.get("role", message.get("from"))
                text = _text(message.get("content", message.get("value")))
                (completion if role in COMPLETION_ROLES else prompt).append(text)
            return "\n".join(prompt), "\n".join(completion)
    if "completion" in row:
        return _text(row.get("prompt")), _text(row["completion"])
    if "output" in row:
        return _text(row.get("instruction")) + "\n" + _text(row.get("input")), _text(row["output"])
    return None


def length_ratio(rows: Iterable[Mapping[str, Any]], tokenizer: Any) -> LengthRatio | None:
    """Tokens on each side over the first :data:`ROWS_READ` rows of a recognised shape (None when none is)."""
    prompt = completion = count = 0
    for row in rows:
        if count >= ROWS_READ:
            break
        parts = split_row(row)
        if parts is None:
            continue
        prompt += len(tokenizer(parts[0], add_special_tokens=False)["input_ids"])
        completion += len(tokenizer(parts[1], add_special_tokens=False)["input_ids"])
        count += 1
    return LengthRatio(prompt, completion, count) if count else None
