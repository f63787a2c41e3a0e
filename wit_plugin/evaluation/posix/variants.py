"""Intent-aligned prompt variants, as in the POSIX paper: spelling errors, prompt templates, paraphrases, and
mixtures of them. Each variant keeps the intent readable; every choice comes from a seeded ``random.Random``
so a seed gives the same sets on every run.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from wit_plugin.evaluation.posix.prompts import Prompt, PromptSet, validate_prompt_set, validate_prompt_sets
from wit_plugin.jsonl import read_jsonl

KINDS = ("spelling", "template", "paraphrase")
CHAT = "chat"
RAW = "raw"
TEMPLATES: dict[str, str] = {
    RAW: "{}",
    "qa": "Q: {}\nA:",
    "question": "Question: {}\nAnswer:",
    "instruction": "Instruction: {}\nResponse:",
}
FORMATS = (*TEMPLATES, CHAT)
_WORD = re.compile(r"[^\W\d_]{3,}")


def misspell(text: str, rng: random.Random, rate: float = 0.05) -> str:
    """Typos in about ``rate`` of the letters (at least one): swap with the next letter, drop, or double.

    A word's first letter is never touched, so words stay recognisable to a reader and to the model.
    """
    positions = [index for match in _WORD.finditer(text) for index in range(match.start() + 1, match.end())]
    if not positions:
        return text
    letters = sum(char.isalpha() for char in text)
    count = min(len(positions), max(1, round(rate * letters)))
    chars = list(text)
    for index in sorted(rng.sample(positions, count), reverse=True):
        operation = rng.choice(("swap", "drop", "repeat"))
        can_swap = index + 1 < len(chars) and chars[index + 1].isalpha() and chars[index + 1] != chars[index]
        if operation == "swap" and can_swap:
            chars[index], chars[index + 1] = chars[index + 1], chars[index]
        elif operation == "drop":
            del chars[index]
        else:
            chars.insert(index, chars[index])
    return "".join(chars)


def apply_format(text: str, fmt: str) -> Prompt:
    """``text`` as a chat user turn (``chat``) or inside a raw completion template."""
    if fmt == CHAT:
        return [{"role": "user", "content": text}]
    if fmt not in TEMPLATES:
        raise ValueError(f"unknown prompt format {fmt!r}; choose from {', '.join(FORMATS)}")
    return TEMPLATES[fmt].format(text)


def _frames() -> list[tuple[str, str]]:
    """(prefix, suffix) of every template but raw, the longest first: ``Question:`` before ``Q:``."""
    pairs = [tuple(TEMPLATES[fmt].split("{}")) for fmt in TEMPLATES if fmt != RAW]
    return sorted(pairs, key=lambda pair: -len(pair[0] + pair[1]))


def split_frame(text: str) -> tuple[str, str, str]:
    """``(prefix, instruction, suffix)`` of a prompt that already carries a template frame (``Question: ...
    \nAnswer:``), or only its answer cue (``...\nAnswer:``); ``("", text, "")`` when it has none.

    Variants change the bare instruction and re-wrap it: a task input that comes framed is not framed twice.
    """
    for prefix, suffix in _frames():
        middle = text[len(prefix) : len(text) - len(suffix)]
        if text.startswith(prefix) and text.endswith(suffix) and middle.strip():
            return prefix, middle, suffix
    for _, suffix in _frames():
        if text.endswith(suffix) and text[: -len(suffix)].strip():
            return "", text[: -len(suffix)], suffix
    return "", text, ""


def parse_kinds(spec: str | Sequence[str]) -> tuple[str, ...]:
    """``"spelling,template"`` (or a sequence) to validated, de-duplicated kinds."""
    names = [name.strip() for name in (spec.split(",") if isinstance(spec, str) else spec) if name.strip()]
    unknown = sorted(set(names) - set(KINDS))
    if unknown or not names:
        raise ValueError(f"variant kinds must be a non-empty subset of {', '.join(KINDS)}; got {spec!r}")
    return tuple(dict.fromkeys(names))


def make_prompt_set(
    intent: str,
    rng: random.Random,
    size: int = 5,
    kinds: Sequence[str] = ("spelling", "template"),
    paraphrases: Sequence[str] = (),
    base_format: str = RAW,
    rate: float = 0.05,
) -> PromptSet:
    """The original prompt followed by ``size - 1`` variants.

    Each variant applies a random non-empty subset of ``kinds`` (one kind alone when only one is given):
    a paraphrase replaces the text, spelling errors go into the text, a template change re-wraps it in a
    different format than the original's. An ``intent`` that already carries a template frame or answer cue
    (:func:`split_frame`) is varied without it: the original keeps its frame, spelling errors and paraphrases go
    into the bare instruction, and a template change wraps the bare instruction once.
    """
    kinds = parse_kinds(kinds)
    if size < 2:
        raise ValueError("a prompt set needs at least 2 prompts")
    if "paraphrase" in kinds and not paraphrases:
        raise ValueError(f"paraphrase variants need a 'paraphrases' list; none given for {intent[:60]!r}")
    prefix, bare, suffix = split_frame(intent)
    own = next((fmt for fmt in TEMPLATES if TEMPLATES[fmt] == f"{prefix}{{}}{suffix}"), None)
    original = own if base_format == RAW else base_format  # the format the original prompt is in, if one of ours
    formats = _shuffled_cycle(rng, [fmt for fmt in FORMATS if fmt != original])
    rewrites = _shuffled_cycle(rng, [split_frame(text)[1] for text in paraphrases])
    prompts = [apply_format(intent, base_format)]
    for _ in range(size - 1):
        chosen = set(rng.sample(kinds, rng.randint(1, len(kinds))))
        text = next(rewrites) if "paraphrase" in chosen else bare
        if "spelling" in chosen:
            text = misspell(text, rng, rate)
        if "template" in chosen:
            prompts.append(apply_format(text, next(formats)))
        else:
            prompts.append(apply_format(f"{prefix}{text}{suffix}", base_format))
    return prompts


def _shuffled_cycle(rng: random.Random, items: list[str]) -> Iterator[str]:
    """Draws without replacement until all were used, then again: variants repeat only when they must."""
    while items:
        yield from rng.sample(items, len(items))


def intent_of(row: Mapping[str, Any]) -> tuple[str, str]:
    """The instruction text of a dataset row and the format it came in (chat for ``messages`` rows)."""
    messages = row.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, Mapping) and message.get("role") == "user" and str(message.get("content", "")):
                return str(message["content"]), CHAT
        raise ValueError("row has 'messages' but no non-empty user turn")
    text = row.get("instruction") or row.get("prompt")
    if isinstance(text, str) and text.strip():
        extra = row.get("input")
        return (f"{text}\n\n{extra}" if isinstance(extra, str) and extra.strip() else text), RAW
    if isinstance(row.get("task"), str) and isinstance(row.get("input"), str) and row["input"].strip():
        return row["input"], RAW  # a cross-task file's row: its input is the prompt
    raise ValueError("row needs 'prompts', 'messages', 'instruction', 'prompt', or 'task' and 'input'")


def prompt_set_tasks(path: str | Path) -> list[str | None]:
    """The ``task`` of each row of a prompt-set file (``None`` where a row names none), in the order of
    :func:`load_prompt_sets`'s sets: exemplar blocks pick in-task and cross-task demos by it."""
    return [row.get("task") if isinstance(row.get("task"), str) else None for _, row in read_jsonl(path)]


def load_prompt_sets(
    path: str | Path,
    kinds: Sequence[str] = ("spelling", "template"),
    size: int = 5,
    seed: int = 0,
    rate: float = 0.05,
) -> list[PromptSet]:
    """Prompt sets from JSONL: ``{"prompts": [...]}`` lines as given, instruction rows expanded to variants.

    Instruction rows may carry ``paraphrases`` (a list of strings). Row ``k`` uses its own generator seeded
    from ``seed`` and ``k``, so adding rows does not change the sets generated for earlier ones.
    """
    sets: list[PromptSet] = []
    for index, (line, row) in enumerate(read_jsonl(path)):
        try:
            if "prompts" in row:
                sets.append(validate_prompt_set(row["prompts"], "'prompts'"))
                continue
            intent, fmt = intent_of(row)
            paraphrases = [p for p in row.get("paraphrases", []) if isinstance(p, str) and p.strip()]
            rng = random.Random(f"{seed}:{index}")
            sets.append(make_prompt_set(intent, rng, size, kinds, paraphrases, fmt, rate))
        except ValueError as error:
            raise ValueError(f"{path}:{line}: {error}") from None
    return validate_prompt_sets(sets)
