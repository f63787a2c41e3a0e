"""Cross-task prompts, in the paper's format, and answer normalisation.

    Definition: <demo definition>
    <demo input> <demo label>
    ...
    Definition: <target definition>
    <target input>

A task without a definition has no ``Definition:`` line. Raw prompts are scored on ``" " + option``; with
``chat`` the whole text is one user turn of the tokenizer's chat template and the assistant answers ``option``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from wit_plugin.evaluation.crosstask.tasks import TaskItem
from wit_plugin.evaluation.engine import Prompt, Tokens

_CUT = re.compile(r"[.,:\-\n]")


@dataclass(frozen=True)
class Demo:
    """A pool example shown in context, with the label shown (gold, or a pseudo-label)."""

    item: TaskItem
    label: str


def _definition(item: TaskItem) -> str:
    return f"Definition: {item.definition}\n" if item.definition else ""


def demo_block(demos: Sequence[Demo]) -> str:
    """The in-context examples, each with its task's definition, one after the other."""
    return "".join(f"{_definition(demo.item)}{demo.item.input} {demo.label}\n" for demo in demos)


def prompt_text(target: TaskItem, demos: Sequence[Demo]) -> str:
    return f"{demo_block(demos)}{_definition(target)}{target.input}"


def as_prompt(text: str, chat: bool) -> Prompt:
    return [{"role": "user", "content": text}] if chat else text


def continuation(option: str, chat: bool) -> str:
    """What the model is scored on (or asked to produce) after the prompt."""
    return option if chat else f" {option}"


def normalise(answer: str) -> str:
    """Exact-match form of an answer: stripped, lower-cased, cut at the first ``.``, ``,``, ``:`` or ``-`` (the
    paper's rule), and at the first line break, since a raw prompt's answer ends its line."""
    return _CUT.split(answer.strip().lower(), maxsplit=1)[0].strip()


@dataclass
class Request:
    """One prompt to evaluate: a target item under a condition, with its demos."""

    item: TaskItem
    condition: str
    demos: tuple[Demo, ...]
    source: str | None = None  # the source task of single-source demos (cross, pseudo-labelling)
    prompt_ids: Tokens = ()
    option_ids: list[Tokens] | None = None
    option_logprobs: list[float] | None = None
    prediction: str = ""
    generated: str | None = None

    @property
    def correct(self) -> bool:
        if self.item.options is not None:
            return self.prediction == self.item.label
        return self.prediction == normalise(self.item.label)

    def trace(self) -> dict[str, Any]:
        return {
            "task": self.item.task,
            "id": self.item.id,
            "condition": self.condition,
            "prompt_ids": list(self.prompt_ids),
            "options": list(self.item.options) if self.item.options is not None else None,
            "option_ids": [list(ids) for ids in self.option_ids] if self.option_ids is not None else None,
            "option_logprobs": self.option_logprobs,
            "prediction": self.prediction,
            "label": self.item.label,
            "demos": [{"task": demo.item.task, "id": demo.item.id} for demo in self.demos],
            **({"generated": self.generated} if self.generated is not None else {}),
        }
