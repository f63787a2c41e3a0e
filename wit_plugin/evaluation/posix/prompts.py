"""Prompt sets for POSIX: validation, JSONL I/O and rendering to token ids.

A prompt is a raw string or a chat message list; chat prompts go through the tokenizer's chat template
with the generation prompt appended, so the model answers as the assistant.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from wit_plugin.evaluation.engine import Prompt

PromptSet = list[Prompt]


def is_chat(prompt: Prompt) -> bool:
    return not isinstance(prompt, str)


def prompt_text(prompt: Prompt) -> str:
    """The human-readable text of a prompt (the message contents for chat prompts), for tables and checks."""
    return prompt if isinstance(prompt, str) else "\n".join(message["content"] for message in prompt)


def _is_message(message: Any) -> bool:
    return isinstance(message, Mapping) and all(isinstance(message.get(key), str) for key in ("role", "content"))


def _check_prompt(prompt: Any, where: str) -> None:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError(f"{where} is an empty prompt")
        return
    if not isinstance(prompt, list) or not prompt:
        raise ValueError(f"{where} must be a non-empty string or a non-empty list of chat messages, got {prompt!r}")
    for message in prompt:
        if not _is_message(message):
            raise ValueError(f"{where} has a chat message without string 'role' and 'content': {message!r}")
    if not any(message["content"].strip() for message in prompt):
        raise ValueError(f"{where} is an empty prompt (all message contents are blank)")


def validate_prompt_set(prompts: Any, where: str = "prompt set") -> PromptSet:
    """One set as POSIX needs it (a list of two or more non-empty prompts), copied to lists."""
    if isinstance(prompts, (str, bytes, Mapping)) or not isinstance(prompts, Iterable):
        raise ValueError(  # noqa: TRY004 - bad input data, reported like every other prompt-set error
            f"{where} must be a list of prompts, got {type(prompts).__name__}: {prompts!r:.80}"
        )
    prompts = list(prompts)
    if len(prompts) < 2:
        raise ValueError(f"{where} has fewer than 2 prompts; POSIX compares each prompt's response under the others")
    for position, prompt in enumerate(prompts):
        _check_prompt(prompt, f"{where}, prompt {position}")
    return [prompt if isinstance(prompt, str) else [dict(m) for m in prompt] for prompt in prompts]


def validate_prompt_sets(prompt_sets: Sequence[Sequence[Prompt]]) -> list[PromptSet]:
    """Check the shapes POSIX needs (at least one set, two or more non-empty prompts each) and copy to lists."""
    if isinstance(prompt_sets, (str, bytes, Mapping)) or not isinstance(prompt_sets, Iterable):
        raise ValueError(f"POSIX needs a list of prompt sets, got {type(prompt_sets).__name__}")  # noqa: TRY004
    prompt_sets = list(prompt_sets)
    if not prompt_sets:
        raise ValueError("POSIX needs at least one prompt set (a list of lists of prompts)")
    return [validate_prompt_set(prompts, f"prompt set {index}") for index, prompts in enumerate(prompt_sets)]


def write_prompt_sets(path: str | Path, prompt_sets: Iterable[Sequence[Prompt]]) -> Path:
    """One ``{"prompts": [...]}`` line per set: the format ``wit posix --prompts`` reads back unchanged."""
    path = Path(path)
    with path.open("w", encoding="utf-8") as handle:
        for prompts in prompt_sets:
            handle.write(json.dumps({"prompts": list(prompts)}, ensure_ascii=False) + "\n")
    return path
